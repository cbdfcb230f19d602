"""The rectified-flow path and per-frame noise-level samplers (diffusion forcing).

Path: x_t = (1 - t) x_0 + t eps, t in [0, 1], t = 1 is pure noise; velocity v = eps - x_0.
Diffusion forcing draws an independent level for every frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LEVEL_SAMPLERS = ("uniform", "logit_normal")


def interpolate(x0, eps, t):
  """x_t = (1 - t) x0 + t eps, with t broadcast from the leading axes of x0."""
  t = _expand(t, x0.ndim)
  return (1.0 - t) * x0 + t * eps


def velocity(x0, eps):
  return eps - x0


def _expand(t, ndim: int):
  t = jnp.asarray(t, jnp.float32)
  return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def sample_levels(key, shape, kind: str = "logit_normal", *, mean: float = 0.0, std: float = 1.0,
                  t_min: float = 0.0, t_max: float = 1.0):
  """Independent noise levels in [t_min, t_max], one per entry of `shape` (e.g. B x T frames)."""
  if kind == "uniform":
    u = jax.random.uniform(key, shape)
  elif kind == "logit_normal":
    u = jax.nn.sigmoid(mean + std * jax.random.normal(key, shape))
  else:
    raise ValueError(f"level sampler must be one of {LEVEL_SAMPLERS}, got {kind!r}")
  return t_min + (t_max - t_min) * u
