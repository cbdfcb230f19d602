"""The Pallas Triton kernels against their plain-jnp references: Pallas interpret mode on CPU (small
shapes, forward and grad), lowering to Triton IR for sm_80 and sm_90 on CPU (an abstract GPU
device: catches shapes and primitives that the Triton backend rejects, without a GPU), and on a
CUDA GPU at the model's shapes (`-m gpu`). Errors are relative Frobenius norms against the f32
reference; bf16 operands get 1e-2, as in test_kernels.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

from pallas_kernels import api, bench
from pallas_kernels import attention_triton, ln_modulate_linear_triton, mlp_triton

# jax 0.11.2 deprecates the Pallas Triton backend (pallas_kernels/NOTES.md, Triton path).
pytestmark = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
BF16_TOL = 1e-2
_seed = iter(range(10_000))

# Interpret-mode runs of the kernels themselves; the GPU-only tests run them compiled.
attn = functools.partial(attention_triton.attention, interpret=True)
ln_linear = functools.partial(ln_modulate_linear_triton.ln_modulate_linear, interpret=True)
mlp = functools.partial(mlp_triton.mlp, interpret=True)


def _key():
  return jax.random.key(next(_seed) + int(np.random.default_rng().integers(1 << 30)))


def _normal(shape, scale=1.0, offset=0.0):
  return (jax.random.normal(_key(), shape, jnp.float32) * scale + offset).astype(jnp.bfloat16)


def _grad_err(fn, ref_fn, args):
  ct = _normal(jax.eval_shape(fn, *args).shape)
  loss = lambda f: lambda *a: jnp.vdot(f(*a).astype(jnp.float32), ct.astype(jnp.float32))  # noqa
  argnums = tuple(i for i, a in enumerate(args) if a is not None)
  g = jax.grad(loss(fn), argnums)(*args)
  f32 = [None if a is None else a.astype(jnp.float32) for a in args]
  g_ref = jax.grad(loss(ref_fn), argnums)(*f32)
  return max(bench.rel_err(a, b) for a, b in zip(g, g_ref))


@pytest.fixture
def cuda_gpu():
  dev = jax.devices()[0]
  if dev.platform not in ("gpu", "cuda"):
    pytest.skip(f"needs an NVIDIA GPU for the Triton backend, have {dev.device_kind} "
                f"({dev.platform}); run with JAX_PLATFORMS=cuda")


# ------------------------------------------------------------------------------ attention

def _qkv(b, lq, lk, n, h):
  return _normal((b, lq, n, h)), _normal((b, lk, n, h)), _normal((b, lk, n, h))


ATTN_CASES = [  # (B, L, heads, head_dim, frame_len, window, block_q, block_kv)
    (1, 128, 2, 64, None, None, 32, 32),  # exact blocks, several KV steps
    (2, 100, 1, 32, None, None, 32, 32),  # ragged queries and keys (masked loads/stores)
    (1, 192, 1, 64, 48, 1, 32, 64),  # frame-causal, window 1; frames straddle KV blocks
    (1, 192, 1, 32, 48, None, 64, 16),  # all earlier frames; a query block spans two frames
    (1, 256, 1, 16, 64, 0, 16, 32),  # window 0: only the own frame
    (1, 150, 2, 32, 50, 1, 32, 32),  # ragged frames and sequence, window 1
]


@pytest.mark.parametrize("b,l,n,h,frame_len,window,block_q,block_kv", ATTN_CASES)
def test_attention_interpret(b, l, n, h, frame_len, window, block_q, block_kv):
  q, k, v = _qkv(b, l, l, n, h)
  cfg = attention_triton.TuningConfig(block_q=block_q, block_kv=block_kv)
  out = attn(q, k, v, frame_len=frame_len, window=window, config=cfg)
  ref = attention_triton.attention_reference(q, k, v, frame_len=frame_len, window=window)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert bench.rel_err(out, ref) < BF16_TOL


def test_attention_shorter_query_sequence_interpret():
  """Queries of the first frames against a longer key sequence (both start at frame 0)."""
  q, k, v = _qkv(1, 64, 128, 1, 32)
  cfg = attention_triton.TuningConfig(block_q=32, block_kv=32)
  out = attn(q, k, v, config=cfg)
  assert bench.rel_err(out, attention_triton.attention_reference(q, k, v)) < BF16_TOL
  out = attn(q, k, v, frame_len=32, window=1, config=cfg)
  ref = attention_triton.attention_reference(q, k, v, frame_len=32, window=1)
  assert bench.rel_err(out, ref) < BF16_TOL


def test_attention_grad_interpret():
  q, k, v = _qkv(1, 128, 128, 1, 32)
  kw = dict(frame_len=32, window=1)
  cfg = attention_triton.TuningConfig(block_q=32, block_kv=32)
  fn = functools.partial(attn, config=cfg, **kw)
  ref = functools.partial(attention_triton.attention_reference, **kw)
  assert _grad_err(fn, ref, (q, k, v)) < BF16_TOL


def test_attention_falls_back_outside_support():
  q, k, v = _qkv(1, 16, 16, 1, 48)  # head dim 48: not a power of two
  assert not attention_triton.supports(q)
  out = attention_triton.attention(q, k, v)  # XLA: runs on CPU without interpret mode
  assert bench.rel_err(out, attention_triton.attention_reference(q, k, v)) < BF16_TOL
  assert not attention_triton.supports(q.astype(jnp.float32)[..., :32])


def test_attention_config_validates():
  for bad in (dict(block_q=48), dict(block_kv=8), dict(num_warps=3), dict(num_stages=0)):
    with pytest.raises(ValueError):
      attention_triton.TuningConfig(**bad)


# --------------------------------------------------------------------- ln_modulate_linear

def _ln_args(b, l, d, f, bias=True):
  x = _normal((b, l, d), scale=3.0, offset=1.0)  # non-zero mean: the centring matters
  shift, scale = _normal((b, d), 0.5), _normal((b, d), 0.5)
  w = _normal((d, f), 1 / np.sqrt(d))
  return (x, shift, scale, w, _normal((f,)) if bias else None)


@pytest.mark.parametrize("b,l,d,f,bias,tile_m,tile_n,block_k", [
    (1, 64, 128, 128, True, 32, 64, 32),  # exact tiles, several K steps
    (2, 100, 192, 200, False, 32, 64, 64),  # ragged rows and columns, no bias, per-batch mod
    (1, 40, 96, 96, True, 16, 32, 64),  # block_k shrunk to divide D = 96
])
def test_ln_modulate_linear_interpret(b, l, d, f, bias, tile_m, tile_n, block_k):
  args = _ln_args(b, l, d, f, bias)
  cfg = ln_modulate_linear_triton.TuningConfig(tile_m=tile_m, tile_n=tile_n, block_k=block_k)
  out = ln_linear(*args, config=cfg)
  ref = ln_modulate_linear_triton.ln_modulate_linear_reference(*args)
  assert out.shape == (b, l, f) and out.dtype == args[0].dtype
  assert bench.rel_err(out, ref) < BF16_TOL


@pytest.mark.parametrize("bias", [True, False])
def test_ln_modulate_linear_grad_interpret(bias):
  args = _ln_args(1, 32, 64, 64, bias)
  cfg = ln_modulate_linear_triton.TuningConfig(tile_m=32, tile_n=32, block_k=32)
  fn = functools.partial(ln_linear, config=cfg)
  assert _grad_err(fn, ln_modulate_linear_triton.ln_modulate_linear_reference, args) < BF16_TOL


def test_ln_modulate_linear_config():
  fit = ln_modulate_linear_triton.fit_config(96, ln_modulate_linear_triton.TuningConfig())
  assert fit.block_k == 32
  with pytest.raises(ValueError):
    ln_modulate_linear_triton.fit_config(40, ln_modulate_linear_triton.TuningConfig())
  with pytest.raises(ValueError):
    ln_modulate_linear_triton.TuningConfig(tile_n=96)


# ------------------------------------------------------------------------------------ MLP

def _mlp_args(b, l, d, f):
  return (_normal((b, l, d)), _normal((d, f), 1 / np.sqrt(d)), _normal((f,), 0.1),
          _normal((f, d), 1 / np.sqrt(f)), _normal((d,), 0.1))


@pytest.mark.parametrize("b,l,d,f,tile_m,tile_n,block_k,block_f", [
    (1, 64, 64, 128, 32, 32, 32, 32),  # exact tiles, several hidden and K chunks
    (2, 50, 96, 160, 32, 64, 64, 64),  # ragged rows and columns; block_k, block_f shrunk
])
def test_mlp_interpret(b, l, d, f, tile_m, tile_n, block_k, block_f):
  args = _mlp_args(b, l, d, f)
  cfg = mlp_triton.TuningConfig(tile_m=tile_m, tile_n=tile_n, block_k=block_k, block_f=block_f)
  out = mlp(*args, config=cfg)
  assert out.shape == (b, l, d) and out.dtype == args[0].dtype
  assert bench.rel_err(out, mlp_triton.mlp_reference(*args)) < BF16_TOL


def test_mlp_grad_interpret():
  args = _mlp_args(1, 32, 32, 64)
  cfg = mlp_triton.TuningConfig(tile_m=32, tile_n=32, block_k=32, block_f=32)
  assert _grad_err(functools.partial(mlp, config=cfg), mlp_triton.mlp_reference, args) < BF16_TOL


def test_mlp_config():
  fit = mlp_triton.fit_config(96, 160, mlp_triton.TuningConfig(block_k=64, block_f=64))
  assert (fit.block_k, fit.block_f) == (32, 32)
  with pytest.raises(ValueError):
    mlp_triton.TuningConfig(block_f=100)


# ------------------------------------------------------------------------------- dispatch

def test_api_dispatch_picks_triton_kernels():
  """With the ops enabled for "triton", the api hands out the Triton kernels (run here in
  interpret mode); by default only attention (the one measured faster than XLA on the H100)."""
  old = api.set_kernel_ops("triton", {"attention", "ln_modulate_linear", "mlp"})
  try:
    fn = api._pick("ln_modulate_linear", "triton", api.ln_modulate_linear_xla)
    assert fn.__wrapped__ is ln_modulate_linear_triton.ln_modulate_linear  # under the registry's jit
    args = _ln_args(1, 32, 64, 64)
    cfg = ln_modulate_linear_triton.TuningConfig(tile_m=32, tile_n=32, block_k=32)
    assert bench.rel_err(fn(*args, config=cfg, interpret=True),
                         ln_modulate_linear_triton.ln_modulate_linear_reference(*args)) < BF16_TOL
    assert api._pick("attention", "triton", api.attention_xla).__wrapped__ is attention_triton.attention
    assert api._pick("mlp", "triton", api.mlp_xla).__wrapped__ is mlp_triton.mlp
  finally:
    api.set_kernel_ops("triton", old)
  assert api._pick("attention", "triton", api.attention_xla).__wrapped__ is attention_triton.attention
  assert api._pick("ln_modulate_linear", "triton", api.ln_modulate_linear_xla) is api.ln_modulate_linear_xla
  assert api._pick("mlp", "triton", api.mlp_xla) is api.mlp_xla


# ------------------------------------------------- lowering to Triton IR (CPU, no GPU needed)

def _lowers_to_triton(fn, *avals, device_kind):
  device = AbstractDevice(device_kind=device_kind, num_cores=None, platform="gpu")
  mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=device)
  with use_abstract_mesh(mesh):
    hlo = jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",)).as_text()
  return hlo.count("__gpu$xla.gpu.triton")


@pytest.mark.parametrize("device_kind", ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"])
def test_kernels_lower_to_triton_at_model_shapes(device_kind):
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
@pytest.mark.parametrize("config", [attention_triton.DEFAULT_CONFIG,
                                    attention_triton.TuningConfig(128, 64, 8, 3)])
def test_attention_gpu(cuda_gpu, l, n, h, frame_len, window, config):
  fn = jax.jit(functools.partial(attention_triton.attention, frame_len=frame_len, window=window,
                                 config=config))
  for _ in range(2):  # fresh inputs twice: stale output memory would not match the second
    q, k, v = _qkv(1, l, l, n, h)
    ref = attention_triton.attention_reference(q, k, v, frame_len=frame_len, window=window)
    assert bench.rel_err(fn(q, k, v), ref) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("l,d,f", [(256, 384, 1152), (256, 768, 2304), (1560, 1536, 4608),
                                   (1560, 1536, 6144), (100, 768, 200)])
def test_ln_modulate_linear_gpu(cuda_gpu, l, d, f):
  fn = jax.jit(ln_modulate_linear_triton.ln_modulate_linear)
  for _ in range(2):
    args = _ln_args(1, l, d, f)
    ref = ln_modulate_linear_triton.ln_modulate_linear_reference(*args)
    assert bench.rel_err(fn(*args), ref) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("l,d", [(256, 384), (256, 768), (1560, 768)])
def test_mlp_gpu(cuda_gpu, l, d):
  fn = jax.jit(mlp_triton.mlp)
  for _ in range(2):
    args = _mlp_args(1, l, d, 4 * d)
    assert bench.rel_err(fn(*args), mlp_triton.mlp_reference(*args)) < BF16_TOL


@pytest.mark.gpu
def test_grads_gpu(cuda_gpu):
  q, k, v = _qkv(1, 256, 256, 4, 64)
  fn = functools.partial(attention_triton.attention, frame_len=64, window=1)
  ref = functools.partial(attention_triton.attention_reference, frame_len=64, window=1)
  assert _grad_err(fn, ref, (q, k, v)) < BF16_TOL
  assert _grad_err(ln_modulate_linear_triton.ln_modulate_linear,
                   ln_modulate_linear_triton.ln_modulate_linear_reference,
                   _ln_args(1, 256, 384, 1152)) < BF16_TOL
  margs = _mlp_args(1, 256, 384, 1536)
  assert _grad_err(mlp_triton.mlp, mlp_triton.mlp_reference, margs) < BF16_TOL


@pytest.mark.gpu
def test_api_triton_gpu(cuda_gpu):
  """implementation="triton" through the api, compiled, all three ops enabled."""
  old = api.set_kernel_ops("triton", {"attention", "ln_modulate_linear", "mlp"})
  try:
    q, k, v = _qkv(1, 512, 512, 6, 64)
    out = jax.jit(functools.partial(api.attention, frame_len=256, window=1,
                                    implementation="triton"))(q, k, v)
    ref = attention_triton.attention_reference(q, k, v, frame_len=256, window=1)
    assert bench.rel_err(out, ref) < BF16_TOL
    args = _ln_args(1, 256, 384, 1152)
    out = jax.jit(functools.partial(api.ln_modulate_linear, implementation="triton"))(*args)
    ref = ln_modulate_linear_triton.ln_modulate_linear_reference(*args)
    assert bench.rel_err(out, ref) < BF16_TOL
    margs = _mlp_args(1, 256, 384, 1536)
    out = jax.jit(functools.partial(api.mlp, implementation="triton"))(*margs)
    assert bench.rel_err(out, mlp_triton.mlp_reference(*margs)) < BF16_TOL
  finally:
    api.set_kernel_ops("triton", old)
