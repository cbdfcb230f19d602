"""The model's MLP through the Mosaic GEMM kernels (`mlp_gemm_mgpu`, in Mosaic GPU interpret mode on
the CPU): a `DiTBlock` with `kernel_impl="mosaic"` and the `mlp` op enabled computes what the XLA
block computes, over two frames of a ragged token count. Errors are relative Frobenius norms."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.models import layers
from pallas_kernels import api, bench, mlp_gemm_mgpu

BF16_TOL = 1e-2


def test_block_mlp_through_the_gemm_kernels(interpret, monkeypatch):
  calls = []
  real = mlp_gemm_mgpu._forward  # pylint: disable=protected-access
  monkeypatch.setattr(mlp_gemm_mgpu, "_forward", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
  block = layers.DiTBlock(heads=2, kernel_impl="xla")

  @jax.jit  # one program for every draw: eagerly, each leaf's shape compiles its own
  def draw(key):
    ks = jax.random.split(key, 4)
    x = jax.random.normal(ks[0], (1, 2, 40, 128), jnp.float32)  # two frames of 40 tokens: M = 80
    cond = jax.random.normal(ks[1], (1, 2, 128), jnp.float32)
    params = nn.meta.unbox(jax.eval_shape(block.init, ks[2], x, cond)["params"])
    leaves, tree = jax.tree.flatten(params)  # every leaf non-zero (the adaLN-zero gates too)
    params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(jax.random.fold_in(ks[3], i), p.shape)
                                       / (np.sqrt(p.shape[0]) if p.ndim == 2 else 1.0) for i, p in enumerate(leaves)])
    return x, cond, params

  x, cond, params = draw(jax.random.key(int(np.random.default_rng().integers(1 << 30))))
  # jitted, as the model runs them: op by op, every op of the block compiles alone
  ref = jax.jit(lambda p: block.apply({"params": p}, x, cond))(params)
  with api.kernel_ops({"mlp"}, backends=("mosaic",)):
    out = jax.jit(lambda p: layers.DiTBlock(heads=2, kernel_impl="mosaic").apply({"params": p}, x, cond))(params)
  assert calls, "the block did not reach the GEMM MLP"
  assert out.shape == ref.shape and bench.rel_err(out, ref) < BF16_TOL
  mlp_only = bench.rel_err(out - x.astype(out.dtype), ref - x.astype(ref.dtype))  # the residual branch alone
  assert mlp_only < 3 * BF16_TOL
