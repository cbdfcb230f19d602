"""Shortcut distillation (DESIGN.md section 2): a student matches a many-step teacher's trajectory.

The student u_S(x_t, t, d) trains on the shortcut objective's inputs (`shortcut.sample_times`:
flow-matching rows at d = 0, bootstrap rows at d = 2^-k on the grid t in {d, ..., 1}), but the
targets come from the teacher, stop-gradient:

- d = 0: the teacher's instantaneous velocity u_T(x_t, t, 0) (instead of eps - x0), optionally
  blended with the data velocity by `data_weight` (the ground truth is exact here);
- d > 0: the teacher's average velocity over [t - d, t], (x_t - x_{t-d}) / d, where x_{t-d} is
  reached by the teacher sampled with its own fixed step 1/teacher_steps: n = max(1, d *
  teacher_steps) Euler sub-steps of size h = d / n, each with the teacher's shortcut velocity
  u_T(x, t', h) (h = 0 below `d_min`, the finest trained step: the instantaneous field). So a
  student step of d = 1 sees the teacher's whole `teacher_steps`-step sample, and small steps see
  single teacher steps.

Each row runs `teacher_steps` teacher calls (rows needing fewer sub-steps stand still for the
rest), so the bootstrap sub-batch costs teacher_steps forward passes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lsd_jax.diffusion import flow, shortcut
from lsd_jax.diffusion.shortcut import VelocityFn


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  teacher_steps: int = 16  # the teacher's sampler: fixed steps of 1/teacher_steps
  data_weight: float = 0.0  # d = 0 target: (1 - w) teacher velocity + w (eps - x0)

  def __post_init__(self):
    if self.teacher_steps < 1:
      raise ValueError(f"teacher_steps must be >= 1, got {self.teacher_steps}")
    if not 0.0 <= self.data_weight <= 1.0:
      raise ValueError(f"data_weight must be in [0, 1], got {self.data_weight}")


def teacher_average_velocity(teacher_fn: VelocityFn, x_t, t, d, move, cond, *, teacher_steps: int, d_min: float):
  """Stop-gradient (x_t - x_{t-d}) / d along the teacher's trajectory (see the module docstring).

  Frames where `move` is False are left where they are (their velocity is still evaluated, as
  frame-causal context); for them the result is the teacher's velocity at their level.
  """
  n_sub = jnp.clip(jnp.round(d * teacher_steps), 1, teacher_steps)
  h = jnp.where(move, d / n_sub, 0.0)
  h_in = jnp.where(h < d_min, 0.0, h)  # below the finest trained step: the instantaneous field

  def body(i, carry):
    x, t_now, acc = carry
    active = (i < n_sub) & move
    u = teacher_fn(x, t_now, jnp.where(active, h_in, 0.0), cond)
    step = jnp.where(active, h, 0.0)
    x = x - flow._expand(step, x.ndim) * u
    acc = acc + flow._expand(jnp.where(active | ~move & (i == 0), 1.0, 0.0), x.ndim) * u
    return x, t_now - step, acc

  _, _, acc = jax.lax.fori_loop(0, teacher_steps, body, (x_t, t, jnp.zeros_like(x_t)))
  n = jnp.where(move, n_sub, 1.0)
  return jax.lax.stop_gradient(acc / flow._expand(n, x_t.ndim))


def make_targets(teacher_fn: VelocityFn, key, x0, cond, dc: DistillConfig, *, x0_in=None,
                 bootstrap_frac: float = 0.25, max_log2: int = 7, level_kind: str = "logit_normal",
                 bootstrap_last_only: bool = False, level_mean: float = 0.0):
  """Noisy inputs and the teacher's targets: a dict with x_t, t, d, boot, eps, target, data_target."""
  b, t_len = x0.shape[:2]
  k_times, k_eps = jax.random.split(key)
  t, d, boot, n_boot = shortcut.sample_times(k_times, b, t_len, bootstrap_frac=bootstrap_frac, max_log2=max_log2,
                                             level_kind=level_kind, bootstrap_last_only=bootstrap_last_only,
                                             level_mean=level_mean)
  eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
  x_t = flow.interpolate(x0 if x0_in is None else x0_in, eps, t)
  data_target = flow.velocity(x0, eps)
  # Flow-matching rows: one teacher call at d = 0 (bootstrap rows' context frames included).
  fm = jax.lax.stop_gradient(teacher_fn(x_t, t, jnp.zeros_like(t), cond))
  target = (1.0 - dc.data_weight) * fm + dc.data_weight * data_target
  if n_boot > 0:
    sub = lambda a: a[:n_boot]  # noqa: E731
    avg = teacher_average_velocity(teacher_fn, sub(x_t), sub(t), sub(d), sub(boot), jax.tree.map(sub, cond),
                                   teacher_steps=dc.teacher_steps, d_min=2.0 ** -max_log2)
    keep = flow._expand(sub(boot), x0.ndim)
    target = target.at[:n_boot].set(jnp.where(keep, avg, target[:n_boot]))
  return {"x_t": x_t, "t": t, "d": d, "boot": boot, "eps": eps, "target": target, "data_target": data_target}


def distill_loss(student_fn: VelocityFn, teacher_fn: VelocityFn, key, x0, cond, dc: DistillConfig, *, x0_in=None,
                 bootstrap_frac: float = 0.25, max_log2: int = 7, level_kind: str = "logit_normal",
                 bootstrap_last_only: bool = False, loss_mask=None, level_mean: float = 0.0):
  """Returns (loss, info): the student's squared error to the teacher's targets (as
  `shortcut.shortcut_loss`, same inputs), plus how far the teacher's d = 0 field is from the
  data velocity (`teacher_flow_err`, a property of the teacher, not trained)."""
  tg = make_targets(teacher_fn, key, x0, cond, dc, x0_in=x0_in, bootstrap_frac=bootstrap_frac, max_log2=max_log2,
                    level_kind=level_kind, bootstrap_last_only=bootstrap_last_only, level_mean=level_mean)
  boot = tg["boot"]
  pred = student_fn(tg["x_t"], tg["t"], tg["d"], cond).astype(jnp.float32)
  axes = tuple(range(2, x0.ndim))
  err = jnp.mean(jnp.square(pred - tg["target"]), axis=axes)  # B x T
  w = jnp.ones_like(err) if loss_mask is None else loss_mask.astype(jnp.float32)
  fm_w, boot_w = w * (~boot), w * boot
  mean = lambda e, m: jnp.sum(e * m) / jnp.maximum(jnp.sum(m), 1.0)  # noqa: E731
  loss = mean(err, w)
  data_err = jnp.mean(jnp.square(pred - tg["data_target"]), axis=axes)
  teacher_err = jnp.mean(jnp.square(tg["target"] - tg["data_target"]), axis=axes)
  return loss, {
      "loss": loss,
      "loss_flow": mean(err, fm_w),
      "loss_bootstrap": mean(err, boot_w),
      "student_flow_err": mean(data_err, fm_w),
      "teacher_flow_err": mean(teacher_err, fm_w),
      "bootstrap_fraction": jnp.mean(boot.astype(jnp.float32)),
      **shortcut.per_sample_flow(err, fm_w),
  }
