"""The S-step shortcut sampler for one frame, given the input latent, the history ring,
tau_inf, the prompt and a key.

The ring holds the last K generated latents (oldest first), their input-frame latents (used
by the ``attention`` mode) and a level per slot: 1.0 marks an empty slot (pure noise, as at
the start of a stream), 0.0 a generated frame. At every frame the history is noised to
max(level, tau_inf) and the model is told that level: it expects an inaccurate history and
corrects for it instead of compounding it.

A ``residual`` model diffuses y - c (see `forcing`): its history tokens (``attention`` mode) are
residuals and the frame it returns is c + z.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lsd_jax.diffusion import history
from lsd_jax.diffusion.shortcut import VelocityFn


class Ring(NamedTuple):
  frames_BxKxHxWxC: jax.Array  # generated latents, oldest first
  inputs_BxKxHxWxC: jax.Array  # the input latents they were made from
  levels_BxK: jax.Array  # 1.0 = empty slot, 0.0 = generated


def empty_ring(batch: int, k: int, h: int, w: int, c: int) -> Ring:
  z = jnp.zeros((batch, k, h, w, c), jnp.float32)
  return Ring(z, z, jnp.ones((batch, k), jnp.float32))


def push(ring: Ring, frame_BxHxWxC, input_BxHxWxC) -> Ring:
  """Drops the oldest slot, appends the newest generated frame (level 0)."""
  roll = lambda a, x: jnp.concatenate([a[:, 1:], x[:, None].astype(a.dtype)], axis=1)  # noqa: E731
  return Ring(roll(ring.frames_BxKxHxWxC, frame_BxHxWxC), roll(ring.inputs_BxKxHxWxC, input_BxHxWxC),
              roll(ring.levels_BxK, jnp.zeros(frame_BxHxWxC.shape[:1], jnp.float32)))


def sample_frame(velocity_fn: VelocityFn, key, c_BxHxWxC, ring: Ring, prompt_BxE, *, tau_inf: float,
                 steps: int, mode: str = "concat", residual: bool = False, noise_scale=1.0):
  """One frame's latent: z ~ N(0, noise_scale^2 I) at t = 1, then `steps` shortcut steps of
  d = 1/steps (plus the input latent c when the model is `residual`). noise_scale < 1 is a
  sampling temperature: less of the noise's draw in the frame (1: the trained distribution). A
  Python float is part of the program (1: no multiply); an array (shape [] or [B], one per
  stream) is an input of it."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  b = c_BxHxWxC.shape[0]
  k_hist, k_z = jax.random.split(key)
  tau = jnp.maximum(ring.levels_BxK, tau_inf)
  ctx = ring.frames_BxKxHxWxC
  if residual and mode == "attention":
    ctx = ctx - ring.inputs_BxKxHxWxC
  hist = history.noise(k_hist, ctx, tau)
  z = jax.random.normal(k_z, c_BxHxWxC.shape, jnp.float32)
  if not isinstance(noise_scale, (int, float)):  # traced: one scale per stream
    z = jnp.reshape(jnp.asarray(noise_scale, jnp.float32), (-1, 1, 1, 1)) * z
  elif noise_scale != 1.0:  # static: the default program is unchanged
    z = noise_scale * z
  d = 1.0 / steps
  for i in range(steps):  # static unroll: steps is small and fixed per compiled function
    t_now = jnp.full((b, 1), 1.0 - i * d, jnp.float32)
    d_now = jnp.full((b, 1), d, jnp.float32)
    if mode == "concat":
      cond = {"c": c_BxHxWxC[:, None], "prompt": prompt_BxE, "hist": hist[:, None], "tau": tau[:, None]}
      u = velocity_fn(z[:, None], t_now, d_now, cond)[:, 0]
    elif mode == "attention":
      seq = jnp.concatenate([hist, z[:, None]], axis=1)
      cond = {"c": jnp.concatenate([ring.inputs_BxKxHxWxC, c_BxHxWxC[:, None]], axis=1), "prompt": prompt_BxE}
      t_seq = jnp.concatenate([tau, t_now], axis=1)
      d_seq = jnp.concatenate([jnp.zeros_like(tau), d_now], axis=1)
      u = velocity_fn(seq, t_seq, d_seq, cond)[:, -1]
    else:
      raise ValueError(f"unknown history mode {mode!r}")
    z = z - d * u
  return z + c_BxHxWxC if residual else z
