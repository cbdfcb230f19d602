"""GEMM with the bias and the tanh GELU fused into the epilogue, bf16 out, on Mosaic GPU (Hopper).

    out = act(x @ w + b)      x (..., K), w (K, N), b (N,) or None, act None or tanh GELU

f32 accumulation, the epilogue in f32 on the accumulator registers, one rounding to x's dtype
(bf16) at the store. This is the MLP's first GEMM without XLA's separate f32 -> bf16 convert
fusion (`loop_convert_fusion` in `reports/latency/profile_h200_2026-11-27/`: it re-reads the f32
GEMM output to add the bias, apply GELU and write bf16, 0.52 ms a large step), and the bias-only
variant is the MLP's second GEMM.

Structure: jax's `pallas/ops/gpu/hopper_matmul_mgpu.py` (whose kernel the H200 timed at 0.90-1.10x
XLA/cuBLAS at the denoiser's shapes): a persistent grid of `num_ctas` CTAs (default one per SM)
takes `cta_tile_m x cta_tile_n` output tiles in a planar snake; per tile, a warp-specialised
pipeline (`plgpu.emit_pipeline_warp_specialized`): one memory warpgroup streams `tile_k`-deep
slabs of x and w by TMA into a `max_concurrent_steps`-deep ring, two compute warpgroups each own
a `tile_m x tile_n` half of the CTA tile (split along N or M, `wg_dimension`) and run wgmma on it.
What is added here:
- the epilogue: per `epi_tile_m x epi_tile_n` piece, + bias (fetched by TMA into shared memory
  while the tile's K loop runs), GELU, cast, TMA store through a double-buffered SMEM slot;
- M that is not a multiple of the tile (the large model's 1560 tokens): the last row tile
  reads past the end of x, which TMA fills with zeros, and stores past the end of out, which
  TMA drops; no padding copy, except M rounded up to a multiple of 8 (`tma_rows`). Mosaic GPU
  skips its bounds check for TMA copies for exactly this (`launch_context.async_copy`), and its
  interpret mode models both (zero fill, clipped stores), so the ragged tiles are tested on the
  CPU;
- leading batch dimensions are flattened into M (the GEMM does not care where frames end).
Not carried over: thread-block clusters (collective TMA; interpret mode cannot model them).
K and N must be multiples of 64; `fit_config` shrinks tile_n (and switches the warpgroup split)
until the CTA tile divides N.

The backward pass is the VJP of the XLA op (`xla.linear_xla`); training does not use this path.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import Literal

from absl import logging
import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels import device
from pallas_kernels import xla
from pallas_kernels.reference import linear_reference

_SMEM_BYTES = 227 * 1024
Activation = Literal["gelu_tanh"] | None
ACTIVATIONS = (None, "gelu_tanh")


class Dim(enum.IntEnum):
  M = 0
  N = 1


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  """Per-warpgroup tile `tile_m x tile_n` (the CTA tile is two of them along `wg_dimension`),
  `tile_k` = 64 (one 128-byte swizzle row of bf16), ring depth `max_concurrent_steps`, epilogue
  pieces `epi_tile_m x epi_tile_n`, the tile order (`grid_minor_dim`, `grid_tile_width`: the
  planar snake of hopper_matmul_mgpu), the persistent grid size (`num_ctas`, None = one CTA per
  SM of the device) and `wgmma_in_flight` (1: each ring slot is released one K step late, so
  that one wgmma runs while the next is issued; 0: hopper_matmul_mgpu's wait after each)."""
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 64
  max_concurrent_steps: int = 4
  epi_tile_m: int = 64
  epi_tile_n: int = 64
  wg_dimension: Dim = Dim.N
  grid_minor_dim: Dim = Dim.N
  grid_tile_width: int = 1
  num_ctas: int | None = None
  wgmma_in_flight: int = 0

  def __post_init__(self):
    if self.tile_m not in (64, 128):
      raise ValueError(f"{self.tile_m=} must be 64 or 128 (one or two wgmma M-tiles of 64)")
    if self.tile_n % 64 or not 64 <= self.tile_n <= 256:
      raise ValueError(f"{self.tile_n=} must be a multiple of 64 in [64, 256]")
    if self.tile_m * self.tile_n > 128 * 128:  # the f32 accumulator: 128 registers a thread
      raise ValueError(f"{self.tile_m=} x {self.tile_n=} exceeds 128 x 128 (register budget)")
    if self.tile_k != 64:
      raise ValueError(f"{self.tile_k=} must be 64 (the 128-byte swizzle of bf16)")
    if self.wgmma_in_flight not in (0, 1):
      raise ValueError(f"{self.wgmma_in_flight=} must be 0 or 1")
    if self.max_concurrent_steps < 2 or self.max_concurrent_steps <= self.wgmma_in_flight:
      raise ValueError(f"{self.max_concurrent_steps=} must be at least 2 and exceed {self.wgmma_in_flight=}")
    if self.tile_m % self.epi_tile_m or self.epi_tile_m % 64:
      raise ValueError(f"{self.epi_tile_m=} must be a multiple of 64 dividing {self.tile_m=}")
    if self.tile_n % self.epi_tile_n or self.epi_tile_n % 64:
      raise ValueError(f"{self.epi_tile_n=} must be a multiple of 64 dividing {self.tile_n=}")
    if self.grid_tile_width < 1:
      raise ValueError(f"{self.grid_tile_width=} must be positive")
    if self.num_ctas is not None and self.num_ctas < 1:
      raise ValueError(f"{self.num_ctas=} must be positive")

  @property
  def cta_tile(self) -> tuple[int, int]:
    return (self.tile_m * (1 + (self.wg_dimension == Dim.M)),
            self.tile_n * (1 + (self.wg_dimension == Dim.N)))

  def smem_bytes(self, in_bytes: int = 2, out_bytes: int = 2) -> int:
    cta_m, cta_n = self.cta_tile
    ring = self.max_concurrent_steps * self.tile_k * (cta_m + cta_n) * in_bytes
    slots = min(2, (self.tile_m * self.tile_n) // (self.epi_tile_m * self.epi_tile_n))
    epilogue = 2 * slots * self.epi_tile_m * self.epi_tile_n * out_bytes
    return ring + epilogue + 2 * self.tile_n * 4 + 1024  # + bias, barriers


DEFAULT_CONFIG = TuningConfig()

# What `config=None` picks from, largest CTA tile first (per-warpgroup tile_m, tile_n; split
# along N): the first whose tile count fills the grid at least once, else the one with the most
# tiles. A guess, not a measurement: `main()` and `gemm_bench.py` time these against XLA.
AUTO_TILES = ((128, 128), (128, 64), (64, 128), (64, 64))


def auto_config(m: int, n: int, k: int, num_ctas: int | None = None) -> TuningConfig:
  """The tile of AUTO_TILES for an M x N x K problem on `num_ctas` CTAs (default the SMs)."""
  ctas = num_ctas or num_sms()
  best = None
  for tile_m, tile_n in AUTO_TILES:
    try:
      cfg = fit_config(n, k, TuningConfig(tile_m=tile_m, tile_n=tile_n, num_ctas=num_ctas))
    except ValueError:
      continue
    tiles = pl.cdiv(m, cfg.cta_tile[0]) * (n // cfg.cta_tile[1])
    if tiles >= ctas:
      return cfg
    if best is None or tiles > best[0]:
      best = (tiles, cfg)
  if best is None:
    raise ValueError(f"no tile of {AUTO_TILES} fits N={n}, K={k}")
  return best[1]


def fit_config(n: int, k: int, config: TuningConfig = DEFAULT_CONFIG) -> TuningConfig:
  """`config` with a CTA tile that divides N (tile_n shrunk by 64s, then the warpgroups split
  along M instead of N) and no wgmma in flight for a single K step; raises if K or N is not a
  multiple of 64 or shared memory overflows."""
  if k % config.tile_k or n % 64:
    raise ValueError(f"K={k} and N={n} must be multiples of 64")
  fitted = None
  for wg_dim in dict.fromkeys((config.wg_dimension, Dim.M)):
    for tile_n in range(config.tile_n, 63, -64):
      epi_n = math.gcd(config.epi_tile_n, tile_n)
      cand = dataclasses.replace(config, tile_n=tile_n, wg_dimension=wg_dim, epi_tile_n=epi_n)
      if n % cand.cta_tile[1] == 0:
        fitted = cand
        break
    if fitted is not None:
      break
  if fitted is None:
    raise ValueError(f"no CTA tile of {config} divides N={n}")
  if k // config.tile_k <= fitted.wgmma_in_flight:
    fitted = dataclasses.replace(fitted, wgmma_in_flight=0)
  if fitted.smem_bytes() > _SMEM_BYTES:
    raise ValueError(f"{fitted} needs {fitted.smem_bytes()} bytes of shared memory")
  return fitted


def num_sms() -> int:
  """SMs of the device the kernel is lowered for (an abstract mesh's, as in hopper_matmul_mgpu),
  or 4 off-GPU (interpret mode: a few CTAs, each taking several tiles)."""
  if abstract_device := jax.sharding.get_abstract_mesh().abstract_device:
    return abstract_device.num_cores
  dev = jax.devices()[0]
  if dev.platform in ("gpu", "cuda"):
    return dev.core_count
  return 4


def gelu_tanh(h):
  c = math.sqrt(2.0 / math.pi)
  return 0.5 * h * (1.0 + jnp.tanh(c * (h + 0.044715 * h * h * h)))


def _kernel(x_gmem, w_gmem, b_gmem, out_gmem, *, config: TuningConfig, activation: Activation):
  m, k = x_gmem.shape
  n = w_gmem.shape[1]
  dtype, out_dtype = x_gmem.dtype, out_gmem.dtype
  tile_m, tile_n, tile_k = config.tile_m, config.tile_n, config.tile_k
  epi_m, epi_n = config.epi_tile_m, config.epi_tile_n
  cta_m, cta_n = config.cta_tile
  m_iters, n_iters, k_iters = pl.cdiv(m, cta_m), n // cta_n, k // tile_k
  swizzle = plgpu.find_swizzle(tile_k * jnp.dtype(dtype).itemsize * 8)
  transforms = (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
                plgpu.SwizzleTransform(swizzle))
  out_swizzle = plgpu.find_swizzle(epi_n * jnp.dtype(out_dtype).itemsize * 8)
  out_transforms = (plgpu.TilingTransform((8, out_swizzle // jnp.dtype(out_dtype).itemsize)),
                    plgpu.SwizzleTransform(out_swizzle))
  num_out_slots = min(2, (tile_m * tile_n) // (epi_m * epi_n))
  split_n = config.wg_dimension == Dim.N

  def pipeline(body, compute_context):
    return plgpu.emit_pipeline_warp_specialized(
        body,
        grid=(k_iters,),
        memory_registers=40,
        in_specs=[
            plgpu.BlockSpec((cta_m, tile_k), lambda kk: (0, kk), transforms=transforms,
                            memory_space=plgpu.SMEM, delay_release=config.wgmma_in_flight),
            plgpu.BlockSpec((tile_k, cta_n), lambda kk: (kk, 0), transforms=transforms,
                            memory_space=plgpu.SMEM, delay_release=config.wgmma_in_flight),
        ],
        wg_axis="wg",
        num_compute_wgs=2,
        max_concurrent_steps=config.max_concurrent_steps,
        compute_context=compute_context,
    )

  ignore = lambda *_, **__: None  # noqa: E731  (the bodies do not change the allocations)

  @functools.partial(
      pl.run_scoped,
      pipeline_allocs=pipeline(ignore, ignore).get_allocations(x_gmem, w_gmem),
      out_smem=plgpu.SMEM((2, num_out_slots, epi_m, epi_n), out_dtype, transforms=out_transforms),
      bias_smem=None if b_gmem is None else plgpu.SMEM((2, tile_n), b_gmem.dtype),
      bias_barrier=None if b_gmem is None else plgpu.Barrier(num_barriers=2),
      collective_axes="wg",
  )
  def _scope(pipeline_allocs, out_smem, bias_smem, bias_barrier):
    wg = lax.axis_index("wg")

    @plgpu.nd_loop((m_iters * n_iters,), collective_axes="cta")
    def _tile_loop(loop_info: plgpu.NDLoopInfo):
      m_idx, n_idx = plgpu.planar_snake(loop_info.index[0], (m_iters, n_iters),
                                        config.grid_minor_dim, config.grid_tile_width)
      cta_rows = pl.ds(m_idx * cta_m, cta_m)  # may run past M: TMA zero-fills / drops
      cta_cols = pl.ds(n_idx * cta_n, cta_n)
      wg_rows = slice(None) if split_n else pl.ds(wg * tile_m, tile_m)
      wg_cols = pl.ds(wg * tile_n, tile_n) if split_n else slice(None)
      wg_col0 = n_idx * cta_n + (wg * tile_n if split_n else 0)

      def compute_context(eval_pipeline):
        if b_gmem is not None:  # lands while the K loop runs
          plgpu.copy_gmem_to_smem(b_gmem.at[pl.ds(wg_col0, tile_n)], bias_smem.at[wg],
                                  bias_barrier.at[wg])

        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tile_m, tile_n), jnp.float32))
        def _acc_scope(acc_ref):
          eval_pipeline(acc_ref)
          acc = acc_ref[...]
          if b_gmem is not None:
            plgpu.barrier_wait(bias_barrier.at[wg])
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous tile's stores
          for mi in range(tile_m // epi_m):
            for ni in range(tile_n // epi_n):
              rows, cols = slice(mi * epi_m, (mi + 1) * epi_m), slice(ni * epi_n, (ni + 1) * epi_n)
              slot = (mi * (tile_n // epi_n) + ni) % num_out_slots
              y = acc[rows, cols]
              if b_gmem is not None:
                bias = bias_smem[wg, pl.ds(ni * epi_n, epi_n)].astype(jnp.float32)
                y = y + lax.broadcast_in_dim(bias, y.shape, [1])
              if activation == "gelu_tanh":
                y = gelu_tanh(y)
              plgpu.wait_smem_to_gmem(num_out_slots - 1, wait_read_only=True)
              out_smem[wg, slot] = y.astype(out_dtype)
              plgpu.commit_smem()
              plgpu.copy_smem_to_gmem(
                  out_smem.at[wg, slot],
                  out_gmem.at[cta_rows, cta_cols].at[wg_rows, wg_cols].at[rows, cols])

      def mma_body(_, x_smem, w_smem, acc_ref):
        plgpu.wgmma(acc_ref, x_smem.at[wg_rows], w_smem.at[:, wg_cols])
        plgpu.wgmma_wait(config.wgmma_in_flight)
        return acc_ref

      pipeline(mma_body, compute_context)(
          x_gmem.at[cta_rows, :], w_gmem.at[:, cta_cols], allocations=pipeline_allocs)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _forward(x, w, b, *, activation: Activation, config: TuningConfig | None):
  *lead, k = x.shape
  n = w.shape[1]
  m = math.prod(lead)
  if w.shape[0] != k:
    raise ValueError(f"x {x.shape} and w {w.shape} do not contract")
  if b is not None and b.shape != (n,):
    raise ValueError(f"bias {b.shape} does not match N={n}")
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
  config = auto_config(m, n, k) if config is None else fit_config(n, k, config)
  x2 = x.reshape(m, k)
  m_rows = tma_rows(m)
  if m_rows != m:  # at most 7 zero rows, sliced off below
    x2 = jnp.pad(x2, ((0, m_rows - m), (0, 0)))
  w = w.astype(x.dtype)
  grid = config.num_ctas or num_sms()
  cta_m, cta_n = config.cta_tile
  grid = min(grid, pl.cdiv(m, cta_m) * (n // cta_n))

  def gemm_mgpu(x_ref, w_ref, *rest):  # its name is the kernel's in profiles
    b_ref, out_ref = (None, *rest) if b is None else rest
    _kernel(x_ref, w_ref, b_ref, out_ref, config=config, activation=activation)

  out = plgpu.kernel(
      gemm_mgpu,
      out_type=jax.ShapeDtypeStruct((m_rows, n), x.dtype),
      grid=(grid,),
      grid_names=("cta",),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup,
                                           approx_math=True),
  )(x2, w, *(() if b is None else (b,)))
  return out[:m].reshape(*lead, n)


def tma_rows(m: int) -> int:
  """The rows the kernel runs for M rows. TMA tiles the row dimension of x and out by 8 in
  global memory, so more than 8 rows must be a multiple of 8 (on an H200 an M of 100 failed to
  lower: "dimension 0 must have size smaller or a multiple of its tiling 8"); interpret mode does
  not model it. The ragged last row tile (rows past M, up to the CTA tile) is still TMA's zero fill
  and dropped stores; only this remainder of 8 is padded."""
  return m if m <= 8 else -(-m // 8) * 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _linear(x, w, b, activation, config):
  return _forward(x, w, b, activation=activation, config=config)


def _linear_fwd(x, w, b, activation, config):
  return _linear(x, w, b, activation, config), (x, w, b)


def _linear_bwd(activation, config, res, d_out):
  del config
  x, w, b = res
  _, vjp = jax.vjp(functools.partial(xla.linear_xla, activation=activation), x, w, b)
  return vjp(d_out)


_linear.defvjp(_linear_fwd, _linear_bwd)


def supports(n: int, k: int, config: TuningConfig | None = None) -> bool:
  try:
    fit_config(n, k, config or DEFAULT_CONFIG)
  except ValueError:
    return False
  return True


def linear(x_BxLxK, w_KxN, b_N=None, *, activation: Activation = None,
           config: TuningConfig | None = None):
  """`api.linear` on Mosaic GPU: act(x @ w + b) in x's dtype, the tile picked by shape
  (`auto_config`) unless `config` is given; XLA where no tile fits."""
  if not supports(w_KxN.shape[1], x_BxLxK.shape[-1], config):
    device.warn_fallback_once("linear", f"mosaic (K={x_BxLxK.shape[-1]}, N={w_KxN.shape[1]})")
    return xla.linear_xla(x_BxLxK, w_KxN, b_N, activation=activation)
  return _linear(x_BxLxK, w_KxN, b_N, activation, config)


# The denoiser's GEMMs per block (M tokens, K -> N, activation): qkv, out-projection, fc1, fc2.
MODEL_SHAPES = {
    "small": ((256, 384, 1152, None), (256, 384, 384, None), (256, 384, 1536, "gelu_tanh"),
              (256, 1536, 384, None)),
    "base": ((256, 768, 2304, None), (256, 768, 768, None), (256, 768, 3072, "gelu_tanh"),
             (256, 3072, 768, None)),
    "large": ((1560, 1536, 4608, None), (1560, 1536, 1536, None), (1560, 1536, 6144, "gelu_tanh"),
              (1560, 6144, 1536, None)),
}


def main(_) -> None:
  """Kernel time (CUPTI) of the shape's `auto_config` pick and one in-flight variant against
  XLA's GEMM + epilogue fusion, at every GEMM shape of the three model sizes
  (`gemm_bench.py` is the fuller sweep with p50/p99 and a results folder)."""
  from pallas_kernels import bench

  for size, shapes in MODEL_SHAPES.items():
    for m, k, n, act in shapes:
      keys = jax.random.split(jax.random.key(m + k + n), 3)
      x = jax.random.normal(keys[0], (m, k), jnp.bfloat16)
      w = jax.random.normal(keys[1], (k, n), jnp.bfloat16) / k ** 0.5
      b = jax.random.normal(keys[2], (n,), jnp.bfloat16)
      ref = linear_reference(x, w, b, activation=act)
      auto = auto_config(m, n, k)
      for config in (auto, dataclasses.replace(auto, wgmma_in_flight=1)):
        fn = jax.jit(functools.partial(linear, activation=act, config=config))
        err = bench.rel_err(fn(x, w, b), ref)
        logging.info(f"L={m} {size} {k}->{n} {act} tile {config.tile_m}x{config.tile_n} "
                     f"in_flight {config.wgmma_in_flight}: kernel {bench.kernel_time_ms(fn, x, w, b)} ms "
                     f"rel_err {err:.2e}")
      fn = jax.jit(functools.partial(xla.linear_xla, activation=act))
      logging.info(f"  xla: kernels {bench.kernel_time_ms(fn, x, w, b)} ms "
                   f"rel_err {bench.rel_err(fn(x, w, b), ref):.2e}")


if __name__ == "__main__":
  from absl import app

  app.run(main)
