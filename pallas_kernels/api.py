"""Dispatch for the denoiser's hot ops: Mosaic GPU on Hopper, Triton elsewhere on NVIDIA, XLA otherwise.

Every op has one signature whatever the implementation, and the XLA path is the reference
semantics that the kernels are tested against. `implementation` is one of:

- ``"xla"``: plain jnp / `jax.nn.dot_product_attention`; runs everywhere, differentiable.
- ``"mosaic"``: Pallas Mosaic GPU kernels (Hopper, sm_90a).
- ``"triton"``: Pallas Triton kernels (any recent NVIDIA GPU).
- ``"auto"``: mosaic on Hopper, triton on other CUDA GPUs, xla on CPU/TPU.
- ``"megastep"``: the whole denoiser step as one persistent Mosaic GPU kernel
  (`megastep_mgpu`, used by `lsd.velocity_fn` when the model's weights were packed for it on a
  Hopper GPU); per-op calls, and shapes the mega kernel does not support, behave as ``"auto"``.

Kernel implementations register themselves in `_REGISTRY` (see `register`); an op with no
kernel for the chosen backend falls back to XLA, logged once.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging

IMPLEMENTATIONS = ("auto", "xla", "mosaic", "triton", "megastep")

# (op name, backend) -> callable with the op's signature.
_REGISTRY: dict[tuple[str, str], Callable] = {}


def register(op: str, backend: str):
  """Decorator: registers `fn` as the `backend` implementation of `op`.

  The registry holds `fn` under one `jax.jit` (its keyword-only arguments static), so that a
  model calling the op at the same shapes in every block, and every step of an unrolled frame,
  traces and lowers the kernel once per compiled function instead of once per call site: JAX
  caches a nested jit's lowering by its jaxpr, and XLA inlines the call. (Lowering a Mosaic GPU
  kernel takes about a second; the large model's step has 30 attention calls.) `fn` itself is
  returned unchanged."""

  def wrap(fn):
    static = tuple(n for n, p in inspect.signature(fn).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY)
    _REGISTRY[(op, backend)] = jax.jit(fn, static_argnames=static)
    return fn

  return wrap


def is_hopper() -> bool:
  """True when the default device is an NVIDIA Hopper GPU (compute capability 9.x)."""
  dev = jax.devices()[0]
  if dev.platform not in ("gpu", "cuda"):
    return False
  cc = str(getattr(dev, "compute_capability", ""))
  return cc.startswith("9") or any(n in dev.device_kind for n in ("H100", "H200", "H800", "GH200"))


@functools.cache
def _default_backend() -> str:
  dev = jax.devices()[0]
  if dev.platform not in ("gpu", "cuda"):
    return "xla"
  return "mosaic" if is_hopper() else "triton"


@functools.cache
def _warn_fallback(op: str, backend: str) -> None:
  logging.warning("pallas_kernels: no %s kernel for %r; using XLA", backend, op)


def warn_fallback_once(op: str, why: str) -> None:
  """For kernels that fall back to XLA on shapes they do not support."""
  _warn_fallback(op, why)


def resolve(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  return _default_backend() if implementation in ("auto", "megastep") else implementation


# Modules whose import registers kernels; imported on first use, so that the XLA path never
# imports Pallas GPU code.
_KERNEL_MODULES = {
    "mosaic": ("pallas_kernels.attention_mgpu", "pallas_kernels.ln_modulate_linear_mgpu",
               "pallas_kernels.mlp_mgpu"),
    "triton": ("pallas_kernels.attention_triton", "pallas_kernels.ln_modulate_linear_triton",
               "pallas_kernels.mlp_triton"),
}


# Ops whose kernel a backend actually uses. Measured on one H100 (pallas_kernels/NOTES.md): the
# Mosaic and the Triton attention kernels beat XLA at every shape timed; the ln_modulate_linear
# and mlp kernels of both backends are slower than XLA's cuBLAS path at the model's shapes, so
# they are opt-in (`set_kernel_ops`).
_KERNEL_OPS = {"mosaic": {"attention"}, "triton": {"attention"}}


def set_kernel_ops(backend: str, ops) -> frozenset:
  """Selects which ops `backend` runs as kernels (the rest use XLA); returns the old selection.
  Takes effect for functions traced afterwards."""
  old = frozenset(_KERNEL_OPS[backend])
  _KERNEL_OPS[backend] = set(ops)
  return old


@functools.cache
def _load_kernels(backend: str) -> None:
  for name in _KERNEL_MODULES.get(backend, ()):
    importlib.import_module(name)


def _pick(op: str, implementation: str, xla_fn: Callable) -> Callable:
  backend = resolve(implementation)
  if backend == "xla":
    return xla_fn
  if op not in _KERNEL_OPS.get(backend, ()):
    return xla_fn
  _load_kernels(backend)
  fn = _REGISTRY.get((op, backend))
  if fn is None:
    _warn_fallback(op, backend)
    return xla_fn
  return fn


# ----------------------------------------------------------------------------- attention


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


def attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, *, frame_len: int | None = None,
              window: int | None = None, implementation: str = "xla"):
  fn = _pick("attention", implementation, attention_xla)
  return fn(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, frame_len=frame_len, window=window)


# ------------------------------------------------------- LayerNorm + adaLN modulate + linear


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


def ln_modulate_linear(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F=None, *, eps: float = 1e-6,
                       implementation: str = "xla"):
  fn = _pick("ln_modulate_linear", implementation, ln_modulate_linear_xla)
  return fn(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F, eps=eps)


# ----------------------------------------------------------------------------------- MLP


def mlp_xla(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D):
  """gelu(x @ w1 + b1) @ w2 + b2 (tanh GELU), f32 accumulation."""
  h = jnp.einsum("bld,df->blf", x_BxLxD, w1_DxF.astype(x_BxLxD.dtype),
                 preferred_element_type=jnp.float32) + b1_F.astype(jnp.float32)
  h = jax.nn.gelu(h, approximate=True).astype(x_BxLxD.dtype)
  out = jnp.einsum("blf,fd->bld", h, w2_FxD.astype(h.dtype),
                   preferred_element_type=jnp.float32) + b2_D.astype(jnp.float32)
  return out.astype(x_BxLxD.dtype)


def mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, *, implementation: str = "xla"):
  fn = _pick("mlp", implementation, mlp_xla)
  return fn(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D)
