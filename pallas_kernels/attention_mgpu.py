"""Fused softmax attention for Hopper (Mosaic GPU), with the frame-causal KV-window mask.

FlashAttention-3 structure after jax's `pallas/ops/gpu/attention_mgpu.py`: per CTA one head and
`2 * block_q` query rows; two compute warpgroups (one `block_q` slab each) run QK^T and PV on
wgmma with an online softmax, and a third, memory warpgroup streams K/V blocks by TMA into a
`max_concurrent_steps`-deep ring.

What differs from jax's kernel:
- softmax scale 1/sqrt(head_dim) (the `jax.nn.dot_product_attention` semantics of `api.py`);
- the frame-causal mask of `xla.frame_causal_mask`: query frame j sees key frames
  j - window .. j. The CTA visits only the KV blocks that its rows can see (both the memory and
  the compute warpgroups derive the same range), and masks element-wise inside them;
- any sequence length: q/k/v are zero-padded to the block multiple and padded keys are masked.

The backward pass is the VJP of the XLA reference (`xla.attention_xla`); training uses it
rarely enough (history attention) that a fused backward kernel is not worth its complexity yet.
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

from pallas_kernels import xla
from pallas_kernels.reference import attention_reference

_LOG2E = math.log2(math.e)
_COMPUTE_WGS = 2


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  block_q: int = 64
  block_kv: int = 64
  max_concurrent_steps: int = 2
  # Stage P through shared memory for the PV wgmma instead of feeding it from registers.
  # Register-A wgmma is faster on the GPU; Mosaic GPU interpret mode only models SMEM operands.
  p_via_smem: bool = False

  def __post_init__(self):
    if self.block_q % 64:
      raise ValueError(f"{self.block_q=} must be a multiple of 64")
    if self.block_kv % 64:
      raise ValueError(f"{self.block_kv=} must be a multiple of 64")
    if self.max_concurrent_steps < 2:
      raise ValueError(f"{self.max_concurrent_steps=} must be at least 2")


DEFAULT_CONFIG = TuningConfig()


def _round_up(x: int, m: int) -> int:
  return (x + m - 1) // m * m


def _pad_seq(x, length):
  if x.shape[1] == length:
    return x
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _kv_block_range(q_start, q_rows, *, num_q, num_kv, frame_len, window, block_kv, num_kv_blocks):
  """[first, last) KV blocks that queries q_start .. q_start+q_rows-1 may see (traced ints)."""
  if frame_len is None:
    return jnp.int32(0), jnp.int32(num_kv_blocks)
  q_last = jnp.minimum(q_start + q_rows, num_q) - 1
  qf_first = jnp.minimum(q_start, num_q - 1) // frame_len
  qf_last = q_last // frame_len
  kv_end = jnp.minimum((qf_last + 1) * frame_len, num_kv)
  first = jnp.int32(0)
  if window is not None:
    first = jnp.maximum(qf_first - window, 0) * frame_len // block_kv
  last = (kv_end + block_kv - 1) // block_kv
  return first.astype(jnp.int32), last.astype(jnp.int32)


def _forward(q, k, v, *, frame_len, window, config: TuningConfig):
  batch, num_q, heads, head_dim = q.shape
  num_kv = k.shape[1]
  if k.shape != (batch, num_kv, heads, head_dim) or v.shape != k.shape:
    raise ValueError(f"k/v shapes {k.shape}, {v.shape} do not match q {q.shape}")
  if head_dim % 64:
    raise ValueError(f"{head_dim=} must be a multiple of 64")
  dtype = q.dtype
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise NotImplementedError(f"only bf16/f16, got {dtype}")
  block_q, block_kv = config.block_q, config.block_kv
  cta_q = _COMPUTE_WGS * block_q
  q_pad = _round_up(num_q, cta_q)
  kv_pad = _round_up(num_kv, block_kv)
  q, k, v = _pad_seq(q, q_pad), _pad_seq(k, kv_pad), _pad_seq(v, kv_pad)
  num_kv_blocks = kv_pad // block_kv
  max_steps = min(config.max_concurrent_steps, num_kv_blocks)
  needs_mask = frame_len is not None or kv_pad != num_kv
  scale_log2 = _LOG2E / math.sqrt(head_dim)
  kv_range = functools.partial(
      _kv_block_range, q_rows=cta_q, num_q=num_q, num_kv=num_kv, frame_len=frame_len,
      window=window, block_kv=block_kv, num_kv_blocks=num_kv_blocks)

  def kernel(q_ref, k_ref, v_ref, out_ref, scoped):
    b = lax.axis_index("batch")
    head = lax.axis_index("heads")
    wg = lax.axis_index("wg")
    (qo_smem2, k_smem, v_smem, p_smem2), (k_bar, v_bar, q_bar), (k_free, v_free), sched = scoped
    cta_start = lax.axis_index("q_seq") * cta_q
    kv_first, kv_last = kv_range(cta_start)
    num_steps = kv_last - kv_first

    def schedule_barrier():
      plgpu.barrier_arrive(sched)
      plgpu.barrier_wait(sched)

    @pl.when(wg < _COMPUTE_WGS)
    def _compute():
      plgpu.set_max_registers(232, action="increase")
      qo_smem = qo_smem2.at[wg]
      q_start = cta_start + wg * block_q
      plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_start, block_q), head], qo_smem, q_bar.at[wg])
      plgpu.barrier_wait(q_bar.at[wg])
      m_i = plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32),
                              plgpu.Layout.WGMMA.reduce(1))
      l_i = plgpu.layout_cast(jnp.full((block_q,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
      acc = plgpu.layout_cast(jnp.full((block_q, head_dim), 0, jnp.float32), plgpu.Layout.WGMMA)
      plgpu.barrier_wait(k_bar.at[0])
      pl.when(wg == 1)(schedule_barrier)

      def body(i, carry):
        acc, m_i, l_i = carry
        slot = lax.rem(i, jnp.int32(max_steps))

        def compute_qk(acc_ref):
          plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].T)
          schedule_barrier()
          return acc_ref[...]

        s = pl.run_scoped(compute_qk, plgpu.ACC((block_q, block_kv), jnp.float32))
        plgpu.barrier_arrive(k_free.at[slot])
        s = s * scale_log2
        if needs_mask:
          kv_start = (kv_first + i) * block_kv
          q_ids = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA)
          kv_ids = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
          q_ids = jnp.minimum(q_ids + q_start, num_q - 1)  # padded rows act as the last row
          kv_ids = kv_ids + kv_start
          mask = kv_ids < num_kv
          if frame_len is not None:
            qf, kf = q_ids // frame_len, kv_ids // frame_len
            mask &= kf <= qf
            if window is not None:
              mask &= kf >= qf - window
          s = jnp.where(mask, s, -jnp.inf)
        m_ij = jnp.maximum(m_i, s.max(axis=1))
        # A row whose visible keys all lie in later blocks has m_ij = -inf so far; keep exp
        # arguments finite for it (its p is 0 and alpha is irrelevant as acc and l are 0).
        m_safe = jnp.where(m_ij == -jnp.inf, 0.0, m_ij)
        alpha = jnp.exp2(m_i - m_safe)
        p = jnp.exp2(s - lax.broadcast_in_dim(m_safe, s.shape, [0]))
        acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
        l_i = l_i * alpha + p.sum(axis=1)
        p16 = p.astype(dtype)
        acc, l_i, p16 = lax.optimization_barrier((acc, l_i, p16))
        plgpu.barrier_arrive(sched)
        plgpu.barrier_wait(v_bar.at[slot])
        plgpu.barrier_wait(sched)

        # PV into a fresh accumulator, added to the rescaled one in registers (run_scoped rather
        # than run_state on ACC.init(acc), so that the kernel also runs in interpret mode).
        def compute_pv(acc_ref):
          if p_smem2 is None:
            plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
          else:
            plgpu.wgmma(acc_ref, p_smem2.at[wg], v_smem.at[slot])
          nxt = i + 1
          @pl.when(nxt < num_steps)
          def _():
            plgpu.barrier_wait(k_bar.at[lax.rem(nxt, jnp.int32(max_steps))])
          return acc_ref[...]

        if p_smem2 is not None:
          p_smem2[wg] = p16
          plgpu.commit_smem()
        acc = acc + pl.run_scoped(compute_pv, plgpu.ACC((block_q, head_dim), jnp.float32))
        plgpu.barrier_arrive(v_free.at[slot])
        return acc, m_ij, l_i

      acc, m_i, l_i = lax.fori_loop(0, num_steps, body, (acc, m_i, l_i))
      pl.when(wg == 0)(schedule_barrier)
      acc /= lax.broadcast_in_dim(l_i, acc.shape, [0])
      qo_smem[...] = acc.astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[b, pl.ds(q_start, block_q), head])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == _COMPUTE_WGS)
    def _memory():
      plgpu.set_max_registers(40, action="decrease")

      def fetch(i, slot):
        sl = (b, pl.ds((kv_first + i) * block_kv, block_kv), head)
        plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[slot], k_bar.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[slot], v_bar.at[slot])

      for i in range(max_steps):
        pl.when(i < num_steps)(functools.partial(fetch, i, i))

      @pl.loop(0, jnp.maximum(num_steps - max_steps, 0))
      def _(i):
        slot = lax.rem(i, jnp.int32(max_steps))
        plgpu.barrier_wait(k_free.at[slot])
        plgpu.barrier_wait(v_free.at[slot])
        fetch(i + max_steps, slot)

      # Observe the last release of every slot used, so no barrier phase is left pending.
      for slot in range(max_steps):
        @pl.when(slot < num_steps)
        def _():
          plgpu.barrier_wait(k_free.at[slot])
          plgpu.barrier_wait(v_free.at[slot])

  def attention_mgpu(q_ref, k_ref, v_ref, out_ref):  # its name is the kernel's in profiles
    transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    smem = (
        plgpu.SMEM((_COMPUTE_WGS, block_q, head_dim), dtype, transforms=transforms),
        plgpu.SMEM((max_steps, block_kv, head_dim), dtype, transforms=transforms),
        plgpu.SMEM((max_steps, block_kv, head_dim), dtype, transforms=transforms),
        plgpu.SMEM((_COMPUTE_WGS, block_q, block_kv), dtype, transforms=transforms)
        if config.p_via_smem else None,
    )
    pl.run_scoped(
        lambda *args: kernel(q_ref, k_ref, v_ref, out_ref, args),
        smem,
        (plgpu.Barrier(num_barriers=max_steps), plgpu.Barrier(num_barriers=max_steps),
         plgpu.Barrier(num_barriers=_COMPUTE_WGS)),
        (plgpu.Barrier(num_arrivals=_COMPUTE_WGS, num_barriers=max_steps),) * 2,
        plgpu.Barrier(num_arrivals=_COMPUTE_WGS),
        collective_axes="wg",
    )

  out = plgpu.kernel(
      attention_mgpu,
      out_type=jax.ShapeDtypeStruct(q.shape, dtype),
      grid=(heads, q_pad // cta_q, batch),
      grid_names=("heads", "q_seq", "batch"),
      num_threads=_COMPUTE_WGS + 1,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
  )(q, k, v)
  return out[:, :num_q]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attention(q, k, v, frame_len, window, config):
  return _forward(q, k, v, frame_len=frame_len, window=window, config=config)


def _attention_fwd(q, k, v, frame_len, window, config):
  return _attention(q, k, v, frame_len, window, config), (q, k, v)


def _attention_bwd(frame_len, window, config, res, d_out):
  del config
  _, vjp = jax.vjp(functools.partial(xla.attention_xla, frame_len=frame_len, window=window), *res)
  return vjp(d_out)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, *, frame_len: int | None = None,
              window: int | None = None, config: TuningConfig = DEFAULT_CONFIG):
  """`api.attention` on Mosaic GPU (Hopper); differentiable (backward through XLA)."""
  return _attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, frame_len, window, config)


def main(_) -> None:
  from pallas_kernels import bench

  shapes = [  # (L, heads, head_dim, frame_len, window)
      (256, 6, 64, None, None), (256, 12, 64, None, None), (1024, 12, 64, None, None),
      (1560, 12, 128, None, None), (1560, 24, 64, None, None),
      (4 * 256, 12, 64, 256, 2), (4 * 1560, 12, 128, 1560, 2),
  ]
  for length, heads, head_dim, frame_len, window in shapes:
    keys = jax.random.split(jax.random.key(length + heads), 3)
    q, k, v = (jax.random.normal(kk, (1, length, heads, head_dim), jnp.bfloat16) for kk in keys)
    ref = attention_reference(q, k, v, frame_len=frame_len, window=window)
    for config in (TuningConfig(64, 64, 2), TuningConfig(64, 128, 2)):
      fn = jax.jit(functools.partial(attention, frame_len=frame_len, window=window, config=config))
      out = fn(q, k, v)
      err = bench.rel_err(out, ref)
      t = bench.time_fn(fn, q, k, v)
      logging.info(f"L={length} N={heads} H={head_dim} frame_len={frame_len} window={window} {config}: "
                   f"p50 {t['p50_ms'] * 1e3:.1f} us  kernel {bench.kernel_time_ms(fn, q, k, v)} ms  "
                   f"rel_err {err:.2e}")
    xla_fn = jax.jit(functools.partial(xla.attention_xla, frame_len=frame_len, window=window))
    logging.info(f"  xla: p50 {bench.time_fn(xla_fn, q, k, v)['p50_ms'] * 1e3:.1f} us  "
                 f"kernels {bench.kernel_time_ms(xla_fn, q, k, v)} ms")


if __name__ == "__main__":
  from absl import app

  app.run(main)
