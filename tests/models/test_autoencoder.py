import jax
import jax.numpy as jnp
import pytest

from lsd_jax.models import lsd, sizes
from lsd_jax.models.autoencoder import Autoencoder


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (40, 120)])
def test_round_trip_shapes(hw):
  """Any resolution divisible by 8, square or not (the denoiser's patch adds its own factor)."""
  h, w = hw
  ae = Autoencoder(sizes.get_size("tiny").autoencoder)
  params = jax.jit(ae.init)(jax.random.key(0), jnp.zeros((1, h, w, 3)))["params"]  # jitted: eager is op by op
  frames = jax.random.randint(jax.random.key(1), (2, h, w, 3), 0, 256).astype(jnp.uint8)
  z = jax.jit(lambda p, x: lsd.encode(ae, p, x))(params, frames)
  assert z.shape == (2, h // 8, w // 8, 4)
  out = jax.jit(lambda p, z: lsd.decode(ae, p, z))(params, z)
  assert out.shape == (2, h, w, 3)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_rejects_sizes_not_divisible_by_8():
  cfg = lsd.LSDConfig(size="tiny", height=64, width=64)
  ae, _ = lsd.build(cfg)
  params = lsd.init_params(jax.random.key(0), cfg)["autoencoder"]
  with pytest.raises(ValueError, match="divisible by 8"):
    lsd.encode(ae, params, jnp.zeros((1, 60, 64, 3)))
  with pytest.raises(ValueError, match="not divisible"):
    lsd.LSDConfig(size="tiny", height=60, width=64)


def test_space_to_depth_round_trip():
  from lsd_jax.models.autoencoder import depth_to_space, space_to_depth

  x = jax.random.normal(jax.random.key(0), (2, 16, 24, 3))
  y = space_to_depth(x, 4)
  assert y.shape == (2, 4, 6, 48)
  assert bool((y[0, 1, 2, :3] == x[0, 4, 8]).all())  # a block's first pixel leads its channels
  assert bool((depth_to_space(y, 4) == x).all())


def test_light_round_trip_at_832x480():
  """The light kind runs at the large latency resolution too (480 is not a multiple of 64)."""
  cfg = lsd.LSDConfig(size="small", height=480, width=832, autoencoder="light")
  ae, _ = lsd.build(cfg)
  params = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), cfg))["autoencoder"]
  params = jax.jit(lambda: jax.tree.map(  # one program (op by op: one per leaf shape)
      lambda s: jax.random.normal(jax.random.key(1), s.shape, s.dtype) * 0.05, params))()
  frames = jax.random.randint(jax.random.key(2), (1, 480, 832, 3), 0, 256).astype(jnp.uint8)
  z = jax.jit(lambda p, x: lsd.encode(ae, p, x))(params, frames)  # jitted: eager is op by op
  assert z.shape == (1, 60, 104, 8)
  out = jax.jit(lambda p, z: lsd.decode(ae, p, z))(params, z)
  assert out.shape == (1, 480, 832, 3) and bool(jnp.isfinite(out).all())


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_light_flops_match_xla_and_budget(name):
  size = sizes.get_size(name).with_autoencoder("light")
  ae = Autoencoder(size.autoencoder)
  params = jax.eval_shape(lambda: ae.init(jax.random.key(0), jnp.zeros((1, 256, 256, 3))))["params"]
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  cost = jax.jit(lambda p, x: ae.apply({"params": p}, x)).lower(params, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  fl = sizes.autoencoder_flops(size, 256, 256)
  analytic = fl["encode"] + fl["decode"]
  assert 0.95 * analytic <= cost["flops"] <= 1.05 * analytic, (cost["flops"], analytic)
  if name == "small":  # the model v3 budget: encode + decode of a 256x256 frame <= 4 GFLOPs
    assert analytic <= 4e9
    assert analytic * 6 < sum(sizes.autoencoder_flops(sizes.get_size(name), 256, 256).values())


def test_light_starts_as_a_chain_of_identities():
  """Zero-initialised second convs: each residual block is the identity before training, so
  the untrained light autoencoder is a plain conv stack (what makes it trainable without norms)."""
  from lsd_jax.models.autoencoder import LightResBlock

  blk = LightResBlock(8)
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 8))
  p = blk.init(jax.random.key(1), x)
  assert bool(jnp.allclose(blk.apply(p, x), x))


def test_old_model_folders_keep_the_conv_kind():
  cfg = lsd.LSDConfig.from_dict({"size": "small"})
  assert cfg.autoencoder == "conv" and cfg.model_size.autoencoder.kind == "conv"
  with pytest.raises(ValueError, match="autoencoder must be one of"):
    lsd.LSDConfig(autoencoder="vae")


@pytest.mark.parametrize("folder,kind", [("checkpoints/ae_small_conv", "conv"), ("checkpoints/ae_small_light", "light"),
                                         ("checkpoints/lsd_small", "light")])
def test_committed_autoencoders_load_and_reconstruct(folder, kind):
  """The shipped model's light autoencoder, its training copy and the v1/v2 conv one (kept
  loadable for old model folders) reconstruct a smooth 64x96 frame."""
  import numpy as np

  from lsd_jax.eval import metrics
  from lsd_jax.train import tasks

  params, meta = tasks.load_autoencoder(folder)
  assert meta["kind"] == kind
  ae = Autoencoder(sizes.get_size("small").with_autoencoder(kind).autoencoder, latent_scale=meta["latent_scale"])
  yy, xx = np.mgrid[0:64, 0:96] / 64.0
  img = np.stack([0.5 + 0.4 * np.sin(3 * xx), 0.5 + 0.4 * np.cos(2 * yy + xx),
                  0.3 + 0.5 * ((xx - 0.7) ** 2 + (yy - 0.5) ** 2 < 0.1)], -1).astype(np.float32)
  out = jax.jit(lambda p, x: lsd.decode(ae, p, lsd.encode(ae, p, x)))(params, img[None])  # jitted: eager is op by op
  assert out.shape == (1, 64, 96, 3)
  assert float(metrics.psnr(np.asarray(out[0]), img)) > 28.0
