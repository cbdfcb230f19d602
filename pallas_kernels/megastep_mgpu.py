"""Mega kernel, whole step: the denoiser's patch embedding, every adaLN-zero DiT block
(within-frame attention) and the final layer in ONE persistent Mosaic GPU call per step.

The kernel takes plain arrays: the patches, the positional embedding, the per-frame condition
vector (or the modulations) and the weights in its packed layout (`random_packed` lists the
arrays and shapes: per-block weights stacked on a leading depth axis, bf16, patch-in and
patch-out widths padded to 64). What stays in XLA: every block's adaLN modulation (one batched
matvec over the stacked modulation weights, `modulations`). The model side
(`lsd_jax.models.megastep`) computes the conditioning from the denoiser's parameters, patchifies,
and packs its weights once, outside the step (a per-call stack would copy every weight each
step); it reaches the kernel only through `pallas_kernels.api.megastep_trunk`.

Design (persistent grid; tiles synchronised by GMEM semaphores)
---------------------------------------------------------------
The grid is `ctas` CTAs of one warpgroup each, all resident at once (one per SM, at most the
GPU's 132). The step is a sequence of phases; within a phase the work is a list of independent
tiles that CTA c takes round-robin (tiles c, c + ctas, ...). Two ways to order the phases
(`TuningConfig.sync`), both through semaphores in GMEM that the call zeroes:

- "dataflow" (default): a tile waits only for the tiles it reads. Each row tile (and each
  frame, for qkv) has a counter per phase; a tile increments its counter once its TMA stores
  have completed (release), and a consumer polls until the counter reaches (block + 1) x the
  producer's tiles per row (acquire): qkv(rt) waits for fc2(rt) of the previous block (embed
  counts as block -1's fc2), attn(rt, head) for qkv of its whole frame, out(rt) for attn(rt),
  fc1(rt) for out(rt), fc2(rt) for fc1(rt). Write-after-read is safe by transitivity (e.g.
  out(rt) of block b writes x[rt] only after attn(rt) of b, which followed qkv of the frame,
  which read x), except for qkv: block b+1's qkv(rt) may run while block b's attention of
  another row tile still reads K/V, so qkv has two buffers (block parity); by block b+2 every
  attention item of b is done (b+1's attention needed all of b's fc2).
- "barrier": a grid barrier between phases (every CTA increments one counter and waits for
  k x ctas at the k-th barrier).

Weights do not depend on other tiles, so each phase's weight ring and each tile's bias,
gate and modulation vectors are fetched *before* the wait; activations after it. Phases, for
R = B * L token rows in tiles of 64:

  embed     x = bf16(bf16(patches @ w_emb + b_emb) + pos)        R/64 x D/tn_narrow tiles
  per block (a `fori_loop` over the stacked weights, so the kernel's code is one block long):
    qkv     qkv = bf16(LN(x)(1 + scale1) + shift1) @ w_qkv + b   R/64 x 3D/tn tiles, LN per tile
    attn    o = softmax(q k^T / 8) v per (frame, 64 rows, head)  B * L/64 * heads items
    out     x = x + bf16(gate1 * (o @ w_out + b_out))            R/64 x D/tn_narrow tiles
    fc1     h = gelu_tanh(bf16(LN(x)(1 + scale2) + shift2) @ w1 + b1)   R/64 x F/tn tiles
    fc2     x = x + bf16(gate2 * bf16(h @ w2 + b2))              R/64 x D/tn_narrow tiles
  final     out = bf16(LN(x)(1 + scale) + shift) @ w_f + b_f      R/64 x 1 tiles (64 columns)

Activations live in GMEM scratch (x, qkv, o, h: extra outputs of the call; at one frame they
total < 2.5 MB and stay in L2). LN phases load their tile's 64 rows, normalise and modulate them
in registers and keep them in SMEM as the wgmma A operand; the weight streams through a
`slots`-deep TMA ring that prefetches across the CTA's tiles. `out` and `fc2` update x in place
(each tile reads and writes only its own 64 x tn block, and no other tile of the phase reads x).

Testing: Mosaic GPU interpret mode (jax 0.11.2) cannot allocate semaphores, so on CPU the step
runs **split**: one call per phase, with the same phase bodies and the same round-robin tiling
(`ctas` small enough that CTAs take several tiles), the call boundary standing in for the
barrier. The fused kernel (barrier, block loop over dynamic weight indices) is checked on the
GPU against the split one and against XLA.

Prediction (before any GPU timing), small at 256 tokens (6 blocks, 31 barriers): a phase costs
about one tile's TMA latency + wgmma chain + store (~3-6 us) plus a barrier (~1-3 us), so about
25-45 us per block against XLA's ~43 us kernel sum per block (NOTES.md), i.e. **0.15-0.3 ms for
the trunk** vs ~0.26 ms of XLA kernels; with one launch instead of ~80 the host-timed step
should drop from 0.56 ms to 0.25-0.4 ms: 1.4-2.2x. Base (12 blocks, 61 barriers, 2x the tiles of
2x the K): 0.4-0.7 ms against the 1.25 ms measured; the 0.35 ms target likely missed.

Outcome (one H200, 2026-11-27, `reports/latency/megastep_h200_2026-11-27/`; CUPTI kernel
sums): correct on the GPU from the first run (rel. err. vs the f32 reference 4.2e-3 small,
6.8e-3 base; vs XLA 5.3e-3 / 7.5e-3; bit-identical to the split phases and over 50 repeated
calls). Trunk kernel time, small: 0.246 ms (dataflow) / 0.244 ms (barrier) against XLA's 0.209
ms; base: 0.899 / 0.862 ms against 0.644 ms. **Slower than XLA (0.85x small, 0.72-0.75x base):
the prediction's speed-up was wrong.** The same phases as separate kernels (split) sum to 0.195
ms for small, *faster* than XLA; fusing them adds ~50 us (small) / ~220 us (base) of
synchronisation (each tile waits for its TMA stores to complete before it releases, each
consumer polls GMEM), about 1.5-3.5 us per phase, which is more than the launch gaps it removes
(XLA runs the step as a CUDA graph). Dataflow counters instead of barriers did not help: the
slowest tile of a phase gates its consumers either way when the phase has about one tile per
CTA. The first version (one wgmma in flight at a time, 3-deep rings) took 0.287 / 0.997 ms.
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

from pallas_kernels import megablock_mgpu as mb
from pallas_kernels import mgpu_common as mc
from pallas_kernels import xla

_SMEM_BYTES = 227 * 1024
_TILE_M = 64
_HEAD_DIM = 64
_MAX_TOKENS = 256  # per frame: one single-pass softmax row (as megablock_mgpu)
_MAX_SMS = 132  # H100 SXM
_EPS = 1e-6
BLOCK_PHASES = ("qkv", "attn", "out", "fc1", "fc2")


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  tile_n: int = 128  # output columns of the wide phases (qkv, fc1)
  tile_n_narrow: int = 64  # output columns of the D-wide phases (embed, out, fc2): more tiles
  slots: int = 6  # TMA ring depth of the weight in the LN phases (A is resident)
  slots_narrow: int = 8  # TMA ring depth of each operand in the streamed-A phases
  max_ctas: int = _MAX_SMS  # grid size cap (all CTAs must be resident: <= number of SMs)
  sync: str = "dataflow"  # fused kernel: per-row-tile counters ("dataflow") or grid barriers

  def __post_init__(self):
    for name in ("tile_n", "tile_n_narrow"):
      v = getattr(self, name)
      if v % 64 or not 64 <= v <= 256:
        raise ValueError(f"{name}={v} must be a multiple of 64 in [64, 256]")
    if min(self.slots, self.slots_narrow) < 2:
      raise ValueError(f"{self.slots=} and {self.slots_narrow=} must be at least 2")
    if self.sync not in ("dataflow", "barrier"):
      raise ValueError(f"sync must be 'dataflow' or 'barrier', got {self.sync!r}")
    if not 1 <= self.max_ctas <= _MAX_SMS:
      raise ValueError(f"{self.max_ctas=} must be in [1, {_MAX_SMS}] (one resident CTA per SM)")

  def smem_bytes(self, d: int, f: int, length: int) -> int:
    """The largest phase's scoped buffers (bf16), phases reuse the same bytes."""
    tn, tnn = self.tile_n, self.tile_n_narrow
    kd = d // 64
    ln_mm = kd * _TILE_M * 64 + 2 * d + tn + self.slots * 64 * tn + _TILE_M * tn
    mm = self.slots_narrow * (_TILE_M * 64 + 64 * tnn) + 2 * _TILE_M * tnn + 2 * tnn
    attn = 2 * _TILE_M * _HEAD_DIM + 2 * length * _HEAD_DIM + _TILE_M * length
    return 2 * max(ln_mm, mm, attn)

  def check(self, length: int, d: int, f: int, heads: int) -> None:
    if d != heads * _HEAD_DIM:
      raise ValueError(f"width {d} with {heads} heads: head dim must be {_HEAD_DIM}")
    if length % _TILE_M or not _TILE_M <= length <= _MAX_TOKENS:
      raise ValueError(f"tokens per frame {length} must be a multiple of {_TILE_M} in "
                       f"[64, {_MAX_TOKENS}]")
    for name, n, t in (("3D", 3 * d, self.tile_n), ("F", f, self.tile_n),
                       ("D", d, self.tile_n_narrow)):
      if n % t:
        raise ValueError(f"{name}={n} must be a multiple of the tile {t}")
    if self.smem_bytes(d, f, length) > _SMEM_BYTES:
      raise ValueError(f"{self} needs {self.smem_bytes(d, f, length)} bytes of shared memory")


DEFAULT_CONFIG = TuningConfig()


def supports(length: int, d: int, f: int, heads: int, config: TuningConfig = DEFAULT_CONFIG):
  return mb.supports(length, d, f, heads, config)  # same check signature: config.check(...)


@dataclasses.dataclass(frozen=True)
class _Shape:
  batch: int
  length: int
  d: int
  f: int
  heads: int
  depth: int
  p_in: int  # padded patch-in features (multiple of 64)

  @property
  def rows(self):
    return self.batch * self.length

  @property
  def row_tiles(self):
    return self.rows // _TILE_M


# ----------------------------------------------------------------------------- tiling


def _my_tiles(num_tiles, cta, ctas):
  """(static upper bound, traced count) of the tiles c, c + ctas, ... below num_tiles."""
  bound = -(-num_tiles // ctas)
  count = jnp.maximum(lax.div(jnp.int32(num_tiles) - cta + ctas - 1, jnp.int32(ctas)), 0)
  return bound, count


def _tile_loop(num_tiles, cta, ctas, body, sync=None, pre=None):
  """body(j, t) for this CTA's j-th tile t = cta + j * ctas. `sync` = (wait(t), signal(t)) of
  the fused kernel's dataflow (None when the phases run as separate calls): wait for the tiles
  that t reads before its body, signal once its stores have landed. `pre(j, t)` runs before
  the wait: loads that do not depend on other tiles (weights' vectors, modulations)."""
  bound, count = _my_tiles(num_tiles, cta, ctas)

  def step(j, carry):
    @pl.when(j < count)
    def _():
      t = cta + j * ctas
      if pre is not None:
        pre(j, t)
      if sync is not None:
        sync[0](t)
      body(j, t)
      if sync is not None:
        plgpu.wait_smem_to_gmem(0, wait_read_only=False)
        sync[1](t)

    return carry

  lax.fori_loop(0, bound, step, None)


def _matmul_chain(acc_ref, k_chunks, j, a_chunk, w_ring: mc.WeightStream,
                  a_ring: mc.WeightStream | None = None):
  """acc += sum_kc A_kc @ W_kc for the CTA's j-th tile, chunks streamed by the rings (global
  chunk index j * k_chunks + kc; A resident in SMEM as `a_chunk(kc)` when `a_ring` is None).
  One wgmma stays in flight: after issuing chunk i, wait for chunk i - 1 and refill its slots."""
  rings = (w_ring,) if a_ring is None else (w_ring, a_ring)

  def chunk(kc, carry):
    i = j * k_chunks + kc
    a = a_chunk(kc) if a_ring is None else a_ring.wait(i)
    plgpu.wgmma(acc_ref, a, w_ring.wait(i))
    plgpu.wgmma_wait(1)

    @pl.when(kc > 0)
    def _():
      for r in rings:
        r.fetch(i - 1 + r.slots)

    return carry

  lax.fori_loop(0, k_chunks, chunk, None)
  plgpu.wgmma_wait(0)
  for r in rings:
    r.fetch(j * k_chunks + k_chunks - 1 + r.slots)


def _ln_matmul_phase(num_tiles, n_cols, x_rows, mod_src, w_src, bias_src, epilogue, *, d, tn,
                     slots, cta, ctas, dtype, sync=None):
  """Tiles t = (row tile t // n_cols, column tile t % n_cols):
  acc = bf16(LN(x[rows]) * (1 + scale) + shift) @ W[:, cols]; epilogue(t, acc + bias, stage).
  x_rows(rt) -> (64, D) GMEM rows; mod_src(rt) -> the (D/64, 64) GMEM shift and scale of the
  row tile's frame; w_src(ct, kc) -> (64, tn); bias_src(ct) -> (tn,)."""
  kd = d // 64
  _, count = _my_tiles(num_tiles, cta, ctas)
  tile_of = lambda i: cta + lax.div(i, kd) * ctas  # noqa: E731  (global chunk -> tile)

  def body(a_buf, mod_buf, bias_buf, w_ring, stage, a_bars, vec_bars, w_bars):
    ring = mc.WeightStream(lambda i: w_src(lax.rem(tile_of(i), n_cols), lax.rem(i, kd)), w_ring,
                           w_bars, count * kd)
    ring.prologue()

    def pre(j, t):
      rt, ct = lax.div(t, n_cols), lax.rem(t, n_cols)
      for v, src in enumerate(mod_src(rt)):
        plgpu.copy_gmem_to_smem(src, mod_buf.at[v], vec_bars.at[v])
      plgpu.copy_gmem_to_smem(bias_src(ct), bias_buf, vec_bars.at[2])

    def tile(j, t):
      rt, ct = lax.div(t, n_cols), lax.rem(t, n_cols)
      rows = x_rows(rt)
      for kc in range(kd):
        plgpu.copy_gmem_to_smem(rows.at[:, pl.ds(kc * 64, 64)], a_buf.at[kc], a_bars.at[kc])
      plgpu.barrier_wait(vec_bars.at[0])
      plgpu.barrier_wait(vec_bars.at[1])
      _layernorm_in_place(a_buf, a_bars, mod_buf, d=d, dtype=dtype)

      def mm(acc_ref):
        _matmul_chain(acc_ref, kd, j, lambda kc: a_buf.at[kc], ring)
        return acc_ref[...]

      acc = pl.run_scoped(mm, plgpu.ACC((_TILE_M, tn), jnp.float32))
      plgpu.barrier_wait(vec_bars.at[2])
      acc = acc + mc.bcast_cols(mc.load_row_vector(bias_buf), acc.shape)
      epilogue(rt, ct, acc, stage)

    _tile_loop(num_tiles, cta, ctas, tile, sync, pre)
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(
      body,
      plgpu.SMEM((kd, _TILE_M, 64), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((2, kd, 64), dtype),
      plgpu.SMEM((tn,), dtype),
      plgpu.SMEM((slots, 64, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((_TILE_M, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.Barrier(num_barriers=kd),
      plgpu.Barrier(num_barriers=3),
      plgpu.Barrier(num_barriers=slots),
  )


def _layernorm_in_place(buf, bars, mod_buf, *, d, dtype):
  """buf (D/64 chunks of 64 x 64, arriving on `bars`) <- bf16(LN(x) * (1 + scale) + shift)
  with f32 statistics; mod_buf rows: 0 shift, 1 scale."""
  kd = d // 64
  load = functools.partial(plgpu.load, layout=plgpu.Layout.WGMMA)
  shape = (_TILE_M, 64)
  total = sq = None  # one pass: sum and sum of squares (f32; bf16 inputs, so no cancellation
  for kc in range(kd):  # worth a second pass at these widths)
    plgpu.barrier_wait(bars.at[kc])
    xc = load(buf.at[kc]).astype(jnp.float32)
    part, part_sq = xc.sum(axis=1), (xc * xc).sum(axis=1)
    total = part if total is None else total + part
    sq = part_sq if sq is None else sq + part_sq
  mean = total / d
  rstd = lax.rsqrt(jnp.maximum(sq / d - mean * mean, 0.0) + _EPS)
  for kc in range(kd):
    xc = load(buf.at[kc]).astype(jnp.float32)
    y = (xc - mc.bcast_rows(mean, shape)) * mc.bcast_rows(rstd, shape)
    y = y * (1.0 + mc.bcast_cols(mc.load_row_vector(mod_buf.at[1, kc]), shape))
    y = y + mc.bcast_cols(mc.load_row_vector(mod_buf.at[0, kc]), shape)
    buf[kc] = y.astype(dtype)
  plgpu.commit_smem()


def _matmul_phase(num_tiles, n_cols, k_chunks, a_src, w_src, vec_srcs, res_src, epilogue, *, tn,
                  slots, cta, ctas, dtype, sync=None):
  """Tiles t = (row tile t // n_cols, column tile t % n_cols): acc = A[rows] @ W[:, cols] with
  both operands streamed in 64-deep chunks (a_src(rt, kc) -> (64, 64), w_src(ct, kc) -> (64, tn)),
  then epilogue(rt, ct, acc, vecs, res, stage): vecs = the f32 vectors vec_srcs(rt, ct) (each
  a (tn,) GMEM vector, e.g. bias and gate, loaded before the tile's wait), res = the f32 tile
  res_src(rt, ct) (64 x tn, the residual, loaded with the first A chunks). The weight ring
  prefetches across tiles from the phase's start; the activation ring only within a tile,
  after the tile's wait (its data may not exist before)."""
  _, count = _my_tiles(num_tiles, cta, ctas)
  tile_of = lambda i: cta + lax.div(i, k_chunks) * ctas  # noqa: E731
  n_vec = len(vec_srcs(0, 0))

  def body(a_ring, w_ring, vecs, stage, res, a_bars, w_bars, vec_bars, res_bar):
    ra = mc.WeightStream(lambda i: a_src(lax.div(tile_of(i), n_cols), lax.rem(i, k_chunks)),
                         a_ring, a_bars, count * k_chunks)
    rw = mc.WeightStream(lambda i: w_src(lax.rem(tile_of(i), n_cols), lax.rem(i, k_chunks)),
                         w_ring, w_bars, count * k_chunks)
    rw.prologue()

    def pre(j, t):
      rt, ct = lax.div(t, n_cols), lax.rem(t, n_cols)
      for v, src in enumerate(vec_srcs(rt, ct)):
        plgpu.copy_gmem_to_smem(src, vecs.at[v], vec_bars.at[v])

    def tile(j, t):
      rt, ct = lax.div(t, n_cols), lax.rem(t, n_cols)
      ra.num_chunks = (j + 1) * k_chunks  # this tile's chunks only
      ra.prologue(j * k_chunks)
      plgpu.copy_gmem_to_smem(res_src(rt, ct), res, res_bar.at[0])

      def mm(acc_ref):
        _matmul_chain(acc_ref, k_chunks, j, None, rw, ra)
        return acc_ref[...]

      acc = pl.run_scoped(mm, plgpu.ACC((_TILE_M, tn), jnp.float32))
      loaded = []
      for v in range(n_vec):
        plgpu.barrier_wait(vec_bars.at[v])
        loaded.append(mc.bcast_cols(mc.load_row_vector(vecs.at[v]), acc.shape))
      plgpu.barrier_wait(res_bar.at[0])
      r = plgpu.load(res, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
      epilogue(rt, ct, acc, loaded, r, stage)

    _tile_loop(num_tiles, cta, ctas, tile, sync, pre)
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(
      body,
      plgpu.SMEM((slots, _TILE_M, 64), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((slots, 64, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((n_vec, tn), dtype),
      plgpu.SMEM((_TILE_M, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.SMEM((_TILE_M, tn), dtype, transforms=mc.TRANSFORMS),
      plgpu.Barrier(num_barriers=slots),
      plgpu.Barrier(num_barriers=slots),
      plgpu.Barrier(num_barriers=n_vec),
      plgpu.Barrier(num_barriers=1),
  )


def _attention_phase(qkv, o, *, shape: _Shape, cta, ctas, dtype, sync=None):
  """Items (row tile, head): softmax(Q K^T / 8) V with Q the tile's 64 rows and K, V all L rows
  of its frame (`megablock_mgpu.attention_tile`: single pass, L <= 256)."""
  length, d, heads = shape.length, shape.d, shape.heads
  bkv = 128 if length % 128 == 0 else 64
  per_frame = length // _TILE_M

  def body(*scratch):
    def item(j, t):
      rt, h = lax.div(t, heads), lax.rem(t, heads)
      frame0 = lax.div(rt, per_frame) * length
      col = h * _HEAD_DIM
      keys = lambda kb: pl.ds(frame0 + kb * bkv, bkv)  # noqa: E731
      mb.attention_tile(qkv.at[pl.ds(rt * _TILE_M, _TILE_M), pl.ds(col, _HEAD_DIM)],
                        lambda kb: qkv.at[keys(kb), pl.ds(d + col, _HEAD_DIM)],
                        lambda kb: qkv.at[keys(kb), pl.ds(2 * d + col, _HEAD_DIM)],
                        o.at[pl.ds(rt * _TILE_M, _TILE_M), pl.ds(col, _HEAD_DIM)], scratch,
                        dtype=dtype)

    _tile_loop(shape.row_tiles * heads, cta, ctas, item, sync)
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(body, *mb.attention_scratch(length, dtype))


# ----------------------------------------------------------------------------- phases


def _num_tiles(phase: str, shape: _Shape, config: TuningConfig) -> int:
  rt, d, f = shape.row_tiles, shape.d, shape.f
  return {"embed": rt * d // config.tile_n_narrow, "qkv": rt * 3 * d // config.tile_n,
          "attn": rt * shape.heads, "out": rt * d // config.tile_n_narrow,
          "fc1": rt * f // config.tile_n, "fc2": rt * d // config.tile_n_narrow,
          "final": rt}[phase]


def grid_size(shape: _Shape, config: TuningConfig) -> int:
  """CTAs of the fused kernel: the most tiles any phase has, capped at `max_ctas`."""
  most = max(_num_tiles(p, shape, config) for p in ("embed", *BLOCK_PHASES, "final"))
  return min(most, config.max_ctas)


def _counters(shape: _Shape) -> dict[str, int]:
  """Offsets of the dataflow counters in the semaphore array: one per frame for qkv (attention
  reads a whole frame's K/V), one per row tile for attn, out, fc1 and fc2 (embed counts as
  block -1's fc2); "total" is the array's length."""
  b, n = shape.batch, shape.row_tiles
  return {"qkv": 0, "attn": b, "out": b + n, "fc1": b + 2 * n, "fc2": b + 3 * n,
          "total": b + 4 * n}


def _dataflow(phase, blk, sem, shape: _Shape, config: TuningConfig):
  """(wait(t), signal(t)) for tile t of `phase` in block `blk`: each tile waits until the
  counter of what it reads has reached (blk + 1) x that phase's tiles per row tile (or frame),
  and increments its own row tile's (or frame's) counter when its stores have landed. Counters
  only grow, so no reset between blocks. Why this is enough (write-after-read included, with
  qkv double-buffered by block parity) is in the module docstring."""
  d, f, heads = shape.d, shape.f, shape.heads
  tn, tnn = config.tile_n, config.tile_n_narrow
  per_frame = shape.length // _TILE_M
  off = _counters(shape)
  cols = {"embed": d // tnn, "qkv": 3 * d // tn, "attn": heads, "out": d // tnn,
          "fc1": f // tn, "fc2": d // tnn, "final": 1}[phase]
  rt = lambda t: lax.div(t, cols)  # noqa: E731
  frame = lambda t: lax.div(rt(t), per_frame)  # noqa: E731
  n = jnp.int32(shape.depth) if blk is None else blk + 1  # blocks whose output is awaited

  def wait_on(name, unit, count):
    plgpu.semaphore_wait(sem.at[off[name] + unit], count, decrement=False, memory_scope="gpu")

  def signal(name, unit):
    plgpu.semaphore_signal(sem.at[off[name] + unit], 1, memory_scope="gpu")

  waits = {
      "embed": None,
      "qkv": lambda t: wait_on("fc2", rt(t), n * (d // tnn)),
      "attn": lambda t: wait_on("qkv", frame(t), n * per_frame * (3 * d // tn)),
      "out": lambda t: wait_on("attn", rt(t), n * heads),
      "fc1": lambda t: wait_on("out", rt(t), n * (d // tnn)),
      "fc2": lambda t: wait_on("fc1", rt(t), n * (f // tn)),
      "final": lambda t: wait_on("fc2", rt(t), (n + 1) * (d // tnn)),
  }
  signals = {
      "embed": lambda t: signal("fc2", rt(t)), "qkv": lambda t: signal("qkv", frame(t)),
      "attn": lambda t: signal("attn", rt(t)), "out": lambda t: signal("out", rt(t)),
      "fc1": lambda t: signal("fc1", rt(t)), "fc2": lambda t: signal("fc2", rt(t)),
      "final": lambda t: None,
  }
  wait = waits[phase] or (lambda t: None)
  return wait, signals[phase]


def _run_phase(phase, blk, refs, *, shape: _Shape, config: TuningConfig, cta, ctas, dtype):
  """One phase of block `blk` (None for embed/final). `refs` maps buffer names to GMEM refs:
  inputs (patches, pos, w_*, b_*, mod_*) and activations (x_in, x_out, qkv, o, h, out); in the
  fused kernel x_in is x_out (in-place residual updates), qkv has two buffers (block parity)
  and `sem` holds the dataflow counters (absent: no per-tile sync)."""
  d, f = shape.d, shape.f
  tn, tnn, slots = config.tile_n, config.tile_n_narrow, config.slots
  per_frame = shape.length // _TILE_M
  rows = lambda rt: pl.ds(rt * _TILE_M, _TILE_M)  # noqa: E731
  frame = lambda rt: lax.div(rt, per_frame)  # noqa: E731
  sync = None
  if refs.get("sem") is not None:
    sync = _dataflow(phase, blk, refs["sem"], shape, config)
  qkv_buf = refs.get("qkv")
  if blk is not None and qkv_buf is not None and len(qkv_buf.shape) == 3:  # fused: by parity
    qkv_buf = qkv_buf.at[lax.rem(blk, 2)]
  refs = {**refs, "qkv": qkv_buf}
  common = dict(cta=cta, ctas=ctas, dtype=dtype, sync=sync)
  wide, narrow = dict(slots=slots, **common), dict(slots=config.slots_narrow, **common)
  n = _num_tiles(phase, shape, config)

  x_tile = lambda rt, ct: refs["x_in"].at[rows(rt), pl.ds(ct * tnn, tnn)]  # noqa: E731

  def store(stage, dst, rt, ct, width, value):
    mb._store_async(stage, dst.at[rows(rt), pl.ds(ct * width, width)], value)

  if phase == "embed":
    def epi(rt, ct, acc, vecs, pos, stage):
      emb = (acc + vecs[0]).astype(dtype).astype(jnp.float32)
      store(stage, refs["x_out"], rt, ct, tnn, pos + emb)

    _matmul_phase(n, d // tnn, shape.p_in // 64,
                  lambda rt, kc: refs["patches"].at[rows(rt), pl.ds(kc * 64, 64)],
                  lambda ct, kc: refs["w_emb"].at[pl.ds(kc * 64, 64), pl.ds(ct * tnn, tnn)],
                  lambda rt, ct: (refs["b_emb"].at[ct],),
                  lambda rt, ct: refs["pos"].at[rows(lax.rem(rt, per_frame)), pl.ds(ct * tnn, tnn)],
                  epi, tn=tnn, **narrow)
  elif phase in ("qkv", "fc1", "final"):
    width, out_name, w_name, b_name, mod_i = {
        "qkv": (3 * d, "qkv", "w_qkv", "b_qkv", 0), "fc1": (f, "h", "w1", "b1", 1),
        "final": (64, "out", "w_f", "b_f", None)}[phase]
    tile = 64 if phase == "final" else tn
    w = refs[w_name] if blk is None else refs[w_name].at[blk]
    bias = refs[b_name] if blk is None else refs[b_name].at[blk]
    if phase == "final":
      mod_src = lambda rt: (refs["mod_f"].at[frame(rt), 0], refs["mod_f"].at[frame(rt), 1])  # noqa: E731
    else:  # (shift, scale): mods 0, 1 (LN1) or 3, 4 (LN2)
      mod_src = lambda rt: (refs["mod_ln"].at[frame(rt), blk, 3 * mod_i],  # noqa: E731
                            refs["mod_ln"].at[frame(rt), blk, 3 * mod_i + 1])

    def epi(rt, ct, acc, stage):
      if phase == "fc1":
        acc = mb._gelu_tanh(acc)
      store(stage, refs[out_name], rt, ct, tile, acc)

    _ln_matmul_phase(n, width // tile, lambda rt: refs["x_in"].at[rows(rt)], mod_src,
                     lambda ct, kc: w.at[pl.ds(kc * 64, 64), pl.ds(ct * tile, tile)],
                     lambda ct: bias.at[ct], epi, d=d, tn=tile, **wide)
  elif phase == "attn":
    _attention_phase(refs["qkv"], refs["o"], shape=shape, cta=cta, ctas=ctas, dtype=dtype,
                     sync=sync)
  elif phase in ("out", "fc2"):
    a_name, w_name, b_name, gate_i, k = {
        "out": ("o", "w_out", "b_out", 0, d), "fc2": ("h", "w2", "b2", 1, f)}[phase]
    w, bias = refs[w_name].at[blk], refs[b_name].at[blk]

    def epi(rt, ct, acc, vecs, x, stage):
      y = acc + vecs[0]
      if phase == "fc2":
        y = y.astype(dtype).astype(jnp.float32)
      delta = (vecs[1] * y).astype(dtype).astype(jnp.float32)
      store(stage, refs["x_out"], rt, ct, tnn, x + delta)

    _matmul_phase(n, d // tnn, k // 64,
                  lambda rt, kc: refs[a_name].at[rows(rt), pl.ds(kc * 64, 64)],
                  lambda ct, kc: w.at[pl.ds(kc * 64, 64), pl.ds(ct * tnn, tnn)],
                  lambda rt, ct: (bias.at[ct], refs["mod_gate"].at[frame(rt), blk, 3 * gate_i + 2, ct]),
                  x_tile, epi, tn=tnn, **narrow)
  else:
    raise ValueError(f"unknown phase {phase!r}")


# ----------------------------------------------------------------------------- the calls

# Kernel inputs, in call order (shapes in `_operands`).
_INPUTS = ("patches", "pos", "w_emb", "b_emb", "mod_ln", "mod_gate", "mod_f", "w_qkv", "b_qkv",
           "w_out", "b_out", "w1", "b1", "w2", "b2", "w_f", "b_f")


def _fused(shape: _Shape, config: TuningConfig, dtype):
  """The persistent kernel: embed, depth x (qkv, attn, out, fc1, fc2), final; grid barriers."""
  ctas = grid_size(shape, config)
  sds = jax.ShapeDtypeStruct
  rows, d, f = shape.rows, shape.d, shape.f

  dataflow = config.sync == "dataflow"

  def megastep_mgpu(*refs):  # its name is the kernel's in profiles
    named = dict(zip(_INPUTS, refs[:len(_INPUTS)]))
    out, x, qkv, o, h = refs[len(_INPUTS):]
    named.update(out=out, x_in=x, x_out=x, qkv=qkv, o=o, h=h)
    cta = lax.axis_index("cta")
    if dataflow:
      named["sem"] = pl.get_global(plgpu.SemaphoreType.REGULAR((_counters(shape)["total"],)))
    else:
      sem = pl.get_global(plgpu.SemaphoreType.REGULAR)
    run = functools.partial(_run_phase, refs=named, shape=shape, config=config, cta=cta,
                            ctas=ctas, dtype=dtype)

    def barrier(k):
      if dataflow:  # the tiles wait for their own inputs instead
        return
      plgpu.wait_smem_to_gmem(0, wait_read_only=False)
      plgpu.semaphore_signal(sem, 1, memory_scope="gpu")
      plgpu.semaphore_wait(sem, k * ctas, decrement=False, memory_scope="gpu")

    run("embed", None)
    barrier(jnp.int32(1))

    def block(blk, carry):
      for p, phase in enumerate(BLOCK_PHASES):
        run(phase, blk)
        barrier(2 + blk * len(BLOCK_PHASES) + p)
      return carry

    lax.fori_loop(0, shape.depth, block, None)
    run("final", None)

  out_types = (sds((rows, 64), dtype), sds((rows, d), dtype), sds((2, rows, 3 * d), dtype),
               sds((rows, d), dtype), sds((rows, f), dtype))
  return plgpu.kernel(megastep_mgpu, out_type=out_types, grid=(ctas,), grid_names=("cta",),
                      compiler_params=plgpu.CompilerParams(approx_math=True))


_PHASE_IO = {  # phase -> (activation inputs, activation output)
    "embed": ((), "x_out"), "qkv": (("x_in",), "qkv"), "attn": (("qkv",), "o"),
    "out": (("o", "x_in"), "x_out"), "fc1": (("x_in",), "h"), "fc2": (("h", "x_in"), "x_out"),
    "final": (("x_in",), "out")}


def _split_phase(phase: str, blk, shape: _Shape, config: TuningConfig, dtype):
  """One phase as its own call (CPU interpret mode): the inputs, then its activation inputs;
  returns its activation output."""
  ctas = min(_num_tiles(phase, shape, config), config.max_ctas)
  act_in, act_out = _PHASE_IO[phase]
  widths = {"x_out": shape.d, "qkv": 3 * shape.d, "o": shape.d, "h": shape.f, "out": 64}

  def kernel(*refs):
    named = dict(zip(_INPUTS + act_in, refs[:-1]))
    named[act_out] = refs[-1]
    _run_phase(phase, blk, named, shape=shape, config=config, cta=lax.axis_index("cta"),
               ctas=ctas, dtype=dtype)

  kernel.__name__ = f"megastep_{phase}"  # the kernel's name in profiles
  return plgpu.kernel(kernel, out_type=jax.ShapeDtypeStruct((shape.rows, widths[act_out]), dtype),
                      grid=(ctas,), grid_names=("cta",),
                      compiler_params=plgpu.CompilerParams(approx_math=True))


def _run_split(operands, shape: _Shape, config: TuningConfig, dtype):
  x = _split_phase("embed", None, shape, config, dtype)(*operands)
  for blk in range(shape.depth):
    qkv = _split_phase("qkv", blk, shape, config, dtype)(*operands, x)
    o = _split_phase("attn", blk, shape, config, dtype)(*operands, qkv)
    x = _split_phase("out", blk, shape, config, dtype)(*operands, o, x)
    h = _split_phase("fc1", blk, shape, config, dtype)(*operands, x)
    x = _split_phase("fc2", blk, shape, config, dtype)(*operands, h, x)
  return _split_phase("final", None, shape, config, dtype)(*operands, x)


# ----------------------------------------------------------------------------- public API


def modulations(packed, cond_BxD, dtype=jnp.bfloat16):
  """Every block's adaLN modulation and the final layer's, as the Flax modules compute them
  (Dense(silu(cond)) in bf16): (B, depth, 6, D) and (B, 2, D)."""
  c = jax.nn.silu(cond_BxD.astype(dtype))
  b, d = c.shape
  mods = jnp.einsum("bd,nde->bne", c, packed["w_mod"]).astype(dtype) + packed["b_mod"][None]
  fmod = (c @ packed["w_fmod"]).astype(dtype) + packed["b_fmod"]
  return mods.reshape(b, -1, 6, d).astype(dtype), fmod.reshape(b, 2, d).astype(dtype)


def _operands(patches_BxLxP, pos_LxD, mods, fmod, packed, config: TuningConfig, dtype):
  b, length, p = patches_BxLxP.shape
  p_in = packed["w_emb"].shape[0]
  tn, tnn = config.tile_n, config.tile_n_narrow
  patches = jnp.pad(patches_BxLxP.astype(dtype), ((0, 0), (0, 0), (0, p_in - p)))
  # The modulations twice, as free reshapes: in 64-wide rows for LN and tn_narrow-wide for gates.
  mods = mods.astype(dtype)
  vec = lambda a, t: a.reshape(*a.shape[:-1], a.shape[-1] // t, t)  # noqa: E731
  return (patches.reshape(b * length, p_in), pos_LxD.astype(dtype), packed["w_emb"],
          vec(packed["b_emb"], tnn), vec(mods, 64), vec(mods, tnn), vec(fmod.astype(dtype), 64),
          packed["w_qkv"], vec(packed["b_qkv"], tn), packed["w_out"], vec(packed["b_out"], tnn),
          packed["w1"], vec(packed["b1"], tn), packed["w2"], vec(packed["b2"], tnn),
          packed["w_f"], vec(packed["b_f"], 64))


def trunk(patches_BxLxP, pos_LxD, mods_BxNx6xD, fmod_Bx2xD, packed, *, heads: int,
          config: TuningConfig = DEFAULT_CONFIG, split: bool | None = None):
  """Patch embedding + every DiT block + final layer for B frames of L tokens: (B, L, 64) bf16
  (the patch-out values in the first `p_out` columns). `split=None` fuses on a GPU and splits
  the phases into separate calls elsewhere (interpret mode cannot allocate the semaphore)."""
  dtype = jnp.bfloat16
  b, length, _ = patches_BxLxP.shape
  depth, d = packed["w_qkv"].shape[0], packed["w_qkv"].shape[1]
  f = packed["w1"].shape[2]
  config.check(length, d, f, heads)
  shape = _Shape(b, length, d, f, heads, depth, packed["w_emb"].shape[0])
  ops = _operands(patches_BxLxP, pos_LxD, mods_BxNx6xD, fmod_Bx2xD, packed, config, dtype)
  if split is None:
    split = jax.devices()[0].platform not in ("gpu", "cuda")
  if split:
    out = _run_split(ops, shape, config, dtype)
  else:
    out = _fused(shape, config, dtype)(*ops)[0]
  return out.reshape(b, length, 64)


def trunk_reference(patches_BxLxP, pos_LxD, mods_BxNx6xD, fmod_Bx2xD, packed, *, heads: int):
  """Plain-jnp f32 trunk (embed, blocks via `megablock_reference`, final layer)."""
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  p = patches_BxLxP.shape[-1]
  x = f32(patches_BxLxP) @ f32(packed["w_emb"][:p]) + f32(packed["b_emb"]) + f32(pos_LxD)
  for i in range(packed["w_qkv"].shape[0]):
    params = {name: packed[key][i] for name, key in (
        ("qkv_kernel", "w_qkv"), ("qkv_bias", "b_qkv"), ("out_kernel", "w_out"),
        ("out_bias", "b_out"), ("fc1_kernel", "w1"), ("fc1_bias", "b1"), ("fc2_kernel", "w2"),
        ("fc2_bias", "b2"))}
    x = mb.megablock_reference(x, f32(mods_BxNx6xD[:, i]).reshape(x.shape[0], -1), params,
                               heads=heads)
  shift, scale = f32(fmod_Bx2xD[:, 0])[:, None], f32(fmod_Bx2xD[:, 1])[:, None]
  mean = x.mean(-1, keepdims=True)
  y = (x - mean) * lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + _EPS)
  return (y * (1 + scale) + shift) @ f32(packed["w_f"]) + f32(packed["b_f"])


# ----------------------------------------------------------------------------- the step


def step_trunk(patches_BxLxP, pos_LxD, cond_BxD, packed, *, heads: int, config: TuningConfig = DEFAULT_CONFIG,
               split: bool | None = None):
  """`modulations` of the per-frame condition vector, then `trunk`: everything of one denoiser
  step that runs on the packed weights (`pallas_kernels.api.megastep_trunk`)."""
  mods, fmod = modulations(packed, cond_BxD)
  return trunk(patches_BxLxP, pos_LxD, mods, fmod, packed, heads=heads, config=config, split=split)


# ----------------------------------------------------------------------------- benchmark


def random_packed(key, d: int, heads: int, depth: int, p_in: int, p_out: int, mlp_ratio: int = 4):
  """Random packed weights at realistic scales (N(0, 1/fan_in) matrices, N(0, 0.1^2) vectors)."""
  del heads
  f = mlp_ratio * d
  shapes = {"w_emb": (p_in, d), "b_emb": (d,), "w_qkv": (depth, d, 3 * d), "b_qkv": (depth, 3 * d),
            "w_out": (depth, d, d), "b_out": (depth, d), "w1": (depth, d, f), "b1": (depth, f),
            "w2": (depth, f, d), "b2": (depth, d), "w_mod": (depth, d, 6 * d),
            "b_mod": (depth, 6 * d), "w_fmod": (d, 2 * d), "b_fmod": (2 * d,),
            "w_f": (d, p_out), "b_f": (p_out,)}
  out = {}
  for i, (name, shp) in enumerate(shapes.items()):
    std = 1.0 / math.sqrt(shp[-2]) if len(shp) >= 2 else 0.1
    out[name] = (std * jax.random.normal(jax.random.fold_in(key, i), shp)).astype(jnp.bfloat16)
  out["w_emb"] = jnp.pad(out["w_emb"], ((0, mc.round_up(p_in, 64) - p_in), (0, 0)))
  out["w_f"] = jnp.pad(out["w_f"], ((0, 0), (0, 64 - p_out)))
  out["b_f"] = jnp.pad(out["b_f"], (0, 64 - p_out))
  return out


def main(_) -> None:
  """Trunk of small and base at 256 tokens (one frame): the fused kernel (dataflow and barrier
  sync) against the split phases (same tiles, call boundaries instead of the sync; small only:
  base's split path takes minutes to compile), the f32 reference and the XLA trunk on the same
  weights; times (host p50/p99 around a synchronised call, and the CUPTI sum of the GPU
  kernels) of each."""
  from pallas_kernels import bench

  for name, d, heads, depth in [("small", 384, 6, 6), ("base", 768, 12, 12)]:
    length, p_in, p_out = 256, 160, 32
    key = jax.random.key(d)
    packed = random_packed(key, d, heads, depth, p_in, p_out)
    patches = jax.random.normal(jax.random.fold_in(key, 100), (1, length, p_in), jnp.bfloat16)
    pos = 0.5 * jax.random.normal(jax.random.fold_in(key, 101), (length, d), jnp.bfloat16)
    cond = jax.random.normal(jax.random.fold_in(key, 102), (1, d), jnp.bfloat16)
    mods, fmod = modulations(packed, cond)
    ref = trunk_reference(patches, pos, mods, fmod, packed, heads=heads)[..., :p_out]
    xla = jax.jit(functools.partial(xla_trunk, heads=heads))
    out_xla = xla(patches, pos, mods, fmod, packed)[..., :p_out]
    logging.info(f"{name} L={length} D={d} depth={depth} grid={grid_size(_Shape(1, length, d, 4 * d, heads, depth, 192), DEFAULT_CONFIG)} "
                 f"xla vs ref {bench.rel_err(out_xla, ref):.2e}")
    split = jax.jit(functools.partial(trunk, heads=heads, split=True))
    args = (patches, pos, mods, fmod, packed)
    fns = [("xla", xla)]
    out_f = None
    for sync in ("dataflow", "barrier"):
      fn = jax.jit(functools.partial(trunk, heads=heads, split=False,
                                     config=dataclasses.replace(DEFAULT_CONFIG, sync=sync)))
      try:
        out = jax.block_until_ready(fn(*args))[..., :p_out]
      except Exception as e:  # noqa: BLE001  (report and go on to the next variant)
        logging.info(f"  fused {sync} FAILED {type(e).__name__}: {str(e)[:3000]}")
        continue
      logging.info(f"  fused {sync} vs ref {bench.rel_err(out, ref):.2e} vs xla {bench.rel_err(out, out_xla):.2e}")
      fns.append((f"fused {sync}", fn))
      if out_f is None:
        out_f, fused = out, fn
    out_s = out_f
    if depth <= 6:  # the split path compiles one kernel per phase: 2.5 minutes for base
      out_s = jax.block_until_ready(split(*args))[..., :p_out]
      logging.info(f"  split vs ref {bench.rel_err(out_s, ref):.2e} vs xla {bench.rel_err(out_s, out_xla):.2e}")
      fns.append(("split", split))
    for label, fn in fns:
      t = bench.time_fn(fn, *args, iters=200)
      logging.info(f"  {label}: p50 {t['p50_ms'] * 1e3:.1f} us p99 {t['p99_ms'] * 1e3:.1f} us "
                   f"kernels {bench.kernel_time_ms(fn, *args)} ms")
    if out_f is not None:
      errs = [bench.rel_err(fused(*args)[..., :p_out], out_s) for _ in range(50)]
      logging.info(f"  fused vs split (base: vs its first call) max over 50 calls {max(errs):.2e}; fused vs ref "
                   f"{bench.rel_err(out_f, ref):.2e} vs xla {bench.rel_err(out_f, out_xla):.2e}")


def xla_trunk(patches_BxLxP, pos_LxD, mods_BxNx6xD, fmod_Bx2xD, packed, *, heads: int):
  """The same trunk through XLA's ops (bf16), as the denoiser's modules compute it, for timing and comparison."""
  dtype = jnp.bfloat16
  b, length, p = patches_BxLxP.shape
  x = (patches_BxLxP.astype(dtype) @ packed["w_emb"][:p] + packed["b_emb"]).astype(dtype)
  x = x + pos_LxD.astype(dtype)
  for i in range(packed["w_qkv"].shape[0]):
    shift1, scale1, gate1, shift2, scale2, gate2 = (mods_BxNx6xD[:, i, j] for j in range(6))
    qkv = xla.ln_modulate_linear_xla(x, shift1, scale1, packed["w_qkv"][i], packed["b_qkv"][i])
    q, k, v = (a.reshape(b, length, heads, -1) for a in jnp.split(qkv, 3, axis=-1))
    o = xla.attention_xla(q, k, v).reshape(b, length, -1)
    o = jnp.einsum("bld,de->ble", o, packed["w_out"][i], preferred_element_type=jnp.float32)
    x = x + (gate1[:, None] * (o + packed["b_out"][i])).astype(dtype)
    y = xla.ln_modulate_xla(x, shift2, scale2)
    y = xla.mlp_xla(y, packed["w1"][i], packed["b1"][i], packed["w2"][i], packed["b2"][i])
    x = x + (gate2[:, None] * y).astype(dtype)
  y = xla.ln_modulate_xla(x, fmod_Bx2xD[:, 0], fmod_Bx2xD[:, 1])
  return (y @ packed["w_f"] + packed["b_f"]).astype(dtype)


__all__ = ["TuningConfig", "DEFAULT_CONFIG", "supports", "grid_size", "modulations", "trunk",
           "trunk_reference", "xla_trunk", "BLOCK_PHASES", "step_trunk", "random_packed"]


if __name__ == "__main__":
  from absl import app

  app.run(main)
