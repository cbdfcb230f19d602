"""The whole-step mega kernel (patch embedding, every DiT block, final layer in one persistent
call) against its f32 reference, on plain arrays. On CPU the phases run split (one
interpret-mode call each, the same tiles and round-robin CTA assignment; interpret mode cannot
allocate the grid barrier's semaphore); on a Hopper GPU (`-m gpu`) the fused kernel runs and is
checked against the split one, the reference and XLA, and the model's whole step through it
against the Flax `Denoiser` (the CPU version of that check is tests/models/test_megastep.py).
Errors are relative Frobenius norms; bf16 operands get 1e-2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import bench
from pallas_kernels import megastep_mgpu as ms

BF16_TOL = 1e-2


def _trunk_inputs(batch, length, d, heads, depth, p_in=40, p_out=32, seed=None):
  seed = int(np.random.default_rng().integers(1 << 30)) if seed is None else seed
  return _draw(jax.random.key(seed), batch, length, d, heads, depth, p_in, p_out)


# One program for all the draws: eagerly, each weight's shape compiles its own (~0.3 s each).
@functools.partial(jax.jit, static_argnums=tuple(range(1, 8)))
def _draw(key, batch, length, d, heads, depth, p_in, p_out):
  packed = ms.random_packed(key, d, heads, depth, p_in, p_out)
  patches = jax.random.normal(jax.random.fold_in(key, 100), (batch, length, p_in), jnp.bfloat16)
  pos = (0.5 * jax.random.normal(jax.random.fold_in(key, 101), (length, d))).astype(jnp.bfloat16)
  cond = jax.random.normal(jax.random.fold_in(key, 102), (batch, d), jnp.bfloat16)
  mods, fmod = ms.modulations(packed, cond)
  return patches, pos, mods, fmod, packed


def _check_trunk(batch, length, d, heads, depth, config, split, p_out=32):
  patches, pos, mods, fmod, packed = _trunk_inputs(batch, length, d, heads, depth, p_out=p_out)
  # jitted, as the model runs it: op by op, every op between the phases compiles alone
  out = jax.jit(functools.partial(ms.trunk, heads=heads, config=config, split=split))(patches, pos, mods, fmod, packed)
  ref = jax.jit(functools.partial(ms.trunk_reference, heads=heads))(patches, pos, mods, fmod, packed)
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
  ref = jax.jit(functools.partial(ms.trunk_reference, heads=2))(patches, pos, mods, fmod, packed)
  bad = mods.at[:, :, 3].set(mods[:, :, 4]).at[:, :, 4].set(mods[:, :, 3])
  out = jax.jit(functools.partial(ms.trunk, heads=2, split=True))(patches, pos, bad, fmod, packed)
  assert bench.rel_err(out[..., :32], ref[..., :32]) > 5 * BF16_TOL


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
  """The model's whole step through the fused kernel (`lsd_jax.models.megastep.denoise`, the path
  `lsd.velocity_fn` takes with packed weights) against `Denoiser.apply` on the same weights."""
  from lsd_jax.models import megastep
  from tests.models.test_megastep import denoiser_case

  cfg, den, params, args = denoiser_case(width=384, heads=6, depth=6, hw=32)
  ref = den.apply({"params": params}, *args)
  out = jax.jit(lambda p, q, *a: megastep.denoise(p, q, cfg, *a))(params, megastep.pack(params), *args)
  assert bench.rel_err(out, ref) < BF16_TOL
