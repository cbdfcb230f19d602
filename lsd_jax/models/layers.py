"""Shared layers: sinusoidal embeddings, annotated dense layers, the adaLN-zero DiT block."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lsd_jax.models import sharding as sh
from pallas_kernels import api

Dtype = jnp.dtype


def sinusoidal(x_B, dim: int, max_period: float = 10_000.0, scale: float = 1000.0):
  """Sinusoidal features of a scalar per row (t, d, tau in [0, 1] are scaled by `scale`)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (scale * x_B.astype(jnp.float32))[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_2d(h: int, w: int, dim: int):
  """Fixed 2D sin-cos position embedding, (h*w, dim); any grid, so any resolution."""
  if dim % 4:
    raise ValueError(f"width {dim} must be divisible by 4 for 2D sin-cos positions")
  quarter = dim // 4
  omega = 1.0 / 10_000 ** (jnp.arange(quarter, dtype=jnp.float32) / quarter)
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  oy, ox = yy.reshape(-1, 1) * omega, xx.reshape(-1, 1) * omega
  return jnp.concatenate([jnp.sin(oy), jnp.cos(oy), jnp.sin(ox), jnp.cos(ox)], axis=1)


class Dense(nn.Module):
  """nn.Dense with logical axis names on its kernel and bias."""

  features: int
  axes: tuple[str, str]
  dtype: Dtype = jnp.bfloat16
  param_dtype: Dtype = jnp.float32
  zero_init: bool = False

  @nn.compact
  def __call__(self, x):
    k_init = nn.initializers.zeros if self.zero_init else nn.initializers.xavier_uniform()
    return nn.Dense(
        self.features, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=sh.init(k_init, *self.axes),
        bias_init=sh.init(nn.initializers.zeros, self.axes[1]))(x)


class ScalarEmbedder(nn.Module):
  """Scalar (t, d or tau) -> sinusoid -> MLP -> width D."""

  width: int
  freq_dim: int = 256
  dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, s):
    h = sinusoidal(s, self.freq_dim)
    h = Dense(self.width, (sh.COND, sh.EMBED), self.dtype)(h)
    return Dense(self.width, (sh.EMBED, sh.COND), self.dtype)(nn.silu(h))


def _param(mod: nn.Module, name: str, shape, axes, init=None, dtype=jnp.float32):
  init = init or nn.initializers.xavier_uniform()
  return mod.param(name, sh.init(init, *axes), shape, dtype)


@dataclasses.dataclass(frozen=True)
class TensorParallel:
  """How a tensor-parallel DiT block reduces (static; `lsd_jax.models.parallel` sets it).

  Each device holds a slice of every block's heads (q/k/v columns, out-projection rows) and MLP
  columns (fc1 columns, fc2 rows); each sub-block ends in one all-reduce of its partial sums.
  `reduce_dtype`: the dtype those partial sums travel in (bfloat16 halves the bytes of float32).
  `chunks` > 1: each sub-block's last matmul and its all-reduce run in this many token chunks,
  so that XLA can overlap chunk i's all-reduce with chunk i+1's matmul.
  `pad_heads`: where the heads do not divide over the devices (the large model's 12 over 8),
  give each block zero heads up to the next multiple (zero q/k/v columns and out-projection
  rows: they add exact zeros) instead of refusing the mesh; the attention does that much more work.
  """

  reduce_dtype: str = "bfloat16"
  chunks: int = 1
  pad_heads: bool = False

  def __post_init__(self):
    if self.reduce_dtype not in ("bfloat16", "float32"):
      raise ValueError(f"reduce_dtype must be bfloat16 or float32, got {self.reduce_dtype!r}")
    if self.chunks < 1:
      raise ValueError(f"chunks must be >= 1, got {self.chunks}")


Reduce = Callable[[Callable, jax.Array], jax.Array]  # (partial fn, x_BxLxF) -> fn(x) summed over devices


def _attention(x, shift, scale, gate, w_qkv, b_qkv, w_out, b_out, *, frames: int, head_dim: int,
               frame_causal: bool, window: int | None, dtype, impl: str, reduce: Reduce | None):
  """x + gate * Attention(LN(x) * (1 + scale) + shift) for x (B*T)xLxD, with as many heads as
  w_qkv holds: all of them, or (under `shard_map`, `reduce` set) this device's share, the
  out-projection's partial sums then reduced over the devices before its bias."""
  bt, l, _ = x.shape
  n = w_qkv.shape[1] // (3 * head_dim)
  cast = lambda a: a.astype(dtype)  # noqa: E731
  qkv = api.ln_modulate_linear(x, shift, scale, cast(w_qkv), cast(b_qkv), implementation=impl)
  q, k, v = jnp.split(qkv.reshape(bt, l, 3, n, head_dim), 3, axis=2)
  q, k, v = (y[:, :, 0] for y in (q, k, v))
  if frame_causal:  # attention over all frames' tokens, frame-causal
    q, k, v = (y.reshape(bt // frames, frames * l, n, head_dim) for y in (q, k, v))
    if reduce is None:  # (inside shard_map the arrays are per device: no global constraint)
      q, k, v = (sh.constrain(y, sh.BATCH, sh.TOKEN, sh.HEADS, sh.HEAD_DIM) for y in (q, k, v))
    o = api.attention(q, k, v, frame_len=l, window=window, implementation=impl)
  else:
    o = api.attention(q, k, v, implementation=impl)
  o = o.reshape(bt, l, n * head_dim)
  project = lambda o: jnp.einsum("bld,de->ble", o, cast(w_out), preferred_element_type=jnp.float32)  # noqa: E731
  if reduce is None:
    o = project(o) + b_out
  else:
    o = reduce(project, o).astype(jnp.float32) + b_out
  return x + (gate[:, None, :] * o).astype(dtype)


def _mlp(x, shift, scale, gate, w_fc1, b_fc1, w_fc2, b_fc2, *, dtype, impl: str, reduce: Reduce | None):
  """x + gate * MLP(LN(x) * (1 + scale) + shift), over all MLP columns or (`reduce` set) this
  device's, their partial sums reduced before fc2's bias."""
  cast = lambda a: a.astype(dtype)  # noqa: E731
  y = api.ln_modulate_xla(x, shift, scale)
  if reduce is None:
    y = api.mlp(y, cast(w_fc1), cast(b_fc1), cast(w_fc2), cast(b_fc2), implementation=impl)
  else:
    no_bias = jnp.zeros(b_fc2.shape, dtype)
    part = lambda y: api.mlp(y, cast(w_fc1), cast(b_fc1), cast(w_fc2), no_bias, implementation=impl)  # noqa: E731
    y = (reduce(part, y).astype(jnp.float32) + b_fc2.astype(jnp.float32)).astype(dtype)
  return x + (gate[:, None, :] * y).astype(dtype)


def _reducer(tp: TensorParallel, axis: str) -> Reduce:
  """fn(x) summed over the `axis` devices: one psum, or one per token chunk (`tp.chunks`).

  Chunk i+1's partial sums pass an optimization barrier together with chunk i's reduced sums:
  its matmul may still run while chunk i's all-reduce is in flight, but its own all-reduce comes
  after, so XLA's all-reduce combiner cannot merge the chunks' reductions into one that waits for
  every matmul (it does, without the barrier), which would leave nothing to overlap."""

  def reduce(fn, x_BxLxF):
    if tp.chunks == 1:
      return jax.lax.psum(fn(x_BxLxF).astype(tp.reduce_dtype), axis)
    outs = []
    for part in jnp.array_split(x_BxLxF, tp.chunks, axis=1):
      y = fn(part).astype(tp.reduce_dtype)
      if outs:
        outs[-1], y = jax.lax.optimization_barrier((outs[-1], y))
      outs.append(jax.lax.psum(y, axis))
    return jnp.concatenate(outs, axis=1)

  return reduce


def padded_heads(heads: int, devices: int, pad: bool) -> int:
  """Heads per block on `devices` tensor-parallel devices: `heads`, or with `pad` the next
  multiple of `devices` (zero heads added)."""
  return -(-heads // devices) * devices if pad else heads


def _tensor_axis(heads: int, mlp_dim: int, pad_heads: bool) -> tuple[str, int]:
  """The mesh axis the active logical rules split heads, q/k/v and MLP columns over, and the
  heads per block there (zero-padded with `pad_heads`); checks that the split is whole (a clear
  error rather than a shape mismatch deep in XLA)."""
  if not nn.get_logical_axis_rules():
    raise ValueError("a tensor-parallel DiT block must be traced under its mesh and logical rules "
                     "(lsd_jax.models.parallel.traced_under)")
  axes = {name: nn.logical_to_mesh_axes((name,))[0] for name in (sh.HEADS, sh.QKV, sh.MLP)}
  axis = axes[sh.QKV]
  if axis is None or not isinstance(axis, str) or set(axes.values()) != {axis}:
    raise ValueError(f"tensor parallelism needs heads, qkv and mlp on one mesh axis, rules give {axes}")
  for name in (sh.EMBED, sh.TOKEN):
    if nn.logical_to_mesh_axes((name,))[0] is not None:
      raise ValueError(f"tensor parallelism keeps {name!r} whole on every device; the rules split it")
  size = jax.sharding.get_abstract_mesh().shape[axis]
  heads = padded_heads(heads, size, pad_heads)
  if heads % size or mlp_dim % size:
    raise ValueError(f"{heads} heads and an MLP of {mlp_dim} do not split over {size} devices "
                     f"(mesh axis {axis!r}): both must be divisible by it")
  return axis, heads


def _sharded(fn, axis_names: tuple[tuple[str, ...], ...], *args):
  """`fn` on every device's shards of `args` (logical axis names per argument, mapped to mesh
  axes by the active rules); the result is laid out as the first argument."""
  specs = tuple(nn.logical_to_mesh_axes(names) for names in axis_names)
  return jax.shard_map(fn, in_specs=specs, out_specs=specs[0])(*args)


class DiTBlock(nn.Module):
  """Pre-norm transformer block with adaLN-zero modulation from a per-frame condition.

  x_BxTxLxD: T frames of L tokens each; cond_BxTxD. Per-token work is per frame; attention
  is within each frame (`frame_causal=False`) or over all frames under a frame-causal mask
  with a window of `window` earlier frames. `head_dim` and `mlp_dim` (default: D / heads and
  D * mlp_ratio) let a pruned block keep fewer heads (attention width heads * head_dim < D) and
  a narrower MLP; the residual width D is unchanged.

  With `tensor_parallel`, each sub-block runs under `shard_map` on this device's heads and MLP
  columns (Megatron-style; the mesh axis comes from the active logical rules) and ends in one
  all-reduce. Each device's q/k/v columns must then be an ordinary q/k/v kernel of its heads:
  `lsd_jax.models.parallel.to_tensor_layout` reorders them so (and adds the zero heads of
  `pad_heads`, which the parameter shapes then include).
  """

  heads: int
  mlp_ratio: int = 4
  frame_causal: bool = False
  window: int | None = None
  dtype: Dtype = jnp.bfloat16
  kernel_impl: str = "xla"
  head_dim: int | None = None
  mlp_dim: int | None = None
  tensor_parallel: TensorParallel | None = None

  @nn.compact
  def __call__(self, x_BxTxLxD, cond_BxTxD):
    b, t, l, d = x_BxTxLxD.shape
    n, f = self.heads, self.mlp_dim or d * self.mlp_ratio
    if self.head_dim is None and d % n:
      raise ValueError(f"width {d} is not divisible by {n} heads")
    hd = self.head_dim or d // n
    tp_axis = None
    if self.tensor_parallel is not None:  # n: this block's heads on the mesh (zero-padded or not)
      tp_axis, n = _tensor_axis(n, f, self.tensor_parallel.pad_heads)
    a = n * hd  # attention width (D unless heads were pruned)
    mod = Dense(6 * d, (sh.COND, sh.MOD), self.dtype, zero_init=True)(nn.silu(cond_BxTxD))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod.reshape(b * t, 6 * d), 6, axis=-1)

    w_qkv = _param(self, "qkv_kernel", (d, 3 * a), (sh.EMBED, sh.QKV))
    b_qkv = _param(self, "qkv_bias", (3 * a,), (sh.QKV,), nn.initializers.zeros)
    w_out = _param(self, "out_kernel", (a, d), (sh.QKV, sh.EMBED))
    b_out = _param(self, "out_bias", (d,), (sh.EMBED,), nn.initializers.zeros)
    w_fc1 = _param(self, "fc1_kernel", (d, f), (sh.EMBED, sh.MLP))
    b_fc1 = _param(self, "fc1_bias", (f,), (sh.MLP,), nn.initializers.zeros)
    w_fc2 = _param(self, "fc2_kernel", (f, d), (sh.MLP, sh.EMBED))
    b_fc2 = _param(self, "fc2_bias", (d,), (sh.EMBED,), nn.initializers.zeros)

    x = x_BxTxLxD.astype(self.dtype).reshape(b * t, l, d)
    attn = functools.partial(_attention, frames=t, head_dim=hd, frame_causal=self.frame_causal,
                             window=self.window, dtype=self.dtype, impl=self.kernel_impl)
    mlp = functools.partial(_mlp, dtype=self.dtype, impl=self.kernel_impl)
    if self.tensor_parallel is None:
      x = attn(x, shift1, scale1, gate1, w_qkv, b_qkv, w_out, b_out, reduce=None)
      x = mlp(x, shift2, scale2, gate2, w_fc1, b_fc1, w_fc2, b_fc2, reduce=None)
    else:
      reduce = _reducer(self.tensor_parallel, tp_axis)
      rows, vec = (sh.BATCH, sh.TOKEN, sh.EMBED), (sh.BATCH, sh.EMBED)
      x = _sharded(functools.partial(attn, reduce=reduce),
                   (rows, vec, vec, vec, (sh.EMBED, sh.QKV), (sh.QKV,), (sh.QKV, sh.EMBED), (sh.EMBED,)),
                   x, shift1, scale1, gate1, w_qkv, b_qkv, w_out, b_out)
      x = _sharded(functools.partial(mlp, reduce=reduce),
                   (rows, vec, vec, vec, (sh.EMBED, sh.MLP), (sh.MLP,), (sh.MLP, sh.EMBED), (sh.EMBED,)),
                   x, shift2, scale2, gate2, w_fc1, b_fc1, w_fc2, b_fc2)
    x = x.reshape(b, t, l, d)
    return sh.constrain(x, sh.BATCH, sh.FRAME, sh.TOKEN, sh.EMBED)


class FinalLayer(nn.Module):
  """adaLN-modulated LayerNorm, then a zero-initialised projection to patch values."""

  out_features: int
  dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x_BxTxLxD, cond_BxTxD):
    b, t, l, d = x_BxTxLxD.shape
    mod = Dense(2 * d, (sh.COND, sh.MOD), self.dtype, zero_init=True)(nn.silu(cond_BxTxD))
    shift, scale = jnp.split(mod.reshape(b * t, 2 * d), 2, axis=-1)
    y = api.ln_modulate_xla(x_BxTxLxD.reshape(b * t, l, d), shift, scale)
    y = Dense(self.out_features, (sh.EMBED, sh.PATCH_IN), self.dtype, zero_init=True)(y)
    return y.reshape(b, t, l, self.out_features)


def patchify(x_BxTxHxWxC, p: int):
  b, t, h, w, c = x_BxTxHxWxC.shape
  if h % p or w % p:
    raise ValueError(f"latent {h}x{w} is not divisible by patch {p}")
  x = x_BxTxHxWxC.reshape(b, t, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, (h // p) * (w // p), p * p * c)


def unpatchify(x_BxTxLxP, p: int, h: int, w: int, c: int):
  b, t = x_BxTxLxP.shape[:2]
  x = x_BxTxLxP.reshape(b, t, h // p, w // p, p, p, c)
  return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h, w, c)


def count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
