"""Prompted effects with exact ground truth: pure JAX renderers of target clips from input clips.

An effect is a per-frame effect (a function of the current frame) followed by a temporal effect
(a function of the per-frame result and of the effect's own state: its previous output, or a set
of particles that persist and move across frames). Both are picked inside jit by `lax.switch` on
integer ids, so one compiled function renders every effect, and everything vmaps over a batch of
specs and clips.

Contract (other modules rely on it):
  * `EffectSpec(frame_id: int32[], temporal_id: int32[], params: f32[NUM_PARAMS])`; id 0 is "none".
  * `FRAME_EFFECTS`, `TEMPORAL_EFFECTS`: names, index = id.
  * `init_state(spec, frame_shape, key) -> EffectState` (fixed shapes: MAX_PARTICLES particles),
    `render_step(spec, state, frame_HxWx3) -> (state, out_HxWx3)`,
    `render_clip(spec, clip_TxHxWx3, key) -> clip_TxHxWx3` (a lax.scan over render_step).
Frames are float32 in [0, 1], HxWx3, any H and W.

Parameters (all in [0, 1]; see `make_spec` for the defaults):
  P_STRENGTH   blend of the per-frame effect over the input (0 = input, 1 = full effect).
  P_COLOR      RGB (3 slots) for colour tint, neon outlines, night vision.
  P_SCALE      per-frame scale: pixel-art block size, cartoon/posterize coarseness, line width.
  P_DENSITY    particles: fraction of the effect's maximum count that is visible;
               echo: trail persistence, the recursion weight is a = echo_alpha(params).
  P_SPEED      particle speed (multiplies each particle's velocity, see `speed_factor`).
  P_SIZE       particle size.

Temporal effects are exact recursions. Echo: F_1 = I_1 and F_{i+1} = a I_{i+1} + (1 - a) F_i where
I is the per-frame result. Particles: p_{t+1} = p_t + speed_factor(params) * v_t unless that leaves
the frame (plus a margin), in which case the particle respawns at its effect's entry edge;
velocities evolve by the effect's own rule (sway, wander) after the move.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

NUM_PARAMS = 8
P_STRENGTH, P_SCALE, P_DENSITY, P_SPEED, P_SIZE = 0, 4, 5, 6, 7
P_COLOR = slice(1, 4)
MAX_PARTICLES = 512
# Pixel sizes below are for a 256-pixel frame and scale with min(H, W) / REF_SIZE.
REF_SIZE = 256.0

_LUMA = jnp.array([0.299, 0.587, 0.114], jnp.float32)


class EffectSpec(NamedTuple):
  """Which effect, with which parameters. Batch it by giving every field a leading B axis."""
  frame_id: jax.Array  # int32 scalar, index into FRAME_EFFECTS
  temporal_id: jax.Array  # int32 scalar, index into TEMPORAL_EFFECTS
  params: jax.Array  # float32[NUM_PARAMS]


class EffectState(NamedTuple):
  """Temporal state, the same structure for every effect (unused fields ride along)."""
  prev_HxWx3: jax.Array  # previous output frame (echo)
  started: jax.Array  # bool scalar: a previous output exists
  pos_Nx2: jax.Array  # particle positions (y, x) in pixels
  vel_Nx2: jax.Array  # particle velocities (y, x) in pixels per frame at speed_factor 1
  phase_N: jax.Array  # per-particle phase (blinking, wobble)
  key: jax.Array  # uint32[2] raw PRNG key for respawns and wander


# ----------------------------------------------------------------------------- image helpers


def _px(frame_HxWx3: jax.Array) -> float:
  """Static pixel scale of a frame relative to a 256-pixel reference."""
  return min(frame_HxWx3.shape[0], frame_HxWx3.shape[1]) / REF_SIZE


def luminance(frame_HxWx3: jax.Array) -> jax.Array:
  return frame_HxWx3 @ _LUMA


def _gauss_taps(sigma: jax.Array, radius: int) -> jax.Array:
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  return jnp.exp(-0.5 * (x / jnp.maximum(sigma, 1e-3)) ** 2)


def _band(taps: jax.Array, n: int) -> jax.Array:
  """n x n matrix M with (M @ x)[i] = sum_k taps[k] x[clip(i + k - r, 0, n - 1)] (edge padding)."""
  k = taps.shape[0]
  r = k // 2
  if n == 1:
    return taps.sum().reshape(1, 1)
  i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
  d = j - i
  m = jnp.where(jnp.abs(d) <= r, taps[jnp.clip(d + r, 0, k - 1)], 0.0)
  c = jnp.cumsum(taps)
  rows = jnp.arange(n)
  # The clamped taps pile onto the first and last columns.
  first = jnp.where(rows <= r, c[jnp.clip(r - rows, 0, k - 1)], 0.0)
  last = jnp.where(n - 1 - rows <= r, c[-1] - jnp.where(n - 2 - rows + r >= 0,
                                                        c[jnp.clip(n - 2 - rows + r, 0, k - 1)], 0.0),
                   0.0)
  return m.at[:, 0].set(first).at[:, n - 1].set(last)


def _conv_sep(x_HxWxC: jax.Array, taps_y: jax.Array, taps_x: jax.Array) -> jax.Array:
  """Separable correlation with edge padding; taps are odd-length 1D arrays (maybe traced).

  Written as two banded matrix products: on CPU ~4x faster than fused shifted slices and ~80x
  faster than lax.conv with one channel, and under vmap per-item taps become a batched matmul.
  """
  h, w, _ = x_HxWxC.shape
  x_HxWxC = jnp.einsum("ij,jwc->iwc", _band(taps_y, h), x_HxWxC, precision="highest")
  return jnp.einsum("vw,hwc->hvc", _band(taps_x, w), x_HxWxC, precision="highest")


def gaussian_blur(x_HxWxC: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Normalised Gaussian blur; `radius` (static) bounds the kernel, `sigma` may be traced."""
  taps = _gauss_taps(sigma, radius)
  taps = taps / taps.sum()
  return _conv_sep(x_HxWxC, taps, taps)


def _sobel(gray_HxW: jax.Array) -> jax.Array:
  """Gradient magnitude of a gray image (edge padded)."""
  g = gray_HxW[..., None]
  smooth, diff = jnp.array([1.0, 2.0, 1.0]) / 4, jnp.array([-1.0, 0.0, 1.0]) / 2
  gy, gx = _conv_sep(g, diff, smooth)[..., 0], _conv_sep(g, smooth, diff)[..., 0]
  return jnp.sqrt(gx * gx + gy * gy + 1e-12)


def _block_mean(x_HxWxC: jax.Array, block: jax.Array) -> jax.Array:
  """Mean over block x block tiles (traced block size), separably through 1D cumulative sums."""

  def along(x_LxMxC: jax.Array) -> jax.Array:
    n = x_LxMxC.shape[0]
    csum = jnp.concatenate([jnp.zeros_like(x_LxMxC[:1]), jnp.cumsum(x_LxMxC, axis=0)])
    i = jnp.arange(n)
    lo = (i // block) * block
    hi = jnp.minimum(lo + block, n)
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None, None].astype(x_LxMxC.dtype)

  return along(along(x_HxWxC).transpose(1, 0, 2)).transpose(1, 0, 2)


def _quantize(x: jax.Array, levels: jax.Array) -> jax.Array:
  return jnp.round(x * (levels - 1)) / (levels - 1)


def _hash_noise(h: int, w: int) -> jax.Array:
  """Deterministic per-pixel noise in [0, 1) (a fixed sensor grain, not a random draw)."""
  y, x = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                      indexing="ij")
  v = jnp.sin(y * 12.9898 + x * 78.233) * 43758.5453
  return v - jnp.floor(v)


# ----------------------------------------------------------------------------- per-frame effects
# Each is (params, frame) -> effected frame; the strength blend is applied by `apply_frame_effect`.


def _identity(params: jax.Array, f: jax.Array) -> jax.Array:
  del params
  return f


def _pencil_sketch(params: jax.Array, f: jax.Array) -> jax.Array:
  # Colour dodge of the gray image by its blurred inverse: flat areas go white, edges stay dark.
  px = _px(f)
  gray = luminance(f)[..., None]
  blurred_inv = gaussian_blur(1.0 - gray, (1.5 + 3.0 * params[P_SCALE]) * px, int(np.ceil(15 * px)))
  sketch = jnp.clip(gray / jnp.maximum(1.0 - blurred_inv, 1e-3), 0.0, 1.0) ** 2
  return jnp.broadcast_to(sketch * jnp.array([1.0, 0.99, 0.96]), f.shape)


_THERMAL_STOPS = np.array([0.0, 0.2, 0.45, 0.7, 0.88, 1.0], np.float32)
_THERMAL_RGB = np.array([[0.02, 0.0, 0.12], [0.3, 0.0, 0.55], [0.8, 0.1, 0.35],
                         [1.0, 0.5, 0.0], [1.0, 0.85, 0.1], [1.0, 1.0, 0.9]], np.float32)


def _piecewise_linear(x: jax.Array, stops: np.ndarray, values: np.ndarray) -> jax.Array:
  """jnp.interp for fixed stops as a sum of clipped ramps (fuses; interp's search does not)."""
  out = jnp.full(x.shape, values[0], jnp.float32)
  for i in range(len(stops) - 1):
    width = stops[i + 1] - stops[i]
    out = out + (values[i + 1] - values[i]) * jnp.clip((x - stops[i]) / width, 0.0, 1.0)
  return out


def _thermal(params: jax.Array, f: jax.Array) -> jax.Array:
  px = _px(f)
  heat = gaussian_blur(luminance(f)[..., None], (0.5 + 2.0 * params[P_SCALE]) * px,
                       int(np.ceil(8 * px)))[..., 0]
  return jnp.stack([_piecewise_linear(heat, _THERMAL_STOPS, _THERMAL_RGB[:, c]) for c in range(3)],
                   -1)


def _cartoon(params: jax.Array, f: jax.Array) -> jax.Array:
  px = _px(f)
  smooth = gaussian_blur(f, 1.5 * px, int(np.ceil(4 * px)))
  levels = jnp.round(8.0 - 5.0 * params[P_SCALE])  # 8 (fine) .. 3 (coarse)
  # Quantising luminance, not channels, keeps flat regions free of false-colour blobs.
  lum = luminance(smooth)[..., None]
  flat = jnp.clip(smooth * (_quantize(lum, levels) + 0.5 / levels) / (lum + 0.5 / levels), 0.0, 1.0)
  edges = _sobel(luminance(smooth))
  ink = jnp.clip((edges - 0.04) / 0.06, 0.0, 1.0)[..., None]
  return flat * (1.0 - ink)


def _pixel_art(params: jax.Array, f: jax.Array) -> jax.Array:
  block = jnp.maximum(jnp.round((2.0 + 10.0 * params[P_SCALE]) * _px(f)), 1.0).astype(jnp.int32)
  return _quantize(_block_mean(f, block), 6.0)


def _night_vision(params: jax.Array, f: jax.Array) -> jax.Array:
  h, w, _ = f.shape
  lum = jnp.clip(luminance(f) * 1.8, 0.0, 1.0) ** 0.7
  y, x = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
  vignette = jnp.clip(1.25 - 0.6 * (x * x + y * y), 0.0, 1.0)
  scanlines = 1.0 - 0.12 * (jnp.arange(h) % 2)[:, None]
  grain = 0.85 + 0.3 * _hash_noise(h, w)
  v = jnp.clip(lum * vignette * scanlines * grain, 0.0, 1.0)[..., None]
  return jnp.clip(v * params[P_COLOR] * 1.2 + 0.05 * v, 0.0, 1.0)


_SEPIA = jnp.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def _sepia(params: jax.Array, f: jax.Array) -> jax.Array:
  del params
  return jnp.clip(f @ _SEPIA.T, 0.0, 1.0)


def _neon_outlines(params: jax.Array, f: jax.Array) -> jax.Array:
  px = _px(f)
  gray = gaussian_blur(luminance(f)[..., None], 1.0 * px, int(np.ceil(3 * px)))[..., 0]
  edges = jnp.clip((_sobel(gray) - 0.02) * 10.0, 0.0, 1.0)[..., None]
  glow = gaussian_blur(edges, (1.0 + 3.0 * params[P_SCALE]) * px, int(np.ceil(12 * px)))
  light = jnp.clip(edges + glow, 0.0, 1.0)
  return jnp.clip(0.15 * f + light * params[P_COLOR], 0.0, 1.0)


def _negative(params: jax.Array, f: jax.Array) -> jax.Array:
  del params
  return 1.0 - f


def _color_tint(params: jax.Array, f: jax.Array) -> jax.Array:
  lum = luminance(f)[..., None]
  return jnp.clip(lum * (0.3 + 1.4 * params[P_COLOR]) * 0.8 + 0.2 * f, 0.0, 1.0)


def _mirror(params: jax.Array, f: jax.Array) -> jax.Array:
  # The left half reflected onto the right half.
  del params
  w = f.shape[1]
  x = jnp.arange(w)
  return f[:, jnp.where(x < (w + 1) // 2, x, w - 1 - x)]


def _grayscale(params: jax.Array, f: jax.Array) -> jax.Array:
  del params
  return jnp.broadcast_to(luminance(f)[..., None], f.shape)


def _emboss(params: jax.Array, f: jax.Array) -> jax.Array:
  px = _px(f)
  gray = luminance(f)[..., None]
  shift = jnp.maximum(jnp.round((1.0 + 2.0 * params[P_SCALE]) * px), 1.0).astype(jnp.int32)
  shifted = jnp.roll(gray, (shift, shift), axis=(0, 1))
  relief = jnp.clip(0.5 + 2.0 * (gray - shifted), 0.0, 1.0)
  return jnp.broadcast_to(relief, f.shape)


def _posterize(params: jax.Array, f: jax.Array) -> jax.Array:
  return _quantize(f, jnp.round(6.0 - 4.0 * params[P_SCALE]))  # 6 .. 2 levels per channel


def _soft_glow(params: jax.Array, f: jax.Array) -> jax.Array:
  px = _px(f)
  halo = gaussian_blur(f, (2.0 + 4.0 * params[P_SCALE]) * px, int(np.ceil(18 * px)))
  return 1.0 - (1.0 - f) * (1.0 - 0.8 * halo)  # screen blend


_FRAME_FNS = {
    "identity": _identity, "pencil_sketch": _pencil_sketch, "thermal": _thermal,
    "cartoon": _cartoon, "pixel_art": _pixel_art, "night_vision": _night_vision,
    "sepia": _sepia, "neon_outlines": _neon_outlines, "negative": _negative,
    "color_tint": _color_tint, "mirror": _mirror, "grayscale": _grayscale, "emboss": _emboss,
    "posterize": _posterize, "soft_glow": _soft_glow,
}
FRAME_EFFECTS: tuple[str, ...] = tuple(_FRAME_FNS)


def apply_frame_effect(spec: EffectSpec, frame_HxWx3: jax.Array) -> jax.Array:
  """The per-frame part of an effect, blended over the input by the strength parameter."""
  branches = [functools.partial(_blend, fn) for fn in _FRAME_FNS.values()]
  return jax.lax.switch(spec.frame_id, branches, spec.params, frame_HxWx3)


def _blend(fn, params: jax.Array, f: jax.Array) -> jax.Array:
  s = params[P_STRENGTH]
  return jnp.clip(f + s * (fn(params, f) - f), 0.0, 1.0).astype(jnp.float32)


# ----------------------------------------------------------------------------- temporal effects


def echo_alpha(params: jax.Array) -> jax.Array:
  """Weight of the new frame in the echo recursion: density 0 -> 1 (no trail), 1 -> 0.1."""
  return 1.0 - 0.9 * jnp.clip(params[..., P_DENSITY], 0.0, 1.0)


def speed_factor(params: jax.Array) -> jax.Array:
  """Multiplier of every particle velocity: speed 0 -> 0.25, 0.5 -> 1, 1 -> 1.75."""
  return 0.25 + 1.5 * params[..., P_SPEED]


@dataclasses.dataclass(frozen=True)
class ParticleStyle:
  """Static look and motion of one particle effect (pixel sizes at a 256-pixel frame)."""
  max_fraction: float  # of MAX_PARTICLES visible at density 1
  speed: tuple[float, float]  # magnitude range, pixels per frame at speed_factor 1
  direction: tuple[float, float]  # mean (dy, dx) direction of motion (zero: random)
  spread: float  # sideways velocity spread, relative to the magnitude
  spawn: str  # "top", "bottom" or "anywhere"
  sigmas: tuple[float, float]  # range of particle Gaussian radii at size 0.5
  streak: float  # motion-blur length in frames of displacement (rain)
  color: tuple[float, float, float]
  opacity: float
  additive: bool  # glow (fireflies) instead of alpha compositing
  ring: bool  # bubbles: bright rim, clear centre
  backdrop: float  # the frame is dimmed by this factor under the particles
  wander: float  # radians per frame of random heading change (fireflies)
  sway: float  # sideways oscillation amplitude relative to the speed (snow, bubbles)


_PARTICLES = {
    "snowfall": ParticleStyle(1.0, (1.2, 3.0), (1.0, 0.0), 0.25, "top", (0.9, 1.8), 0.0,
                              (1.0, 1.0, 1.0), 0.95, False, False, 0.9, 0.0, 0.35),
    "rain": ParticleStyle(1.0, (9.0, 14.0), (1.0, 0.18), 0.03, "top", (0.5, 0.7), 1.2,
                          (0.78, 0.84, 0.95), 0.55, False, False, 0.8, 0.0, 0.0),
    "fireflies": ParticleStyle(0.25, (0.5, 1.2), (0.0, 0.0), 1.0, "anywhere", (1.0, 2.8), 0.0,
                               (1.0, 0.88, 0.35), 1.0, True, False, 0.65, 0.25, 0.0),
    "bubbles": ParticleStyle(0.3, (0.8, 2.2), (-1.0, 0.0), 0.1, "bottom", (3.0, 5.0), 0.0,
                             (0.85, 0.95, 1.0), 0.75, False, True, 1.0, 0.0, 0.5),
}
TEMPORAL_EFFECTS: tuple[str, ...] = ("none", "echo") + tuple(_PARTICLES)
PARTICLE_EFFECTS: tuple[str, ...] = tuple(_PARTICLES)


def has_particles(name: str) -> bool:
  """Whether an effect name ('snowfall', 'cartoon+rain', 'sepia') asks for a particle effect."""
  return name.rsplit("+", 1)[-1] in PARTICLE_EFFECTS


def particle_style(name: str) -> ParticleStyle | None:
  """The look and motion of a particle effect by temporal-effect name (None for the others)."""
  return _PARTICLES.get(name)


def _margin(style: ParticleStyle, px: float) -> float:
  """How far outside the frame a particle may go before it respawns (its drawn extent)."""
  return px * (3.0 * 1.8 * style.sigmas[1] + style.streak * style.speed[1] * 1.75) + 2.0


def _spawn(style: ParticleStyle, key: jax.Array, h: int, w: int, px: float,
           anywhere: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """New particles (positions, velocities, phases); `anywhere` fills the frame (initial state)."""
  k_pos, k_mag, k_dir, k_phase, k_edge = jax.random.split(key, 5)
  n, m = MAX_PARTICLES, _margin(style, px)
  u = jax.random.uniform(k_pos, (n, 2))
  pos = u * jnp.array([h, w], jnp.float32)
  edge = jax.random.uniform(k_edge, (n,), minval=0.0, maxval=m)
  if not anywhere and style.spawn == "top":
    pos = pos.at[:, 0].set(-edge)
  elif not anywhere and style.spawn == "bottom":
    pos = pos.at[:, 0].set(h + edge)
  mag = jax.random.uniform(k_mag, (n,), minval=style.speed[0], maxval=style.speed[1]) * px
  if style.direction == (0.0, 0.0):
    angle = jax.random.uniform(k_dir, (n,), maxval=2 * np.pi)
    vel = mag[:, None] * jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1)
  else:
    d = jnp.array(style.direction, jnp.float32)
    side = jnp.array([-d[1], d[0]]) * style.spread * jax.random.normal(k_dir, (n, 1))
    vel = mag[:, None] * (d + side)
  phase = jax.random.uniform(k_phase, (n,), maxval=2 * np.pi)
  return pos, vel, phase


def _move(style: ParticleStyle, params: jax.Array, state: EffectState, h: int, w: int,
          px: float) -> EffectState:
  """One exact step: p += speed_factor * v, respawn what left the frame, then evolve v."""
  key, k_spawn, k_wander = jax.random.split(state.key, 3)
  moved = state.pos_Nx2 + speed_factor(params) * state.vel_Nx2
  m = _margin(style, px)
  out = ((moved < -m) | (moved > jnp.array([h, w], jnp.float32) + m)).any(-1)
  new_pos, new_vel, new_phase = _spawn(style, k_spawn, h, w, px, anywhere=style.spawn == "anywhere")
  pos = jnp.where(out[:, None], new_pos, moved)
  vel = jnp.where(out[:, None], new_vel, state.vel_Nx2)
  phase = jnp.where(out, new_phase, state.phase_N + 0.15)
  if style.wander:
    turn = style.wander * jax.random.normal(k_wander, phase.shape)
    c, s = jnp.cos(turn), jnp.sin(turn)
    vel = jnp.stack([c * vel[:, 0] + s * vel[:, 1], -s * vel[:, 0] + c * vel[:, 1]], -1)
  if style.sway:
    # Sideways velocity follows a per-particle oscillation around the fall direction.
    base = jnp.linalg.norm(vel, axis=-1)
    vel = vel.at[:, 1].set(style.sway * base * jnp.sin(phase) + 0.2 * vel[:, 1])
  return state._replace(pos_Nx2=pos, vel_Nx2=vel, phase_N=phase, key=key)


def _gaussian_splat(pos_Nx2: jax.Array, sigma_N: jax.Array, weight_N: jax.Array, h: int,
                    w: int) -> jax.Array:
  """Sum over particles of weight * exp(-|p - pixel|^2 / 2 sigma^2): one N-contraction matmul.

  Separable per particle, so exact at sub-pixel positions (motion stays smooth) with no scatter;
  particles off the frame contribute nothing.
  """
  inv_N = 1.0 / (2.0 * jnp.maximum(sigma_N, 1e-3) ** 2)
  gy_NxH = jnp.exp(-((jnp.arange(h) - pos_Nx2[:, :1]) ** 2) * inv_N[:, None])
  gx_NxW = jnp.exp(-((jnp.arange(w) - pos_Nx2[:, 1:]) ** 2) * inv_N[:, None])
  return jnp.einsum("nh,nw->hw", gy_NxH * weight_N[:, None], gx_NxW, precision="highest")


def _draw(style: ParticleStyle, params: jax.Array, state: EffectState, h: int, w: int,
          px: float) -> jax.Array:
  """Coverage map HxW of the visible particles at their current positions."""
  n_visible = jnp.round(jnp.clip(params[P_DENSITY], 0.0, 1.0) * style.max_fraction * MAX_PARTICLES)
  index = jnp.arange(MAX_PARTICLES)
  weight = (index < n_visible).astype(jnp.float32)
  if style.additive:
    weight = weight * (0.55 + 0.45 * jnp.sin(state.phase_N))  # blinking
  # A fixed per-particle size between the style's two radii (golden-ratio spread over indices).
  mix = (index * 0.6180339887) % 1.0
  sigma = (style.sigmas[0] + (style.sigmas[1] - style.sigmas[0]) * mix) * (
      0.4 + 1.2 * params[P_SIZE]) * px
  sigma = jnp.maximum(sigma, 0.5)  # at least a pixel wide, or small frames lose their particles
  if style.streak:
    # Motion blur: samples spread over the last `streak` frames of displacement.
    disp = speed_factor(params) * state.vel_Nx2 * style.streak
    samples = [state.pos_Nx2 - disp * (s / 4) for s in range(5)]
    pos = jnp.concatenate(samples)
    sigma, weight = jnp.tile(sigma, 5), jnp.tile(weight, 5) * 0.45
  else:
    pos = state.pos_Nx2
  cover = _gaussian_splat(pos, sigma, weight, h, w)
  if style.ring:
    # Bright rim, clearer centre: a difference of Gaussians.
    cover = 1.6 * (cover - 0.8 * _gaussian_splat(pos, 0.6 * sigma, weight, h, w))
  return jnp.clip(cover, 0.0, None)


def _particle_step(style: ParticleStyle, params: jax.Array, state: EffectState,
                   f: jax.Array) -> tuple[EffectState, jax.Array]:
  """Draws the particles at their current positions over f, then advances them one frame."""
  h, w, _ = f.shape
  px = _px(f)
  cover = _draw(style, params, state, h, w, px)[..., None]
  color = jnp.array(style.color, jnp.float32)
  base = f * style.backdrop
  if style.additive:
    out = base + style.opacity * cover * color
  else:
    alpha = jnp.clip(style.opacity * cover, 0.0, 1.0)
    out = base * (1.0 - alpha) + alpha * color
  return _move(style, params, state, h, w, px), jnp.clip(out, 0.0, 1.0)


def _no_temporal(params: jax.Array, state: EffectState, f: jax.Array):
  del params
  return state, f


def _echo(params: jax.Array, state: EffectState, f: jax.Array):
  a = echo_alpha(params)
  prev = jnp.where(state.started, state.prev_HxWx3, f)
  out = a * f + (1.0 - a) * prev
  return state._replace(prev_HxWx3=out, started=jnp.array(True)), out


_TEMPORAL_FNS = (_no_temporal, _echo) + tuple(
    functools.partial(_particle_step, style) for style in _PARTICLES.values())


# ----------------------------------------------------------------------------- public API


def init_state(spec: EffectSpec, frame_shape: tuple[int, ...], key: jax.Array) -> EffectState:
  """Initial temporal state for frames of `frame_shape` (H, W, 3); particles fill the frame."""
  h, w = int(frame_shape[0]), int(frame_shape[1])
  px = min(h, w) / REF_SIZE
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  k_init, k_run = jax.random.split(key)
  spawned = [_spawn(style, k_init, h, w, px, anywhere=True) for style in _PARTICLES.values()]
  # The particle arrays of the selected effect (all have the same shapes; none/echo take any).
  index = jnp.clip(jnp.asarray(spec.temporal_id) - 2, 0, len(spawned) - 1)
  pos, vel, phase = (jnp.stack(parts)[index] for parts in zip(*spawned))
  return EffectState(prev_HxWx3=jnp.zeros((h, w, 3), jnp.float32), started=jnp.array(False),
                     pos_Nx2=pos, vel_Nx2=vel, phase_N=phase, key=k_run)


def render_step(spec: EffectSpec, state: EffectState,
                frame_HxWx3: jax.Array) -> tuple[EffectState, jax.Array]:
  """Ground truth for one input frame: the per-frame effect, then the temporal one."""
  frame_HxWx3 = jnp.asarray(frame_HxWx3, jnp.float32)
  effected = apply_frame_effect(spec, frame_HxWx3)
  state, out = jax.lax.switch(spec.temporal_id, _TEMPORAL_FNS, spec.params, state, effected)
  return state, out.astype(jnp.float32)


def render_clip(spec: EffectSpec, clip_TxHxWx3: jax.Array, key: jax.Array) -> jax.Array:
  """Ground truth for a whole clip: lax.scan of render_step from init_state."""
  state = init_state(spec, clip_TxHxWx3.shape[1:], key)
  _, out_TxHxWx3 = jax.lax.scan(lambda s, f: render_step(spec, s, f), state,
                                jnp.asarray(clip_TxHxWx3, jnp.float32))
  return out_TxHxWx3


def _by_group(ids_B: jax.Array, branches, operands, chunk: int):
  """out[i] = branches[ids[i]](operands[i]) for a batch, each branch run only on the samples
  that take it. Under `vmap`, `lax.switch` on a batched index runs every branch on every sample
  and selects (the train step's render spent 43 of its 68 ms so on an H200). Here the samples
  are sorted by id and cut into chunks of `chunk`; a chunk loops over the ids present in it, each
  branch batched over the whole chunk, kept where the id matches. Work: at most (B / chunk + the
  number of distinct ids) chunk-sized branch calls. `branches[j](*chunk_operands)` maps a chunk of
  operands (leading axis `chunk`) to a chunk of outputs."""
  n = ids_B.shape[0]
  order = jnp.argsort(ids_B, stable=True)
  inverse = jnp.argsort(order)
  ids_s = ids_B[order].reshape(n // chunk, chunk)
  ops_s = jax.tree.map(lambda x: x[order].reshape((n // chunk, chunk) + x.shape[1:]), operands)
  shapes = jax.eval_shape(branches[0], *jax.tree.map(lambda x: x[0], ops_s))
  none = len(branches)

  def per_chunk(args):
    ids_c, ops_c = args

    def body(carry):
      e, acc = carry
      res = jax.lax.switch(e, branches, *ops_c)
      keep = ids_c == e
      acc = jax.tree.map(lambda a, r: jnp.where(keep.reshape((-1,) + (1,) * (r.ndim - 1)), r, a), acc, res)
      return jnp.min(jnp.where(ids_c > e, ids_c, none)), acc  # the next id present, or done

    acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.while_loop(lambda c: c[0] < none, body, (ids_c[0], acc0))[1]

  out = jax.lax.map(per_chunk, (ids_s, ops_s))
  return jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:])[inverse], out)


def present_effects(frame_ids, temporal_ids) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The distinct per-frame and temporal effect ids of a set of specs (e.g. a prompt table's),
  sorted: what `render_batch(..., present=)` needs to compile only those effects."""
  return (tuple(sorted({int(i) for i in np.asarray(frame_ids).reshape(-1)})),
          tuple(sorted({int(i) for i in np.asarray(temporal_ids).reshape(-1)})))


def _restrict(ids_B: jax.Array, fns: list, present: tuple[int, ...] | None, total: int):
  """(branch index of each sample, the branches, whether each sample's id is one of them):
  all `fns` where `present` is None, else only the ones whose ids `present` lists."""
  if present is None:
    return ids_B, fns, None
  if not present or min(present) < 0 or max(present) >= total:
    raise ValueError(f"present effect ids {present} must be non-empty and within 0..{total - 1}")
  lut = np.full(total, len(present), np.int32)
  lut[list(present)] = np.arange(len(present), dtype=np.int32)
  idx = jnp.asarray(lut)[jnp.clip(ids_B, 0, total - 1)]
  valid = (idx < len(present)) & (ids_B >= 0) & (ids_B < total)
  return jnp.where(valid, idx, 0), [fns[i] for i in present], valid


def render_batch(spec: EffectSpec, clips_BxTxHxWx3: jax.Array, keys_B: jax.Array,
                 chunk: int = 8, present: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> jax.Array:
  """`vmap(render_clip)` for a batch (spec fields with a leading B axis), with each sample's
  frame and temporal effect computed alone instead of every effect for every sample
  (`_by_group`). The frame effect does not depend on the temporal state, so it runs on all the
  frames of a clip first, then the temporal effect scans them: the same values as render_clip
  (float rounding aside). What the train step renders its targets with.

  `present` = (frame ids, temporal ids) that the batch can hold (`present_effects` of the prompt
  table a run trains on): only those effects are compiled, the rest of the 21 never are (a
  one-effect capacity run, or a test's small table, compiles a fraction of the render). A sample
  whose id is not among them comes out NaN, so that a wrong `present` cannot pass unnoticed."""
  clips = jnp.asarray(clips_BxTxHxWx3, jnp.float32)
  n = clips.shape[0]
  chunk = max(1, min(chunk, n))
  pad = (-n) % chunk
  if pad:  # padding samples take the identity effect and are dropped at the end
    grow = lambda x: jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])  # noqa: E731
    spec, keys_B, clips = jax.tree.map(grow, spec), grow(keys_B), grow(clips)
  states = jax.vmap(lambda s, k: init_state(s, clips.shape[2:], k))(spec, keys_B)

  def frame_branch(fn):
    return lambda p_C, f_C: jax.vmap(jax.vmap(functools.partial(_blend, fn), (None, 0)))(p_C, f_C)

  def temporal_branch(fn):
    def one(p, state, f_T):
      return jax.lax.scan(lambda st, f: fn(p, st, f), state, f_T)[1].astype(jnp.float32)
    return jax.vmap(one)

  frames_present, temporal_present = (None, None) if present is None else present
  f_idx, f_fns, f_ok = _restrict(spec.frame_id, list(_FRAME_FNS.values()), frames_present, len(_FRAME_FNS))
  t_idx, t_fns, t_ok = _restrict(spec.temporal_id, list(_TEMPORAL_FNS), temporal_present, len(_TEMPORAL_FNS))
  effected = _by_group(f_idx, [frame_branch(fn) for fn in f_fns], (spec.params, clips), chunk)
  out = _by_group(t_idx, [temporal_branch(fn) for fn in t_fns], (spec.params, states, effected), chunk)
  if present is not None:
    ok = f_ok & t_ok
    out = jnp.where(ok.reshape((-1,) + (1,) * (out.ndim - 1)), out, jnp.nan)
  return out[:n]


# ----------------------------------------------------------------------------- spec helpers

DEFAULT_COLORS = {"neon_outlines": (0.1, 1.0, 0.9), "night_vision": (0.25, 1.0, 0.3),
                  "color_tint": (1.0, 0.35, 0.3)}


def make_spec(frame: str = "identity", temporal: str = "none", *, strength: float = 1.0,
              color: tuple[float, float, float] | None = None, scale: float = 0.5,
              density: float = 0.5, speed: float = 0.5, size: float = 0.5) -> EffectSpec:
  """A numpy EffectSpec from effect names and parameter values (all in [0, 1])."""
  params = np.zeros(NUM_PARAMS, np.float32)
  params[P_STRENGTH], params[P_SCALE] = strength, scale
  params[P_COLOR] = color if color is not None else DEFAULT_COLORS.get(frame, (1.0, 1.0, 1.0))
  params[P_DENSITY], params[P_SPEED], params[P_SIZE] = density, speed, size
  return EffectSpec(np.int32(FRAME_EFFECTS.index(frame)), np.int32(TEMPORAL_EFFECTS.index(temporal)),
                    params)


def stack_specs(specs: list[EffectSpec]) -> EffectSpec:
  """Batches specs along a new leading B axis."""
  return EffectSpec(*(np.stack(field) for field in zip(*specs)))


# Groups that training metrics are split by: every single effect, then one for compositions.
GROUP_NAMES: tuple[str, ...] = FRAME_EFFECTS + TEMPORAL_EFFECTS[1:] + ("composition",)


def group_id(frame_id: jax.Array, temporal_id: jax.Array) -> jax.Array:
  """Index into GROUP_NAMES of each (per-frame, temporal) pair: the per-frame effect alone,
  the temporal effect alone, or "composition"; works on arrays, inside jit."""
  nf, nt = len(FRAME_EFFECTS), len(TEMPORAL_EFFECTS)
  frame_id, temporal_id = jnp.asarray(frame_id), jnp.asarray(temporal_id)
  return jnp.where(temporal_id == 0, frame_id,
                   jnp.where(frame_id == 0, nf + temporal_id - 1, nf + nt - 1)).astype(jnp.int32)


def spec_name(spec: EffectSpec) -> str:
  """'cartoon+snowfall', 'sepia', 'echo' or 'identity'."""
  frame, temporal = FRAME_EFFECTS[int(spec.frame_id)], TEMPORAL_EFFECTS[int(spec.temporal_id)]
  if temporal == "none":
    return frame
  return temporal if frame == "identity" else f"{frame}+{temporal}"


# ----------------------------------------------------------------------------- benchmark


def benchmark(height: int = 256, width: int = 256, batch: int = 8, frames: int = 8,
              repeats: int = 5, seed: int = 0) -> dict[str, float]:
  """Frames per second of jitted, vmapped render_clip over a batch of random specs.

  Every item of the batch has a different effect (vmapped switches evaluate every branch, as in
  a training batch). Returns the median over `repeats` after one warm-up call.
  Command line: scripts/bench_effects.py.
  """
  rng = np.random.default_rng(seed)
  specs = stack_specs([make_spec(FRAME_EFFECTS[i % len(FRAME_EFFECTS)],
                                 TEMPORAL_EFFECTS[i % len(TEMPORAL_EFFECTS)],
                                 density=float(rng.uniform())) for i in range(batch)])
  clips = jnp.asarray(rng.uniform(size=(batch, frames, height, width, 3)), jnp.float32)
  keys = jax.random.split(jax.random.key(seed), batch)
  fn = jax.jit(jax.vmap(render_clip))
  fn(specs, clips, keys).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(specs, clips, keys).block_until_ready()
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  result = {"frames_per_s": batch * frames / median, "ms_per_batch_frame": 1e3 * median / frames,
            "height": height, "width": width, "batch": batch, "device": jax.devices()[0].device_kind}
  logging.info("effects benchmark: %s", result)
  return result
