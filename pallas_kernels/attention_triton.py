"""Fused softmax attention on Pallas's Triton backend, with the frame-causal KV-window mask.

The portable path of `api.attention` (any NVIDIA GPU that Triton targets, sm_80 and later): the
same signature and semantics as the Mosaic GPU kernel in `attention_mgpu.py`.

FlashAttention-2 structure, as in jax's `pallas/ops/gpu/attention.py`: one program per
(`block_q` query rows, head, batch element) keeps its query tile and an f32 accumulator in
registers and loops over `block_kv`-row K/V blocks with an online softmax (base-2 exponentials,
scale 1/sqrt(head_dim)). Triton software-pipelines the K/V loads (`num_stages`).

What differs from jax's kernel:
- the frame-causal mask of `xla.frame_causal_mask`: query frame j sees key frames
  j - window .. j. A program's KV loop starts at the first key frame that any of its rows can see
  (at a frame boundary, not only a block boundary: Triton loads need no alignment) and ends at the
  end of its last row's frame; inside that range the mask is element-wise;
- any sequence length, without padding copies: query and key rows past the end are masked
  loads/stores (the Mosaic kernel pads by TMA box instead).

Head dims must be a power of two in [16, 256] and dtypes bf16/f16 (Triton's tensor shapes are
powers of two); other shapes fall back to XLA through `supports`.

The backward pass is the VJP of the XLA reference (`xla.attention_xla`), as for the Mosaic
kernel: it recomputes the scores in XLA rather than reusing the forward's softmax statistics.
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
from pallas_kernels.reference import attention_reference

_LOG2E = math.log2(math.e)
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _is_pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  block_q: int = 64
  block_kv: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_kv"):
      size = getattr(self, name)
      if not _is_pow2(size) or not 16 <= size <= 256:
        raise ValueError(f"{name}={size} must be a power of two in [16, 256] (tl.dot tiles)")
    if self.num_warps not in (1, 2, 4, 8, 16):
      raise ValueError(f"{self.num_warps=} must be a power of two <= 16")
    if self.num_stages < 1:
      raise ValueError(f"{self.num_stages=} must be at least 1")


DEFAULT_CONFIG = TuningConfig()


def supports(q_BxLxNxH) -> bool:
  """Whether the kernel handles these queries (else `attention` uses XLA)."""
  head_dim = q_BxLxNxH.shape[-1]
  return _is_pow2(head_dim) and 16 <= head_dim <= 256 and jnp.dtype(q_BxLxNxH.dtype) in _DTYPES


def _kv_range(q_start, *, block_q, num_q, num_kv, frame_len, window):
  """[first, end) key rows that queries q_start .. q_start + block_q - 1 may see (traced)."""
  if frame_len is None:
    return jnp.int32(0), jnp.int32(num_kv)
  fl = jnp.int32(frame_len)
  q_last = jnp.minimum(q_start + block_q, num_q) - 1
  qf_first = lax.div(jnp.minimum(q_start, num_q - 1), fl)
  end = jnp.minimum((lax.div(q_last, fl) + 1) * fl, num_kv)
  first = jnp.int32(0) if window is None else jnp.maximum(qf_first - window, 0) * fl
  return first, end


def _kernel(q_ref, k_ref, v_ref, o_ref, *, num_q, num_kv, frame_len, window, block_q, block_kv):
  """One program: `block_q` query rows of one (batch, head); refs are (rows, head_dim)."""
  head_dim = q_ref.shape[-1]
  scale_log2 = _LOG2E / math.sqrt(head_dim)
  q_start = pl.program_id(0) * block_q
  q_ids = q_start + jnp.arange(block_q, dtype=jnp.int32)
  q_valid = q_ids < num_q
  q = pltr.load(q_ref.at[pl.ds(q_start, block_q), :], mask=q_valid[:, None], other=0.0)
  kv_first, kv_end = _kv_range(q_start, block_q=block_q, num_q=num_q, num_kv=num_kv,
                               frame_len=frame_len, window=window)
  num_steps = lax.div(kv_end - kv_first + block_kv - 1, jnp.int32(block_kv))
  # Rows past the end act as the last row, so that no row sees only masked keys.
  q_frame = None
  if frame_len is not None:
    q_frame = lax.div(jnp.minimum(q_ids, num_q - 1), jnp.int32(frame_len))

  def body(i, carry):
    acc, m_i, l_i = carry
    kv_start = kv_first + i * block_kv
    kv_ids = kv_start + jnp.arange(block_kv, dtype=jnp.int32)
    kv_valid = kv_ids < kv_end
    kv_rows = pl.ds(kv_start, block_kv)
    k = pltr.load(k_ref.at[kv_rows, :], mask=kv_valid[:, None], other=0.0)
    s = pltr.dot(q, k, trans_b=True) * scale_log2
    mask = jnp.broadcast_to(kv_valid[None, :], s.shape)
    if q_frame is not None:
      k_frame = lax.div(kv_ids, jnp.int32(frame_len))
      mask &= k_frame[None, :] <= q_frame[:, None]
      if window is not None:
        mask &= k_frame[None, :] >= q_frame[:, None] - window
    s = jnp.where(mask, s, -jnp.inf)
    m_ij = jnp.maximum(m_i, s.max(axis=1))
    # A row whose visible keys all lie in later blocks has m_ij = -inf so far; keep the exp2
    # arguments finite for it (its p is 0, and alpha does not matter as acc and l are 0).
    m_safe = jnp.where(m_ij == -jnp.inf, 0.0, m_ij)
    alpha = jnp.exp2(m_i - m_safe)
    p = jnp.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + p.sum(axis=1)
    v = pltr.load(v_ref.at[kv_rows, :], mask=kv_valid[:, None], other=0.0)
    acc = acc * alpha[:, None] + pltr.dot(p.astype(v.dtype), v)
    return acc, m_ij, l_i

  init = (jnp.zeros((block_q, head_dim), jnp.float32),
          jnp.full((block_q,), -jnp.inf, jnp.float32), jnp.zeros((block_q,), jnp.float32))
  acc, _, l_i = lax.fori_loop(0, num_steps, body, init)
  out = acc / l_i[:, None]
  pltr.store(o_ref.at[pl.ds(q_start, block_q), :], out.astype(o_ref.dtype),
             mask=q_valid[:, None])


def _forward(q, k, v, *, frame_len, window, config: TuningConfig, interpret: bool = False):
  batch, num_q, heads, head_dim = q.shape
  num_kv = k.shape[1]
  if k.shape != (batch, num_kv, heads, head_dim) or v.shape != k.shape:
    raise ValueError(f"k/v shapes {k.shape}, {v.shape} do not match q {q.shape}")
  if not supports(q):
    raise NotImplementedError(f"head_dim {head_dim} / dtype {q.dtype}: see `supports`")
  block_q = config.block_q
  kernel = functools.partial(_kernel, num_q=num_q, num_kv=num_kv, frame_len=frame_len,
                             window=window, block_q=block_q, block_kv=config.block_kv)
  # Batch and head are squeezed block dims; each program sees whole (L, head_dim) sequences.
  q_spec = pl.BlockSpec((None, num_q, None, head_dim), lambda i, n, b: (b, 0, n, 0))
  kv_spec = pl.BlockSpec((None, num_kv, None, head_dim), lambda i, n, b: (b, 0, n, 0))
  return pl.pallas_call(
      kernel,
      grid=(pl.cdiv(num_q, block_q), heads, batch),
      in_specs=[q_spec, kv_spec, kv_spec],
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=pltr.CompilerParams(num_warps=config.num_warps,
                                          num_stages=config.num_stages),
      interpret=interpret,
      name="attention_triton",
  )(q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _attention(q, k, v, frame_len, window, config, interpret):
  return _forward(q, k, v, frame_len=frame_len, window=window, config=config,
                  interpret=interpret)


def _attention_fwd(q, k, v, frame_len, window, config, interpret):
  return _attention(q, k, v, frame_len, window, config, interpret), (q, k, v)


def _attention_bwd(frame_len, window, config, interpret, res, d_out):
  del config, interpret
  _, vjp = jax.vjp(functools.partial(xla.attention_xla, frame_len=frame_len, window=window), *res)
  return vjp(d_out)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, *, frame_len: int | None = None,
              window: int | None = None, config: TuningConfig = DEFAULT_CONFIG,
              interpret: bool = False):
  """`api.attention` on Pallas Triton; differentiable (backward through XLA).

  `interpret=True` runs the kernel in Pallas interpret mode (CPU tests)."""
  if not supports(q_BxLxNxH):
    device.warn_fallback_once("attention", f"triton (head_dim {q_BxLxNxH.shape[-1]}, "
                                        f"{q_BxLxNxH.dtype})")
    return xla.attention_xla(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, frame_len=frame_len, window=window)
  return _attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, frame_len, window, config, interpret)


def main(_) -> None:
  from pallas_kernels import bench

  mosaic = None
  if device.is_hopper():
    from pallas_kernels import attention_mgpu as mosaic
  shapes = [  # (L, heads, head_dim, frame_len, window): attention_mgpu's benchmark shapes
      (256, 6, 64, None, None), (256, 12, 64, None, None), (1024, 12, 64, None, None),
      (1560, 12, 128, None, None), (1560, 24, 64, None, None),
      (4 * 256, 12, 64, 256, 2), (4 * 1560, 12, 128, 1560, 2),
  ]
  configs = (TuningConfig(64, 64, 4, 2), TuningConfig(128, 64, 4, 3), TuningConfig(128, 64, 8, 3),
             TuningConfig(128, 128, 8, 2))
  for length, heads, head_dim, frame_len, window in shapes:
    keys = jax.random.split(jax.random.key(length + heads), 3)
    q, k, v = (jax.random.normal(kk, (1, length, heads, head_dim), jnp.bfloat16) for kk in keys)
    ref = attention_reference(q, k, v, frame_len=frame_len, window=window)
    mask_kw = dict(frame_len=frame_len, window=window)
    for config in configs:
      fn = jax.jit(functools.partial(attention, config=config, **mask_kw))
      err = bench.rel_err(fn(q, k, v), ref)
      t = bench.time_fn(fn, q, k, v)
      logging.info(f"L={length} N={heads} H={head_dim} frame_len={frame_len} window={window} {config}: "
                   f"p50 {t['p50_ms'] * 1e3:.1f} us  kernel {bench.kernel_time_ms(fn, q, k, v)} ms  "
                   f"rel_err {err:.2e}")
    xla_fn = jax.jit(functools.partial(xla.attention_xla, **mask_kw))
    logging.info(f"  xla: p50 {bench.time_fn(xla_fn, q, k, v)['p50_ms'] * 1e3:.1f} us  "
                 f"kernels {bench.kernel_time_ms(xla_fn, q, k, v)} ms")
    if mosaic is not None:
      fn = jax.jit(functools.partial(mosaic.attention, **mask_kw))
      logging.info(f"  mosaic: p50 {bench.time_fn(fn, q, k, v)['p50_ms'] * 1e3:.1f} us  "
                   f"kernel {bench.kernel_time_ms(fn, q, k, v)} ms  "
                   f"rel_err {bench.rel_err(fn(q, k, v), ref):.2e}")


if __name__ == "__main__":
  from absl import app

  app.run(main)
