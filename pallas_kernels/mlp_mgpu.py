"""Fused MLP gelu_tanh(x @ w1 + b1) @ w2 + b2 on Mosaic GPU; the hidden never leaves the SM.

One CTA per (`tile_n` output columns, 64-row tile, batch). The CTA's `64 x D` input rows stay in
shared memory; a `fori_loop` over the hidden width F in chunks of 64 computes
h = gelu(x @ w1[:, chunk] + b1[chunk]) on wgmma (w1 streamed in 64x64 chunks), writes it as bf16
to shared memory, and accumulates h @ w2[chunk, cols] into a `64 x tile_n` f32 accumulator
(w2 streamed in 64 x tile_n chunks).

Trade-off, stated up front: with D > tile_n the first matmul is recomputed by each of the
D / tile_n column CTAs of a row tile, and at 256 tokens the grid is only 4 row tiles x D/tile_n
column tiles (12 CTAs for width 768 at tile_n 256), far fewer than the 132 SMs. Splitting F across
CTAs instead needs a cross-CTA reduction (atomics or TMA reduce-add), which Mosaic GPU interpret
mode cannot model, so it is not done here. The input tile must fit in shared memory next to the
weight ring (D <= 1024 at the default config); larger widths raise and `api.mlp` falls back.

The backward pass is the VJP of the XLA reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from absl import logging
import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels import device
from pallas_kernels import xla
from pallas_kernels.reference import mlp_reference
from pallas_kernels import mgpu_common as mc

_SMEM_BYTES = 227 * 1024
_TILE_M = 64
_TILE_F = 64


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  tile_n: int = 256
  w1_slots: int = 3
  w2_slots: int = 2

  def __post_init__(self):
    if self.tile_n % 64 or not 64 <= self.tile_n <= 256:
      raise ValueError(f"{self.tile_n=} must be a multiple of 64 in [64, 256]")
    if self.w1_slots < 2 or self.w2_slots < 2:
      raise ValueError(f"{self.w1_slots=} and {self.w2_slots=} must be at least 2")

  def smem_bytes(self, d: int, f: int) -> int:
    return 2 * (_TILE_M * d + self.w1_slots * 64 * _TILE_F + self.w2_slots * 64 * self.tile_n
                + _TILE_M * _TILE_F + _TILE_M * self.tile_n + f + self.tile_n)


DEFAULT_CONFIG = TuningConfig()


def fit_config(d: int, f: int, config: TuningConfig) -> TuningConfig:
  """`config` with tile_n dividing D, shrunk until shared memory fits; raises if nothing fits."""
  tile_n = config.tile_n
  while d % tile_n:
    tile_n -= 64
  config = dataclasses.replace(config, tile_n=tile_n)
  while config.smem_bytes(d, f) > _SMEM_BYTES:
    if config.tile_n > 64 and d % (config.tile_n - 64) == 0:
      config = dataclasses.replace(config, tile_n=config.tile_n - 64)
    else:
      raise ValueError(f"no MLP config fits shared memory for D={d} (from {config})")
  return config


def _gelu_tanh(h):
  c = math.sqrt(2.0 / math.pi)
  return 0.5 * h * (1.0 + jnp.tanh(c * (h + 0.044715 * h * h * h)))


def _forward(x, w1, b1, w2, b2, *, config: TuningConfig):
  batch, length, d = x.shape
  f = w1.shape[1]
  dtype = x.dtype
  if d % 64 or f % _TILE_F:
    raise ValueError(f"D={d} and F={f} must be multiples of 64")
  config = fit_config(d, f, config)
  tile_n = config.tile_n
  l_pad = mc.round_up(length, _TILE_M)
  x = mc.pad_rows(x, l_pad)
  w1, w2 = w1.astype(dtype), w2.astype(dtype)
  k_chunks, f_chunks = d // 64, f // _TILE_F
  # Biases reach registers through SMEM (TMA), as rows of 64 (b1) or tile_n (b2).
  b1 = b1.reshape(f_chunks, _TILE_F)
  b2 = b2.reshape(d // tile_n, tile_n)

  def mlp_mgpu(x_ref, w1_ref, b1_ref, w2_ref, b2_ref, out_ref, x_smem, w1_smem, w2_smem, h_smem,
               out_smem, b1_smem, b2_smem, x_bars, w1_bars, w2_bars, v_bars):
    n_idx, m_idx, b_idx = (lax.axis_index(a) for a in ("n", "m", "batch"))
    rows = pl.ds(m_idx * _TILE_M, _TILE_M)
    cols = pl.ds(n_idx * tile_n, tile_n)
    plgpu.copy_gmem_to_smem(b1_ref, b1_smem, v_bars.at[0])
    plgpu.copy_gmem_to_smem(b2_ref.at[n_idx], b2_smem, v_bars.at[1])
    for kc in range(k_chunks):
      plgpu.copy_gmem_to_smem(x_ref.at[b_idx, rows, pl.ds(kc * 64, 64)], x_smem.at[kc],
                              x_bars.at[kc])
    # w1 chunk i = (hidden chunk fi, K chunk kc) with i = fi * k_chunks + kc.
    s1 = mc.WeightStream(
        lambda i: w1_ref.at[pl.ds(lax.rem(i, k_chunks) * 64, 64),
                            pl.ds(lax.div(i, k_chunks) * _TILE_F, _TILE_F)],
        w1_smem, w1_bars, f_chunks * k_chunks)
    s2 = mc.WeightStream(lambda j: w2_ref.at[pl.ds(j * _TILE_F, _TILE_F), cols],
                         w2_smem, w2_bars, f_chunks)
    s1.prologue()
    s2.prologue()
    for kc in range(k_chunks):
      plgpu.barrier_wait(x_bars.at[kc])
    plgpu.barrier_wait(v_bars.at[0])
    plgpu.barrier_wait(v_bars.at[1])

    def hidden_chunk(fi, acc2_ref):
      def mm1(acc1_ref):
        mc.matmul_resident_a(acc1_ref, x_smem, s1, fi * k_chunks)
        return acc1_ref[...]

      h = pl.run_scoped(mm1, plgpu.ACC((_TILE_M, _TILE_F), jnp.float32))
      h = h + mc.bcast_cols(mc.load_row_vector(b1_smem.at[fi]), h.shape)
      h_smem[...] = _gelu_tanh(h).astype(dtype)
      plgpu.commit_smem()
      plgpu.wgmma(acc2_ref, h_smem, s2.wait(fi))
      plgpu.wgmma_wait(0)
      s2.fetch(fi + s2.slots)
      return acc2_ref

    def mm2(acc2_ref):
      lax.fori_loop(0, f_chunks, lambda fi, _: (hidden_chunk(fi, acc2_ref), None)[1], None)
      return acc2_ref[...]

    out = pl.run_scoped(mm2, plgpu.ACC((_TILE_M, tile_n), jnp.float32))
    out = out + mc.bcast_cols(mc.load_row_vector(b2_smem), out.shape)
    mc.store_tile(out_smem, out_ref.at[b_idx, rows, cols], out)

  out = plgpu.kernel(
      mlp_mgpu,  # the kernel's name in profiles
      out_type=jax.ShapeDtypeStruct((batch, l_pad, d), dtype),
      scratch_types=[
          plgpu.SMEM((k_chunks, _TILE_M, 64), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((config.w1_slots, 64, _TILE_F), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((config.w2_slots, _TILE_F, tile_n), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((_TILE_M, _TILE_F), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((_TILE_M, tile_n), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((f_chunks, _TILE_F), b1.dtype),
          plgpu.SMEM((tile_n,), b2.dtype),
          plgpu.Barrier(num_barriers=k_chunks),
          plgpu.Barrier(num_barriers=config.w1_slots),
          plgpu.Barrier(num_barriers=config.w2_slots),
          plgpu.Barrier(num_barriers=2),
      ],
      grid=(d // tile_n, l_pad // _TILE_M, batch),
      grid_names=("n", "m", "batch"),
      compiler_params=plgpu.CompilerParams(approx_math=True),
  )(x, w1, b1, w2, b2)
  return out[:, :length]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _mlp(x, w1, b1, w2, b2, config):
  return _forward(x, w1, b1, w2, b2, config=config)


def _fwd(x, w1, b1, w2, b2, config):
  return _mlp(x, w1, b1, w2, b2, config), (x, w1, b1, w2, b2)


def _bwd(config, res, d_out):
  del config
  _, vjp = jax.vjp(xla.mlp_xla, *res)
  return vjp(d_out)


_mlp.defvjp(_fwd, _bwd)


def supports(d: int, f: int, config: TuningConfig = DEFAULT_CONFIG) -> bool:
  try:
    fit_config(d, f, config)
  except ValueError:
    return False
  return d % 64 == 0


def mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, *, config: TuningConfig = DEFAULT_CONFIG):
  """`api.mlp` on Mosaic GPU; XLA for widths whose input tile does not fit shared memory."""
  if not supports(x_BxLxD.shape[-1], w1_DxF.shape[-1], config):
    device.warn_fallback_once("mlp", f"mosaic (D={x_BxLxD.shape[-1]} does not fit shared memory)")
    return xla.mlp_xla(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D)
  return _mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, config)


def main(_) -> None:
  from pallas_kernels import bench

  for length, d in [(256, 384), (256, 768), (1024, 768), (1560, 768)]:
    f = 4 * d
    keys = jax.random.split(jax.random.key(d), 5)
    x = jax.random.normal(keys[0], (1, length, d), jnp.bfloat16)
    w1 = jax.random.normal(keys[1], (d, f), jnp.bfloat16) / d ** 0.5
    b1 = jax.random.normal(keys[2], (f,), jnp.bfloat16) * 0.1
    w2 = jax.random.normal(keys[3], (f, d), jnp.bfloat16) / f ** 0.5
    b2 = jax.random.normal(keys[4], (d,), jnp.bfloat16) * 0.1
    ref = mlp_reference(x, w1, b1, w2, b2)
    for tile_n in (128, 256):
      config = fit_config(d, f, TuningConfig(tile_n=tile_n))
      fn = jax.jit(functools.partial(mlp, config=config))
      out = fn(x, w1, b1, w2, b2)
      t = bench.time_fn(fn, x, w1, b1, w2, b2)
      logging.info(f"L={length} D={d} {config}: p50 {t['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, x, w1, b1, w2, b2)} ms "
                   f"rel_err {bench.rel_err(out, ref):.2e}")
    xla_fn = jax.jit(xla.mlp_xla)
    logging.info(f"  xla: p50 {bench.time_fn(xla_fn, x, w1, b1, w2, b2)['p50_ms'] * 1e3:.1f} us "
                 f"kernels {bench.kernel_time_ms(xla_fn, x, w1, b1, w2, b2)} ms")


if __name__ == "__main__":
  from absl import app

  app.run(main)
