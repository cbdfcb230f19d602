import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.diffusion import forcing


def _clip(key, b=2, t=4):
  k1, k2 = jax.random.split(key)
  return jax.random.normal(k1, (b, t, 4, 4, 8)), jax.random.normal(k2, (b, t, 4, 4, 8))


@pytest.mark.parametrize("mode", ["concat", "attention"])
def test_residual_targets_are_target_minus_input(mode):
  c, y = _clip(jax.random.key(0))
  prompt = jnp.zeros((2, 384))
  key = jax.random.key(1)
  absolute = forcing.make_inputs(key, c, y, prompt, forcing.ForcingConfig(mode=mode))
  resid = forcing.make_inputs(key, c, y, prompt, forcing.ForcingConfig(mode=mode, residual=True))
  k = 3
  if mode == "concat":
    np.testing.assert_allclose(resid[0], y[:, k:] - c[:, k:], atol=1e-6)
    np.testing.assert_allclose(absolute[0], y[:, k:], atol=1e-6)
    # the history the model is conditioned on stays absolute (same noise, same frames)
    np.testing.assert_allclose(resid[2]["hist"], absolute[2]["hist"], atol=1e-6)
  else:
    np.testing.assert_allclose(resid[0], y - c, atol=1e-6)
    np.testing.assert_allclose(resid[1], absolute[1] - c, atol=1e-6)
