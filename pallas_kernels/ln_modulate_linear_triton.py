"""LayerNorm (no affine) + adaLN modulation fused into the following projection, Pallas Triton.

out = (LN(x) * (1 + scale) + shift) @ w + b: the portable path of `api.ln_modulate_linear`, with
the signature of `ln_modulate_linear_mgpu.ln_modulate_linear`.

One program per (`tile_n` output columns, `tile_m` rows, batch element). It computes its rows'
statistics in f32 in two passes over D in `block_k` chunks (mean, then the centred variance, as
the XLA path does: no E[x^2] - E[x]^2 cancellation for inputs with a large mean), then runs the K
loop: each `tile_m x block_k` chunk of x is normalised, modulated and rounded to the input dtype
in registers (the XLA path rounds the modulated activations the same way) and multiplied by the
`block_k x tile_n` weight chunk on the tensor cores, accumulating in f32. Bias is added in the
epilogue. The modulated activations never reach memory; x is read three times per program, from
L2 after the first (a `tile_m x D` tile, small next to the `D x tile_n` weight slab).

Rows and columns past the ends are masked loads/stores (no padding copies); D must be a multiple
of `block_k`, else `fit_config` shrinks `block_k`.

The backward pass is the VJP of the XLA reference.
"""

from __future__ import annotations

import dataclasses
import functools

from absl import logging
import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.triton as pltr
import jax.numpy as jnp
from jax import lax

from pallas_kernels import device
from pallas_kernels import xla
from pallas_kernels.reference import ln_modulate_linear_reference


def _is_pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  tile_m: int = 64
  tile_n: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 3

  def __post_init__(self):
    for name in ("tile_m", "tile_n", "block_k"):
      size = getattr(self, name)
      if not _is_pow2(size) or not 16 <= size <= 256:
        raise ValueError(f"{name}={size} must be a power of two in [16, 256] (tl.dot tiles)")
    if self.num_warps not in (1, 2, 4, 8, 16):
      raise ValueError(f"{self.num_warps=} must be a power of two <= 16")
    if self.num_stages < 1:
      raise ValueError(f"{self.num_stages=} must be at least 1")


DEFAULT_CONFIG = TuningConfig()


def fit_config(d: int, config: TuningConfig) -> TuningConfig:
  """`config` with `block_k` halved until it divides D; raises if D has no such divisor."""
  block_k = config.block_k
  while d % block_k and block_k > 16:
    block_k //= 2
  if d % block_k:
    raise ValueError(f"D={d} is not a multiple of 16")
  return dataclasses.replace(config, block_k=block_k)


def _kernel(x_ref, shift_ref, scale_ref, w_ref, *rest, eps, tile_m, tile_n, block_k):
  """x_ref (L, D), shift/scale (D,), w (D, F), [b (F,)], out (L, F): one batch element."""
  *b_ref, o_ref = rest
  length, d = x_ref.shape
  f = w_ref.shape[1]
  n_idx, m_idx = pl.program_id(0), pl.program_id(1)
  row_start, col_start = m_idx * tile_m, n_idx * tile_n
  row_ok = (row_start + jnp.arange(tile_m, dtype=jnp.int32)) < length
  col_ok = (col_start + jnp.arange(tile_n, dtype=jnp.int32)) < f
  rows = pl.ds(row_start, tile_m)
  k_steps = d // block_k

  def x_chunk(kc):
    x = pltr.load(x_ref.at[rows, pl.ds(kc * block_k, block_k)], mask=row_ok[:, None], other=0.0)
    return x.astype(jnp.float32)

  zeros = jnp.zeros((tile_m,), jnp.float32)
  mean = lax.fori_loop(0, k_steps, lambda kc, s: s + x_chunk(kc).sum(axis=1), zeros) / d

  def sq_body(kc, s):
    xc = x_chunk(kc) - mean[:, None]
    return s + (xc * xc).sum(axis=1)

  rstd = lax.rsqrt(lax.fori_loop(0, k_steps, sq_body, zeros) / d + eps)

  def mm_body(kc, acc):
    k_cols = pl.ds(kc * block_k, block_k)
    scale = pltr.load(scale_ref.at[k_cols]).astype(jnp.float32)
    shift = pltr.load(shift_ref.at[k_cols]).astype(jnp.float32)
    y = (x_chunk(kc) - mean[:, None]) * rstd[:, None]
    y = (y * (1.0 + scale[None, :]) + shift[None, :]).astype(x_ref.dtype)
    w = pltr.load(w_ref.at[k_cols, pl.ds(col_start, tile_n)], mask=col_ok[None, :], other=0.0)
    return acc + pltr.dot(y, w.astype(y.dtype))

  acc = lax.fori_loop(0, k_steps, mm_body, jnp.zeros((tile_m, tile_n), jnp.float32))
  if b_ref:
    acc += pltr.load(b_ref[0].at[pl.ds(col_start, tile_n)], mask=col_ok,
                     other=0.0).astype(jnp.float32)[None, :]
  pltr.store(o_ref.at[rows, pl.ds(col_start, tile_n)], acc.astype(o_ref.dtype),
             mask=row_ok[:, None] & col_ok[None, :])


def _forward(x, shift, scale, w, b, *, eps: float, config: TuningConfig, interpret: bool = False):
  batch, length, d = x.shape
  f = w.shape[1]
  if w.shape[0] != d or shift.shape != (batch, d) or scale.shape != (batch, d):
    raise ValueError(f"shapes x {x.shape}, shift {shift.shape}, scale {scale.shape}, w {w.shape}")
  config = fit_config(d, config)
  tile_m, tile_n = config.tile_m, config.tile_n
  kernel = functools.partial(_kernel, eps=eps, tile_m=tile_m, tile_n=tile_n,
                             block_k=config.block_k)
  whole = lambda *shape: pl.BlockSpec(shape, lambda n, m, bi: (0,) * len(shape))  # noqa: E731
  per_batch = lambda *shape: pl.BlockSpec(  # noqa: E731
      (None, *shape), lambda n, m, bi: (bi,) + (0,) * len(shape))
  in_specs = [per_batch(length, d), per_batch(d), per_batch(d), whole(d, f)]
  args = [x, shift, scale, w]
  if b is not None:
    in_specs.append(whole(f))
    args.append(b)
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(f, tile_n), pl.cdiv(length, tile_m), batch),
      in_specs=in_specs,
      out_specs=per_batch(length, f),
      out_shape=jax.ShapeDtypeStruct((batch, length, f), x.dtype),
      compiler_params=pltr.CompilerParams(num_warps=config.num_warps,
                                          num_stages=config.num_stages),
      interpret=interpret,
      name="ln_modulate_linear_triton",
  )(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _ln_modulate_linear(x, shift, scale, w, b, eps, config, interpret):
  return _forward(x, shift, scale, w, b, eps=eps, config=config, interpret=interpret)


def _fwd(x, shift, scale, w, b, eps, config, interpret):
  out = _ln_modulate_linear(x, shift, scale, w, b, eps, config, interpret)
  return out, (x, shift, scale, w, b)


def _bwd(eps, config, interpret, res, d_out):
  del config, interpret
  _, vjp = jax.vjp(functools.partial(xla.ln_modulate_linear_xla, eps=eps), *res)
  return vjp(d_out)


_ln_modulate_linear.defvjp(_fwd, _bwd)


def supports(d: int) -> bool:
  return d % 16 == 0


def ln_modulate_linear(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F=None, *, eps: float = 1e-6,
                       config: TuningConfig = DEFAULT_CONFIG, interpret: bool = False):
  """`api.ln_modulate_linear` on Pallas Triton; differentiable (backward through XLA).

  `interpret=True` runs the kernel in Pallas interpret mode (CPU tests)."""
  if not supports(x_BxLxD.shape[-1]):
    device.warn_fallback_once("ln_modulate_linear", f"triton (D={x_BxLxD.shape[-1]})")
    return xla.ln_modulate_linear_xla(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F, eps=eps)
  return _ln_modulate_linear(x_BxLxD, shift_BxD, scale_BxD, w_DxF.astype(x_BxLxD.dtype), b_F,
                             eps, config, interpret)


def main(_) -> None:
  from pallas_kernels import bench

  mosaic = None
  if device.is_hopper():
    from pallas_kernels import ln_modulate_linear_mgpu as mosaic
  configs = (TuningConfig(64, 128, 64, 4, 3), TuningConfig(64, 64, 64, 4, 3),
             TuningConfig(32, 128, 64, 4, 3), TuningConfig(128, 128, 64, 8, 3))
  for length, d, f in [(256, 384, 1152), (256, 768, 2304), (256, 768, 3072), (1024, 768, 2304),
                       (1560, 1536, 4608), (1560, 1536, 6144)]:
    keys = jax.random.split(jax.random.key(d + f), 5)
    x = jax.random.normal(keys[0], (1, length, d), jnp.bfloat16) * 3 + 1
    shift, scale = (0.5 * jax.random.normal(k, (1, d), jnp.bfloat16) for k in keys[1:3])
    w = jax.random.normal(keys[3], (d, f), jnp.bfloat16) / d ** 0.5
    b = jax.random.normal(keys[4], (f,), jnp.bfloat16)
    args = (x, shift, scale, w, b)
    ref = ln_modulate_linear_reference(*args)
    for config in configs:
      fn = jax.jit(functools.partial(ln_modulate_linear, config=config))
      t = bench.time_fn(fn, *args)
      logging.info(f"L={length} D={d} F={f} {config}: p50 {t['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, *args)} ms "
                   f"rel_err {bench.rel_err(fn(*args), ref):.2e}")
    xla_fn = jax.jit(xla.ln_modulate_linear_xla)
    logging.info(f"  xla: p50 {bench.time_fn(xla_fn, *args)['p50_ms'] * 1e3:.1f} us "
                 f"kernels {bench.kernel_time_ms(xla_fn, *args)} ms")
    if mosaic is not None:
      fn = jax.jit(mosaic.ln_modulate_linear)
      logging.info(f"  mosaic: p50 {bench.time_fn(fn, *args)['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, *args)} ms "
                   f"rel_err {bench.rel_err(fn(*args), ref):.2e}")


if __name__ == "__main__":
  from absl import app

  app.run(main)
