"""Every Mosaic GPU kernel against its plain-jnp reference: interpret mode on CPU (small shapes),
and on a Hopper GPU at the model's shapes (`-m gpu`). Fresh random inputs per case; errors are
relative Frobenius norms against the f32 reference; bf16 operands get 1e-2."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import api, bench
from pallas_kernels import attention_mgpu, ln_modulate_linear_mgpu, mlp_mgpu

BF16_TOL = 1e-2
_seed = iter(range(10_000))


def _key():
  return jax.random.key(next(_seed) + int(np.random.default_rng().integers(1 << 30)))


def _normal(shape, scale=1.0, offset=0.0):
  return (jax.random.normal(_key(), shape, jnp.float32) * scale + offset).astype(jnp.bfloat16)


def _grad_err(fn, ref_fn, args):
  ct = _normal(jax.eval_shape(fn, *args).shape)
  loss = lambda f: lambda *a: jnp.vdot(f(*a).astype(jnp.float32), ct.astype(jnp.float32))  # noqa
  argnums = tuple(range(len(args)))
  g = jax.grad(loss(fn), argnums)(*args)
  g_ref = jax.grad(loss(ref_fn), argnums)(*(a.astype(jnp.float32) for a in args))
  return max(bench.rel_err(a, b) for a, b in zip(g, g_ref))


# ------------------------------------------------------------------------------ attention

def _qkv(b, lq, lk, n, h):
  return _normal((b, lq, n, h)), _normal((b, lk, n, h)), _normal((b, lk, n, h))


ATTN_CASES = [  # (B, L, heads, head_dim, frame_len, window, block_kv)
    (1, 128, 2, 64, None, None, 64),  # exact blocks, two KV steps
    (2, 100, 1, 64, None, None, 64),  # padded queries and keys
    (1, 256, 1, 128, 64, 1, 64),  # frame-causal, window 1, head dim 128
    (1, 192, 1, 64, 48, None, 128),  # frames straddle blocks, all earlier frames
    (1, 256, 1, 64, 64, 0, 128),  # window 0: rows whose first blocks are fully masked
]


@pytest.mark.parametrize("b,l,n,h,frame_len,window,block_kv", ATTN_CASES)
def test_attention_interpret(interpret, b, l, n, h, frame_len, window, block_kv):
  q, k, v = _qkv(b, l, l, n, h)
  cfg = attention_mgpu.TuningConfig(block_kv=block_kv, p_via_smem=True)
  out = attention_mgpu.attention(q, k, v, frame_len=frame_len, window=window, config=cfg)
  ref = attention_mgpu.attention_reference(q, k, v, frame_len=frame_len, window=window)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert bench.rel_err(out, ref) < BF16_TOL


def test_attention_grad_interpret(interpret):
  q, k, v = _qkv(1, 128, 128, 1, 64)
  cfg = attention_mgpu.TuningConfig(p_via_smem=True)
  kw = dict(frame_len=32, window=1)
  fn = functools.partial(attention_mgpu.attention, config=cfg, **kw)
  ref = functools.partial(attention_mgpu.attention_reference, **kw)
  assert _grad_err(fn, ref, (q, k, v)) < BF16_TOL


def test_api_dispatch_reaches_kernels(interpret):
  """implementation="mosaic" runs the registered kernels (the default attention config feeds P
  to wgmma from registers, which interpret mode does not model, so it is checked on the GPU)."""
  old = api.set_kernel_ops("mosaic", {"attention", "ln_modulate_linear", "mlp"})
  try:
    _check_dispatch()
  finally:
    api.set_kernel_ops("mosaic", old)


def test_default_kernel_ops_are_the_measured_winners():
  assert api._KERNEL_OPS["mosaic"] == {"attention"}
  assert api._KERNEL_OPS["triton"] == {"attention"}


def test_kernel_lowers_once_per_compiled_function(interpret):
  """The registry's jit wrapper: three call sites at one shape lower the kernel once (the large
  model's step has 30), where calling the kernel function directly lowers it at every site."""
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


def _check_dispatch():
  args = _ln_args(1, 64, 128, 128)
  out = api.ln_modulate_linear(*args, implementation="mosaic")
  assert bench.rel_err(out, ln_modulate_linear_mgpu.ln_modulate_linear_reference(*args)) < BF16_TOL
  margs = _mlp_args(1, 64, 128, 128)
  assert bench.rel_err(api.mlp(*margs, implementation="mosaic"),
                       mlp_mgpu.mlp_reference(*margs)) < BF16_TOL
  assert api._REGISTRY[("attention", "mosaic")].__wrapped__ is attention_mgpu.attention


def test_attention_config_validates():
  with pytest.raises(ValueError):
    attention_mgpu.TuningConfig(block_q=32)
  with pytest.raises(ValueError):
    attention_mgpu.TuningConfig(max_concurrent_steps=1)


# --------------------------------------------------------------------- ln_modulate_linear

def _ln_args(b, l, d, f, bias=True):
  x = _normal((b, l, d), scale=3.0, offset=1.0)  # non-zero mean: the centring matters
  shift, scale = _normal((b, d), 0.5), _normal((b, d), 0.5)
  w = _normal((d, f), 1 / np.sqrt(d))
  return (x, shift, scale, w, _normal((f,)) if bias else None)


@pytest.mark.parametrize("b,l,d,f,bias,tile_n", [
    (1, 64, 128, 128, True, 128), (2, 100, 192, 256, False, 128), (1, 64, 128, 192, True, 128),
])
def test_ln_modulate_linear_interpret(interpret, b, l, d, f, bias, tile_n):
  args = _ln_args(b, l, d, f, bias)
  cfg = ln_modulate_linear_mgpu.TuningConfig(tile_n=tile_n, weight_slots=2)
  out = ln_modulate_linear_mgpu.ln_modulate_linear(*args, config=cfg)
  ref = ln_modulate_linear_mgpu.ln_modulate_linear_reference(*args)
  assert out.shape == (b, l, f)
  assert bench.rel_err(out, ref) < BF16_TOL


def test_ln_modulate_linear_grad_interpret(interpret):
  args = _ln_args(1, 64, 128, 128)
  assert _grad_err(ln_modulate_linear_mgpu.ln_modulate_linear,
                   ln_modulate_linear_mgpu.ln_modulate_linear_reference, args) < BF16_TOL


def test_ln_modulate_linear_config_fits():
  cfg = ln_modulate_linear_mgpu.fit_config(1536, 4608, ln_modulate_linear_mgpu.TuningConfig())
  assert cfg.smem_bytes(1536) <= 227 * 1024 and 4608 % cfg.tile_n == 0
  with pytest.raises(ValueError):
    ln_modulate_linear_mgpu.TuningConfig(tile_m=128)


# ------------------------------------------------------------------------------------ MLP

def _mlp_args(b, l, d, f):
  return (_normal((b, l, d)), _normal((d, f), 1 / np.sqrt(d)), _normal((f,), 0.1),
          _normal((f, d), 1 / np.sqrt(f)), _normal((d,), 0.1))


@pytest.mark.parametrize("b,l,d,f,tile_n", [(1, 64, 128, 256, 64), (2, 100, 192, 128, 64),
                                            (1, 64, 128, 128, 128)])
def test_mlp_interpret(interpret, b, l, d, f, tile_n):
  args = _mlp_args(b, l, d, f)
  out = mlp_mgpu.mlp(*args, config=mlp_mgpu.TuningConfig(tile_n=tile_n))
  assert out.shape == (b, l, d)
  assert bench.rel_err(out, mlp_mgpu.mlp_reference(*args)) < BF16_TOL


def test_mlp_grad_interpret(interpret):
  args = _mlp_args(1, 64, 128, 128)
  fn = functools.partial(mlp_mgpu.mlp, config=mlp_mgpu.TuningConfig(tile_n=64))
  assert _grad_err(fn, mlp_mgpu.mlp_reference, args) < BF16_TOL


def test_mlp_falls_back_when_too_wide():
  assert mlp_mgpu.supports(768, 3072) and not mlp_mgpu.supports(1536, 6144)


# ------------------------------------------------------------------ GPU: the model's shapes

@pytest.mark.gpu
@pytest.mark.parametrize("l,n,h,frame_len,window", [
    (256, 6, 64, None, None), (256, 12, 64, None, None), (1560, 12, 128, None, None),
    (1024, 12, 64, 256, 2), (4 * 1560, 12, 128, 1560, 3),
])
@pytest.mark.parametrize("p_via_smem", [False, True])
def test_attention_gpu(hopper, l, n, h, frame_len, window, p_via_smem):
  cfg = attention_mgpu.TuningConfig(p_via_smem=p_via_smem)
  fn = jax.jit(functools.partial(attention_mgpu.attention, frame_len=frame_len, window=window,
                                 config=cfg))
  for _ in range(2):  # fresh inputs twice: stale output memory would not match the second
    q, k, v = _qkv(1, l, l, n, h)
    ref = attention_mgpu.attention_reference(q, k, v, frame_len=frame_len, window=window)
    assert bench.rel_err(fn(q, k, v), ref) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("l,d,f", [(256, 384, 1152), (256, 768, 2304), (1560, 1536, 4608),
                                   (1560, 1536, 6144)])
def test_ln_modulate_linear_gpu(hopper, l, d, f):
  fn = jax.jit(ln_modulate_linear_mgpu.ln_modulate_linear)
  for _ in range(2):
    args = _ln_args(1, l, d, f)
    ref = ln_modulate_linear_mgpu.ln_modulate_linear_reference(*args)
    assert bench.rel_err(fn(*args), ref) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("l,d", [(256, 384), (256, 768), (1560, 768)])
def test_mlp_gpu(hopper, l, d):
  fn = jax.jit(mlp_mgpu.mlp)
  for _ in range(2):
    args = _mlp_args(1, l, d, 4 * d)
    assert bench.rel_err(fn(*args), mlp_mgpu.mlp_reference(*args)) < BF16_TOL


@pytest.mark.gpu
def test_grads_gpu(hopper):
  q, k, v = _qkv(1, 256, 256, 4, 64)
  fn = functools.partial(attention_mgpu.attention, frame_len=64, window=1)
  ref = functools.partial(attention_mgpu.attention_reference, frame_len=64, window=1)
  assert _grad_err(fn, ref, (q, k, v)) < BF16_TOL
  assert _grad_err(ln_modulate_linear_mgpu.ln_modulate_linear,
                   ln_modulate_linear_mgpu.ln_modulate_linear_reference,
                   _ln_args(1, 256, 384, 1152)) < BF16_TOL
  assert _grad_err(mlp_mgpu.mlp, mlp_mgpu.mlp_reference, _mlp_args(1, 256, 384, 1536)) < BF16_TOL
