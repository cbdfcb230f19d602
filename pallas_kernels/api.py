"""Dispatch for the denoiser's hot ops: Mosaic GPU on Hopper, Triton elsewhere on NVIDIA, XLA otherwise.

The only way the model reaches a kernel. Every op has one signature whatever the implementation,
and the XLA path (`xla.py`) is the reference semantics that the kernels are tested against.
`implementation` is one of:

- ``"xla"``: plain jnp / `jax.nn.dot_product_attention`; runs everywhere, differentiable.
- ``"mosaic"``: Pallas Mosaic GPU kernels (Hopper, sm_90a).
- ``"triton"``: Pallas Triton kernels (any recent NVIDIA GPU).
- ``"auto"``: mosaic on Hopper, triton on other CUDA GPUs, xla on CPU/TPU.
- ``"megastep"``: the whole denoiser step as one persistent Mosaic GPU kernel (`megastep_trunk`,
  which `lsd_jax.models.megastep` calls when the model's weights were packed for it on a Hopper
  GPU); per-op calls, and shapes the mega kernel does not support, behave as ``"auto"``.

The kernels of a backend are listed in `_kernels_of` (imported on first use, so the XLA path
never imports Pallas GPU code) and held by `registry(backend)`, built once, explicitly. Which ops
a backend runs as kernels is `DEFAULT_KERNEL_OPS` (the ones measured faster than XLA), changed
for a block of code with `kernel_ops(...)`; an op without a kernel falls back to XLA, logged once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import types
from typing import Callable, Iterator, Mapping

import jax

from pallas_kernels.device import is_hopper, warn_fallback_once
from pallas_kernels.xla import (attention_xla, frame_causal_mask, linear_xla, ln_modulate_linear_xla,
                                ln_modulate_xla, mlp_xla)

__all__ = ["IMPLEMENTATIONS", "DEFAULT_KERNEL_OPS", "resolve", "registry", "kernel_ops", "enabled_ops",
           "attention", "ln_modulate_linear", "linear", "mlp", "megastep_check", "megastep_trunk",
           "is_hopper", "warn_fallback_once", "attention_xla", "frame_causal_mask", "ln_modulate_xla",
           "ln_modulate_linear_xla", "linear_xla", "mlp_xla"]

IMPLEMENTATIONS = ("auto", "xla", "mosaic", "triton", "megastep")

# Ops whose kernel a backend runs by default. Measured on one H100 (pallas_kernels/NOTES.md): the
# Mosaic and the Triton attention kernels beat XLA at every shape timed; the ln_modulate_linear
# and mlp kernels of both backends are slower than XLA's cuBLAS path at the model's shapes, so
# they are opt-in (`kernel_ops`). The Mosaic GEMM with the fused epilogue (`linear`, and `mlp` on
# it), timed on an H200 (`gemm_bench.py`, BENCHMARKS.md): faster than XLA where K is short, slower
# where it is long, and the whole step with the GEMM MLP slower (small 0.616 -> 0.625 ms), so
# opt-in too.
DEFAULT_KERNEL_OPS: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {"mosaic": frozenset({"attention"}), "triton": frozenset({"attention"})})

_kernel_ops: contextvars.ContextVar[Mapping[str, frozenset[str]]] = contextvars.ContextVar(
    "pallas_kernels_kernel_ops", default=DEFAULT_KERNEL_OPS)


@functools.cache
def _default_backend() -> str:
  dev = jax.devices()[0]
  if dev.platform not in ("gpu", "cuda"):
    return "xla"
  return "mosaic" if is_hopper() else "triton"


def resolve(implementation: str) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
  return _default_backend() if implementation in ("auto", "megastep") else implementation


# ----------------------------------------------------------------------------- the registry


def _kernels_of(backend: str) -> dict[str, Callable]:
  """Every kernel of `backend`, by op (the op's signature; keyword-only arguments static)."""
  if backend == "mosaic":  # mlp: two epilogue-fused GEMMs (mlp_mgpu, hidden on chip, lost 4-8x)
    from pallas_kernels import attention_mgpu, gemm_mgpu, ln_modulate_linear_mgpu, mlp_gemm_mgpu

    return {"attention": attention_mgpu.attention, "ln_modulate_linear": ln_modulate_linear_mgpu.ln_modulate_linear,
            "linear": gemm_mgpu.linear, "mlp": mlp_gemm_mgpu.mlp}
  if backend == "triton":
    from pallas_kernels import attention_triton, ln_modulate_linear_triton, mlp_triton

    return {"attention": attention_triton.attention,
            "ln_modulate_linear": ln_modulate_linear_triton.ln_modulate_linear, "mlp": mlp_triton.mlp}
  if backend == "megastep":
    from pallas_kernels import megastep_mgpu

    return {"trunk": megastep_mgpu.step_trunk}
  return {}


def _lowered_once(fn: Callable) -> Callable:
  """`fn` under one `jax.jit` (its keyword-only arguments static), so that a model calling the op
  at the same shapes in every block, and every step of an unrolled frame, traces and lowers the
  kernel once per compiled function instead of once per call site: JAX caches a nested jit's
  lowering by its jaxpr, and XLA inlines the call. (Lowering a Mosaic GPU kernel takes about a
  second; the large model's step has 30 attention calls.) `__wrapped__` is `fn`."""
  static = tuple(n for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
  return jax.jit(fn, static_argnames=static)


@functools.cache
def registry(backend: str) -> Mapping[str, Callable]:
  """The kernels of `backend` by op, each lowered once per compiled function (`_lowered_once`);
  built on first use and never changed (the kernel modules themselves stay unwrapped, for the
  tests and benchmarks)."""
  return types.MappingProxyType({op: _lowered_once(fn) for op, fn in _kernels_of(backend).items()})


def enabled_ops(backend: str) -> frozenset[str]:
  """The ops `backend` runs as kernels here (DEFAULT_KERNEL_OPS, or inside `kernel_ops`)."""
  return _kernel_ops.get().get(backend, frozenset())


@contextlib.contextmanager
def kernel_ops(ops, backends=("mosaic", "triton")) -> Iterator[None]:
  """Within the block, `backends` run exactly `ops` as kernels (the rest on XLA); functions
  traced in it keep that choice (jit caches do not see it: trace afresh per selection)."""
  token = _kernel_ops.set(types.MappingProxyType({**_kernel_ops.get(), **{b: frozenset(ops) for b in backends}}))
  try:
    yield
  finally:
    _kernel_ops.reset(token)


def _pick(op: str, implementation: str, xla_fn: Callable) -> Callable:
  backend = resolve(implementation)
  if backend == "xla" or op not in enabled_ops(backend):
    return xla_fn
  fn = registry(backend).get(op)
  if fn is None:
    warn_fallback_once(op, backend)
    return xla_fn
  return fn


# ----------------------------------------------------------------------------- the ops


def attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, *, frame_len: int | None = None,
              window: int | None = None, implementation: str = "xla"):
  """Softmax attention, optionally frame-causal (`xla.attention_xla`)."""
  fn = _pick("attention", implementation, attention_xla)
  return fn(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, frame_len=frame_len, window=window)


def ln_modulate_linear(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F=None, *, eps: float = 1e-6,
                       implementation: str = "xla"):
  """(LN(x) * (1 + scale) + shift) @ w + b (`xla.ln_modulate_linear_xla`)."""
  fn = _pick("ln_modulate_linear", implementation, ln_modulate_linear_xla)
  return fn(x_BxLxD, shift_BxD, scale_BxD, w_DxF, b_F, eps=eps)


def linear(x_BxLxK, w_KxN, b_N=None, *, activation: str | None = None, implementation: str = "xla"):
  """act(x @ w + b), activation None or "gelu_tanh" (`xla.linear_xla`); a Mosaic GEMM with the
  bias and GELU in its epilogue, bf16 out (`gemm_mgpu`), where enabled."""
  fn = _pick("linear", implementation, linear_xla)
  return fn(x_BxLxK, w_KxN, b_N, activation=activation)


def mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, *, implementation: str = "xla"):
  """gelu(x @ w1 + b1) @ w2 + b2 (`xla.mlp_xla`)."""
  fn = _pick("mlp", implementation, mlp_xla)
  return fn(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D)


# ----------------------------------------------------------------------------- the mega kernel


def megastep_check(length: int, d: int, f: int, heads: int) -> str | None:
  """None when the whole-step mega kernel supports a trunk of `length` tokens per frame, width
  `d`, MLP width `f` and `heads` heads (its default tuning), else why not."""
  from pallas_kernels import megastep_mgpu

  try:
    megastep_mgpu.DEFAULT_CONFIG.check(length, d, f, heads)
  except ValueError as e:
    return str(e)
  return None


def megastep_trunk(patches_BxLxP, pos_LxD, cond_BxD, packed, *, heads: int):
  """Patch embedding, every DiT block (within-frame attention) and the final layer for B frames
  in one persistent Mosaic GPU call (fused on a GPU, phase by phase in interpret mode), from the
  per-frame condition vector and the weights in the kernel's packed layout
  (`megastep_mgpu.PACKED_SHAPES`): (B, L, 64) bf16, the patch-out values first."""
  return registry("megastep")["trunk"](patches_BxLxP, pos_LxD, cond_BxD, packed, heads=heads)

