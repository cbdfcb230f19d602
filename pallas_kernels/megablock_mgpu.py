"""Mega kernel: one whole adaLN-zero DiT block (the denoiser's block, within-frame attention) in one
Mosaic GPU call.

    x1  = x  + bf16(gate1 * (Attn(bf16(LN(x) * (1 + scale1) + shift1)) @ w_out + b_out))
    h   = bf16(gelu_tanh(bf16(LN(x1) * (1 + scale2) + shift2) @ w1 + b1))
    out = x1 + bf16(gate2 * bf16(h @ w2 + b2))

with LN without affine parameters (eps 1e-6, f32 statistics), QKV = y @ w_qkv + b_qkv (bf16),
softmax scale 1/sqrt(64), no qk-norm. The modulation `mod_Bx6D` (shift1, scale1, gate1, shift2,
scale2, gate2, the order of `DiTBlock`) is computed outside (`modulation`) and is an input.

Design (v1: correctness skeleton, no cross-CTA communication)
-----------------------------------------------------------------
Grid: one CTA per (64-row token tile m, frame b), one warpgroup each. A CTA needs K/V of all the
frame's tokens but Mosaic GPU interpret mode models neither GMEM semaphores nor atomics, so a
grid-wide barrier between phases could not be tested on CPU. Each CTA therefore recomputes
LN1 and the K/V projection for *all* L tokens (choice (ii) of the brief) and then runs the rest
of the block for its own 64 rows, in seven phases:

  1 LN1     all L rows -> y_scr                    (f32 stats, bf16 out)
  2 QKV     y_scr @ w_qkv + b_qkv -> qkv_scr        (all L rows, all 3D columns)
  3 attn    per head: Q (own rows), K, V (all rows) -> softmax -> o_scr (own rows)
  4 out     o_scr @ w_out + b_out, x1 = x + bf16(gate1 * .) -> `out` (used as x1 storage)
  5 LN2     x1 (own rows) -> y2_scr
  6 fc1     gelu_tanh(y2_scr @ w1 + b1) -> h_scr      (own rows, hidden F)
  7 fc2     h_scr @ w2 + b2, out = x1 + bf16(gate2 * bf16(.)) -> `out`

Intermediates go through small per-CTA GMEM scratch buffers (extra outputs of the call, private
to the CTA, so only the CTA's own TMA store -> wait -> TMA load ordering is involved; they stay
in L2). Every matmul phase is one loop over output tiles `64 x tile_n` with both operands
streamed by TMA in 64-deep K chunks through `slots`-deep rings (`mgpu_common.WeightStream`, the
construct the v1 ln_modulate_linear/mlp kernels lowered and ran with on the H100), prefetching
across tile boundaries; wgmma with both operands in SMEM, `wgmma_wait(0)` per chunk. Attention
holds one head's K and V (L x 64 each) in SMEM and does a single-pass softmax (L <= 256) with P
staged through SMEM. Each phase allocates its own SMEM in a `run_scoped` (stack-allocated, so
the phases reuse the same bytes).

Prediction (written before any GPU timing)
-------------------------------------------
At one frame of 256 tokens the grid is only 4 CTAs, each doing the whole K/V projection plus
its rows' share: small (D=384) ~0.42 GFLOP per CTA, base (D=768) ~1.6 GFLOP per CTA. The v1
one-warpgroup wgmma loop measured ~1 TFLOP/s per SM (ln_modulate_linear at 256x768x3072,
NOTES.md). So: small ~300-450 us per block, base ~1.2-1.8 ms per block, against XLA's per-block
kernel sum of roughly 30 us (small) and 50 us (base): **5-30x slower than XLA**. The kernel
removes every launch and every activation round trip to HBM, but at 4 SMs of 132 it cannot
win; it is the tested skeleton for the fast structure, which needs (a) the K/V projection split
across CTAs (a cluster of L/64 CTAs with a cluster barrier, or a grid-wide semaphore barrier)
instead of recomputed, (b) every matmul split over columns across many CTAs per phase, and (c)
the hopper_matmul warp-specialised pipeline (2 compute warpgroups + a TMA warpgroup). Those need
cross-CTA synchronisation that interpret mode cannot check (see NOTES.md, "Mega kernel").
The whole-step variant (all blocks in one call) needs that same cross-CTA synchronisation
between blocks (block i+1's K/V of all tokens depend on every CTA's rows of block i), so it is
not built on this skeleton (it is `megastep_mgpu.py`, with GMEM-semaphore synchronisation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import traceback

from absl import logging
import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
from jax import lax

from pallas_kernels import mgpu_common as mc
from pallas_kernels import xla

_SMEM_BYTES = 227 * 1024
_TILE_M = 64
_HEAD_DIM = 64
_MAX_TOKENS = 256  # one TMA box of K (L x 64) and one single-pass softmax row
_LOG2E = math.log2(math.e)
_EPS = 1e-6
PHASES = ("ln1", "qkv", "attn", "out", "ln2", "fc1", "fc2")
PARAM_NAMES = ("qkv_kernel", "qkv_bias", "out_kernel", "out_bias", "fc1_kernel", "fc1_bias",
               "fc2_kernel", "fc2_bias")


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  tile_n: int = 128  # output columns per matmul tile (one wgmma N)
  slots: int = 3  # TMA ring depth for each streamed operand

  def __post_init__(self):
    if self.tile_n % 64 or not 64 <= self.tile_n <= 256:
      raise ValueError(f"{self.tile_n=} must be a multiple of 64 in [64, 256]")
    if self.slots < 2:
      raise ValueError(f"{self.slots=} must be at least 2")

  def smem_bytes(self, length: int, d: int, f: int) -> int:
    """Kernel-lifetime vectors plus the largest phase's scoped buffers (bf16)."""
    tn = self.tile_n
    vectors = 6 * d + 6 * d + 3 * d + d + f + d  # mod (two layouts), biases
    ln = _TILE_M * d
    matmul = self.slots * (_TILE_M * 64 + 64 * tn) + 2 * _TILE_M * tn
    attn = 2 * _TILE_M * _HEAD_DIM + 2 * length * _HEAD_DIM + _TILE_M * length
    return 2 * (vectors + max(ln, matmul, attn))

  def check(self, length: int, d: int, f: int, heads: int) -> None:
    """Raises ValueError when the block shape is outside what this kernel supports."""
    if d != heads * _HEAD_DIM:
      raise ValueError(f"width {d} with {heads} heads: head dim must be {_HEAD_DIM}")
    if length % _TILE_M or not _TILE_M <= length <= _MAX_TOKENS:
      raise ValueError(f"tokens {length} must be a multiple of {_TILE_M} in [64, {_MAX_TOKENS}]")
    for name, n in (("D", d), ("F", f)):
      if n % self.tile_n:
        raise ValueError(f"{name}={n} must be a multiple of {self.tile_n=}")
    if self.smem_bytes(length, d, f) > _SMEM_BYTES:
      raise ValueError(f"{self} needs {self.smem_bytes(length, d, f)} bytes of shared memory")


DEFAULT_CONFIG = TuningConfig()


def supports(length: int, d: int, f: int, heads: int, config: TuningConfig = DEFAULT_CONFIG):
  try:
    config.check(length, d, f, heads)
  except ValueError:
    return False
  return True


def _gelu_tanh(h):
  c = math.sqrt(2.0 / math.pi)
  return 0.5 * h * (1.0 + jnp.tanh(c * (h + 0.044715 * h * h * h)))


def _f32_row(ref_1d):
  return mc.load_row_vector(ref_1d)


def _store_async(stage_smem, gmem, value):
  """Registers -> SMEM -> TMA store; waits only until the previous store has read `stage_smem`."""
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  stage_smem[...] = value.astype(stage_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(stage_smem, gmem)


def _layernorm_modulate(x_ref_rows, y_ref_rows, mod_smem, shift_i, scale_i, *, d, dtype):
  """y = bf16(LN(x) * (1 + scale) + shift) for one 64-row tile, GMEM -> SMEM -> GMEM."""
  k_chunks = d // 64

  def body(buf, bars):
    for kc in range(k_chunks):
      plgpu.copy_gmem_to_smem(x_ref_rows.at[:, pl.ds(kc * 64, 64)], buf.at[kc], bars.at[kc])
    load = functools.partial(plgpu.load, layout=plgpu.Layout.WGMMA)
    shape = (_TILE_M, 64)
    total = None
    for kc in range(k_chunks):
      plgpu.barrier_wait(bars.at[kc])
      part = load(buf.at[kc]).astype(jnp.float32).sum(axis=1)
      total = part if total is None else total + part
    mean = total / d
    sq = None
    for kc in range(k_chunks):
      xc = load(buf.at[kc]).astype(jnp.float32) - mc.bcast_rows(mean, shape)
      part = (xc * xc).sum(axis=1)
      sq = part if sq is None else sq + part
    rstd = lax.rsqrt(sq / d + _EPS)
    for kc in range(k_chunks):
      xc = load(buf.at[kc]).astype(jnp.float32)
      y = (xc - mc.bcast_rows(mean, shape)) * mc.bcast_rows(rstd, shape)
      y = y * (1.0 + mc.bcast_cols(_f32_row(mod_smem.at[scale_i, kc]), shape))
      y = y + mc.bcast_cols(_f32_row(mod_smem.at[shift_i, kc]), shape)
      buf[kc] = y.astype(dtype)
    plgpu.commit_smem()
    for kc in range(k_chunks):
      plgpu.copy_smem_to_gmem(buf.at[kc], y_ref_rows.at[:, pl.ds(kc * 64, 64)])
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(body, plgpu.SMEM((k_chunks, _TILE_M, 64), dtype, transforms=mc.TRANSFORMS),
                plgpu.Barrier(num_barriers=k_chunks))


def _matmul_phase(num_tiles, k_chunks, a_src, w_src, epilogue, *, tn, slots, dtype):
  """For t in [0, num_tiles): acc = sum_kc A(t, kc) @ W(t, kc); epilogue(t, acc, stage_smem,
  res_smem, res_bar). A chunks are 64x64, W chunks 64 x tn, both GMEM refs streamed by TMA
  through `slots`-deep rings indexed by the global chunk counter i = t * k_chunks + kc, so the
  next tile's chunks are in flight while this tile finishes."""
  n = num_tiles * k_chunks
  split = lambda i: (lax.div(i, k_chunks), lax.rem(i, k_chunks))  # noqa: E731

  def body(a_ring, w_ring, stage, res, a_bars, w_bars, res_bar):
    sa = mc.WeightStream(lambda i: a_src(*split(i)), a_ring, a_bars, n)
    sw = mc.WeightStream(lambda i: w_src(*split(i)), w_ring, w_bars, n)
    sa.prologue()
    sw.prologue()

    def tile(t, carry):
      def mm(acc_ref):
        for kc in range(k_chunks):
          i = t * k_chunks + kc
          a = sa.wait(i)
          w = sw.wait(i)
          plgpu.wgmma(acc_ref, a, w)
          plgpu.wgmma_wait(0)
          sa.fetch(i + slots)
          sw.fetch(i + slots)
        return acc_ref[...]

      acc = pl.run_scoped(mm, plgpu.ACC((_TILE_M, tn), jnp.float32))
      epilogue(t, acc, stage, res, res_bar)
      return carry

    lax.fori_loop(0, num_tiles, tile, None)
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(
      body,
      plgpu.SMEM((slots, _TILE_M, 64), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((slots, 64, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((_TILE_M, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((_TILE_M, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.Barrier(num_barriers=slots),
      plgpu.Barrier(num_barriers=slots),
      plgpu.Barrier(num_barriers=1),
  )


def attention_scratch(length: int, dtype):
  """SMEM and barriers of `attention_tile` (pass to `pl.run_scoped`): Q, K and V blocks, P, the
  output stage; keys in blocks of <= 128 (the wgmma N that attention_mgpu ran with)."""
  bkv = 128 if length % 128 == 0 else 64
  nb = length // bkv
  return (plgpu.SMEM((_TILE_M, _HEAD_DIM), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((nb, bkv, _HEAD_DIM), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((nb, bkv, _HEAD_DIM), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((nb, _TILE_M, bkv), dtype, transforms=mc.TRANSFORMS),
          plgpu.SMEM((_TILE_M, _HEAD_DIM), dtype, transforms=mc.TRANSFORMS),
          plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=nb),
          plgpu.Barrier(num_barriers=nb))


def attention_tile(q_src, k_src, v_src, o_dst, scratch, *, dtype):
  """softmax(Q K^T / 8) V for one 64-row query tile and one head, single pass (all keys in
  SMEM, L <= 256): q_src (64, 64) GMEM, k_src(kb) / v_src(kb) the kb-th key block (bkv, 64),
  o_dst (64, 64) GMEM (stored asynchronously); scratch from `attention_scratch`."""
  q_smem, k_smem, v_smem, p_smem, o_smem, q_bar, k_bars, v_bars = scratch
  nb = k_smem.shape[0]
  bkv = k_smem.shape[1]
  scale_log2 = _LOG2E / math.sqrt(_HEAD_DIM)
  plgpu.copy_gmem_to_smem(q_src, q_smem, q_bar.at[0])
  for kb in range(nb):
    plgpu.copy_gmem_to_smem(k_src(kb), k_smem.at[kb], k_bars.at[kb])
    plgpu.copy_gmem_to_smem(v_src(kb), v_smem.at[kb], v_bars.at[kb])
  plgpu.barrier_wait(q_bar.at[0])
  s = []
  for kb in range(nb):
    plgpu.barrier_wait(k_bars.at[kb])

    def qk(acc_ref, kb=kb):
      plgpu.wgmma(acc_ref, q_smem, k_smem.at[kb].T)
      plgpu.wgmma_wait(0)
      return acc_ref[...]

    s.append(pl.run_scoped(qk, plgpu.ACC((_TILE_M, bkv), jnp.float32)) * scale_log2)
  mx = s[0].max(axis=1)
  for sb in s[1:]:
    mx = jnp.maximum(mx, sb.max(axis=1))
  l_i = None
  for kb, sb in enumerate(s):
    p = jnp.exp2(sb - lax.broadcast_in_dim(mx, sb.shape, [0]))
    l_i = p.sum(axis=1) if l_i is None else l_i + p.sum(axis=1)
    p_smem[kb] = p.astype(dtype)
  plgpu.commit_smem()

  def pv(acc_ref):
    for kb in range(nb):
      plgpu.barrier_wait(v_bars.at[kb])
      plgpu.wgmma(acc_ref, p_smem.at[kb], v_smem.at[kb])
    plgpu.wgmma_wait(0)
    return acc_ref[...]

  o = pl.run_scoped(pv, plgpu.ACC((_TILE_M, _HEAD_DIM), jnp.float32))
  o = o / lax.broadcast_in_dim(l_i, o.shape, [0])
  _store_async(o_smem, o_dst, o)


def _attention_phase(qkv_rows, o_rows, *, m, heads, length, d, dtype):
  """Per head: softmax(Q K^T / 8) V for the CTA's 64 rows; qkv_rows is the CTA's (L, 3D)
  scratch, o_rows its (64, D) output scratch."""
  bkv = 128 if length % 128 == 0 else 64

  def body(*scratch):
    def head(h, carry):
      col = h * _HEAD_DIM
      keys = lambda kb: pl.ds(kb * bkv, bkv)  # noqa: E731
      attention_tile(qkv_rows.at[pl.ds(m * _TILE_M, _TILE_M), pl.ds(col, _HEAD_DIM)],
                     lambda kb: qkv_rows.at[keys(kb), pl.ds(d + col, _HEAD_DIM)],
                     lambda kb: qkv_rows.at[keys(kb), pl.ds(2 * d + col, _HEAD_DIM)],
                     o_rows.at[:, pl.ds(col, _HEAD_DIM)], scratch, dtype=dtype)
      return carry

    lax.fori_loop(0, heads, head, None)
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(body, *attention_scratch(length, dtype))


def _build(batch, length, d, f, heads, dtype, config: TuningConfig, last_phase: str):
  """The pallas call: (x, mod_ln, mod_tn, b_qkv, b_out, b1, b2, w_qkv, w_out, w1, w2) ->
  (out, y_scr, qkv_scr, o_scr, y2_scr, h_scr). Phases after `last_phase` are skipped (for
  diagnosing which phase fails to lower)."""
  config.check(length, d, f, heads)
  tn, slots = config.tile_n, config.slots
  n_m = length // _TILE_M
  kd, kf = d // 64, f // 64
  run = PHASES[: PHASES.index(last_phase) + 1]
  mm = functools.partial(_matmul_phase, tn=tn, slots=slots, dtype=dtype)

  def megablock_mgpu(x_ref, mod_ln_ref, mod_tn_ref, bqkv_ref, bout_ref, b1_ref, b2_ref, wqkv_ref,
                     wout_ref, w1_ref, w2_ref, out_ref, y_scr, qkv_scr, o_scr, y2_scr, h_scr,
                     mod_ln, mod_tn, bqkv, bout, b1, b2, vec_bars):
    m, b = lax.axis_index("m"), lax.axis_index("batch")
    own = pl.ds(m * _TILE_M, _TILE_M)
    for i, (src, dst) in enumerate(((mod_ln_ref.at[b], mod_ln), (mod_tn_ref.at[b], mod_tn),
                                    (bqkv_ref, bqkv), (bout_ref, bout), (b1_ref, b1),
                                    (b2_ref, b2))):
      plgpu.copy_gmem_to_smem(src, dst, vec_bars.at[i])
    for i in range(6):
      plgpu.barrier_wait(vec_bars.at[i])
    y_rows, qkv_rows = y_scr.at[b, m], qkv_scr.at[b, m]
    o_rows, y2_rows, h_rows = o_scr.at[b, m], y2_scr.at[b, m], h_scr.at[b, m]
    x_own = out_ref.at[b, own]  # x1 lives in the output rows until fc2 overwrites them

    def residual(res, res_bar, src, cols, delta, gate_i, n):
      """bf16(x + bf16(gate * delta)) for the tile `src[:, cols]`, delta f32 (64 x tn)."""
      plgpu.copy_gmem_to_smem(src.at[:, cols], res, res_bar.at[0])
      plgpu.barrier_wait(res_bar.at[0])
      xr = plgpu.load(res, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
      gate = mc.bcast_cols(_f32_row(mod_tn.at[gate_i, n]), delta.shape)
      return xr + (gate * delta).astype(dtype).astype(jnp.float32)

    if "ln1" in run:
      for j in range(n_m):
        rows = pl.ds(j * _TILE_M, _TILE_M)
        _layernorm_modulate(x_ref.at[b, rows], y_rows.at[rows], mod_ln, 0, 1, d=d, dtype=dtype)

    if "qkv" in run:
      nq = 3 * d // tn

      def qkv_epi(t, acc, stage, res, res_bar):
        j, n = lax.div(t, nq), lax.rem(t, nq)
        acc = acc + mc.bcast_cols(_f32_row(bqkv.at[n]), acc.shape)
        _store_async(stage, qkv_rows.at[pl.ds(j * _TILE_M, _TILE_M), pl.ds(n * tn, tn)], acc)

      mm(n_m * nq, kd,
         lambda t, kc: y_rows.at[pl.ds(lax.div(t, nq) * _TILE_M, _TILE_M), pl.ds(kc * 64, 64)],
         lambda t, kc: wqkv_ref.at[pl.ds(kc * 64, 64), pl.ds(lax.rem(t, nq) * tn, tn)],
         qkv_epi)

    if "attn" in run:
      _attention_phase(qkv_rows, o_rows, m=m, heads=heads, length=length, d=d, dtype=dtype)

    if "out" in run:
      def out_epi(n, acc, stage, res, res_bar):
        cols = pl.ds(n * tn, tn)
        acc = acc + mc.bcast_cols(_f32_row(bout.at[n]), acc.shape)
        x1 = residual(res, res_bar, x_ref.at[b, own], cols, acc, 2, n)
        _store_async(stage, x_own.at[:, cols], x1)

      mm(d // tn, kd, lambda n, kc: o_rows.at[:, pl.ds(kc * 64, 64)],
         lambda n, kc: wout_ref.at[pl.ds(kc * 64, 64), pl.ds(n * tn, tn)], out_epi)

    if "ln2" in run:
      _layernorm_modulate(x_own, y2_rows, mod_ln, 3, 4, d=d, dtype=dtype)

    if "fc1" in run:
      def fc1_epi(n, acc, stage, res, res_bar):
        acc = _gelu_tanh(acc + mc.bcast_cols(_f32_row(b1.at[n]), acc.shape))
        _store_async(stage, h_rows.at[:, pl.ds(n * tn, tn)], acc)

      mm(f // tn, kd, lambda n, kc: y2_rows.at[:, pl.ds(kc * 64, 64)],
         lambda n, kc: w1_ref.at[pl.ds(kc * 64, 64), pl.ds(n * tn, tn)], fc1_epi)

    if "fc2" in run:
      def fc2_epi(n, acc, stage, res, res_bar):
        cols = pl.ds(n * tn, tn)
        y = (acc + mc.bcast_cols(_f32_row(b2.at[n]), acc.shape)).astype(dtype)
        out = residual(res, res_bar, x_own, cols, y.astype(jnp.float32), 5, n)
        _store_async(stage, x_own.at[:, cols], out)

      mm(d // tn, kf, lambda n, kc: h_rows.at[:, pl.ds(kc * 64, 64)],
         lambda n, kc: w2_ref.at[pl.ds(kc * 64, 64), pl.ds(n * tn, tn)], fc2_epi)

  sds = jax.ShapeDtypeStruct
  out_types = (sds((batch, length, d), dtype), sds((batch, n_m, length, d), dtype),
               sds((batch, n_m, length, 3 * d), dtype), sds((batch, n_m, _TILE_M, d), dtype),
               sds((batch, n_m, _TILE_M, d), dtype), sds((batch, n_m, _TILE_M, f), dtype))
  return plgpu.kernel(
      megablock_mgpu,  # the kernel's name in profiles
      out_type=out_types,
      scratch_types=[
          plgpu.SMEM((6, kd, 64), dtype),
          plgpu.SMEM((6, d // tn, tn), dtype),
          plgpu.SMEM((3 * d // tn, tn), dtype),
          plgpu.SMEM((d // tn, tn), dtype),
          plgpu.SMEM((f // tn, tn), dtype),
          plgpu.SMEM((d // tn, tn), dtype),
          plgpu.Barrier(num_barriers=6),
      ],
      grid=(n_m, batch),
      grid_names=("m", "batch"),
      compiler_params=plgpu.CompilerParams(approx_math=True),
  )


def _call(x_BxLxD, mod_Bx6D, params, heads, config, last_phase):
  batch, length, d = x_BxLxD.shape
  dtype = x_BxLxD.dtype
  f = params["fc1_kernel"].shape[1]
  tn = config.tile_n
  cast = lambda a: jnp.asarray(a).astype(dtype)  # noqa: E731
  mod = cast(mod_Bx6D).reshape(batch, 6, d)
  fn = _build(batch, length, d, f, heads, dtype, config, last_phase)
  return fn(x_BxLxD, mod.reshape(batch, 6, d // 64, 64), mod.reshape(batch, 6, d // tn, tn),
            cast(params["qkv_bias"]).reshape(-1, tn), cast(params["out_bias"]).reshape(-1, tn),
            cast(params["fc1_bias"]).reshape(-1, tn), cast(params["fc2_bias"]).reshape(-1, tn),
            cast(params["qkv_kernel"]), cast(params["out_kernel"]), cast(params["fc1_kernel"]),
            cast(params["fc2_kernel"]))


def megablock(x_BxLxD, mod_Bx6D, params, *, heads: int, config: TuningConfig = DEFAULT_CONFIG):
  """One `DiTBlock` (within-frame attention) for B frames of L tokens, Mosaic GPU (Hopper).

  x_BxLxD: bf16 tokens; mod_Bx6D: (shift1, scale1, gate1, shift2, scale2, gate2) concatenated
  (`modulation`); params: the block's weights (names in `PARAM_NAMES`; extra keys ignored).
  Forward only (inference).
  """
  return _call(x_BxLxD, mod_Bx6D, params, heads, config, PHASES[-1])[0]


def megablock_phases(x_BxLxD, mod_Bx6D, params, *, heads: int, last_phase: str,
                     config: TuningConfig = DEFAULT_CONFIG):
  """Diagnostics: runs phases up to `last_phase`; returns (out, y, qkv, o, y2, h) scratch."""
  return _call(x_BxLxD, mod_Bx6D, params, heads, config, last_phase)


def modulation(mod_params, cond_BxD, dtype=jnp.bfloat16):
  """adaLN modulation as `DiTBlock` computes it: Dense(silu(cond)) in `dtype` -> (B, 6D)."""
  c = jax.nn.silu(cond_BxD.astype(dtype))
  return (c @ mod_params["kernel"].astype(dtype) + mod_params["bias"].astype(dtype)).astype(dtype)


def megablock_reference(x_BxLxD, mod_Bx6D, params, *, heads: int, eps: float = _EPS):
  """Plain-jnp f32 `DiTBlock` (within-frame attention) given the modulation."""
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  x = f32(x_BxLxD)
  b, l, d = x.shape
  shift1, scale1, gate1, shift2, scale2, gate2 = (
      m[:, None, :] for m in jnp.split(f32(mod_Bx6D), 6, axis=-1))

  def ln_mod(v, shift, scale):
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1, keepdims=True)
    return (v - mean) / jnp.sqrt(var + eps) * (1 + scale) + shift

  qkv = ln_mod(x, shift1, scale1) @ f32(params["qkv_kernel"]) + f32(params["qkv_bias"])
  q, k, v = (a.reshape(b, l, heads, d // heads) for a in jnp.split(qkv, 3, axis=-1))
  s = jnp.einsum("blnh,bsnh->bnls", q, k) / math.sqrt(d // heads)
  o = jnp.einsum("bnls,bsnh->blnh", jax.nn.softmax(s, axis=-1), v).reshape(b, l, d)
  x = x + gate1 * (o @ f32(params["out_kernel"]) + f32(params["out_bias"]))
  h = jax.nn.gelu(ln_mod(x, shift2, scale2) @ f32(params["fc1_kernel"]) + f32(params["fc1_bias"]),
                  approximate=True)
  return x + gate2 * (h @ f32(params["fc2_kernel"]) + f32(params["fc2_bias"]))


def block_params(key, d: int, heads: int, mlp_ratio: int = 4, cond_scale: float = 1.0):
  """Random block params at realistic scales in the kernel's layout (`PARAM_NAMES` and the
  modulation Dense as "mod": {"kernel", "bias"}): N(0, 1/fan_in) matrices, N(0, 0.1^2) vectors,
  a non-zero modulation layer scaled by `cond_scale`."""
  del heads
  f = mlp_ratio * d
  shapes = {"qkv_kernel": (d, 3 * d), "qkv_bias": (3 * d,), "out_kernel": (d, d), "out_bias": (d,),
            "fc1_kernel": (d, f), "fc1_bias": (f,), "fc2_kernel": (f, d), "fc2_bias": (d,),
            "mod_kernel": (d, 6 * d), "mod_bias": (6 * d,)}
  out = {}
  for i, (name, shp) in enumerate(shapes.items()):
    scale = 1.0 / math.sqrt(shp[0]) if len(shp) == 2 else 0.1
    out[name] = scale * jax.random.normal(jax.random.fold_in(key, i), shp, jnp.float32)
  mod = {"kernel": cond_scale * out.pop("mod_kernel"), "bias": cond_scale * out.pop("mod_bias")}
  return {**out, "mod": mod}


def xla_block(params, x_BxLxD, cond_BxD, *, heads: int, dtype=jnp.bfloat16):
  """The same block through XLA's ops in `dtype` (modulation, LN + QKV, attention, projection,
  LN + MLP, gated residuals), as the model's `DiTBlock` computes it with within-frame attention:
  what the kernel is timed and compared against."""
  b, length, d = x_BxLxD.shape
  cast = lambda a: jnp.asarray(a).astype(dtype)  # noqa: E731
  shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(modulation(params["mod"], cond_BxD, dtype), 6, axis=-1)
  x = x_BxLxD.astype(dtype)
  qkv = xla.ln_modulate_linear_xla(x, shift1, scale1, cast(params["qkv_kernel"]), cast(params["qkv_bias"]))
  q, k, v = (y[:, :, 0] for y in jnp.split(qkv.reshape(b, length, 3, heads, d // heads), 3, axis=2))
  o = xla.attention_xla(q, k, v).reshape(b, length, d)
  o = jnp.einsum("bld,de->ble", o, cast(params["out_kernel"]), preferred_element_type=jnp.float32)
  x = x + (gate1[:, None, :] * (o + params["out_bias"])).astype(dtype)
  y = xla.ln_modulate_xla(x, shift2, scale2)
  y = xla.mlp_xla(y, cast(params["fc1_kernel"]), cast(params["fc1_bias"]), cast(params["fc2_kernel"]),
                  cast(params["fc2_bias"]))
  return x + (gate2[:, None, :] * y).astype(dtype)


def kernel_block_fn(heads: int, config: TuningConfig = DEFAULT_CONFIG):
  """(params, x_BxLxD, cond_BxD) -> the block through the mega kernel (modulation in XLA), the
  signature of `xla_block`."""

  def apply(params, x_BxLxD, cond_BxD):
    mod = modulation(params["mod"], cond_BxD)
    return megablock(x_BxLxD, mod, params, heads=heads, config=config)

  return apply


def main(_) -> None:
  from pallas_kernels import bench

  for name, d, heads in [("small", 384, 6), ("base", 768, 12)]:
    length = 256
    key = jax.random.key(d)
    params = block_params(key, d, heads)
    x = jax.random.normal(jax.random.fold_in(key, 2), (1, length, d), jnp.bfloat16)
    cond = jax.random.normal(jax.random.fold_in(key, 3), (1, d), jnp.bfloat16)
    xla_fn = jax.jit(functools.partial(xla_block, heads=heads))
    out_xla = xla_fn(params, x, cond)
    mod = modulation(params["mod"], cond)
    ref = megablock_reference(x, mod, params, heads=heads)
    t = bench.time_fn(xla_fn, params, x, cond)
    logging.info(f"{name} L={length} D={d} N={heads} xla: p50 {t['p50_ms'] * 1e3:.1f} us "
                 f"kernels {bench.kernel_time_ms(xla_fn, params, x, cond)} ms "
                 f"rel_err {bench.rel_err(out_xla, ref):.2e}")
    ok = False
    for config in (TuningConfig(128, 3), TuningConfig(64, 2), TuningConfig(256, 2)):
      if not supports(length, d, 4 * d, heads, config):
        logging.info(f"  {config}: unsupported (shared memory)")
        continue
      fn = jax.jit(kernel_block_fn(heads, config))
      try:
        out = jax.block_until_ready(fn(params, x, cond))
      except Exception as e:  # noqa: BLE001  (report and try the next config)
        logging.info(f"  {config}: FAILED {type(e).__name__}: {str(e)[:1500]}")
        continue
      ok = True
      t = bench.time_fn(fn, params, x, cond)
      logging.info(f"  mosaic {config}: p50 {t['p50_ms'] * 1e3:.1f} us "
                   f"kernel {bench.kernel_time_ms(fn, params, x, cond)} ms "
                   f"rel_err {bench.rel_err(out, ref):.2e} vs_xla {bench.rel_err(out, out_xla):.2e}")
    if not ok:
      _diagnose(x, mod, params, heads)


def _diagnose(x, mod, params, heads):
  """After every config failed: which phase is the first that does not lower or run."""
  for phase in PHASES:
    fn = jax.jit(functools.partial(megablock_phases, heads=heads, last_phase=phase,
                                   config=TuningConfig(64, 2)))
    try:
      jax.block_until_ready(fn(x, mod, params))
      logging.info(f"  phases up to {phase}: ran")
    except Exception:  # noqa: BLE001
      logging.info(f"  phases up to {phase}: FAILED\n{traceback.format_exc()[-3000:]}")
      return


if __name__ == "__main__":
  from absl import app

  app.run(main)
