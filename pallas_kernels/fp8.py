"""FP8 (e4m3) GEMMs on XLA for the large model: per-tensor scaled `float8_e4m3fn` operands.

    x_q = e4m3(x / sx), w_q = e4m3(w / sw)       sx = amax|x| / 448, sw = amax|w| / 448 (bf16)
    out = act((x_q * sx) @ (w_q * sw) + b)       f32 accumulation, bias and GELU in f32, bf16 out

The operands are dequantised in the form XLA's GPU GEMM rewriter matches (convert of an f8
tensor times a scalar scale on each side of the dot, the pattern flax's fp8 ops emit), which on
Hopper it turns into one cuBLASLt FP8 GEMM with the scales as its `a_scale` / `b_scale`; on the
CPU (and where the rewriter does not match) it is a plain GEMM on the dequantised values, with
the same numbers. The weight is quantised once (`quantize_weight`); the activation's scale is
its amax per call unless given (`x_scale`, e.g. a calibrated constant), which costs a reduction.

Error, computed on the CPU (the numbers do not depend on the device; tests/pallas_kernels/
test_gemm.py bounds them): e4m3 keeps 3 mantissa bits, so one GEMM's output is off by
3.4-3.5e-2 (relative Frobenius norm against f32; Gaussian operands; the large model's fc1
1560x1536->6144 + GELU, its fc2 1560x6144->1536, small's fc1 alike) where bf16 operands give
1.7e-3: 20x, outside the 1e-2 that the bf16 kernels are held to. The large MLP (both GEMMs in
e4m3): 5.3e-2 against bf16's 2.3e-3. Whether the model's velocity or frames stay within
tolerance is a model-level question, not answered here. Speed: not measured (`gemm_bench.py`
times it on the next GPU session and says whether the compiled HLO holds an FP8 GEMM). Not used
by the model or `api.py`: an option to evaluate, not a default.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F8 = jnp.float8_e4m3fn
F8_MAX = float(jnp.finfo(F8).max)  # 448


def scale_of(a) -> jax.Array:
  """amax|a| / 448 as a bf16 scalar (rounded once, so quantise and dequantise use one value);
  1 for an all-zero tensor."""
  amax = jnp.max(jnp.abs(a.astype(jnp.float32)))
  return jnp.where(amax > 0, amax / F8_MAX, 1.0).astype(jnp.bfloat16)


def quantize(a, scale):
  """e4m3(a / scale), saturated at +-448."""
  q = a.astype(jnp.float32) / scale.astype(jnp.float32)
  return jnp.clip(q, -F8_MAX, F8_MAX).astype(F8)


def quantize_weight(w_KxN):
  """(w_q, scale): the weight in e4m3 with its per-tensor scale (once per weight)."""
  scale = scale_of(w_KxN)
  return quantize(w_KxN, scale), scale


def _dequant(q, scale, dtype):
  return q.astype(dtype) * scale.astype(dtype)


def linear_fp8(x_BxLxK, w_q_KxN, w_scale, b_N=None, *, activation: str | None = None, x_scale=None):
  """act(x @ w + b) with both operands in e4m3 (`xla.linear_xla`'s semantics otherwise)."""
  sx = scale_of(x_BxLxK) if x_scale is None else jnp.asarray(x_scale, jnp.bfloat16)
  xd = _dequant(quantize(x_BxLxK, sx), sx, jnp.bfloat16)
  wd = _dequant(w_q_KxN, w_scale, jnp.bfloat16)
  out = jnp.einsum("...k,kn->...n", xd, wd, preferred_element_type=jnp.float32)
  if b_N is not None:
    out = out + b_N.astype(jnp.float32)
  if activation == "gelu_tanh":
    out = jax.nn.gelu(out, approximate=True)
  elif activation is not None:
    raise ValueError(f"unknown activation {activation!r}")
  return out.astype(x_BxLxK.dtype)


def mlp_fp8(x_BxLxD, w1_q, w1_scale, b1_F, w2_q, w2_scale, b2_D):
  """`xla.mlp_xla` with both GEMMs in e4m3 (the hidden rounded to bf16, then to e4m3)."""
  h = linear_fp8(x_BxLxD, w1_q, w1_scale, b1_F, activation="gelu_tanh")
  return linear_fp8(h, w2_q, w2_scale, b2_D)
