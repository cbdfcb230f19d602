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


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_exact_field_lands_on_its_target(residual, steps):
  """With the exact velocity field of a point target r0, u = (x - r0) / t, S steps land on r0;
  a residual model's frame is then c + r0 (the input latent added back), an absolute one r0."""
  h, w, c = 4, 6, 8
  c_in = jax.random.normal(jax.random.key(1), (2, h, w, c))
  r0 = jax.random.normal(jax.random.key(2), (2, h, w, c))
  ring = sampler.empty_ring(2, 3, h, w, c)

  def vf(x, t, d, cond):
    return (x - r0[:, None]) / t[:, :, None, None, None]

  z = sampler.sample_frame(vf, jax.random.key(0), c_in, ring, jnp.zeros((2, 384)), tau_inf=0.1, steps=steps,
                           residual=residual)
  np.testing.assert_allclose(z, c_in + r0 if residual else r0, atol=1e-5)


def test_residual_attention_history_is_residual():
  """In attention mode a residual model sees its history as frames minus their inputs."""
  h, w, c = 2, 2, 4
  frame, inp = jnp.full((1, h, w, c), 5.0), jnp.full((1, h, w, c), 3.0)
  ring = sampler.push(sampler.empty_ring(1, 1, h, w, c), frame, inp)
  seen = {}

  def vf(x, t, d, cond):
    seen["hist"] = x[:, :-1]
    return jnp.zeros_like(x)

  sampler.sample_frame(vf, jax.random.key(0), inp, ring, jnp.zeros((1, 384)), tau_inf=0.0, steps=1,
                       mode="attention", residual=True)
  np.testing.assert_allclose(seen["hist"], 2.0)


def test_noise_scale_is_a_temperature(model):
  """noise_scale scales the initial draw: at 0 the history's own noise is the only draw left
  (tau_inf = 0 makes the frame independent of the key); at 1 it is the default program; the
  config carries it (left out of to_dict at 1) and refuses values outside [0, 2]."""
  cfg, vf = model
  c_in, ring, prompt = _inputs(cfg)
  for i in range(cfg.history_len):  # a full ring: every history slot at level 0
    ring = sampler.push(ring, jax.random.normal(jax.random.key(20 + i), c_in.shape), c_in)
  run = lambda key, scale, tau: sampler.sample_frame(vf, key, c_in, ring, prompt, tau_inf=tau, steps=2,  # noqa: E731
                                                     mode=cfg.history_mode, noise_scale=scale)
  cold = [np.asarray(run(jax.random.key(k), 0.0, 0.0)) for k in (1, 2)]
  np.testing.assert_array_equal(cold[0], cold[1])
  np.testing.assert_array_equal(np.asarray(run(jax.random.key(5), 1.0, 0.1)),
                                np.asarray(sampler.sample_frame(vf, jax.random.key(5), c_in, ring, prompt, tau_inf=0.1,
                                                                steps=2, mode=cfg.history_mode)))
  warm = [np.asarray(run(jax.random.key(k), 0.5, 0.0)) for k in (1, 2)]
  hot = [np.asarray(run(jax.random.key(k), 1.0, 0.0)) for k in (1, 2)]
  assert 0 < np.abs(warm[0] - warm[1]).mean() < np.abs(hot[0] - hot[1]).mean()
  assert "noise_scale" not in cfg.to_dict()
  half = lsd.LSDConfig(size="tiny", height=32, width=48, noise_scale=0.5)
  assert half.to_dict()["noise_scale"] == 0.5 and lsd.LSDConfig.from_dict(half.to_dict()) == half
  with pytest.raises(ValueError, match="noise_scale"):
    lsd.LSDConfig(size="tiny", noise_scale=-0.1)


def test_noise_scale_as_an_input_equals_the_fixed_scale():
  """A traced noise scale (one per stream: the per-prompt scale) gives what the same scale as a
  Python float gives, stream by stream, and 1 gives the unscaled program's frame."""
  ring = sampler.empty_ring(2, 2, 4, 4, 3)
  c = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  vel = lambda z, t, d, cond: 0.5 * z + 0.1 * cond["c"]
  run = jax.jit(lambda a: sampler.sample_frame(vel, jax.random.key(0), c, ring, jnp.zeros((2, 8)), tau_inf=0.5,
                                               steps=2, residual=True, noise_scale=a))
  fixed = {a: sampler.sample_frame(vel, jax.random.key(0), c, ring, jnp.zeros((2, 8)), tau_inf=0.5, steps=2,
                                   residual=True, noise_scale=a) for a in (1.0, 0.25)}
  both = run(jnp.asarray([1.0, 0.25]))
  np.testing.assert_allclose(both[0], fixed[1.0][0], rtol=1e-6)
  np.testing.assert_allclose(both[1], fixed[0.25][1], rtol=1e-6)
  assert not np.allclose(both[1], fixed[1.0][1])
