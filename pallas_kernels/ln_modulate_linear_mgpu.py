"""LayerNorm (no affine) + adaLN modulation fused into the following projection, Mosaic GPU.

out = (LN(x) * (1 + scale) + shift) @ w + b, one `tile_m x tile_n` output tile per CTA
(grid: output columns x row tiles x batch, so that even 256 tokens fill the machine).

Each CTA TMA-loads its `tile_m x D` rows into shared memory (as D/64 chunks of `tile_m x 64`),
starts streaming its `D x tile_n` weight slab, computes the row statistics in f32 (two passes:
mean, then centred variance), overwrites the tile in place with the modulated bf16 activations,
and runs the K loop on wgmma against the resident tile. Bias is added in the f32 epilogue.
Every CTA of a row tile recomputes that tile's statistics: a `tile_m x D` re-read from L2,
cheap next to the matmul and cheaper than another launch.

The backward pass is the VJP of the XLA reference.
"""

from __future__ import annotations

import dataclasses
import functools

from absl import logging
import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels import xla
from pallas_kernels.reference import ln_modulate_linear_reference
from pallas_kernels import mgpu_common as mc

_SMEM_BYTES = 227 * 1024


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  tile_m: int = 64
  tile_n: int = 128
  weight_slots: int = 3

  def __post_init__(self):
    if self.tile_m != 64:
      raise ValueError(f"{self.tile_m=}: one warpgroup per CTA, so tile_m must be 64")
    if self.tile_n % 64 or not 64 <= self.tile_n <= 256:
      raise ValueError(f"{self.tile_n=} must be a multiple of 64 in [64, 256]")
    if self.weight_slots < 2:
      raise ValueError(f"{self.weight_slots=} must be at least 2")

  def smem_bytes(self, d: int) -> int:
    return 2 * (self.tile_m * d + self.weight_slots * mc.CHUNK * self.tile_n
                + self.tile_m * self.tile_n + 2 * d + self.tile_n)


DEFAULT_CONFIG = TuningConfig()


def fit_config(d: int, f: int, config: TuningConfig) -> TuningConfig:
  """`config` with tile_n dividing F, shrunk (slots, then tile_n) until shared memory fits."""
  tile_n = config.tile_n
  while f % tile_n:
    tile_n -= 64
  config = dataclasses.replace(config, tile_n=tile_n)
  while config.smem_bytes(d) > _SMEM_BYTES:
    if config.weight_slots > 2:
      config = dataclasses.replace(config, weight_slots=config.weight_slots - 1)
    elif config.tile_n > 64 and f % (config.tile_n - 64) == 0:
      config = dataclasses.replace(config, tile_n=config.tile_n - 64)
    else:
      raise ValueError(f"no config fits shared memory for D={d}, F={f} (from {config})")
  return config


def _forward(x, shift, scale, w, b, *, eps: float, config: TuningConfig):
  batch, length, d = x.shape
  f = w.shape[1]
  dtype = x.dtype
  if d % mc.CHUNK or f % 64:
    raise ValueError(f"D={d} and F={f} must be multiples of 64")
  config = fit_config(d, f, config)
  tile_m, tile_n = config.tile_m, config.tile_n
  l_pad = mc.round_up(length, tile_m)
  x = mc.pad_rows(x, l_pad)
  w = w.astype(dtype)
  k_chunks = d // mc.CHUNK
  has_bias = b is not None
  if not has_bias:
    b = jnp.zeros((f,), dtype)
  # Vectors reach registers through SMEM (TMA), as rows of 64 (shift/scale) or tile_n (bias).
  shift = shift.reshape(batch, k_chunks, mc.CHUNK)
  scale = scale.reshape(batch, k_chunks, mc.CHUNK)
  b = b.reshape(f // tile_n, tile_n)

  def ln_modulate_linear_mgpu(x_ref, shift_ref, scale_ref, w_ref, b_ref, out_ref, x_smem, w_smem,
                              out_smem, shift_smem, scale_smem, b_smem, x_bars, w_bars, v_bars):
    n_idx, m_idx, b_idx = (lax.axis_index(a) for a in ("n", "m", "batch"))
    rows = pl.ds(m_idx * tile_m, tile_m)
    cols = pl.ds(n_idx * tile_n, tile_n)
    plgpu.copy_gmem_to_smem(shift_ref.at[b_idx], shift_smem, v_bars.at[0])
    plgpu.copy_gmem_to_smem(scale_ref.at[b_idx], scale_smem, v_bars.at[1])
    plgpu.copy_gmem_to_smem(b_ref.at[n_idx], b_smem, v_bars.at[2])
    for kc in range(k_chunks):
      plgpu.copy_gmem_to_smem(x_ref.at[b_idx, rows, pl.ds(kc * mc.CHUNK, mc.CHUNK)],
                              x_smem.at[kc], x_bars.at[kc])
    stream = mc.WeightStream(lambda i: w_ref.at[pl.ds(i * mc.CHUNK, mc.CHUNK), cols],
                             w_smem, w_bars, k_chunks)
    stream.prologue()

    load = functools.partial(plgpu.load, layout=plgpu.Layout.WGMMA)
    total = None
    for kc in range(k_chunks):
      plgpu.barrier_wait(x_bars.at[kc])
      part = load(x_smem.at[kc]).astype(jnp.float32).sum(axis=1)
      total = part if total is None else total + part
    mean = total / d
    sq = None
    for kc in range(k_chunks):
      xc = load(x_smem.at[kc]).astype(jnp.float32) - mc.bcast_rows(mean, (tile_m, mc.CHUNK))
      part = (xc * xc).sum(axis=1)
      sq = part if sq is None else sq + part
    rstd = lax.rsqrt(sq / d + eps)
    plgpu.barrier_wait(v_bars.at[0])
    plgpu.barrier_wait(v_bars.at[1])
    for kc in range(k_chunks):
      shape = (tile_m, mc.CHUNK)
      xc = load(x_smem.at[kc]).astype(jnp.float32)
      y = (xc - mc.bcast_rows(mean, shape)) * mc.bcast_rows(rstd, shape)
      y = y * (1.0 + mc.bcast_cols(mc.load_row_vector(scale_smem.at[kc]), shape))
      y = y + mc.bcast_cols(mc.load_row_vector(shift_smem.at[kc]), shape)
      x_smem[kc] = y.astype(dtype)
    plgpu.commit_smem()

    def mm(acc_ref):
      mc.matmul_resident_a(acc_ref, x_smem, stream)
      return acc_ref[...]

    acc = pl.run_scoped(mm, plgpu.ACC((tile_m, tile_n), jnp.float32))
    plgpu.barrier_wait(v_bars.at[2])
    if has_bias:
      acc = acc + mc.bcast_cols(mc.load_row_vector(b_smem), acc.shape)
    mc.store_tile(out_smem, out_ref.at[b_idx, rows, cols], acc)

  out = plgpu.kernel(
      ln_modulate_linear_mgpu,  # the kernel's name in profiles
      out_type=jax.ShapeDtypeStruct((batch, l_pad, f), dtype),
      scratch_types=[
          plgpu.SMEM((k_chunks, tile_m, mc.CHUNK), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((config.weight_slots, mc.CHUNK, tile_n), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((tile_m, tile_n), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((k_chunks, mc.CHUNK), shift.dtype),
          plgpu.SMEM((k_chunks, mc.CHUNK), scale.dtype),
          plgpu.SMEM((tile_n,), b.dtype),
          plgpu.Barrier(num_barriers=k_chunks),
          plgpu.Barrier(num_barriers=config.weight_slots),
          plgpu.Barrier(num_barriers=3),
      ],
      grid=(f // tile_n, l_pad // tile_m, batch),
      grid_names=("n", "m", "batch"),
      compiler_params=plgpu.CompilerParams(approx_math=True),
  )(x, shift, scale, w, b)
  return out[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ln_modulate_linear(x, shift, scale, w, b, eps, config):
  return _forward(x, shift, scale, w, b, eps=eps, config=config)


def _fwd(x, shift, scale, w, b, eps, config):
  return _ln_modulate_linear(x, shift, scale, w, b, eps, config), (x, shift, scale, w, b)


def _bwd(eps, config, res, d_out):
  del config
  _, vjp = jax.vjp(functools.partial(xla.ln_modulate_linear_xla, eps=eps), *res)
  return vjp(d_out)


_ln_modulate_linear.defvjp(_fwd, _bwd)


def ln_modulate_linear(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F=None, *, eps: float = 1e-6,
                       config: TuningConfig = DEFAULT_CONFIG):
  """`api.ln_modulate_linear` on Mosaic GPU (Hopper); differentiable (backward through XLA)."""
  return _ln_modulate_linear(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F, eps, config)


def main(_) -> None:
  from pallas_kernels import bench

  for length, d, f in [(256, 384, 1152), (256, 768, 2304), (256, 768, 3072), (1024, 768, 2304),
                       (1560, 1536, 4608), (1560, 1536, 6144)]:
    keys = jax.random.split(jax.random.key(d + f), 5)
    x = jax.random.normal(keys[0], (1, length, d), jnp.bfloat16) * 3 + 1
    shift, scale = (0.5 * jax.random.normal(k, (1, d), jnp.bfloat16) for k in keys[1:3])
    w = jax.random.normal(keys[3], (d, f), jnp.bfloat16) / d ** 0.5
    b = jax.random.normal(keys[4], (f,), jnp.bfloat16)
    ref = ln_modulate_linear_reference(x, shift, scale, w, b)
    for tile_n in (64, 128, 256):
      config = fit_config(d, f, TuningConfig(tile_n=tile_n))
      fn = jax.jit(functools.partial(ln_modulate_linear, config=config))
      out = fn(x, shift, scale, w, b)
      t = bench.time_fn(fn, x, shift, scale, w, b)
      logging.info(f"L={length} D={d} F={f} {config}: p50 {t['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, x, shift, scale, w, b)} ms "
                   f"rel_err {bench.rel_err(out, ref):.2e}")
    xla_fn = jax.jit(xla.ln_modulate_linear_xla)
    logging.info(f"  xla: p50 {bench.time_fn(xla_fn, x, shift, scale, w, b)['p50_ms'] * 1e3:.1f} us "
                 f"kernels {bench.kernel_time_ms(xla_fn, x, shift, scale, w, b)} ms")


if __name__ == "__main__":
  from absl import app

  app.run(main)
