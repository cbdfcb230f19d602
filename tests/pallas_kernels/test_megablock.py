"""The mega kernel (one whole DiT block per call) against its f32 reference and its XLA block, on
plain arrays (the reference and the XLA block against the model's own `DiTBlock`:
tests/models/test_megastep.py). Interpret mode on CPU at small shapes; the model's shapes on a
Hopper GPU (`-m gpu`). Errors are relative Frobenius norms; bf16 operands get 1e-2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import bench
from pallas_kernels import megablock_mgpu as mb

BF16_TOL = 1e-2


def _inputs(batch, length, d, heads, dtype=jnp.bfloat16):
  return _draw(jax.random.key(int(np.random.default_rng().integers(1 << 30))), batch, length, d, heads, dtype)


# One program for all the draws: eagerly, each parameter's shape compiles its own (~0.3 s each).
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _draw(key, batch, length, d, heads, dtype):
  params = mb.block_params(key, d, heads)
  x = jax.random.normal(jax.random.fold_in(key, 2), (batch, length, d), jnp.float32)
  x = (2.0 * x + 0.5).astype(dtype)  # non-zero mean and scale: LN's centring matters
  cond = jax.random.normal(jax.random.fold_in(key, 3), (batch, d), jnp.float32).astype(dtype)
  return params, x, cond


@pytest.mark.parametrize("batch,length,tile_n,slots", [
    (1, 128, 128, 2),  # one KV block of 128, two CTAs
    (2, 192, 64, 3),  # three KV blocks of 64, two frames, narrow tiles, deeper rings
])
def test_megablock_interpret(interpret, batch, length, tile_n, slots):
  d, heads = 128, 2
  params, x, cond = _inputs(batch, length, d, heads)
  mod = mb.modulation(params["mod"], cond)
  # jitted, as the model runs it: op by op, every op around the kernel compiles alone
  out = jax.jit(functools.partial(mb.megablock, heads=heads, config=mb.TuningConfig(tile_n, slots)))(x, mod, params)
  ref = jax.jit(functools.partial(mb.megablock_reference, heads=heads))(x, mod, params)
  assert out.shape == x.shape and out.dtype == x.dtype
  for b in range(batch):  # every frame (CTA column) written and right
    assert bench.rel_err(out[b], ref[b]) < BF16_TOL


def test_megablock_phases_interpret(interpret):
  """The K/V scratch after phase 2 is the LN1-modulated projection of *all* tokens, in every
  CTA's private copy (the recompute that replaces cross-CTA communication)."""
  d, heads, length = 128, 2, 128
  params, x, cond = _inputs(1, length, d, heads)
  mod = mb.modulation(params["mod"], cond)
  _, _, qkv, *_ = jax.jit(functools.partial(mb.megablock_phases, heads=heads, last_phase="qkv"))(x, mod, params)
  shift, scale = (m[:, None] for m in jnp.split(mod.astype(jnp.float32), 6, axis=-1)[:2])
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(((x32 - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
  ref = (y * (1 + scale) + shift) @ params["qkv_kernel"] + params["qkv_bias"]
  for m in range(length // 64):
    assert bench.rel_err(qkv[0, m], ref[0]) < BF16_TOL


def test_config_validates():
  with pytest.raises(ValueError):
    mb.TuningConfig(tile_n=96)
  with pytest.raises(ValueError):
    mb.TuningConfig(slots=1)
  cfg = mb.DEFAULT_CONFIG
  assert mb.supports(256, 384, 1536, 6, cfg) and mb.supports(256, 768, 3072, 12, cfg)
  assert cfg.smem_bytes(256, 768, 3072) <= 227 * 1024
  assert not mb.supports(256, 768, 3072, 6, cfg)  # head dim 128
  assert not mb.supports(320, 384, 1536, 6, cfg)  # more tokens than one softmax row holds
  assert not mb.supports(100, 384, 1536, 6, cfg)  # not a multiple of 64 rows
  with pytest.raises(ValueError):
    mb.megablock(jnp.zeros((1, 100, 128), jnp.bfloat16), jnp.zeros((1, 768), jnp.bfloat16),
                 mb.block_params(jax.random.key(0), 128, 2), heads=2)


# ------------------------------------------------------------------ GPU: the model's shapes

@pytest.mark.gpu
@pytest.mark.parametrize("d,heads", [(384, 6), (768, 12)])
@pytest.mark.parametrize("tile_n,slots", [(128, 3), (64, 2)])
def test_megablock_gpu(hopper, d, heads, tile_n, slots):
  fn = jax.jit(mb.kernel_block_fn(heads, mb.TuningConfig(tile_n, slots)))
  xla = jax.jit(functools.partial(mb.xla_block, heads=heads))
  for _ in range(2):  # fresh inputs twice: stale output memory would not match the second
    params, x, cond = _inputs(1, 256, d, heads)
    mod = mb.modulation(params["mod"], cond)
    ref = mb.megablock_reference(x, mod, params, heads=heads)
    out = fn(params, x, cond)
    assert bench.rel_err(out, ref) < BF16_TOL
    assert bench.rel_err(out, xla(params, x, cond)) < BF16_TOL


@pytest.mark.gpu
def test_megablock_batch_gpu(hopper):
  """Two frames per call: the batch grid axis."""
  params, x, cond = _inputs(2, 256, 384, 6)
  fn = jax.jit(functools.partial(mb.kernel_block_fn(6)))
  mod = mb.modulation(params["mod"], cond)
  ref = mb.megablock_reference(x, mod, params, heads=6)
  out = fn(params, x, cond)
  for b in range(2):
    assert bench.rel_err(out[b], ref[b]) < BF16_TOL
