"""The f32 plain-jnp references every backend of an op is tested against (Mosaic GPU `*_mgpu.py`
and Pallas Triton `*_triton.py` alike): one reference per op, shared by its kernels, written
independently of the XLA implementations (`xla.py`, which are bf16 and fused the way XLA runs
them)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels import xla


def attention_reference(q, k, v, *, frame_len=None, window=None):
  """Plain-jnp f32 softmax attention with the same mask semantics."""
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  s = jnp.einsum("blnh,bsnh->bnls", q, k) / math.sqrt(q.shape[-1])
  if frame_len is not None:
    mask = xla.frame_causal_mask(q.shape[1], k.shape[1], frame_len, window)
    s = jnp.where(mask[None, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bnls,bsnh->blnh", p, v)


def ln_modulate_linear_reference(x, shift, scale, w, b=None, *, eps: float = 1e-6):
  """Plain-jnp f32 reference."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  y = (x - mean) / jnp.sqrt(var + eps)
  y = y * (1 + scale[:, None].astype(jnp.float32)) + shift[:, None].astype(jnp.float32)
  out = y @ w.astype(jnp.float32)
  return out if b is None else out + b.astype(jnp.float32)


def mlp_reference(x, w1, b1, w2, b2):
  """Plain-jnp f32 reference (tanh GELU)."""
  h = x.astype(jnp.float32) @ w1.astype(jnp.float32) + b1.astype(jnp.float32)
  h = jax.nn.gelu(h, approximate=True)
  return h @ w2.astype(jnp.float32) + b2.astype(jnp.float32)


def linear_reference(x, w, b=None, *, activation=None):
  """Plain-jnp f32 reference of act(x @ w + b) (activation None or "gelu_tanh", tanh GELU)."""
  out = x.astype(jnp.float32) @ w.astype(jnp.float32)
  if b is not None:
    out = out + b.astype(jnp.float32)
  return jax.nn.gelu(out, approximate=True) if activation == "gelu_tanh" else out
