"""The denoiser's side of the mega kernels (`lsd_jax/models/megastep.py`): packing the Flax tree
into the whole-step kernel's layout, the conditioning, the whole step through the kernel (in
Mosaic GPU interpret mode on the CPU) against `Denoiser.apply`, the fallbacks, and the one-block
kernel's reference and XLA block against the model's own `DiTBlock`. Errors are relative
Frobenius norms; bf16 operands get 1e-2."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.models import layers, lsd, megastep
from lsd_jax.models.denoiser import Denoiser, DenoiserConfig
from lsd_jax.models.sizes import DenoiserSize
from pallas_kernels import api, bench
from pallas_kernels import megablock_mgpu as mb
from pallas_kernels import megastep_mgpu as ms

BF16_TOL = 1e-2


def denoiser_case(width=128, heads=2, depth=2, hw=16, batch=1, seed=0):
  """A small concat-mode denoiser, its inputs, and params with every leaf non-zero (adaLN-zero
  gates included)."""
  cfg = DenoiserConfig(DenoiserSize(width=width, depth=depth, heads=heads), latent_channels=4)
  den = Denoiser(cfg)
  k = cfg.history_len

  @jax.jit  # one program for every draw: eagerly, each leaf's shape compiles its own
  def draw(key):
    ks = jax.random.split(key, 8)
    args = (jax.random.normal(ks[0], (batch, 1, hw, hw, 4)), jax.random.normal(ks[1], (batch, 1, hw, hw, 4)),
            jnp.full((batch, 1), 0.6), jnp.full((batch, 1), 0.25), jax.random.normal(ks[4], (batch, 384)),
            jax.random.normal(ks[2], (batch, 1, k, hw, hw, 4)), jax.random.uniform(ks[3], (batch, 1, k)))
    leaves, tree = jax.tree.flatten(nn.meta.unbox(jax.eval_shape(den.init, ks[5], *args)["params"]))
    params = jax.tree.unflatten(tree, [
        0.3 * jax.random.normal(jax.random.fold_in(ks[6], i), p.shape)
        / (np.sqrt(p.shape[0]) if p.ndim == 2 else 1.0) for i, p in enumerate(leaves)])
    return params, args

  params, args = draw(jax.random.key(seed))
  return cfg, den, params, args


def test_pack_is_the_kernels_layout():
  """`pack` gives exactly the arrays (names, shapes, bf16) the kernel's own random weights have."""
  cfg = DenoiserConfig(DenoiserSize(width=128, depth=2, heads=2), latent_channels=4)
  den, s, k = Denoiser(cfg), cfg.size, cfg.history_len
  z, hist = jnp.zeros((1, 1, 16, 16, 4)), jnp.zeros((1, 1, k, 16, 16, 4))
  params = jax.eval_shape(lambda: nn.meta.unbox(den.init(jax.random.key(0), z, z, jnp.zeros((1, 1)), jnp.zeros((1, 1)),
                                                         jnp.zeros((1, 384)), hist, jnp.zeros((1, 1, k)))["params"]))
  packed = jax.eval_shape(megastep.pack, params)
  p_in, p_out = (2 + k) * s.patch * s.patch * 4, s.patch * s.patch * 4  # z, c and K history frames in; z out
  want = jax.eval_shape(lambda: ms.random_packed(jax.random.key(0), s.width, s.heads, s.depth, p_in, p_out))
  assert {n: (v.shape, v.dtype) for n, v in packed.items()} == {n: (v.shape, v.dtype) for n, v in want.items()}


def test_denoise_is_the_flax_denoiser(interpret):
  """The whole step (conditioning, modulations, patchify, trunk, unpatchify), reached the way
  the sampler reaches it (`lsd.velocity_fn` with packed weights), against `Denoiser.apply` on
  the same weights: the mega-kernel path computes the same model."""
  cfg, den, params, args = denoiser_case()
  z, c, t, d, prompt, hist, tau = args
  ref = jax.jit(lambda p: den.apply({"params": p}, *args))(params)
  cond = {"c": c, "prompt": prompt, "hist": hist, "tau": tau}
  packed = jax.jit(megastep.pack)(params)
  out = jax.jit(lambda p, q: lsd.velocity_fn(den, p, q)(z, t, d, cond))(params, packed)  # jitted, as the sampler runs it
  assert out.shape == ref.shape and out.dtype == jnp.float32
  assert 0 < bench.rel_err(out, ref) < BF16_TOL  # not bit-equal: the kernel ran, and is right
  assert bench.rel_err(out, 0 * ref) > 0.5  # not a zero model


def test_velocity_fn_falls_back(interpret):
  """`lsd.velocity_fn` with packed weights, at a shape the kernel does not support, falls back
  to `Denoiser.apply` instead of failing."""
  cfg, den, params, args = denoiser_case(hw=8)  # 16 tokens: not a multiple of 64 -> fallback
  z, c, t, d, prompt, hist, tau = args
  cond = {"c": c, "prompt": prompt, "hist": hist, "tau": tau}
  packed = megastep.pack(params)
  assert megastep.step_supported(cfg, 16) is not None
  ref = jax.jit(lambda p: den.apply({"params": p}, *args))(params)
  out = jax.jit(lambda p, q: lsd.velocity_fn(den, p, q)(z, t, d, cond))(params, packed)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))  # the fallback is the Flax path


def test_step_supported():
  small = DenoiserConfig(DenoiserSize(width=384, depth=6, heads=6), latent_channels=8)
  assert megastep.step_supported(small, 256) is None
  assert "attention" in megastep.step_supported(DenoiserConfig(small.size, 8, history_mode="attention"), 256)
  assert "tokens" in megastep.step_supported(small, 1560)
  pruned = DenoiserConfig(DenoiserSize(width=384, depth=2, heads=6, block_heads=(6, 3),
                                       block_mlp=(1536, 768)), latent_channels=8)
  assert "pruned" in megastep.step_supported(pruned, 256)


def test_with_kernel_params_only_where_it_runs():
  """Packing happens only for kernel_impl="megastep" where the kernel supports the config on a
  Hopper GPU; elsewhere the params are returned as they are (and `velocity_fn` gets no packed
  weights), with the reason: the model's shape first, then the device."""
  small = lsd.LSDConfig(size="small", kernel_impl="megastep")
  assert "attention" in lsd.megastep_unsupported(
      lsd.LSDConfig(size="small", history_mode="attention", kernel_impl="megastep"))
  assert "tokens" in lsd.megastep_unsupported(lsd.LSDConfig(size="small", height=480, width=832))
  assert "pruned" in lsd.megastep_unsupported(
      lsd.LSDConfig(size="small", block_heads=(6, 3, 6, 6, 6, 6)))
  assert "head dim" in lsd.megastep_unsupported(lsd.LSDConfig(size="tiny"))
  params = {"denoiser": {}, "autoencoder": {}}
  assert lsd.with_kernel_params(lsd.LSDConfig(size="small"), params) is params  # not asked for
  if not api.is_hopper():
    assert "Hopper" in lsd.megastep_unsupported(small)
    assert lsd.with_kernel_params(small, params) is params


# ------------------------------------------------------------------ the one-block kernel


def _flax_block(d, heads, batch, dtype):
  """A `DiTBlock`'s Flax params (every leaf random, the modulation included), the same block in
  the one-block kernel's layout, and inputs with a non-zero mean."""
  block = layers.DiTBlock(heads)

  @jax.jit  # one program for every draw: eagerly, each leaf's shape compiles its own
  def draw(key):
    shapes = jax.eval_shape(block.init, key, jnp.zeros((1, 1, 64, d), dtype), jnp.zeros((1, 1, d), dtype))
    leaves, tree = jax.tree.flatten(nn.meta.unbox(shapes["params"]))
    flax_params = jax.tree.unflatten(tree, [
        (1.0 / np.sqrt(p.shape[0]) if len(p.shape) == 2 else 0.1) * jax.random.normal(jax.random.fold_in(key, i), p.shape)
        for i, p in enumerate(leaves)])
    x = (2.0 * jax.random.normal(jax.random.fold_in(key, 2), (batch, 64, d)) + 0.5).astype(dtype)
    cond = jax.random.normal(jax.random.fold_in(key, 3), (batch, d)).astype(dtype)
    return flax_params, x, cond

  flax_params, x, cond = draw(jax.random.key(int(np.random.default_rng().integers(1 << 30))))
  kernel_params = {**{n: flax_params[n] for n in mb.PARAM_NAMES}, "mod": flax_params["Dense_0"]["Dense_0"]}
  return flax_params, kernel_params, x, cond


def _flax_block_apply(flax_params, x, cond, heads, dtype):
  return layers.DiTBlock(heads, dtype=dtype).apply({"params": flax_params}, x[:, None], cond[:, None])[:, 0]


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, BF16_TOL)])
def test_megablock_reference_is_the_flax_block(dtype, tol):
  """Same weights, same modulation: the one-block kernel's reference is `layers.DiTBlock` (GELU
  variant, biases, softmax scale, gate placement); in f32 they agree to rounding."""
  flax_params, params, x, cond = _flax_block(128, 2, 2, dtype)
  out = _flax_block_apply(flax_params, x, cond, 2, dtype)
  ref = mb.megablock_reference(x, mb.modulation(params["mod"], cond, dtype), params, heads=2)
  assert bench.rel_err(out, ref) < tol
  assert bench.rel_err(x, ref) > 0.1  # the block does change x (non-zero gates)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_megablock_xla_block_is_the_flax_block(dtype):
  """The kernel's XLA comparison block (`megablock_mgpu.xla_block`, what its benchmark times it
  against) computes what the model's `DiTBlock` computes."""
  flax_params, params, x, cond = _flax_block(128, 2, 2, dtype)
  out = mb.xla_block(params, x, cond, heads=2, dtype=dtype)
  ref = _flax_block_apply(flax_params, x, cond, 2, dtype)
  assert out.dtype == ref.dtype and bench.rel_err(out, ref) < 1e-6
