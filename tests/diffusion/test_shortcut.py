import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.diffusion import flow, shortcut


def _x0():
  return jax.random.normal(jax.random.key(0), (16, 2, 4, 4, 3))


def test_flow_targets_at_d_zero_are_eps_minus_x0():
  x0 = _x0()
  tg = shortcut.make_targets(lambda x, t, d, c: jnp.zeros_like(x), jax.random.key(1), x0, {},
                             bootstrap_frac=0.25)
  fm = ~np.asarray(tg["boot"])
  assert fm.sum() > 0
  np.testing.assert_array_equal(np.asarray(tg["d"])[fm], 0.0)
  expect = np.asarray(tg["eps"] - x0)
  np.testing.assert_array_equal(np.asarray(tg["target"])[fm], expect[fm])
  np.testing.assert_allclose(np.asarray(tg["x_t"]), np.asarray(flow.interpolate(x0, tg["eps"], tg["t"])))


def test_scaled_noise_is_the_standard_draw_times_each_samples_scale():
  """eps_scale_B: sample b's noise is scale_b times the standard draw of the same key, and the
  inputs and targets are built on it (the colder draw the sampler starts from)."""
  x0 = _x0()
  zero = lambda x, t, d, c: jnp.zeros_like(x)  # noqa: E731
  ref = shortcut.make_targets(zero, jax.random.key(1), x0, {}, bootstrap_frac=0.0)
  scale = jnp.where(jnp.arange(16) % 2 == 0, 0.25, 1.0)
  tg = shortcut.make_targets(zero, jax.random.key(1), x0, {}, bootstrap_frac=0.0, eps_scale_B=scale)
  np.testing.assert_allclose(np.asarray(tg["eps"])[0::2], 0.25 * np.asarray(ref["eps"])[0::2], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(tg["eps"])[1::2], np.asarray(ref["eps"])[1::2])
  np.testing.assert_allclose(np.asarray(tg["target"]), np.asarray(tg["eps"] - x0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(tg["x_t"]), np.asarray(flow.interpolate(x0, tg["eps"], tg["t"])), rtol=1e-6)
  assert float(jnp.std(tg["eps"][0::2])) == pytest.approx(0.25, rel=0.1)
  loss, _ = shortcut.shortcut_loss(zero, jax.random.key(1), x0, {}, bootstrap_frac=0.0, eps_scale_B=scale)
  loss_ref, _ = shortcut.shortcut_loss(zero, jax.random.key(1), x0, {}, bootstrap_frac=0.0)
  assert float(loss) < float(loss_ref)  # |eps - x0|^2 shrinks with the scale


def test_self_consistency_of_constant_velocity_field_is_that_velocity():
  x0 = _x0()
  v = jax.random.normal(jax.random.key(5), x0.shape[2:])
  tg = shortcut.make_targets(lambda x, t, d, c: jnp.broadcast_to(v, x.shape), jax.random.key(2), x0, {},
                             bootstrap_frac=0.5)
  boot = np.asarray(tg["boot"])
  assert boot.sum() == 16
  np.testing.assert_allclose(np.asarray(tg["target"])[boot], np.broadcast_to(np.asarray(v), (16,) + v.shape),
                             rtol=0, atol=1e-6)


def test_self_consistency_is_two_half_steps_for_a_nonlinear_field():
  x0 = _x0()
  field = lambda x, t, d, c: jnp.sin(x) * t[..., None, None, None] + d[..., None, None, None]  # noqa: E731
  tg = shortcut.make_targets(field, jax.random.key(3), x0, {}, bootstrap_frac=1.0, max_log2=3)
  t, d = np.asarray(tg["t"]), np.asarray(tg["d"])
  assert set(np.unique(d)) <= {1.0, 0.5, 0.25, 0.125}
  assert np.all(t >= d - 1e-7) and np.all(t <= 1.0)
  x = np.asarray(tg["x_t"])
  d_in = np.where(d <= 0.125, 0.0, d / 2)[..., None, None, None]
  tt, dd = t[..., None, None, None], d[..., None, None, None]
  s1 = np.sin(x) * tt + d_in
  s2 = np.sin(x - dd / 2 * s1) * (tt - dd / 2) + d_in
  np.testing.assert_allclose(np.asarray(tg["target"]), (s1 + s2) / 2, atol=1e-5)


def test_bootstrap_last_only_moves_only_the_last_frame():
  tg = shortcut.make_targets(lambda x, t, d, c: jnp.ones_like(x), jax.random.key(4), _x0(), {},
                             bootstrap_frac=1.0, bootstrap_last_only=True)
  boot = np.asarray(tg["boot"])
  assert boot[:, -1].all() and not boot[:, :-1].any()


def test_teacher_provides_targets():
  x0 = _x0()
  tg = shortcut.make_targets(lambda x, t, d, c: jnp.zeros_like(x), jax.random.key(2), x0, {},
                             bootstrap_frac=0.5, teacher_fn=lambda x, t, d, c: jnp.full_like(x, 3.0))
  np.testing.assert_allclose(np.asarray(tg["target"])[np.asarray(tg["boot"])], 3.0)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_level_samplers(kind):
  t = np.asarray(flow.sample_levels(jax.random.key(0), (4096, 3), kind))
  assert t.shape == (4096, 3) and t.min() >= 0 and t.max() <= 1
  assert abs(np.median(t) - 0.5) < 0.05
  assert np.corrcoef(t[:, 0], t[:, 1])[0, 1] < 0.1  # independent per frame
  with pytest.raises(ValueError):
    flow.sample_levels(jax.random.key(0), (2,), "cosine")
