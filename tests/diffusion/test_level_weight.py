"""The x0 loss weighting: flow-matching frames weighted by t^2 (the error of the clean frame
they imply), bootstrap frames untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.diffusion import shortcut


def test_level_weight_values():
  t = jnp.array([[0.1, 0.5, 1.0]])
  boot = jnp.array([[False, False, True]])
  np.testing.assert_allclose(shortcut.level_weight(t, boot, "x0"), [[0.01, 0.25, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(shortcut.level_weight(t, boot, "velocity"), 1.0)
  with pytest.raises(ValueError, match="loss_weight"):
    shortcut.level_weight(t, boot, "snr")


def test_x0_weighted_loss_is_the_clean_frame_error():
  """For a velocity u at level t, x0_hat = x_t - t u; with no bootstrap rows, the x0-weighted
  loss equals the mean squared error of x0_hat."""
  x0 = jax.random.normal(jax.random.key(0), (6, 1, 4, 4, 2))
  fixed = jax.random.normal(jax.random.key(1), x0.shape)
  vf = lambda x, t, d, cond: fixed  # noqa: E731  a constant prediction
  loss, _ = shortcut.shortcut_loss(vf, jax.random.key(2), x0, {}, bootstrap_frac=0.0, loss_weight="x0")
  tg = shortcut.make_targets(vf, jax.random.key(2), x0, {}, bootstrap_frac=0.0)
  t = tg["t"][:, :, None, None, None]
  x0_hat = tg["x_t"] - t * fixed
  np.testing.assert_allclose(float(loss), float(jnp.mean(jnp.square(x0_hat - x0))), rtol=1e-4)
  plain, _ = shortcut.shortcut_loss(vf, jax.random.key(2), x0, {}, bootstrap_frac=0.0)
  assert float(plain) > float(loss)  # the velocity loss weighs low levels up by 1 / t^2
