"""2-D convolution as im2col + one GEMM, a drop-in for `lax.conv_general_dilated` in `nn.Conv`.

Why: on a GPU, XLA lowers a convolution to a cuDNN custom call, which it cannot put into its
command buffers (CUDA graphs). In the fused stream frame each of the light autoencoder's 15 convs
then runs as its own host-launched thunk (25-55 us of host time each) and splits the frame's
graph, the GPU idle in between (reports/latency/timeline_h200_2026-12-03, issue 17). A GEMM
(cuBLAS or a Triton fusion) and the slices and concatenation around it do go into command
buffers, so written this way the whole frame can be one.

Only what the autoencoder uses: NHWC inputs, HWIO kernels, 'SAME'/'VALID' or explicit padding,
any stride, no dilation, no feature groups. Anything else raises ValueError (never a silent
wrong answer). The kernel is used as is, so a model's parameters do not change.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# lax.conv_general_dilated's dimension numbers of NHWC / HWIO / NHWC (what flax's nn.Conv passes).
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _check(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
           batch_group_count, out_sharding):
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise ValueError(f"gemm_conv: 2-D convolutions only (4-D operands), got {lhs.shape} and {rhs.shape}")
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if dn != _NHWC:
    raise ValueError(f"gemm_conv: NHWC/HWIO/NHWC dimension numbers only, got {dimension_numbers!r}")
  for name, d in (("lhs_dilation", lhs_dilation), ("rhs_dilation", rhs_dilation)):
    if d is not None and any(v != 1 for v in d):
      raise ValueError(f"gemm_conv: no dilation, got {name}={tuple(d)}")
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError(f"gemm_conv: no grouped convolution, got feature_group_count={feature_group_count}, "
                     f"batch_group_count={batch_group_count}")
  if out_sharding is not None:
    raise ValueError("gemm_conv: out_sharding is not supported")
  if lhs.shape[3] != rhs.shape[2]:
    raise ValueError(f"gemm_conv: input channels {lhs.shape[3]} != kernel input channels {rhs.shape[2]}")


def _pads(in_hw, kernel_hw, strides, padding) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return [tuple(p) for p in lax.padtype_to_pads(in_hw, kernel_hw, strides, padding)]
  pads = [tuple(int(v) for v in p) for p in padding]
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise ValueError(f"gemm_conv: padding must be a string or 2 (low, high) pairs, got {padding!r}")
  if any(v < 0 for p in pads for v in p):
    raise ValueError(f"gemm_conv: no negative padding, got {padding!r}")
  return pads


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision=None,
                         preferred_element_type=None, out_sharding=None) -> jax.Array:
  """`lax.conv_general_dilated` (same signature) for a 2-D NHWC x HWIO convolution, as a GEMM.

  The padded input's kh*kw shifted, strided windows are concatenated on the channel axis in the
  kernel's (kh, kw, cin) order, so one dot with kernel.reshape(kh*kw*cin, cout) is the convolution.
  Half-precision inputs accumulate in float32 (as XLA's convolution does); the result has the
  dtype lax would give (`preferred_element_type`, else the inputs')."""
  _check(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
         batch_group_count, out_sharding)
  n, h, w, cin = lhs.shape
  kh, kw, _, cout = rhs.shape
  sh, sw = (int(s) for s in window_strides)
  if sh < 1 or sw < 1:
    raise ValueError(f"gemm_conv: strides must be >= 1, got {tuple(window_strides)}")
  (pt, pb), (pl, pr) = _pads((h, w), (kh, kw), (sh, sw), padding)
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"gemm_conv: a {kh}x{kw} window does not fit the padded {h}x{w} input")
  out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
  acc = preferred_element_type
  if acc is None and jnp.issubdtype(out_dtype, jnp.floating) and jnp.finfo(out_dtype).bits < 32:
    acc = jnp.float32
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt or pb or pl or pr else lhs
  if kh == kw == 1 and sh == sw == 1:
    cols = x  # 1x1, stride 1: the pixels are the rows already
  else:
    cols = jnp.concatenate(
        [lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin), (1, sh, sw, 1))
         for i in range(kh) for j in range(kw)], axis=-1)
  y = lax.dot_general(cols, rhs.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                      precision=precision, preferred_element_type=acc)
  return y.astype(out_dtype)


CONV_IMPLS = ("xla", "gemm")
# "auto" is a choice made before a config holds a name (`resolve`): gemm on a GPU, xla elsewhere.
CONV_CHOICES = ("auto",) + CONV_IMPLS


def resolve(choice: str | None, default: str = "xla", backend: str | None = None) -> str:
  """The implementation a process runs: `choice` when it names one; "auto", and None for a model
  at the default "xla" (`default`), is "gemm" on a GPU and "xla" elsewhere. On one H200 the
  shipped model's 256x256 frame at S = 2 took 1.716 / 2.094 ms p50 / p99 with gemm against 1.877 /
  2.581 with cuDNN's convolutions (2026-12-04, BENCHMARKS.md: XLA keeps cuDNN calls out of its
  CUDA graphs); on a 2-core CPU gemm is 1.6-1.7x slower (im2col's memory traffic)."""
  if choice is not None and choice != "auto":
    if choice not in CONV_IMPLS:
      raise ValueError(f"conv implementation must be one of {CONV_CHOICES}, got {choice!r}")
    return choice
  if choice is None and default != "xla":
    return default  # a model that names another implementation keeps it
  backend = backend or jax.default_backend()
  return "gemm" if backend in ("gpu", "cuda", "rocm") else "xla"


def conv_fn(impl: str):
  """The `conv_general_dilated` of an implementation name: "xla" (lax's own convolution, one
  cuDNN call each on a GPU) or "gemm" (this module's im2col + GEMM)."""
  if impl == "xla":
    return lax.conv_general_dilated
  if impl == "gemm":
    return conv_general_dilated
  raise ValueError(f"conv implementation must be one of {CONV_IMPLS}, got {impl!r}")
