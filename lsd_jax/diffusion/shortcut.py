"""The shortcut objective (Frans et al. 2024): flow matching at d = 0 plus self-consistency.

The network u(x_t, t, d) predicts the average velocity over a step of size d, so that
x_{t-d} = x_t - d u. A fraction of each batch trains self-consistency: for d in
{1/2^max_log2, ..., 1/2, 1}, the target is the stop-gradient mean of two half steps of size
d/2 (the smallest d uses the instantaneous field, d = 0, for its half steps). The rest trains
flow matching with target eps - x0 at d = 0. A `teacher_fn` (a larger or many-step model) can
provide the self-consistency targets instead of the model itself: shortcut distillation.

`velocity_fn(x_BxTx..., t_BxT, d_BxT, cond) -> u` where `cond` is a pytree with a leading
batch axis (sliced for the bootstrap sub-batch).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lsd_jax.diffusion import flow

VelocityFn = Callable[[jax.Array, jax.Array, jax.Array, Any], jax.Array]


def sample_times(key, batch: int, frames: int, *, bootstrap_frac: float = 0.25, max_log2: int = 7,
                 level_kind: str = "logit_normal", bootstrap_last_only: bool = False, level_mean: float = 0.0):
  """Levels t_BxT, steps d_BxT and the bootstrap mask boot_BxT.

  The first round(bootstrap_frac * B) samples are bootstrap samples: their frames (only the
  last frame with `bootstrap_last_only`, for frame-causal clips, so no other frame's context
  moves) get d = 2^-k, k uniform in 0..max_log2, and t on the grid {d, 2d, ..., 1}.
  """
  n_boot = int(round(bootstrap_frac * batch))
  k_t, k_d, k_grid = jax.random.split(key, 3)
  t = flow.sample_levels(k_t, (batch, frames), level_kind, mean=level_mean)
  log2 = jax.random.randint(k_d, (batch, frames), 0, max_log2 + 1)
  d_boot = 2.0 ** (-log2.astype(jnp.float32))
  n_steps = jnp.round(1.0 / d_boot).astype(jnp.int32)
  t_boot = d_boot * (1 + jax.random.randint(k_grid, (batch, frames), 0, 2 ** max_log2) % n_steps)
  boot = jnp.arange(batch)[:, None] < n_boot
  boot = jnp.broadcast_to(boot, (batch, frames))
  if bootstrap_last_only:
    boot &= jnp.arange(frames)[None, :] == frames - 1
  t = jnp.where(boot, t_boot, t)
  d = jnp.where(boot, d_boot, 0.0)
  return t, d, boot, n_boot


def bootstrap_targets(teacher_fn: VelocityFn, x_t, t, d, boot, cond, *, d_min: float):
  """Stop-gradient mean of two half steps; frames outside `boot` are left where they are."""
  half = d / 2.0
  d_in = jnp.where(d <= d_min, 0.0, half)  # the smallest step's halves use the instantaneous field
  move = jnp.where(boot, half, 0.0)
  s1 = teacher_fn(x_t, t, d_in, cond)
  x_mid = x_t - flow._expand(move, x_t.ndim) * s1
  s2 = teacher_fn(x_mid, t - move, d_in, cond)
  return jax.lax.stop_gradient(0.5 * (s1 + s2))


def make_targets(velocity_fn: VelocityFn, key, x0, cond, *, x0_in=None, bootstrap_frac: float = 0.25,
                 max_log2: int = 7, level_kind: str = "logit_normal", bootstrap_last_only: bool = False,
                 teacher_fn: VelocityFn | None = None, level_mean: float = 0.0, eps_scale_B=None):
  """Noisy inputs and regression targets: a dict with x_t, t, d, boot, eps and target.
  `eps_scale_B` (optional, [B]): each sample's noise is N(0, scale^2 I), the initial noise the
  sampler draws at inference at `sampler.sample_frame(noise_scale=)` (the flow from a colder
  draw); None: the standard normal."""
  b, t_len = x0.shape[:2]
  k_times, k_eps = jax.random.split(key)
  t, d, boot, n_boot = sample_times(k_times, b, t_len, bootstrap_frac=bootstrap_frac, max_log2=max_log2,
                                    level_kind=level_kind, bootstrap_last_only=bootstrap_last_only,
                                    level_mean=level_mean)
  eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
  if eps_scale_B is not None:
    eps = jnp.reshape(jnp.asarray(eps_scale_B, jnp.float32), (-1,) + (1,) * (x0.ndim - 1)) * eps
  x_t = flow.interpolate(x0 if x0_in is None else x0_in, eps, t)
  target = flow.velocity(x0, eps)
  if n_boot > 0:
    teacher = teacher_fn or velocity_fn
    sub = lambda a: a[:n_boot]  # noqa: E731
    boot_target = bootstrap_targets(teacher, sub(x_t), sub(t), sub(d), sub(boot),
                                    jax.tree.map(sub, cond), d_min=2.0 ** -max_log2)
    keep = flow._expand(sub(boot), x0.ndim)
    target = target.at[:n_boot].set(jnp.where(keep, boot_target, target[:n_boot]))
  return {"x_t": x_t, "t": t, "d": d, "boot": boot, "eps": eps, "target": target}


def shortcut_loss(velocity_fn: VelocityFn, key, x0, cond, *, x0_in=None, bootstrap_frac: float = 0.25,
                  max_log2: int = 7, level_kind: str = "logit_normal", bootstrap_last_only: bool = False,
                  teacher_fn: VelocityFn | None = None, loss_mask=None, level_mean: float = 0.0,
                  loss_weight: str = "velocity", eps_scale_B=None):
  """Returns (loss, info) for clean targets x0_BxTx... (what the model should produce).

  `x0_in` (default x0) is what gets noised: history augmentation can corrupt context frames
  while the target stays clean. `loss_mask_BxT` weights frames (1 = trained). `loss_weight`:
  see `level_weight`. The logged `loss_flow` / `loss_bootstrap` stay unweighted velocity errors.
  `eps_scale_B`: the noise's scale per sample (`make_targets`).
  """
  tg = make_targets(velocity_fn, key, x0, cond, x0_in=x0_in, bootstrap_frac=bootstrap_frac,
                    max_log2=max_log2, level_kind=level_kind, bootstrap_last_only=bootstrap_last_only,
                    teacher_fn=teacher_fn, level_mean=level_mean, eps_scale_B=eps_scale_B)
  boot = tg["boot"]
  pred = velocity_fn(tg["x_t"], tg["t"], tg["d"], cond)
  err = jnp.mean(jnp.square(pred.astype(jnp.float32) - tg["target"]), axis=tuple(range(2, x0.ndim)))  # B x T
  w = jnp.ones_like(err) if loss_mask is None else loss_mask.astype(jnp.float32)
  loss = jnp.sum(err * w * level_weight(tg["t"], boot, loss_weight)) / jnp.maximum(jnp.sum(w), 1.0)
  fm_w, boot_w = w * (~boot), w * boot
  info = {
      "loss": loss,
      "loss_flow": jnp.sum(err * fm_w) / jnp.maximum(jnp.sum(fm_w), 1.0),
      "loss_bootstrap": jnp.sum(err * boot_w) / jnp.maximum(jnp.sum(boot_w), 1.0),
      "bootstrap_fraction": jnp.mean(boot.astype(jnp.float32)),
      **per_sample_flow(err, fm_w),
  }
  return loss, info


LOSS_WEIGHTS = ("velocity", "x0")


def level_weight(t_BxT, boot_BxT, kind: str = "velocity"):
  """Per-frame loss weight. "velocity": 1 (plain flow matching). "x0": t^2 on flow-matching
  frames, so their term is the squared error of the clean frame they imply,
  x0_hat = x_t - t u (|x0_hat - x0| = t |u - v|): the velocity loss weighs a frame by 1 / t^2
  in those units, so nearly clean levels, where x_t already shows the answer, dominate its
  gradient, while a 1-2 step sampler only ever asks for t = 1 and 1/2. Bootstrap frames keep
  weight 1 (their targets are the few-step trajectory itself)."""
  if kind == "velocity":
    return jnp.ones_like(t_BxT)
  if kind == "x0":
    return jnp.where(boot_BxT, 1.0, jnp.square(t_BxT))
  raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS}, got {kind!r}")


def per_sample_flow(err_BxT, fm_w_BxT):
  """Each sample's flow-matching error (mean over its flow-matching frames) and whether it has
  any: `flow_err_B`, `flow_w_B`, for splitting the flow loss by effect (`train.steps`)."""
  n = jnp.sum(fm_w_BxT, axis=1)
  return {"flow_err_B": jnp.sum(err_BxT * fm_w_BxT, axis=1) / jnp.maximum(n, 1.0),
          "flow_w_B": (n > 0).astype(jnp.float32)}
