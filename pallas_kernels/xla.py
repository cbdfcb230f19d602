"""The XLA implementations of the kernels' ops: plain jnp (and `jax.nn.dot_product_attention`),
bf16 in and out with f32 accumulation. They are the ops' semantics: `api.py` falls back to them
wherever no kernel runs, and every kernel's backward pass is the VJP of its op here."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_xla(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, *, frame_len: int | None = None,
                  window: int | None = None):
  """Softmax attention; optional frame-causal mask over a token sequence of whole frames.

  With `frame_len` set, tokens are grouped in frames of `frame_len` tokens (query and key
  sequences both start at frame 0), and a query in frame j sees keys in frames
  j - window .. j (all earlier frames when `window` is None). Without it: full attention.
  """
  mask = None
  if frame_len is not None:
    mask = frame_causal_mask(q_BxLxNxH.shape[1], k_BxSxNxH.shape[1], frame_len, window)
    mask = mask[None, None]
  return jax.nn.dot_product_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask)


def frame_causal_mask(num_q: int, num_k: int, frame_len: int, window: int | None):
  """Bool LxS mask: query frame j attends key frames max(0, j - window) .. j."""
  qf = jnp.arange(num_q) // frame_len
  kf = jnp.arange(num_k) // frame_len
  mask = kf[None, :] <= qf[:, None]
  if window is not None:
    mask &= kf[None, :] >= qf[:, None] - window
  return mask


def ln_modulate_xla(x_BxLxD, shift_BxD, scale_BxD, *, eps: float = 1e-6):
  """LayerNorm without affine parameters, then adaLN: x_hat * (1 + scale) + shift (f32 stats)."""
  x32 = x_BxLxD.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  y = y * (1.0 + scale_BxD[:, None, :].astype(jnp.float32)) + shift_BxD[:, None, :].astype(jnp.float32)
  return y.astype(x_BxLxD.dtype)


def ln_modulate_linear_xla(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F=None, *, eps: float = 1e-6):
  """`ln_modulate` fused with the projection that follows it: (LN(x)*(1+scale)+shift) @ w + b."""
  y = ln_modulate_xla(x_BxLxD, shift_BxD, scale_BxD, eps=eps)
  out = jnp.einsum("bld,df->blf", y, w_DxF.astype(y.dtype), preferred_element_type=jnp.float32)
  if b_F is not None:
    out = out + b_F.astype(jnp.float32)
  return out.astype(x_BxLxD.dtype)


def linear_xla(x_BxLxK, w_KxN, b_N=None, *, activation: str | None = None):
  """act(x @ w + b) in x's dtype: f32 accumulation, bias and activation (None or "gelu_tanh")
  in f32, one rounding at the end (what XLA's GEMM plus its convert fusion compute)."""
  out = jnp.einsum("...k,kn->...n", x_BxLxK, w_KxN.astype(x_BxLxK.dtype), preferred_element_type=jnp.float32)
  if b_N is not None:
    out = out + b_N.astype(jnp.float32)
  if activation == "gelu_tanh":
    out = jax.nn.gelu(out, approximate=True)
  elif activation is not None:
    raise ValueError(f"unknown activation {activation!r}")
  return out.astype(x_BxLxK.dtype)


def mlp_xla(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D):
  """gelu(x @ w1 + b1) @ w2 + b2 (tanh GELU), f32 accumulation."""
  h = jnp.einsum("bld,df->blf", x_BxLxD, w1_DxF.astype(x_BxLxD.dtype),
                 preferred_element_type=jnp.float32) + b1_F.astype(jnp.float32)
  h = jax.nn.gelu(h, approximate=True).astype(x_BxLxD.dtype)
  out = jnp.einsum("blf,fd->bld", h, w2_FxD.astype(h.dtype),
                   preferred_element_type=jnp.float32) + b2_D.astype(jnp.float32)
  return out.astype(x_BxLxD.dtype)
