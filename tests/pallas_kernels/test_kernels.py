"""Every backend of every op against the op's one f32 reference (`pallas_kernels/reference.py`):
one suite, parametrised over the backends (`mosaic`: `*_mgpu.py`, `triton`: `*_triton.py`).

On the CPU the kernels run in interpret mode (Mosaic GPU's `force_gpu_interpret_mode`, Pallas
Triton's `interpret=True`) at small shapes, forward and grad; the Triton kernels are also lowered
to Triton IR for sm_80 and sm_90 (an abstract GPU device: catches shapes and primitives the
Triton backend rejects, without a GPU). `-m gpu` runs them compiled at the model's shapes:
Mosaic on a Hopper GPU, Triton on any recent NVIDIA GPU (`-k mosaic` / `-k triton` picks one).
Fresh random inputs per case; errors are relative Frobenius norms against the f32 reference;
bf16 operands get 1e-2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

from pallas_kernels import api, bench, reference, xla
from pallas_kernels import attention_mgpu, gemm_mgpu, ln_modulate_linear_mgpu, mlp_gemm_mgpu, mlp_mgpu
from pallas_kernels import attention_triton, ln_modulate_linear_triton, mlp_triton

# jax 0.11.2 deprecates the Pallas Triton backend (pallas_kernels/NOTES.md, Triton path).
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
BF16_TOL = 1e-2


@dataclasses.dataclass(frozen=True)
class Backend:
  """One backend's kernel modules, how they run on this CPU, and its tuning configs."""
  name: str
  modules: dict[str, Any]  # op -> kernel module
  interpret_kw: dict[str, Any]  # extra kernel arguments for interpret mode (Triton)
  configs: dict[str, Callable]  # op -> the module's TuningConfig

  def interpret(self):
    """The context a kernel of this backend runs in on the CPU."""
    if self.name == "mosaic":  # unwritten output reads as NaN, out-of-bounds reads raise
      return plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams())
    return contextlib.nullcontext()

  def kernel(self, op: str, **tuning) -> Callable:
    """The op's kernel as it runs here, with a tuning config from `tuning` (if any)."""
    fn = getattr(self.modules[op], op)
    kw = dict(self.interpret_kw)
    if tuning:
      kw["config"] = self.configs[op](**tuning)
    return functools.partial(fn, **kw)


BACKENDS = {
    "mosaic": Backend("mosaic", {"attention": attention_mgpu, "ln_modulate_linear": ln_modulate_linear_mgpu,
                                 "mlp": mlp_gemm_mgpu}, {},
                      {"attention": attention_mgpu.TuningConfig, "ln_modulate_linear": ln_modulate_linear_mgpu.TuningConfig,
                       "mlp": mlp_gemm_mgpu.TuningConfig}),
    "triton": Backend("triton", {"attention": attention_triton, "ln_modulate_linear": ln_modulate_linear_triton,
                                 "mlp": mlp_triton}, {"interpret": True},
                      {"attention": attention_triton.TuningConfig,
                       "ln_modulate_linear": ln_modulate_linear_triton.TuningConfig, "mlp": mlp_triton.TuningConfig}),
}


@pytest.fixture
def backend(request):
  """The backend named by the test's parameter, in its interpret mode."""
  b = BACKENDS[request.param]
  with b.interpret():
    yield b


@pytest.fixture
def gpu_backend(request):
  """The backend named by the test's parameter, compiled, where its GPU is present."""
  b = BACKENDS[request.param]
  dev = jax.devices()[0]
  if b.name == "mosaic" and not api.is_hopper():
    pytest.skip(f"needs a Hopper GPU, have {dev.device_kind} ({dev.platform})")
  if b.name == "triton" and dev.platform not in ("gpu", "cuda"):
    pytest.skip(f"needs an NVIDIA GPU for the Triton backend, have {dev.device_kind} ({dev.platform}); "
                "run with JAX_PLATFORMS=cuda")
  return dataclasses.replace(b, interpret_kw={})


def _normal(shape, scale=1.0, offset=0.0):
  """Fresh N(offset, scale^2) draws in bf16, made by numpy: an eager jax.random draw, scale and
  cast compile a program per shape (about 0.3 s each on the CPU, a hundred shapes in these files)."""
  x = np.random.default_rng().standard_normal(shape, np.float32) * np.float32(scale) + np.float32(offset)
  return jnp.asarray(x.astype(jnp.bfloat16))


def _jit(fn, **static):
  """`fn` with `static` bound, jitted, as the model runs it: op by op, every op around a kernel
  (and every op of a reference) compiles a program of its own."""
  return jax.jit(functools.partial(fn, **static))


def _grad_err(fn, ref_fn, args):
  ct = _normal(jax.eval_shape(fn, *args).shape)
  loss = lambda f: lambda *a: jnp.vdot(f(*a).astype(jnp.float32), ct.astype(jnp.float32))  # noqa
  argnums = tuple(i for i, a in enumerate(args) if a is not None)
  # Jitted: op by op, the backward pass compiled a program per op (the kernels run as they would)
  grad = lambda f, xs: jax.jit(jax.grad(loss(f), argnums))(*xs)  # noqa: E731
  g = grad(fn, args)
  g_ref = grad(ref_fn, [None if a is None else a.astype(jnp.float32) for a in args])
  return max(bench.rel_err(a, b) for a, b in zip(g, g_ref))


def _qkv(b, lq, lk, n, h):
  return _normal((b, lq, n, h)), _normal((b, lk, n, h)), _normal((b, lk, n, h))


def _ln_args(b, l, d, f, bias=True):
  x = _normal((b, l, d), scale=3.0, offset=1.0)  # non-zero mean: the centring matters
  shift, scale = _normal((b, d), 0.5), _normal((b, d), 0.5)
  w = _normal((d, f), 1 / np.sqrt(d))
  return (x, shift, scale, w, _normal((f,)) if bias else None)


def _mlp_args(b, l, d, f):
  return (_normal((b, l, d)), _normal((d, f), 1 / np.sqrt(d)), _normal((f,), 0.1),
          _normal((f, d), 1 / np.sqrt(f)), _normal((d,), 0.1))


def _cases(*rows):
  """pytest params (backend, *rest) with the backend first in the id."""
  return [pytest.param(r[0], *r[1:], id="-".join(str(x) for x in (r[0], *r[1]))) for r in rows]


# ------------------------------------------------------------------------------ attention

# Mosaic GPU feeds P to the PV wgmma from registers by default, which interpret mode does not
# model: on the CPU it stages P through shared memory (p_via_smem; both ways on the GPU).
ATTN_CASES = _cases(  # backend, (B, L, heads, head_dim, frame_len, window), tuning
    ("mosaic", (1, 128, 2, 64, None, None), dict(block_kv=64, p_via_smem=True)),  # exact blocks, two KV steps
    ("mosaic", (2, 100, 1, 64, None, None), dict(block_kv=64, p_via_smem=True)),  # padded queries and keys
    ("mosaic", (1, 256, 1, 128, 64, 1), dict(block_kv=64, p_via_smem=True)),  # frame-causal, window 1, head dim 128
    ("mosaic", (1, 192, 1, 64, 48, None), dict(block_kv=128, p_via_smem=True)),  # frames straddle blocks, all earlier
    ("mosaic", (1, 256, 1, 64, 64, 0), dict(block_kv=128, p_via_smem=True)),  # window 0: first blocks fully masked
    ("triton", (1, 128, 2, 64, None, None), dict(block_q=32, block_kv=32)),  # exact blocks, several KV steps
    ("triton", (2, 100, 1, 32, None, None), dict(block_q=32, block_kv=32)),  # ragged queries and keys (masked I/O)
    ("triton", (1, 192, 1, 64, 48, 1), dict(block_q=32, block_kv=64)),  # frame-causal, window 1; frames straddle
    ("triton", (1, 192, 1, 32, 48, None), dict(block_q=64, block_kv=16)),  # a query block spans two frames
    ("triton", (1, 256, 1, 16, 64, 0), dict(block_q=16, block_kv=32)),  # window 0: only the own frame
    ("triton", (1, 150, 2, 32, 50, 1), dict(block_q=32, block_kv=32)),  # ragged frames and sequence, window 1
)


@pytest.mark.parametrize("backend,shape,tuning", ATTN_CASES, indirect=["backend"])
def test_attention_interpret(backend, shape, tuning):
  b, l, n, h, frame_len, window = shape
  q, k, v = _qkv(b, l, l, n, h)
  out = _jit(backend.kernel("attention", **tuning), frame_len=frame_len, window=window)(q, k, v)
  ref = _jit(reference.attention_reference, frame_len=frame_len, window=window)(q, k, v)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert bench.rel_err(out, ref) < BF16_TOL


@pytest.mark.parametrize("backend,shape,tuning", _cases(
    ("mosaic", (1, 128, 1, 64), dict(p_via_smem=True)),
    ("triton", (1, 128, 1, 32), dict(block_q=32, block_kv=32)),
), indirect=["backend"])
def test_attention_grad_interpret(backend, shape, tuning):
  q, k, v = _qkv(shape[0], shape[1], shape[1], shape[2], shape[3])
  kw = dict(frame_len=32, window=1)
  fn = functools.partial(backend.kernel("attention", **tuning), **kw)
  ref = functools.partial(reference.attention_reference, **kw)
  assert _grad_err(fn, ref, (q, k, v)) < BF16_TOL


@pytest.mark.parametrize("backend,bad", _cases(
    ("mosaic", dict(block_q=32)), ("mosaic", dict(max_concurrent_steps=1)),
    ("triton", dict(block_q=48)), ("triton", dict(block_kv=8)), ("triton", dict(num_warps=3)),
    ("triton", dict(num_stages=0)),
))
def test_attention_config_validates(backend, bad):
  with pytest.raises(ValueError):
    BACKENDS[backend].configs["attention"](**bad)


def test_triton_attention_shorter_query_sequence_interpret():
  """Queries of the first frames against a longer key sequence (both start at frame 0)."""
  q, k, v = _qkv(1, 64, 128, 1, 32)
  attn = BACKENDS["triton"].kernel("attention", block_q=32, block_kv=32)
  assert bench.rel_err(attn(q, k, v), reference.attention_reference(q, k, v)) < BF16_TOL
  out = attn(q, k, v, frame_len=32, window=1)
  ref = reference.attention_reference(q, k, v, frame_len=32, window=1)
  assert bench.rel_err(out, ref) < BF16_TOL


def test_triton_attention_falls_back_outside_support():
  q, k, v = _qkv(1, 16, 16, 1, 48)  # head dim 48: not a power of two
  assert not attention_triton.supports(q)
  out = attention_triton.attention(q, k, v)  # XLA: runs on CPU without interpret mode
  assert bench.rel_err(out, reference.attention_reference(q, k, v)) < BF16_TOL
  assert not attention_triton.supports(q.astype(jnp.float32)[..., :32])


# --------------------------------------------------------------------- ln_modulate_linear

@pytest.mark.parametrize("backend,shape,tuning", _cases(  # backend, (B, L, D, F, bias), tuning
    ("mosaic", (1, 64, 128, 128, True), dict(tile_n=128, weight_slots=2)),
    ("mosaic", (2, 100, 192, 256, False), dict(tile_n=128, weight_slots=2)),
    ("mosaic", (1, 64, 128, 192, True), dict(tile_n=128, weight_slots=2)),
    ("triton", (1, 64, 128, 128, True), dict(tile_m=32, tile_n=64, block_k=32)),  # exact tiles, several K steps
    ("triton", (2, 100, 192, 200, False), dict(tile_m=32, tile_n=64, block_k=64)),  # ragged, no bias, per-batch mod
    ("triton", (1, 40, 96, 96, True), dict(tile_m=16, tile_n=32, block_k=64)),  # block_k shrunk to divide D = 96
), indirect=["backend"])
def test_ln_modulate_linear_interpret(backend, shape, tuning):
  b, l, d, f, bias = shape
  args = _ln_args(b, l, d, f, bias)
  out = _jit(backend.kernel("ln_modulate_linear", **tuning))(*args)
  ref = _jit(reference.ln_modulate_linear_reference)(*args)
  assert out.shape == (b, l, f) and out.dtype == args[0].dtype
  assert bench.rel_err(out, ref) < BF16_TOL


@pytest.mark.parametrize("backend,shape,tuning", _cases(  # backend, (B, L, D, F, bias), tuning
    ("mosaic", (1, 64, 128, 128, True), {}),
    ("triton", (1, 32, 64, 64, True), dict(tile_m=32, tile_n=32, block_k=32)),
    ("triton", (1, 32, 64, 64, False), dict(tile_m=32, tile_n=32, block_k=32)),
), indirect=["backend"])
def test_ln_modulate_linear_grad_interpret(backend, shape, tuning):
  args = _ln_args(*shape)
  fn = backend.kernel("ln_modulate_linear", **tuning)
  assert _grad_err(fn, reference.ln_modulate_linear_reference, args) < BF16_TOL


def test_mosaic_ln_modulate_linear_config_fits():
  cfg = ln_modulate_linear_mgpu.fit_config(1536, 4608, ln_modulate_linear_mgpu.TuningConfig())
  assert cfg.smem_bytes(1536) <= 227 * 1024 and 4608 % cfg.tile_n == 0
  with pytest.raises(ValueError):
    ln_modulate_linear_mgpu.TuningConfig(tile_m=128)


def test_triton_ln_modulate_linear_config():
  fit = ln_modulate_linear_triton.fit_config(96, ln_modulate_linear_triton.TuningConfig())
  assert fit.block_k == 32
  with pytest.raises(ValueError):
    ln_modulate_linear_triton.fit_config(40, ln_modulate_linear_triton.TuningConfig())
  with pytest.raises(ValueError):
    ln_modulate_linear_triton.TuningConfig(tile_n=96)


# ------------------------------------------------------------------------------------ MLP

_GEMM = gemm_mgpu.TuningConfig


@pytest.mark.parametrize("backend,shape,tuning", _cases(  # backend, (B, L, D, F), tuning
    ("mosaic", (1, 64, 128, 256), dict(fc1=_GEMM(tile_m=64, num_ctas=2), fc2=_GEMM(tile_m=64, tile_n=64, num_ctas=2))),
    ("mosaic", (2, 100, 192, 128), dict(fc1=_GEMM(tile_m=64, tile_n=64, num_ctas=3))),  # ragged; fc2 picked by shape
    ("mosaic", (1, 64, 128, 128), {}),
    ("triton", (1, 64, 64, 128), dict(tile_m=32, tile_n=32, block_k=32, block_f=32)),  # several hidden, K chunks
    ("triton", (2, 50, 96, 160), dict(tile_m=32, tile_n=64, block_k=64, block_f=64)),  # ragged; blocks shrunk
), indirect=["backend"])
def test_mlp_interpret(backend, shape, tuning):
  b, l, d, f = shape
  args = _mlp_args(b, l, d, f)
  out = _jit(backend.kernel("mlp", **tuning))(*args)
  assert out.shape == (b, l, d) and out.dtype == args[0].dtype
  assert bench.rel_err(out, _jit(reference.mlp_reference)(*args)) < BF16_TOL


@pytest.mark.parametrize("backend,shape,tuning", _cases(
    ("mosaic", (1, 64, 128, 128), dict(fc1=_GEMM(tile_m=64, tile_n=64, num_ctas=2))),
    ("triton", (1, 32, 32, 64), dict(tile_m=32, tile_n=32, block_k=32, block_f=32)),
), indirect=["backend"])
def test_mlp_grad_interpret(backend, shape, tuning):
  args = _mlp_args(*shape)
  assert _grad_err(backend.kernel("mlp", **tuning), reference.mlp_reference, args) < BF16_TOL


@pytest.mark.parametrize("shape,tile_n", [((1, 64, 128, 256), 64), ((2, 100, 192, 128), 64), ((1, 64, 128, 128), 128)])
def test_mosaic_mlp_on_chip_interpret(interpret, shape, tile_n):
  """`mlp_mgpu`, the MLP kernel that keeps the hidden on chip (not registered: 4-8x slower than
  XLA on the H100; the registered Mosaic `mlp` is two epilogue-fused GEMMs, `mlp_gemm_mgpu`)."""
  b, l, d, f = shape
  args = _mlp_args(b, l, d, f)
  out = _jit(mlp_mgpu.mlp, config=mlp_mgpu.TuningConfig(tile_n=tile_n))(*args)
  assert out.shape == (b, l, d) and bench.rel_err(out, _jit(reference.mlp_reference)(*args)) < BF16_TOL


def test_mosaic_mlp_falls_back_when_too_wide():
  assert mlp_mgpu.supports(768, 3072) and not mlp_mgpu.supports(1536, 6144)
  assert mlp_gemm_mgpu.supports(1536, 6144)  # the GEMM MLP takes the large model


def test_triton_mlp_config():
  fit = mlp_triton.fit_config(96, 160, mlp_triton.TuningConfig(block_k=64, block_f=64))
  assert (fit.block_k, fit.block_f) == (32, 32)
  with pytest.raises(ValueError):
    mlp_triton.TuningConfig(block_f=100)


# ------------------------------------------------------------------------------- dispatch

ALL_OPS = {"attention", "ln_modulate_linear", "mlp"}
XLA_FNS = {"attention": xla.attention_xla, "ln_modulate_linear": xla.ln_modulate_linear_xla, "mlp": xla.mlp_xla}


def test_default_kernel_ops_are_the_measured_winners():
  assert api.DEFAULT_KERNEL_OPS["mosaic"] == {"attention"}
  assert api.DEFAULT_KERNEL_OPS["triton"] == {"attention"}
  assert api.enabled_ops("mosaic") == api.enabled_ops("triton") == {"attention"}
  with api.kernel_ops(ALL_OPS, backends=("triton",)):
    assert api.enabled_ops("triton") == ALL_OPS and api.enabled_ops("mosaic") == {"attention"}
  assert api.enabled_ops("triton") == {"attention"}  # restored on leaving the block


@pytest.mark.parametrize("backend", ["mosaic", "triton"], indirect=True)
def test_api_dispatch_reaches_kernels(backend):
  """With the ops enabled, the api hands out the backend's registered kernels (each the module's
  function under the registry's jit) and they compute the op; by default only attention (the one
  measured faster than XLA on the H100)."""
  name = backend.name
  with api.kernel_ops(ALL_OPS, backends=(name,)):
    for op in ALL_OPS:
      fn = api._pick(op, name, XLA_FNS[op])  # pylint: disable=protected-access
      assert fn is api.registry(name)[op] and fn.__wrapped__ is getattr(backend.modules[op], op)
    args, run_kw = {"mosaic": (_ln_args(1, 64, 128, 128), {}),  # interpret mode: a context, no argument
                    "triton": (_ln_args(1, 32, 64, 64), dict(config=ln_modulate_linear_triton.TuningConfig(
                        tile_m=32, tile_n=32, block_k=32), **backend.interpret_kw))}[name]
    out = api._pick("ln_modulate_linear", name, xla.ln_modulate_linear_xla)(*args, **run_kw)
    assert bench.rel_err(out, reference.ln_modulate_linear_reference(*args)) < BF16_TOL
    if name == "mosaic":  # the public ops, as the model calls them (interpret mode needs no extra argument)
      assert bench.rel_err(api.ln_modulate_linear(*args, implementation="mosaic"),
                           reference.ln_modulate_linear_reference(*args)) < BF16_TOL
      margs = _mlp_args(1, 64, 128, 128)
      assert bench.rel_err(api.mlp(*margs, implementation="mosaic"), reference.mlp_reference(*margs)) < BF16_TOL
  assert api._pick("attention", name, xla.attention_xla).__wrapped__ is backend.modules["attention"].attention
  assert api._pick("ln_modulate_linear", name, xla.ln_modulate_linear_xla) is xla.ln_modulate_linear_xla
  assert api._pick("mlp", name, xla.mlp_xla) is xla.mlp_xla


@pytest.mark.parametrize("backend", ["mosaic"], indirect=True)
def test_kernel_lowers_once_per_compiled_function(backend):
  """The registry's jit wrapper: three call sites at one shape lower the kernel once (the large
  model's step has 30), where calling the kernel function directly lowers it at every site."""
  del backend
  q = _normal((1, 64, 2, 64)).astype(jnp.bfloat16)

  def lowered(attn):
    def f(x):
      for _ in range(3):
        x = attn(x, x, x)
      return x
    return jax.jit(f).lower(q).as_text()

  via_api = lowered(functools.partial(api.attention, implementation="mosaic"))
  assert via_api.count("func.func private @attention(") == 1
  assert via_api.count("call @attention(") == 3
  direct = lowered(attention_mgpu.attention)
  assert len(direct) > 2 * len(via_api)  # three inlined kernel bodies against one


# ------------------------------------------------- lowering to Triton IR (CPU, no GPU needed)

def _lowers_to_triton(fn, *avals, device_kind):
  device = AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
  mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=device)
  with use_abstract_mesh(mesh):
    hlo = jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",)).as_text()
  return hlo.count("__gpu$xla.gpu.triton")


@pytest.mark.parametrize("device_kind", ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"])
def test_triton_kernels_lower_to_triton_at_model_shapes(device_kind):
  bf16 = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)  # noqa: E731
  lowers = functools.partial(_lowers_to_triton, device_kind=device_kind)
  q = bf16(1, 1560, 12, 128)
  assert lowers(attention_triton.attention, q, q, q) == 1
  frame_causal = functools.partial(attention_triton.attention, frame_len=1560, window=2)
  kv = bf16(1, 4 * 1560, 12, 128)
  assert lowers(frame_causal, kv, kv, kv) == 1
  assert lowers(ln_modulate_linear_triton.ln_modulate_linear, bf16(1, 256, 768),
                bf16(1, 768), bf16(1, 768), bf16(768, 2304), bf16(2304)) == 1
  assert lowers(mlp_triton.mlp, bf16(1, 256, 768), bf16(768, 3072), bf16(3072),
                bf16(3072, 768), bf16(768)) == 1


# ------------------------------------------------------------------ GPU: the model's shapes

@pytest.mark.gpu
@pytest.mark.parametrize("l,n,h,frame_len,window", [
    (256, 6, 64, None, None), (256, 12, 64, None, None), (1560, 12, 128, None, None),
    (1024, 12, 64, 256, 2), (4 * 1560, 12, 128, 1560, 3),
])
@pytest.mark.parametrize("gpu_backend,tuning", [
    pytest.param("mosaic", dict(p_via_smem=False), id="mosaic-p_in_registers"),
    pytest.param("mosaic", dict(p_via_smem=True), id="mosaic-p_via_smem"),
    pytest.param("triton", {}, id="triton-default"),
    pytest.param("triton", dict(block_q=128, block_kv=64, num_warps=8, num_stages=3), id="triton-128x64"),
], indirect=["gpu_backend"])
def test_attention_gpu(gpu_backend, tuning, l, n, h, frame_len, window):
  fn = jax.jit(functools.partial(gpu_backend.kernel("attention", **tuning), frame_len=frame_len, window=window))
  for _ in range(2):  # fresh inputs twice: stale output memory would not match the second
    q, k, v = _qkv(1, l, l, n, h)
    ref = reference.attention_reference(q, k, v, frame_len=frame_len, window=window)
    assert bench.rel_err(fn(q, k, v), ref) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend,l,d,f", [
    *[pytest.param(b, *s, id=f"{b}-{s}") for b in ("mosaic", "triton")
      for s in ((256, 384, 1152), (256, 768, 2304), (1560, 1536, 4608), (1560, 1536, 6144))],
    pytest.param("triton", 100, 768, 200, id="triton-ragged"),
], indirect=["gpu_backend"])
def test_ln_modulate_linear_gpu(gpu_backend, l, d, f):
  fn = jax.jit(gpu_backend.kernel("ln_modulate_linear"))
  for _ in range(2):
    args = _ln_args(1, l, d, f)
    assert bench.rel_err(fn(*args), reference.ln_modulate_linear_reference(*args)) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("l,d", [(256, 384), (256, 768), (1560, 768)])
@pytest.mark.parametrize("gpu_backend", ["mosaic", "triton"], indirect=True)
def test_mlp_gpu(gpu_backend, l, d):
  fn = jax.jit(gpu_backend.kernel("mlp"))
  for _ in range(2):
    args = _mlp_args(1, l, d, 4 * d)
    assert bench.rel_err(fn(*args), reference.mlp_reference(*args)) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["mosaic", "triton"], indirect=True)
def test_grads_gpu(gpu_backend):
  q, k, v = _qkv(1, 256, 256, 4, 64)
  fn = functools.partial(gpu_backend.kernel("attention"), frame_len=64, window=1)
  ref = functools.partial(reference.attention_reference, frame_len=64, window=1)
  assert _grad_err(fn, ref, (q, k, v)) < BF16_TOL
  assert _grad_err(gpu_backend.kernel("ln_modulate_linear"), reference.ln_modulate_linear_reference,
                   _ln_args(1, 256, 384, 1152)) < BF16_TOL
  assert _grad_err(gpu_backend.kernel("mlp"), reference.mlp_reference, _mlp_args(1, 256, 384, 1536)) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("gpu_backend", ["triton"], indirect=True)
def test_api_gpu(gpu_backend):
  """implementation=<backend> through the api, compiled, all three ops enabled."""
  impl = gpu_backend.name
  with api.kernel_ops(ALL_OPS, backends=(impl,)):
    q, k, v = _qkv(1, 512, 512, 6, 64)
    out = jax.jit(functools.partial(api.attention, frame_len=256, window=1, implementation=impl))(q, k, v)
    assert bench.rel_err(out, reference.attention_reference(q, k, v, frame_len=256, window=1)) < BF16_TOL
    args = _ln_args(1, 256, 384, 1152)
    out = jax.jit(functools.partial(api.ln_modulate_linear, implementation=impl))(*args)
    assert bench.rel_err(out, reference.ln_modulate_linear_reference(*args)) < BF16_TOL
    margs = _mlp_args(1, 256, 384, 1536)
    out = jax.jit(functools.partial(api.mlp, implementation=impl))(*margs)
    assert bench.rel_err(out, reference.mlp_reference(*margs)) < BF16_TOL
