"""Pieces shared by the Mosaic GPU matmul-shaped kernels (ln_modulate_linear, mlp, and the mega
kernels megablock and megastep).

Both keep a `tile_m x K` activation tile resident in shared memory, stored as K/64 chunks of
`tile_m x 64` (each one TMA box and one wgmma A operand), and stream the weight through a ring of
`64 x tile_n` shared-memory slots filled by TMA.
"""

from __future__ import annotations

import jax
import jax.experimental.pallas as pl
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp

CHUNK = 64  # K-chunk: 64 bf16 = 128 bytes, one 128-byte swizzle row.
TRANSFORMS = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))


def round_up(x: int, m: int) -> int:
  return (x + m - 1) // m * m


def pad_rows(x_BxLxD, length: int):
  if x_BxLxD.shape[1] == length:
    return x_BxLxD
  return jnp.pad(x_BxLxD, ((0, 0), (0, length - x_BxLxD.shape[1]), (0, 0)))


class WeightStream:
  """Ring of `slots` shared-memory buffers that TMA fills with 64-row chunks of an operand
  (a weight slab, or an activation streamed the same way).

  `fetch(i)` starts chunk i into slot i % slots; `wait(i)` blocks until it landed; after the
  wgmma that read chunk i has retired, `fetch(i + slots)` may reuse the slot. `i` and
  `num_chunks` may be Python ints or traced int32s (inside `fori_loop`, or a per-CTA count);
  chunks at or past `num_chunks` are skipped.
  """

  def __init__(self, w_gmem_chunk_fn, smem, barriers, num_chunks: int):
    self.src = w_gmem_chunk_fn  # i -> GMEM ref of shape (64, tile_n)
    self.smem, self.barriers = smem, barriers
    self.slots = smem.shape[0]
    self.num_chunks = num_chunks

  def _slot(self, i):
    return i % self.slots if isinstance(i, int) else jax.lax.rem(i, jnp.int32(self.slots))

  def fetch(self, i):
    def go():
      s = self._slot(i)
      plgpu.copy_gmem_to_smem(self.src(i), self.smem.at[s], self.barriers.at[s])

    if isinstance(i, int) and isinstance(self.num_chunks, int):
      if i < self.num_chunks:
        go()
    else:
      pl.when(i < self.num_chunks)(go)

  def prologue(self, start=0):
    """Fills every slot from chunk `start` on (as far as there are chunks)."""
    n = self.slots
    if isinstance(start, int) and isinstance(self.num_chunks, int):
      n = min(n, self.num_chunks - start)
    for i in range(n):
      self.fetch(start + i)

  def wait(self, i):
    s = self._slot(i)
    plgpu.barrier_wait(self.barriers.at[s])
    return self.smem.at[s]


def matmul_resident_a(acc_ref, a_chunks_smem, stream: WeightStream, first_chunk=0):
  """acc += sum_k A[:, k-chunk] @ W[k-chunk, :], W chunks `first_chunk ..` from `stream`.

  Refills each slot as soon as the wgmma that read it has retired.
  """
  k_chunks = a_chunks_smem.shape[0]
  for kc in range(k_chunks):
    i = first_chunk + kc
    w = stream.wait(i)
    plgpu.wgmma(acc_ref, a_chunks_smem.at[kc], w)
    plgpu.wgmma_wait(0)
    stream.fetch(i + stream.slots)


def load_row_vector(ref_1d, layout=None):
  """Loads a (n,) GMEM/SMEM vector as f32 in the layout that broadcasts over WGMMA columns."""
  return plgpu.load(ref_1d, layout=layout or plgpu.Layout.WGMMA.reduce(0)).astype(jnp.float32)


def bcast_cols(vec_N, shape):
  return jax.lax.broadcast_in_dim(vec_N, shape, [1])


def bcast_rows(vec_M, shape):
  return jax.lax.broadcast_in_dim(vec_M, shape, [0])


def store_tile(out_smem, out_gmem, value):
  """Registers -> SMEM -> TMA store to `out_gmem`; waits for the store to finish."""
  out_smem[...] = value.astype(out_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(out_smem, out_gmem)
  plgpu.wait_smem_to_gmem(0)


__all__ = ["CHUNK", "TRANSFORMS", "round_up", "pad_rows", "WeightStream", "matmul_resident_a",
           "load_row_vector", "bcast_cols", "bcast_rows", "store_tile", "pl"]
