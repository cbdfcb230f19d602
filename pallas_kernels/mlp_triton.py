"""Fused MLP gelu_tanh(x @ w1 + b1) @ w2 + b2 on Pallas Triton; the hidden never leaves the SM.

The portable path of `api.mlp`, with the signature of `mlp_mgpu.mlp` and its structure: one
program per (`tile_n` output columns, `tile_m` rows, batch element) loops over the hidden width F
in `block_f` chunks; for each it computes h = gelu(x @ w1[:, chunk] + b1[chunk]) in f32 (K loop
over D in `block_k` chunks), rounds h to the input dtype (as the XLA path does) and accumulates
h @ w2[chunk, cols] in an f32 `tile_m x tile_n` accumulator.

Trade-off, as for the Mosaic kernel (whose measured outcome was 4-8x slower than XLA at the
model's shapes, pallas_kernels/NOTES.md): each of the D / tile_n column programs of a row tile
recomputes the first matmul, and at 256 tokens the grid is small. A full-width output tile would
avoid the recompute, but Triton's register tensors must have power-of-two shapes (D = 384, 768,
1536 are not). Expect it to lose to XLA; it is here so that every api op has a Triton kernel to
ablate and time, not as a default.

Rows and output columns past the ends are masked; D and F must be multiples of 16 (`fit_config`
halves `block_k` / `block_f` until they divide).

The backward pass is the VJP of the XLA reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from absl import logging
import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.triton as pltr
import jax.numpy as jnp
from jax import lax

from pallas_kernels import device
from pallas_kernels import xla
from pallas_kernels.reference import mlp_reference


def _is_pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  tile_m: int = 64
  tile_n: int = 128
  block_k: int = 64
  block_f: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("tile_m", "tile_n", "block_k", "block_f"):
      size = getattr(self, name)
      if not _is_pow2(size) or not 16 <= size <= 256:
        raise ValueError(f"{name}={size} must be a power of two in [16, 256] (tl.dot tiles)")
    if self.num_warps not in (1, 2, 4, 8, 16):
      raise ValueError(f"{self.num_warps=} must be a power of two <= 16")
    if self.num_stages < 1:
      raise ValueError(f"{self.num_stages=} must be at least 1")


DEFAULT_CONFIG = TuningConfig()


def _divisor_block(n: int, block: int) -> int:
  while n % block and block > 16:
    block //= 2
  if n % block:
    raise ValueError(f"{n} is not a multiple of 16")
  return block


def fit_config(d: int, f: int, config: TuningConfig) -> TuningConfig:
  """`config` with `block_k` dividing D and `block_f` dividing F."""
  return dataclasses.replace(config, block_k=_divisor_block(d, config.block_k),
                             block_f=_divisor_block(f, config.block_f))


def _gelu_tanh(h):
  c = math.sqrt(2.0 / math.pi)
  return 0.5 * h * (1.0 + jnp.tanh(c * (h + 0.044715 * h * h * h)))


def _kernel(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, o_ref, *, tile_m, tile_n, block_k, block_f):
  """x_ref (L, D), w1 (D, F), b1 (F,), w2 (F, D), b2 (D,), out (L, D): one batch element."""
  length, d = x_ref.shape
  f = w1_ref.shape[1]
  n_idx, m_idx = pl.program_id(0), pl.program_id(1)
  row_start, col_start = m_idx * tile_m, n_idx * tile_n
  row_ok = (row_start + jnp.arange(tile_m, dtype=jnp.int32)) < length
  col_ok = (col_start + jnp.arange(tile_n, dtype=jnp.int32)) < d
  rows, cols = pl.ds(row_start, tile_m), pl.ds(col_start, tile_n)
  dtype = x_ref.dtype

  def hidden_chunk(fi, acc):
    f_cols = pl.ds(fi * block_f, block_f)

    def k_body(kc, h):
      k_cols = pl.ds(kc * block_k, block_k)
      x = pltr.load(x_ref.at[rows, k_cols], mask=row_ok[:, None], other=0.0)
      return h + pltr.dot(x, pltr.load(w1_ref.at[k_cols, f_cols]))

    h = lax.fori_loop(0, d // block_k, k_body, jnp.zeros((tile_m, block_f), jnp.float32))
    h = _gelu_tanh(h + pltr.load(b1_ref.at[f_cols]).astype(jnp.float32)[None, :]).astype(dtype)
    w2 = pltr.load(w2_ref.at[f_cols, cols], mask=col_ok[None, :], other=0.0)
    return acc + pltr.dot(h, w2)

  acc = lax.fori_loop(0, f // block_f, hidden_chunk, jnp.zeros((tile_m, tile_n), jnp.float32))
  acc += pltr.load(b2_ref.at[cols], mask=col_ok, other=0.0).astype(jnp.float32)[None, :]
  pltr.store(o_ref.at[rows, cols], acc.astype(o_ref.dtype), mask=row_ok[:, None] & col_ok[None, :])


def _forward(x, w1, b1, w2, b2, *, config: TuningConfig, interpret: bool = False):
  batch, length, d = x.shape
  f = w1.shape[1]
  if w1.shape != (d, f) or w2.shape != (f, d) or b1.shape != (f,) or b2.shape != (d,):
    raise ValueError(f"shapes x {x.shape}, w1 {w1.shape}, b1 {b1.shape}, w2 {w2.shape}, "
                     f"b2 {b2.shape}")
  config = fit_config(d, f, config)
  tile_m, tile_n = config.tile_m, config.tile_n
  kernel = functools.partial(_kernel, tile_m=tile_m, tile_n=tile_n, block_k=config.block_k,
                             block_f=config.block_f)
  whole = lambda *shape: pl.BlockSpec(shape, lambda n, m, bi: (0,) * len(shape))  # noqa: E731
  per_batch = pl.BlockSpec((None, length, d), lambda n, m, bi: (bi, 0, 0))
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(d, tile_n), pl.cdiv(length, tile_m), batch),
      in_specs=[per_batch, whole(d, f), whole(f), whole(f, d), whole(d)],
      out_specs=per_batch,
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      compiler_params=pltr.CompilerParams(num_warps=config.num_warps,
                                          num_stages=config.num_stages),
      interpret=interpret,
      name="mlp_triton",
  )(x, w1, b1, w2, b2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _mlp(x, w1, b1, w2, b2, config, interpret):
  return _forward(x, w1, b1, w2, b2, config=config, interpret=interpret)


def _fwd(x, w1, b1, w2, b2, config, interpret):
  return _mlp(x, w1, b1, w2, b2, config, interpret), (x, w1, b1, w2, b2)


def _bwd(config, interpret, res, d_out):
  del config, interpret
  _, vjp = jax.vjp(xla.mlp_xla, *res)
  return vjp(d_out)


_mlp.defvjp(_fwd, _bwd)


def supports(d: int, f: int) -> bool:
  return d % 16 == 0 and f % 16 == 0


def mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, *, config: TuningConfig = DEFAULT_CONFIG,
        interpret: bool = False):
  """`api.mlp` on Pallas Triton; differentiable (backward through XLA).

  `interpret=True` runs the kernel in Pallas interpret mode (CPU tests)."""
  d, f = w1_DxF.shape
  if not supports(d, f):
    device.warn_fallback_once("mlp", f"triton (D={d}, F={f})")
    return xla.mlp_xla(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D)
  cast = lambda a: a.astype(x_BxLxD.dtype)  # noqa: E731
  return _mlp(x_BxLxD, cast(w1_DxF), b1_F, cast(w2_FxD), b2_D, config, interpret)


def main(_) -> None:
  from pallas_kernels import bench

  mosaic = None
  if device.is_hopper():
    from pallas_kernels import mlp_mgpu as mosaic
  configs = (TuningConfig(64, 128, 64, 64, 4, 2), TuningConfig(64, 256, 64, 64, 8, 2),
             TuningConfig(32, 128, 64, 128, 4, 3), TuningConfig(128, 128, 64, 64, 8, 2))
  for length, d in [(256, 384), (256, 768), (1024, 768), (1560, 768)]:
    f = 4 * d
    keys = jax.random.split(jax.random.key(d), 5)
    x = jax.random.normal(keys[0], (1, length, d), jnp.bfloat16)
    w1 = jax.random.normal(keys[1], (d, f), jnp.bfloat16) / d ** 0.5
    b1 = jax.random.normal(keys[2], (f,), jnp.bfloat16) * 0.1
    w2 = jax.random.normal(keys[3], (f, d), jnp.bfloat16) / f ** 0.5
    b2 = jax.random.normal(keys[4], (d,), jnp.bfloat16) * 0.1
    args = (x, w1, b1, w2, b2)
    ref = mlp_reference(*args)
    for config in configs:
      fn = jax.jit(functools.partial(mlp, config=config))
      t = bench.time_fn(fn, *args)
      logging.info(f"L={length} D={d} {config}: p50 {t['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, *args)} ms "
                   f"rel_err {bench.rel_err(fn(*args), ref):.2e}")
    xla_fn = jax.jit(xla.mlp_xla)
    logging.info(f"  xla: p50 {bench.time_fn(xla_fn, *args)['p50_ms'] * 1e3:.1f} us "
                 f"kernels {bench.kernel_time_ms(xla_fn, *args)} ms")
    if mosaic is not None:
      fn = jax.jit(mosaic.mlp)
      logging.info(f"  mosaic: p50 {bench.time_fn(fn, *args)['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, *args)} ms "
                   f"rel_err {bench.rel_err(fn(*args), ref):.2e}")


if __name__ == "__main__":
  from absl import app

  app.run(main)
