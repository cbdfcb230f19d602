"""History augmentation: composable pure transforms `(key, frames, strength) -> frames`.

They corrupt the history latents the denoiser conditions on, so that at inference, when its
history is its own imperfect output, it corrects errors instead of compounding them (the
report's key to streams that do not drift). Every transform:

- is a pure function of (key, frames_...xKxHxWxC, strength), deterministic given the key;
- keeps shape and dtype;
- is exactly the identity at strength 0.

`strength` is a scalar or broadcasts against the leading (batch, frame) axes. `compose` builds
one transform from a config list of `{"name", "max", "p"}` entries.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

Transform = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _per_frame(strength, frames):
  """Strength broadcast to frames' leading axes (all but H, W, C), then to full rank."""
  s = jnp.broadcast_to(jnp.asarray(strength, jnp.float32), frames.shape[:-3])
  return s, s[..., None, None, None]


def noise(key, frames, strength):
  """Diffusion-forcing corruption: the flow path at tau = strength, (1 - tau) f + tau eps."""
  _, tau = _per_frame(strength, frames)
  eps = jax.random.normal(key, frames.shape, jnp.float32)
  return ((1.0 - tau) * frames + tau * eps).astype(frames.dtype)


def blur(key, frames, strength, max_sigma: float = 1.5):
  """Separable Gaussian blur with sigma = strength * max_sigma (a delta kernel at 0)."""
  del key
  s, _ = _per_frame(strength, frames)
  sigma = jnp.maximum(s * max_sigma, 1e-6)[..., None]  # ... x 1
  r = jnp.arange(-3, 4, dtype=jnp.float32)
  kern = jnp.exp(-0.5 * (r / sigma) ** 2)
  kern = kern / kern.sum(-1, keepdims=True)  # ... x 7; exactly [0,0,0,1,0,0,0] at sigma 1e-6

  def conv_axis(x, k7, axis):  # x: H x W x C for one frame, k7: 7 taps
    pad = [(0, 0)] * 3
    pad[axis] = (3, 3)
    xp = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis]
    return sum(k7[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(7))

  def one(x, k7):
    return conv_axis(conv_axis(x.astype(jnp.float32), k7, 0), k7, 1)

  flat = frames.reshape((-1,) + frames.shape[-3:])
  out = jax.vmap(one)(flat, kern.reshape(-1, 7))
  return out.reshape(frames.shape).astype(frames.dtype)


def color(key, frames, strength, gain_std: float = 0.15, offset_std: float = 0.15):
  """Per-frame, per-channel gain and offset: f * (1 + s g) + s o."""
  _, s = _per_frame(strength, frames)
  kg, ko = jax.random.split(key)
  shape = frames.shape[:-3] + (1, 1, frames.shape[-1])
  g = gain_std * jax.random.normal(kg, shape)
  o = offset_std * jax.random.normal(ko, shape)
  return (frames * (1.0 + s * g) + s * o).astype(frames.dtype)


def jitter(key, frames, strength, max_shift: float = 1.0):
  """Sub-patch spatial shift of up to strength * max_shift latent pixels (bilinear, edge)."""
  s, _ = _per_frame(strength, frames)
  shifts = (s[..., None] * max_shift) * jax.random.uniform(key, s.shape + (2,), minval=-1.0, maxval=1.0)
  h, w = frames.shape[-3:-1]
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")

  def one(x, sh2):  # x: H x W x C
    coords = [yy + sh2[0], xx + sh2[1]]
    return jax.vmap(lambda ch: ndimage.map_coordinates(ch, coords, order=1, mode="nearest"),
                    in_axes=-1, out_axes=-1)(x.astype(jnp.float32))

  flat = frames.reshape((-1,) + frames.shape[-3:])
  out = jax.vmap(one)(flat, shifts.reshape(-1, 2))
  return out.reshape(frames.shape).astype(frames.dtype)


def quantize(key, frames, strength, max_step: float = 0.5):
  """Rounds values to a grid of step strength * max_step (untouched at 0)."""
  del key
  _, s = _per_frame(strength, frames)
  step = jnp.maximum(s * max_step, 1e-12)
  q = jnp.round(frames / step) * step
  return jnp.where(s > 0, q, frames).astype(frames.dtype)


def drop_repeat(key, frames, strength):
  """Each history frame, with probability `strength`, is replaced by its older neighbour
  (a stalled or dropped camera frame); the oldest frame by the next one. Axis -4 is K."""
  k = frames.shape[-4]
  s, _ = _per_frame(strength, frames)
  hit = jax.random.uniform(key, frames.shape[:-3]) < s
  src = jnp.where(jnp.arange(k) == 0, 1 if k > 1 else 0, jnp.arange(k) - 1)
  neighbour = jnp.take(frames, src, axis=-4)
  return jnp.where(hit[..., None, None, None], neighbour, frames)


def model_history(predict_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Transform:
  """Hook: with probability `strength` per history frame, substitute `predict_fn(key, frames)`,
  the model's own reconstruction of the history (e.g. a one-step re-denoise of noised history,
  under stop_gradient), as in teacher-forced rollouts."""

  def transform(key, frames, strength):
    k_pick, k_pred = jax.random.split(key)
    made = jax.lax.stop_gradient(predict_fn(k_pred, frames)).astype(frames.dtype)
    s, _ = _per_frame(strength, frames)
    hit = jax.random.uniform(k_pick, frames.shape[:-3]) < s
    return jnp.where(hit[..., None, None, None], made, frames)

  return transform


TRANSFORMS: dict[str, Transform] = {
    "noise": noise,
    "blur": blur,
    "color": color,
    "jitter": jitter,
    "quantize": quantize,
    "drop_repeat": drop_repeat,
}


def compose(spec: Sequence[dict], extra: dict[str, Transform] | None = None) -> Transform:
  """One transform from config entries {"name", "max", "p"} applied in order.

  Per sample (leading axis B of frames BxKxHxWxC) each entry fires with probability p, at a
  strength drawn uniformly in [0, max], times the composed transform's own strength.
  `extra` adds named transforms, e.g. {"model": model_history(fn)}.
  """
  table = dict(TRANSFORMS, **(extra or {}))
  entries = []
  for e in spec:
    name = e["name"]
    if name not in table:
      raise ValueError(f"unknown history transform {name!r}; known: {sorted(table)}")
    entries.append((table[name], float(e.get("max", 1.0)), float(e.get("p", 1.0))))

  def transform(key, frames_BxKxHxWxC, strength):
    b = frames_BxKxHxWxC.shape[0]
    base = jnp.broadcast_to(jnp.asarray(strength, jnp.float32), (b,))
    for i, (fn, mx, p) in enumerate(entries):
      k_fire, k_level, k_fn = jax.random.split(jax.random.fold_in(key, i), 3)
      fire = jax.random.uniform(k_fire, (b,)) < p
      level = jnp.where(fire, jax.random.uniform(k_level, (b,)) * mx, 0.0) * base
      frames_BxKxHxWxC = fn(k_fn, frames_BxKxHxWxC, level[:, None])
    return frames_BxKxHxWxC

  return transform
