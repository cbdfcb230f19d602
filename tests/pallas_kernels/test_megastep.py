"""The whole-step mega kernel (patch embedding, every DiT block, final layer in one persistent
call) against its f32 reference and against the Flax `Denoiser` itself. On CPU the phases run
split (one interpret-mode call each, the same tiles and round-robin CTA assignment; interpret
mode cannot allocate the grid barrier's semaphore); on a Hopper GPU (`-m gpu`) the fused kernel
runs and is checked against the split one, the reference and XLA. Errors are relative Frobenius
norms; bf16 operands get 1e-2."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.models.denoiser import Denoiser, DenoiserConfig
from lsd_jax.models.sizes import DenoiserSize
from pallas_kernels import bench
from pallas_kernels import megastep_mgpu as ms

BF16_TOL = 1e-2


def _trunk_inputs(batch, length, d, heads, depth, p_in=40, p_out=32, seed=None):
  seed = int(np.random.default_rng().integers(1 << 30)) if seed is None else seed
  key = jax.random.key(seed)
  packed = ms.random_packed(key, d, heads, depth, p_in, p_out)
  patches = jax.random.normal(jax.random.fold_in(key, 100), (batch, length, p_in), jnp.bfloat16)
  pos = (0.5 * jax.random.normal(jax.random.fold_in(key, 101), (length, d))).astype(jnp.bfloat16)
  cond = jax.random.normal(jax.random.fold_in(key, 102), (batch, d), jnp.bfloat16)
  mods, fmod = ms.modulations(packed, cond)
  return patches, pos, mods, fmod, packed


def _check_trunk(batch, length, d, heads, depth, config, split, p_out=32):
  patches, pos, mods, fmod, packed = _trunk_inputs(batch, length, d, heads, depth, p_out=p_out)
  out = ms.trunk(patches, pos, mods, fmod, packed, heads=heads, config=config, split=split)
  ref = ms.trunk_reference(patches, pos, mods, fmod, packed, heads=heads)
  assert out.shape == (batch, length, 64) and out.dtype == jnp.bfloat16
  for b in range(batch):  # every frame written and right
    assert bench.rel_err(out[b, :, :p_out], ref[b, :, :p_out]) < BF16_TOL
  return out, ref, (patches, pos, mods, fmod, packed)


@pytest.mark.parametrize("batch,length,config", [
    (1, 128, ms.TuningConfig(max_ctas=3)),  # CTAs take 2-6 tiles each; one KV block of 128
    (2, 192, ms.TuningConfig(tile_n=64, slots=2, max_ctas=5)),  # two frames, 3 KV blocks of 64
])
def test_trunk_interpret(interpret, batch, length, config):
  _check_trunk(batch, length, 128, 2, 2, config, split=True)


def test_reference_catches_a_wrong_modulation(interpret):
  """The check above can fail: the same kernel fed LN2's shift and scale swapped is far off."""
  patches, pos, mods, fmod, packed = _trunk_inputs(1, 64, 128, 2, 1, seed=3)
  ref = ms.trunk_reference(patches, pos, mods, fmod, packed, heads=2)
  bad = mods.at[:, :, 3].set(mods[:, :, 4]).at[:, :, 4].set(mods[:, :, 3])
  out = ms.trunk(patches, pos, bad, fmod, packed, heads=2, split=True)
  assert bench.rel_err(out[..., :32], ref[..., :32]) > 5 * BF16_TOL


def _denoiser_case(width=128, heads=2, depth=2, hw=16, batch=1, seed=0):
  cfg = DenoiserConfig(DenoiserSize(width=width, depth=depth, heads=heads), latent_channels=4)
  den = Denoiser(cfg)
  k = cfg.history_len
  ks = jax.random.split(jax.random.key(seed), 8)
  args = (jax.random.normal(ks[0], (batch, 1, hw, hw, 4)), jax.random.normal(ks[1], (batch, 1, hw, hw, 4)),
          jnp.full((batch, 1), 0.6), jnp.full((batch, 1), 0.25), jax.random.normal(ks[4], (batch, 384)),
          jax.random.normal(ks[2], (batch, 1, k, hw, hw, 4)), jax.random.uniform(ks[3], (batch, 1, k)))
  params = nn.meta.unbox(den.init(ks[5], *args)["params"])
  leaves, tree = jax.tree.flatten(params)  # every leaf non-zero (adaLN-zero gates included)
  params = jax.tree.unflatten(tree, [
      0.3 * jax.random.normal(jax.random.fold_in(ks[6], i), p.shape)
      / (np.sqrt(p.shape[0]) if p.ndim == 2 else 1.0) for i, p in enumerate(leaves)])
  return cfg, den, params, args


def test_denoise_is_the_flax_denoiser(interpret):
  """The whole step (conditioning, modulations, patchify, trunk, unpatchify), reached the way
  the sampler reaches it (`lsd.velocity_fn` with packed weights), against `Denoiser.apply` on
  the same weights: the mega-kernel path computes the same model."""
  from lsd_jax.models import lsd

  cfg, den, params, args = _denoiser_case()
  z, c, t, d, prompt, hist, tau = args
  ref = den.apply({"params": params}, *args)
  cond = {"c": c, "prompt": prompt, "hist": hist, "tau": tau}
  out = lsd.velocity_fn(den, params, ms.pack(params))(z, t, d, cond)
  assert out.shape == ref.shape and out.dtype == jnp.float32
  assert 0 < bench.rel_err(out, ref) < BF16_TOL  # not bit-equal: the kernel ran, and is right
  assert bench.rel_err(out, 0 * ref) > 0.5  # not a zero model


def test_config_and_support():
  with pytest.raises(ValueError):
    ms.TuningConfig(tile_n=96)
  with pytest.raises(ValueError):
    ms.TuningConfig(slots=1)
  with pytest.raises(ValueError):
    ms.TuningConfig(max_ctas=133)
  cfg = ms.DEFAULT_CONFIG
  assert ms.supports(256, 384, 1536, 6, cfg) and ms.supports(256, 768, 3072, 12, cfg)
  assert cfg.smem_bytes(768, 3072, 256) <= 227 * 1024
  assert not ms.supports(256, 1536, 6144, 12, cfg)  # head dim 128
  assert not ms.supports(1560, 384, 1536, 6, cfg)  # more tokens than one softmax row
  small = DenoiserConfig(DenoiserSize(width=384, depth=6, heads=6), latent_channels=8)
  assert ms.step_supported(small, 256) is None
  assert "attention" in ms.step_supported(DenoiserConfig(small.size, 8, history_mode="attention"), 256)
  assert "tokens" in ms.step_supported(small, 1560)
  pruned = DenoiserConfig(DenoiserSize(width=384, depth=2, heads=6, block_heads=(6, 3),
                                       block_mlp=(1536, 768)), latent_channels=8)
  assert "pruned" in ms.step_supported(pruned, 256)


def test_grid_size():
  shape = ms._Shape(1, 256, 384, 1536, 6, 6, 192)
  assert ms.grid_size(shape, ms.DEFAULT_CONFIG) == 48  # fc1: 4 row tiles x 12 column tiles
  shape = ms._Shape(1, 256, 768, 3072, 12, 12, 192)
  assert ms.grid_size(shape, ms.DEFAULT_CONFIG) == 96
  assert ms.grid_size(shape, ms.TuningConfig(max_ctas=32)) == 32


@pytest.mark.gpu
@pytest.mark.parametrize("d,heads,depth,sync", [(384, 6, 6, "dataflow"), (384, 6, 6, "barrier"),
                                                (768, 12, 12, "dataflow")])
def test_fused_on_hopper(hopper, d, heads, depth, sync):
  """The persistent kernel, with its dataflow counters or grid barriers, at the model's shapes:
  against the reference, the split phases and XLA, and the same output on 20 repeated calls
  (a missing wait shows up as call-to-call differences)."""
  config = ms.TuningConfig(sync=sync)
  out, ref, args = _check_trunk(1, 256, d, heads, depth, config, split=False)
  if depth <= 6:  # the split path compiles a kernel per phase (minutes for base)
    split = ms.trunk(*args, heads=heads, split=True)
    assert bench.rel_err(out[..., :32], split[..., :32]) < 1e-3
  xla = ms.xla_trunk(*args, heads=heads)
  assert bench.rel_err(out[..., :32], xla[..., :32]) < BF16_TOL
  fused = jax.jit(lambda *a: ms.trunk(*a, heads=heads, config=config, split=False))
  for _ in range(20):
    np.testing.assert_array_equal(np.asarray(fused(*args), np.float32), np.asarray(out, np.float32))


@pytest.mark.gpu
def test_denoise_on_hopper(hopper):
  cfg, den, params, args = _denoiser_case(width=384, heads=6, depth=6, hw=32)
  ref = den.apply({"params": params}, *args)
  out = jax.jit(lambda p, q, *a: ms.denoise(p, q, cfg, *a))(params, ms.pack(params), *args)
  assert bench.rel_err(out, ref) < BF16_TOL


def test_velocity_fn_falls_back(interpret):
  """`lsd.velocity_fn` with packed weights, at a shape the kernel does not support, falls back
  to `Denoiser.apply` instead of failing."""
  from lsd_jax.models import lsd

  cfg, den, params, args = _denoiser_case(hw=8)  # 16 tokens: not a multiple of 64 -> fallback
  z, c, t, d, prompt, hist, tau = args
  cond = {"c": c, "prompt": prompt, "hist": hist, "tau": tau}
  packed = ms.pack(params)
  assert ms.step_supported(cfg, 16) is not None
  ref = den.apply({"params": params}, *args)
  out = lsd.velocity_fn(den, params, packed)(z, t, d, cond)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))  # the fallback is the Flax path


def test_with_kernel_params_only_where_it_runs():
  """Packing happens only for kernel_impl="megastep" where the kernel supports the config on a
  Hopper GPU; elsewhere the params are returned as they are (and `velocity_fn` gets no packed
  weights), with the reason: the model's shape first, then the device."""
  from lsd_jax.models import lsd
  from pallas_kernels import api

  small = lsd.LSDConfig(size="small", kernel_impl="megastep")
  assert "attention" in lsd.megastep_unsupported(
      lsd.LSDConfig(size="small", history_mode="attention", kernel_impl="megastep"))
  assert "tokens" in lsd.megastep_unsupported(lsd.LSDConfig(size="small", height=480, width=832))
  assert "pruned" in lsd.megastep_unsupported(
      lsd.LSDConfig(size="small", block_heads=(6, 3, 6, 6, 6, 6)))
  assert "head dim" in lsd.megastep_unsupported(lsd.LSDConfig(size="tiny"))
  params = {"denoiser": {}, "autoencoder": {}}
  assert lsd.with_kernel_params(lsd.LSDConfig(size="small"), params) is params  # not asked for
  if not api.is_hopper():
    assert "Hopper" in lsd.megastep_unsupported(small)
    assert lsd.with_kernel_params(small, params) is params
