import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.diffusion import sampler
from lsd_jax.models import lsd
from tests.conftest import randomize


@pytest.fixture(scope="module", params=["concat", "attention"])
def model(request):
  cfg = lsd.LSDConfig(size="tiny", height=32, width=48, history_mode=request.param)
  _, den = lsd.build(cfg)
  params = randomize(lsd.init_params(jax.random.key(0), cfg)["denoiser"], jax.random.key(1), 0.05)
  return cfg, lsd.velocity_fn(den, params)


def _inputs(cfg):
  h, w, c = cfg.latent_shape
  c_in = jax.random.normal(jax.random.key(3), (2, h, w, c))
  ring = sampler.empty_ring(2, cfg.history_len, h, w, c)
  ring = sampler.push(ring, jax.random.normal(jax.random.key(4), (2, h, w, c)), c_in)
  return c_in, ring, jnp.full((2, 384), 0.05)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_shapes_and_determinism(model, steps):
  cfg, vf = model
  c_in, ring, prompt = _inputs(cfg)
  run = jax.jit(lambda key: sampler.sample_frame(vf, key, c_in, ring, prompt, tau_inf=0.1, steps=steps,
                                                 mode=cfg.history_mode))
  a, b, c = run(jax.random.key(10)), run(jax.random.key(10)), run(jax.random.key(11))
  assert a.shape == c_in.shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))
  assert np.all(np.isfinite(np.asarray(a)))


def test_ring_push_order():
  ring = sampler.empty_ring(1, 3, 2, 2, 1)
  for i in range(4):
    ring = sampler.push(ring, jnp.full((1, 2, 2, 1), float(i)), jnp.zeros((1, 2, 2, 1)))
    assert float(ring.frames_BxKxHxWxC[0, -1, 0, 0, 0]) == i
  np.testing.assert_array_equal(np.asarray(ring.frames_BxKxHxWxC[0, :, 0, 0, 0]), [1, 2, 3])
  np.testing.assert_array_equal(np.asarray(ring.levels_BxK), [[0, 0, 0]])
  assert float(sampler.empty_ring(1, 3, 2, 2, 1).levels_BxK.min()) == 1.0


def test_rejects_zero_steps(model):
  cfg, vf = model
  c_in, ring, prompt = _inputs(cfg)
  with pytest.raises(ValueError, match="steps"):
    sampler.sample_frame(vf, jax.random.key(0), c_in, ring, prompt, tau_inf=0.1, steps=0)
