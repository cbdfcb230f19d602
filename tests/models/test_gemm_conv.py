"""The autoencoder's convolutions as im2col + GEMM (`gemm_conv`, `conv_impl="gemm"`): the same
numbers as lax's convolution on the same parameters, no convolution op left in the program (what
lets a GPU keep the whole stream frame in one command buffer), unsupported arguments refused."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lsd_jax.models import export, frame, gemm_conv, lsd, sizes
from lsd_jax.models.autoencoder import Autoencoder
from tests.conftest import randomize

NHWC = ("NHWC", "HWIO", "NHWC")
LIGHT = sizes.get_size("small").with_autoencoder("light").autoencoder


def _operands(hw, cin, cout, kernel, dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(0), (2, *hw, cin))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout)) / np.sqrt(kernel * kernel * cin)
  return x.astype(dtype), w.astype(dtype)


# kernel, stride, padding: the autoencoder's own (SAME, 1x1 and 3x3, stride 1 and 2), explicit
# pairs (symmetric, lopsided, none) and VALID; at odd and even sizes and several channel counts.
CASES = [(k, s, p) for k in (1, 3) for s in (1, 2) for p in ("SAME", "VALID", ((1, 1), (1, 1)), ((0, 2), (1, 0)))]


@pytest.mark.parametrize("kernel,stride,padding", CASES)
@pytest.mark.parametrize("hw,cin,cout", [((8, 8), 3, 5), ((7, 9), 16, 8), ((5, 6), 48, 32)])
def test_matches_lax_in_float32(kernel, stride, padding, hw, cin, cout):
  x, w = _operands(hw, cin, cout, kernel)
  want = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)
  got = gemm_conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride", [(1, 1), (1, 2), (3, 1), (3, 2)])
def test_bfloat16_accumulates_in_float32(kernel, stride):
  """bf16 products are exact in f32, so with f32 accumulation the f32 result is the f32
  convolution of the same (bf16) numbers up to summation order; the bf16 result is that rounded
  once (within one bf16 ulp, 2^-8 relative), as lax's own."""
  x, w = _operands((9, 8), 24, 16, kernel, jnp.bfloat16)
  ref = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), (stride, stride), "SAME",
                                 dimension_numbers=NHWC)
  f32 = gemm_conv.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC,
                                       preferred_element_type=jnp.float32)
  assert f32.dtype == jnp.float32
  np.testing.assert_allclose(f32, ref, rtol=1e-5, atol=1e-5)
  got = gemm_conv.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)
  want = lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)
  assert got.dtype == want.dtype == jnp.bfloat16 and got.shape == want.shape
  np.testing.assert_allclose(got.astype(jnp.float32), ref, rtol=2**-8, atol=1e-6)
  np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), rtol=2**-7, atol=1e-6)


def test_unsupported_arguments_raise():
  x, w = _operands((8, 8), 4, 6, 3)
  conv = gemm_conv.conv_general_dilated
  for kw, says in (({"feature_group_count": 2}, "grouped"), ({"batch_group_count": 2}, "grouped"),
                   ({"rhs_dilation": (2, 2)}, "dilation"), ({"lhs_dilation": (1, 2)}, "dilation"),
                   ({"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, "dimension numbers"),
                   ({"padding": ((-1, 0), (0, 0))}, "negative"), ({"padding": ((1, 1),)}, "pairs")):
    args = {"window_strides": (1, 1), "padding": "SAME", "dimension_numbers": NHWC, **kw}
    with pytest.raises(ValueError, match=says):
      conv(x, w, **args)
  with pytest.raises(ValueError, match="2-D"):
    conv(x[0], w[0], (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
  with pytest.raises(ValueError, match="does not fit"):
    conv(x[:, :2, :2], w, (1, 1), "VALID", dimension_numbers=NHWC)
  # through flax's nn.Conv, as the autoencoder calls it: a grouped conv is refused, not miscomputed
  grouped = nn.Conv(6, (3, 3), feature_group_count=2, conv_general_dilated=conv)
  with pytest.raises(ValueError, match="grouped"):
    grouped.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="conv implementation must be one of"):
    gemm_conv.conv_fn("cudnn")
  with pytest.raises(ValueError, match="conv implementation must be one of"):
    Autoencoder(LIGHT, conv_impl="cudnn").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="conv implementation must be one of"):
    lsd.LSDConfig(ae_conv="cudnn")


def _encode_decode(ae, params, x):
  z = ae.apply(params, x, method=Autoencoder.encode)
  return z, ae.apply(params, z, method=Autoencoder.decode)


@pytest.mark.parametrize("kind", ["light", "conv"])
def test_gemm_autoencoder_equals_xla_on_the_same_params(kind):
  """One parameter tree (names, shapes, dtypes) for both; f32: the same latents and frames
  to float rounding. bf16 (the model's dtype): each conv rounds its output to bf16 in both, and
  the two f32 accumulations differ in summation order, so an output can round one ulp apart
  (2^-8 relative) and the decoder starts from latents already that far apart: bounded at 2^-5 of
  the largest magnitude and 2% mean relative difference (measured, light: latents 1 ulp and
  0.14%, frames 2 ulps and 0.52%). The conv kind (old models) is checked in f32 only."""
  size = sizes.get_size("tiny" if kind == "conv" else "small").with_autoencoder(kind).autoencoder
  x = jax.random.uniform(jax.random.key(3), (2, 32, 48, 3), minval=-1.0, maxval=1.0)
  xla, gemm = Autoencoder(size), Autoencoder(size, conv_impl="gemm")
  tree_xla, tree_gemm = (jax.eval_shape(ae.init, jax.random.key(0), x) for ae in (xla, gemm))
  assert jax.tree.structure(tree_xla) == jax.tree.structure(tree_gemm)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), tree_xla) == jax.tree.map(lambda s: (s.shape, s.dtype), tree_gemm)
  # noise in every leaf (zero-init second convs would hide a wrong one); jitted: eager is op by op
  params = jax.jit(lambda: randomize(jax.tree.map(jnp.zeros_like, tree_xla), jax.random.key(1), 0.05))()
  checks = ((jnp.float32, 1e-5, 1e-5), (jnp.bfloat16, 2**-5, 2e-2))
  for dtype, max_tol, mean_tol in checks if kind == "light" else checks[:1]:  # bf16 for the shipped kind (time)
    pair = (dataclasses.replace(xla, dtype=dtype), dataclasses.replace(gemm, dtype=dtype))
    (z_a, y_a), (z_b, y_b) = (jax.jit(lambda p, x, ae=ae: _encode_decode(ae, p, x))(params, x) for ae in pair)
    for a, b in ((z_a, z_b), (y_a, y_b)):
      assert a.shape == b.shape and a.dtype == b.dtype
      scale = float(jnp.abs(a).max())
      assert float(jnp.abs(a - b).max()) <= max_tol * max(scale, 1.0), (dtype, float(jnp.abs(a - b).max()), scale)
      assert float(jnp.abs(a - b).mean()) <= mean_tol * float(jnp.abs(a).mean()), dtype


def _hlo(ae, params, x):
  return jax.jit(lambda p, x: _encode_decode(ae, p, x)).lower(params, x).as_text()


@pytest.mark.parametrize("kind", ["light", "conv"])
def test_gemm_program_has_no_convolution(kind):
  """The point of the option: on a GPU each `convolution` becomes a cuDNN call outside XLA's
  command buffers; the gemm program has none left, the xla one has them."""
  size = sizes.get_size("tiny" if kind == "conv" else "small").with_autoencoder(kind).autoencoder
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(lambda: Autoencoder(size).init(jax.random.key(0), x))
  assert "convolution" in _hlo(Autoencoder(size), params, x)
  hlo = _hlo(Autoencoder(size, conv_impl="gemm"), params, x)
  assert "convolution" not in hlo and "dot_general" in hlo


def test_config_switch_reaches_the_frame_and_old_configs_load():
  """LSDConfig.ae_conv: old config.json files (no such key) load as "xla", and save as before
  (no new key at the default); "gemm" survives a save and load; the model's frame function
  (what the stream engine jits) then holds no convolution."""
  old = lsd.LSDConfig.from_dict({"size": "tiny", "height": 32, "width": 32})
  assert old.ae_conv == "xla" and "ae_conv" not in old.to_dict()
  cfg = dataclasses.replace(old, ae_conv="gemm")
  assert lsd.LSDConfig.from_dict(cfg.to_dict()) == cfg
  assert lsd.build(cfg)[0].conv_impl == "gemm"
  params = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), old))
  c = jnp.zeros((1, *old.latent_shape))
  frames = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  for cfg_, has_conv in ((old, True), (cfg, False)):
    fns = frame.frame_fns(cfg_)
    assert ("convolution" in jax.jit(fns.encode).lower(params, frames).as_text()) == has_conv
    assert ("convolution" in jax.jit(fns.decode).lower(params, c).as_text()) == has_conv


@pytest.fixture(scope="module")
def shipped():
  cfg, params, _ = export.load("checkpoints/lsd_small")
  return cfg, params["autoencoder"]


def test_shipped_autoencoder_round_trips_alike_with_both(shipped):
  """The shipped model's light autoencoder (bf16 compute, as it streams) reconstructs a smooth
  128x192 frame with either implementation, to within 0.05 dB PSNR of each other."""
  from lsd_jax.eval import metrics

  cfg, params = shipped
  assert cfg.autoencoder == "light"
  yy, xx = np.mgrid[0:128, 0:192] / 128.0
  img = np.stack([0.5 + 0.4 * np.sin(3 * xx), 0.5 + 0.4 * np.cos(2 * yy + xx),
                  0.3 + 0.5 * ((xx - 0.7) ** 2 + (yy - 0.5) ** 2 < 0.1)], -1).astype(np.float32)
  psnr = {}
  for conv in gemm_conv.CONV_IMPLS:
    ae, _ = lsd.build(dataclasses.replace(cfg, ae_conv=conv))
    out = jax.jit(lambda p, x, ae=ae: lsd.decode(ae, p, lsd.encode(ae, p, x)))(params, img[None])
    psnr[conv] = float(metrics.psnr(np.asarray(out[0]), img))
  assert psnr["xla"] > 28.0 and abs(psnr["gemm"] - psnr["xla"]) < 0.05, psnr
