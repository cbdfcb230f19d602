"""Shortcut distillation targets (the teacher's trajectory) and the student's loss."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lsd_jax.diffusion import distill, forcing
from lsd_jax.models import lsd, prune, sizes
from tests.conftest import randomize

SHAPE = (4, 1, 2, 2, 3)  # B x T x H x W x C


def _grid(b=4):
  return jnp.ones((b, 1))


def test_average_velocity_of_a_time_field_is_the_mean_of_its_euler_evaluations():
  """u = t: n = d * teacher_steps sub-steps of h = d / n, evaluated at t, t - h, ...: mean t - (n-1)h/2."""
  x = jnp.zeros(SHAPE)
  t = jnp.array([[1.0], [0.75], [0.5], [1.0]])
  d = jnp.array([[1.0], [0.5], [1 / 128], [0.25]])
  teacher = lambda x, t, d, c: jnp.broadcast_to(t[:, :, None, None, None], x.shape)  # noqa: E731
  avg = distill.teacher_average_velocity(teacher, x, t, d, jnp.ones((4, 1), bool), None, teacher_steps=16,
                                         d_min=1 / 128)
  n = np.array([16, 8, 1, 4])
  h = np.array([1.0, 0.5, 1 / 128, 0.25]) / n
  want = np.array([1.0, 0.75, 0.5, 1.0]) - (n - 1) * h / 2
  np.testing.assert_allclose(np.asarray(avg)[:, 0, 0, 0, 0], want, rtol=1e-6)


def test_teacher_sub_steps_use_their_own_step_size():
  """The teacher is asked for its shortcut velocity over each sub-step of its fixed step 1/4
  (or of d when d is smaller; 0 below the finest trained step d_min)."""
  x = jnp.zeros(SHAPE)
  teacher = lambda x, t, d, c: jnp.broadcast_to(d[:, :, None, None, None], x.shape)  # noqa: E731
  d = jnp.array([[1.0], [0.5], [1 / 128], [1 / 256]])
  avg = distill.teacher_average_velocity(teacher, x, _grid(), d, jnp.ones((4, 1), bool), None, teacher_steps=4,
                                         d_min=1 / 128)
  np.testing.assert_allclose(np.asarray(avg)[:, 0, 0, 0, 0], [0.25, 0.25, 1 / 128, 0.0], rtol=1e-6)


def test_average_velocity_follows_a_curved_trajectory():
  """u = x: the exact flow is x_s = x_t e^(s - t); N Euler steps give x_t (1 - (1 - (1-h)^n)/...)."""
  x = jnp.ones(SHAPE)
  teacher = lambda x, t, d, c: x  # noqa: E731
  avg = distill.teacher_average_velocity(teacher, x, _grid(), jnp.full((4, 1), 1.0), jnp.ones((4, 1), bool), None,
                                         teacher_steps=8, d_min=1 / 128)
  x_end = (1 - 1 / 8) ** 8  # x_{t-1} after 8 Euler steps of 1/8
  np.testing.assert_allclose(np.asarray(avg), 1.0 - x_end, rtol=1e-5)


def _tiny(seed=0):
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32)
  _, den = lsd.build(cfg)
  params = randomize(lsd.init_params(jax.random.key(seed), cfg)["denoiser"], jax.random.key(seed + 1), 0.1)
  return cfg, den, params


def _batch(cfg, key, b=8):
  h, w, c = cfg.latent_shape
  ks = jax.random.split(key, 3)
  clip_c = jax.random.normal(ks[0], (b, 4, h, w, c))
  clip_y = jnp.tanh(clip_c + 0.5)  # some fixed "effect"
  prompt = jax.random.normal(ks[1], (b, sizes.PROMPT_DIM))
  return forcing.make_inputs(ks[2], clip_c, clip_y, prompt, forcing.ForcingConfig())


def test_a_student_equal_to_a_one_step_teacher_has_zero_loss():
  cfg, den, params = _tiny()
  x0, _, cond, _ = _batch(cfg, jax.random.key(3))

  @functools.partial(jax.jit, static_argnums=1)  # as the training step runs it (eager is op by op)
  def loss_of(p, teacher_steps):
    vf = lsd.velocity_fn(den, p)
    return distill.distill_loss(vf, vf, jax.random.key(4), x0, cond, distill.DistillConfig(teacher_steps=teacher_steps),
                                bootstrap_frac=0.5)

  loss, info = loss_of(params, 1)
  assert float(info["bootstrap_fraction"]) == 0.5
  loss4, _ = loss_of(params, 4)
  # bf16 matmuls on different sub-batches differ by rounding only; a 4-step trajectory is not the
  # model's own one-step jump.
  assert float(loss) < 1e-3 * float(loss4), (float(loss), float(loss4))


def test_distillation_loss_falls_for_a_pruned_student():
  cfg, den, t_params = _tiny()
  scores = [{"heads": np.arange(2.0), "mlp": np.arange(256.0)} for _ in range(2)]
  s_cfg, s_params = prune.apply(cfg, t_params, prune.select(scores, cfg, prune.PruneConfig(0.5, 0.5, tile=32)))
  assert s_cfg.block_heads == (1, 1) and s_cfg.block_mlp == (128, 128)
  _, s_den = lsd.build(s_cfg)
  teacher = lsd.velocity_fn(den, t_params)
  x0, _, cond, _ = _batch(cfg, jax.random.key(5))
  dc = distill.DistillConfig(teacher_steps=4)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(p, opt, key):
    loss_fn = lambda p: distill.distill_loss(lsd.velocity_fn(s_den, p), teacher, key, x0, cond, dc,  # noqa: E731
                                             bootstrap_frac=0.5)
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, loss

  opt, losses = tx.init(s_params), []
  for i in range(40):
    s_params, opt, loss = step(s_params, opt, jax.random.key(i % 4))
    losses.append(float(loss))
  assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses


def test_config_validation():
  with pytest.raises(ValueError, match="teacher_steps"):
    distill.DistillConfig(teacher_steps=0)
  with pytest.raises(ValueError, match="data_weight"):
    distill.DistillConfig(data_weight=2.0)
  assert dataclasses.asdict(distill.DistillConfig())["teacher_steps"] == 16
