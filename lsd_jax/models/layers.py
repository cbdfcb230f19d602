"""Shared layers: sinusoidal embeddings, annotated dense layers, the adaLN-zero DiT block."""

from __future__ import annotations

import math

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


class DiTBlock(nn.Module):
  """Pre-norm transformer block with adaLN-zero modulation from a per-frame condition.

  x_BxTxLxD: T frames of L tokens each; cond_BxTxD. Per-token work is per frame; attention
  is within each frame (`frame_causal=False`) or over all frames under a frame-causal mask
  with a window of `window` earlier frames. `head_dim` and `mlp_dim` (default: D / heads and
  D * mlp_ratio) let a pruned block keep fewer heads (attention width heads * head_dim < D) and
  a narrower MLP; the residual width D is unchanged.
  """

  heads: int
  mlp_ratio: int = 4
  frame_causal: bool = False
  window: int | None = None
  dtype: Dtype = jnp.bfloat16
  kernel_impl: str = "xla"
  head_dim: int | None = None
  mlp_dim: int | None = None

  @nn.compact
  def __call__(self, x_BxTxLxD, cond_BxTxD):
    b, t, l, d = x_BxTxLxD.shape
    n, f = self.heads, self.mlp_dim or d * self.mlp_ratio
    if self.head_dim is None and d % n:
      raise ValueError(f"width {d} is not divisible by {n} heads")
    hd = self.head_dim or d // n
    a = n * hd  # attention width (D unless heads were pruned)
    mod = Dense(6 * d, (sh.COND, sh.MLP), self.dtype, zero_init=True)(nn.silu(cond_BxTxD))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod.reshape(b * t, 6 * d), 6, axis=-1)

    w_qkv = _param(self, "qkv_kernel", (d, 3 * a), (sh.EMBED, sh.QKV))
    b_qkv = _param(self, "qkv_bias", (3 * a,), (sh.QKV,), nn.initializers.zeros)
    w_out = _param(self, "out_kernel", (a, d), (sh.QKV, sh.EMBED))
    b_out = _param(self, "out_bias", (d,), (sh.EMBED,), nn.initializers.zeros)
    w_fc1 = _param(self, "fc1_kernel", (d, f), (sh.EMBED, sh.MLP))
    b_fc1 = _param(self, "fc1_bias", (f,), (sh.MLP,), nn.initializers.zeros)
    w_fc2 = _param(self, "fc2_kernel", (f, d), (sh.MLP, sh.EMBED))
    b_fc2 = _param(self, "fc2_bias", (d,), (sh.EMBED,), nn.initializers.zeros)
    cast = lambda a: a.astype(self.dtype)  # noqa: E731

    x = x_BxTxLxD.astype(self.dtype).reshape(b * t, l, d)
    qkv = api.ln_modulate_linear(x, shift1, scale1, cast(w_qkv), cast(b_qkv),
                                 implementation=self.kernel_impl)
    q, k, v = jnp.split(qkv.reshape(b * t, l, 3, n, hd), 3, axis=2)
    q, k, v = (y[:, :, 0] for y in (q, k, v))
    if self.frame_causal:  # attention over all frames' tokens, frame-causal
      q, k, v = (y.reshape(b, t * l, n, hd) for y in (q, k, v))
      q, k, v = (sh.constrain(y, sh.BATCH, sh.TOKEN, sh.HEADS, sh.HEAD_DIM) for y in (q, k, v))
      o = api.attention(q, k, v, frame_len=l, window=self.window, implementation=self.kernel_impl)
    else:
      o = api.attention(q, k, v, implementation=self.kernel_impl)
    o = o.reshape(b * t, l, a)
    o = jnp.einsum("bld,de->ble", o, cast(w_out), preferred_element_type=jnp.float32) + b_out
    x = x + (gate1[:, None, :] * o).astype(self.dtype)

    y = api.ln_modulate_xla(x, shift2, scale2)
    y = api.mlp(y, cast(w_fc1), cast(b_fc1), cast(w_fc2), cast(b_fc2), implementation=self.kernel_impl)
    x = x + (gate2[:, None, :] * y).astype(self.dtype)
    x = x.reshape(b, t, l, d)
    return sh.constrain(x, sh.BATCH, sh.FRAME, sh.TOKEN, sh.EMBED)


class FinalLayer(nn.Module):
  """adaLN-modulated LayerNorm, then a zero-initialised projection to patch values."""

  out_features: int
  dtype: Dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, x_BxTxLxD, cond_BxTxD):
    b, t, l, d = x_BxTxLxD.shape
    mod = Dense(2 * d, (sh.COND, sh.MLP), self.dtype, zero_init=True)(nn.silu(cond_BxTxD))
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
