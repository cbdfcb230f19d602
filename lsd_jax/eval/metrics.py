"""Per-frame metrics against exact ground truth (frames as floats in [0, 1])."""

from __future__ import annotations

from typing import Any

import numpy as np


def psnr(x, y, axis=None, peak: float = 1.0):
  """Peak signal-to-noise ratio in dB over `axis` (all axes when None)."""
  mse = np.mean(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64)), axis=axis)
  return 10.0 * np.log10(peak ** 2 / np.maximum(mse, 1e-12))


# ----------------------------------------------------------------------------- SSIM

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # window 11, as skimage's gaussian_weights=True (truncate 3.5 at sigma 1.5)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gauss_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def _valid_blur(x_NxHxWxC, taps):
  """Separable 'valid' Gaussian correlation: only window positions fully inside the image."""
  k = taps.shape[0]
  h, w = x_NxHxWxC.shape[1], x_NxHxWxC.shape[2]
  y = sum(taps[i] * x_NxHxWxC[:, i:h - k + 1 + i] for i in range(k))
  return sum(taps[i] * y[:, :, i:w - k + 1 + i] for i in range(k))


def ssim(x, y, data_range: float = 1.0):
  """Mean SSIM per frame (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03,
  population covariances), averaged over the pixels whose 11x11 window lies inside the frame and
  over channels -- the numbers of `skimage.metrics.structural_similarity(x, y, channel_axis=-1,
  gaussian_weights=True, use_sample_covariance=False, data_range=...)`.

  x, y: [..., H, W, C] (numpy or jax; traceable under jit). Returns [...] (leading axes kept).
  """
  import jax.numpy as jnp

  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  lead = x.shape[:-3]
  x = x.reshape((-1,) + x.shape[-3:])
  y = y.reshape((-1,) + y.shape[-3:])
  taps = jnp.asarray(_gauss_window())
  blur = lambda a: _valid_blur(a, taps)
  mx, my = blur(x), blur(y)
  vx = blur(x * x) - mx * mx
  vy = blur(y * y) - my * my
  cxy = blur(x * y) - mx * my
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3)).reshape(lead)


def psnr_frames(x, y, peak: float = 1.0):
  """PSNR per frame of [..., H, W, C] in jax (traceable; the numpy `psnr` reads arrays on host)."""
  import jax.numpy as jnp

  mse = jnp.mean(jnp.square(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(peak ** 2 / jnp.maximum(mse, 1e-12))


# ----------------------------------------------------------------------------- temporal metrics


def flicker_step(y_prev, y, g_prev, g):
  """mean |(y_t - y_{t-1}) - (g_t - g_{t-1})| of one frame pair ([..., H, W, C] -> [...]):
  the output's temporal change that the ground truth does not have (jax, traceable)."""
  import jax.numpy as jnp

  return jnp.mean(jnp.abs((y - y_prev) - (g - g_prev)), axis=(-3, -2, -1))


def flicker(y_TxHxWxC, g_TxHxWxC) -> float:
  """Flicker of a whole clip: the mean of `flicker_step` over frames 1..T-1."""
  y = np.asarray(y_TxHxWxC, np.float64)
  g = np.asarray(g_TxHxWxC, np.float64)
  if y.shape[0] < 2:
    raise ValueError("flicker needs at least two frames")
  return float(np.mean(np.abs(np.diff(y, axis=0) - np.diff(g, axis=0))))


# ----------------------------------------------------------------------------- particles

# A pixel counts as particle when the frame is this much brighter (luminance, [0, 1]) than the
# frame with only the per-frame effect: snow, rain, fireflies and bubble rims all brighten.
PARTICLE_THRESHOLD = 0.1
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def particle_layer(frame_HxWx3, frame_only_HxWx3):
  """max(0, luma(frame) - luma(per-frame-effect-only frame)): the particles' added brightness."""
  import jax.numpy as jnp

  luma = jnp.asarray(_LUMA)
  return jnp.maximum(jnp.asarray(frame_HxWx3, jnp.float32) @ luma
                     - jnp.asarray(frame_only_HxWx3, jnp.float32) @ luma, 0.0)


def particle_density(layer_HxW, threshold: float = PARTICLE_THRESHOLD):
  """Fraction of pixels whose particle layer exceeds `threshold` (covered by a bright particle)."""
  import jax.numpy as jnp

  return jnp.mean((layer_HxW > threshold).astype(jnp.float32), axis=(-2, -1))


def phase_shift(prev_HxW, cur_HxW, whiten: bool = True):
  """(dy, dx) displacement of `cur` relative to `prev` by phase correlation: the integer shift
  that best aligns the two particle layers (mean-removed; wrapped to [-H/2, H/2) x [-W/2, W/2)),
  refined to sub-pixel by a parabola through the correlation peak and its neighbours. For a
  layer of particles that all move by v, this is v rounded; for mixed speeds it is the
  dominant (most mass-weighted) displacement. With `whiten` False it is the plain
  cross-correlation's peak: broader, but it does not lock onto fine structure that repeats
  inside one particle (a rain streak's dots). jax, traceable.

  Leading batch dimensions are allowed ([..., H, W] -> [..., 2]); batch all pairs of a
  computation into one call instead of vmapping several calls. The transforms are exactly two
  dependent FFT ops (both layers forward in one, then the inverse), never two independent ones:
  XLA:CPU runs independent FFT thunks concurrently on its intra-op pool, and each one's ducc
  parallel region waits on work queued to that same pool; once every pool thread is such a
  waiter nothing runs (a deadlock, every time on 2 cores at 256x256, where ducc goes parallel).
  """
  import jax.numpy as jnp

  prev = jnp.asarray(prev_HxW, jnp.float32)
  cur = jnp.asarray(cur_HxW, jnp.float32)
  h, w = prev.shape[-2:]
  batch = prev.shape[:-2]
  ab = jnp.stack([prev.reshape(-1, h, w), cur.reshape(-1, h, w)])  # 2 x N x H x W
  ab = ab - jnp.mean(ab, axis=(-2, -1), keepdims=True)
  fa, fb = jnp.fft.fft2(ab)  # the one forward FFT op
  cross = fb * jnp.conj(fa)
  if whiten:
    cross = cross / jnp.maximum(jnp.abs(cross), 1e-9)
  corr = jnp.real(jnp.fft.ifft2(cross))  # NxHxW
  n = corr.shape[0]
  i = jnp.argmax(corr.reshape(n, h * w), axis=-1)
  iy, ix = i // w, i % w
  at = lambda y, x: corr[jnp.arange(n), y % h, x % w]
  c = at(iy, ix)
  dy = jnp.where(iy >= h // 2, iy - h, iy).astype(jnp.float32)
  dx = jnp.where(ix >= w // 2, ix - w, ix).astype(jnp.float32)
  out = jnp.stack([dy + _parabola(at(iy - 1, ix), c, at(iy + 1, ix)),
                   dx + _parabola(at(iy, ix - 1), c, at(iy, ix + 1))], axis=-1)
  return out.reshape(*batch, 2)


def _parabola(left, centre, right):
  """Sub-pixel offset of the vertex of the parabola through three samples (in [-0.5, 0.5])."""
  import jax.numpy as jnp

  den = left - 2.0 * centre + right
  return jnp.where(den < 0, jnp.clip(0.5 * (left - right) / jnp.where(den < 0, den, -1.0), -0.5, 0.5), 0.0)


# ----------------------------------------------------------------------------- particle tracking
#
# Velocity by tracking particles. A global correlation of whole layers fails on two effects: rain
# is drawn as five dots along each streak, so the shift that lines each streak's dots up with its
# own dots one frame later (a tenth of the true one) wins; fireflies move in random directions,
# so their mean displacement is 0 whatever their speed. Instead: invert each frame to the coverage the effect
# drew (independent of the background, which otherwise hides particles over bright parts and
# pins the rest), blur it just enough to join a streak's dots, find the local maxima, and match
# each maximum to the nearest one of the next frame after the dominant shift. On the ground truth
# of the held-out clips this gives the particles' true mean velocity and speed within a few percent.

TRACK_PEAKS = 512  # local maxima kept per frame (effects.MAX_PARTICLES)
TRACK_REL = 0.25  # a maximum counts above this fraction of the frame's highest
TRACK_BORDER = 4.0  # pixels (at 256) from the edge where maxima are ignored: cut particles move slower
TRACK_RADIUS = 3.0  # pixels (at 256), plus 0.35 x the expected displacement: how far a match may be
TRACK_ITERS = 3
TRACK_MAX_SHIFT = 32.0  # pixels (at 256) a guess may reach (the fastest spec, rain at speed 1, is 24.5)


def _look_table() -> np.ndarray:
  """Per temporal-effect id: is particle, backdrop, colour luma, opacity, additive, streak, mean speed."""
  from lsd_jax.datasets import effects

  rows = []
  for name in effects.TEMPORAL_EFFECTS:
    s = effects.particle_style(name)
    rows.append((0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0) if s is None else
                (1.0, s.backdrop, float(np.dot(s.color, _LUMA)), s.opacity, float(s.additive), s.streak,
                 0.5 * (s.speed[0] + s.speed[1])))
  return np.asarray(rows, np.float32)


def particle_coverage(frame_HxWx3, frame_only_HxWx3, temporal_id):
  """The particles' coverage as the effect `temporal_id` draws them, inverted from a frame (luma):
  alpha compositing draws out = b F (1 - a) + a c, so a = (out - b F) / (c - b F) (denominator at
  least 0.05); additive glow draws out = b F + o cov c. Divided by the opacity: the drawn cover,
  whatever the background under it (`particle_layer` sees a particle only where it brightens
  the frame). Zero for an effect without particles. jax, traceable (temporal_id may be traced)."""
  import jax.numpy as jnp

  t = jnp.asarray(_look_table())[temporal_id]
  luma = jnp.asarray(_LUMA)
  y = jnp.asarray(frame_HxWx3, jnp.float32) @ luma
  base = t[1] * (jnp.asarray(frame_only_HxWx3, jnp.float32) @ luma)
  glow = (y - base) / (t[3] * t[2])
  over = (y - base) / jnp.maximum(t[2] - base, 0.05) / t[3]
  cov = jnp.where(t[4] > 0, glow, over)
  return jnp.where(t[0] > 0, jnp.maximum(cov, 0.0), 0.0)


def has_particles(temporal_id):
  """Whether the temporal effect `temporal_id` draws particles. jax, traceable."""
  import jax.numpy as jnp

  return jnp.asarray(_look_table()[:, 0])[temporal_id] > 0


def track_sigma(temporal_id, params, px: float):
  """Blur (pixels) before finding maxima: 1 pixel at 256, or 0.6 of a streak's dot spacing
  (streak x mean speed x speed factor / 4: effects._draw's five samples), joining the dots."""
  import jax.numpy as jnp

  from lsd_jax.datasets import effects

  t = jnp.asarray(_look_table())[temporal_id]
  spacing = t[5] * t[6] * effects.speed_factor(params) * px / 4.0
  return jnp.maximum(px, 0.6 * spacing)


def max_track_sigma(px: float) -> float:
  """The largest `track_sigma` any effect can ask for at this pixel scale (speed 1)."""
  t = _look_table()
  return float(max(px, 0.6 * float((t[:, 5] * t[:, 6]).max()) * 1.75 * px / 4.0))


def particle_peaks(layer_HxW, px: float = 1.0, k: int = TRACK_PEAKS):
  """Local maxima of a (blurred) coverage layer: positions [k, 2] (y, x, sub-pixel by a parabola)
  and which of the k are real [k] (above TRACK_REL of the highest, off the border). jax."""
  import jax
  import jax.numpy as jnp

  h, w = layer_HxW.shape
  layer = jnp.asarray(layer_HxW, jnp.float32)
  mx = jax.lax.reduce_window(layer, -jnp.inf, jax.lax.max, (3, 3), (1, 1), "SAME")
  b = max(1, int(round(TRACK_BORDER * px)))
  yy, xx = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  inside = (yy >= b) & (yy < h - b) & (xx >= b) & (xx < w - b)
  ok = (layer >= mx) & (layer > TRACK_REL * jnp.max(layer)) & (layer > 1e-4) & inside
  vals, idx = jax.lax.top_k(jnp.where(ok, layer, -1.0).reshape(-1), k)
  iy, ix = idx // w, idx % w
  at = lambda y, x: layer[jnp.clip(y, 0, h - 1), jnp.clip(x, 0, w - 1)]  # noqa: E731
  c = at(iy, ix)
  pos = jnp.stack([iy + _parabola(at(iy - 1, ix), c, at(iy + 1, ix)),
                   ix + _parabola(at(iy, ix - 1), c, at(iy, ix + 1))], axis=-1)
  return pos, vals > 0


def track_displacement(prev_pos, prev_ok, cur_pos, cur_ok, guess, px: float = 1.0, iters: int = TRACK_ITERS):
  """Particles matched from one frame's maxima to the next's: each previous maximum moved by the
  guess (dy, dx) is matched to the nearest current one when the two are mutually nearest and
  within TRACK_RADIUS px + 0.35 |guess|; the guess becomes the matched mean, `iters` times (a
  guess at most TRACK_MAX_SHIFT px: noise in a frame without particles finds no far shift).
  Returns (mean displacement [2], mean |displacement|, matches); NaN where none matched. jax."""
  import jax.numpy as jnp

  n = prev_pos.shape[0]
  both = prev_ok[:, None] & cur_ok[None, :]
  cap = lambda v: v * jnp.minimum(1.0, TRACK_MAX_SHIFT * px / jnp.maximum(jnp.linalg.norm(v), 1e-6))  # noqa: E731
  d = cap(jnp.asarray(guess, jnp.float32))
  for _ in range(iters):
    r = TRACK_RADIUS * px + 0.35 * jnp.linalg.norm(d)
    dist = jnp.sum((prev_pos[:, None] + d - cur_pos[None]) ** 2, axis=-1)
    dist = jnp.where(both, dist, jnp.inf)
    j = jnp.argmin(dist, axis=1)
    mutual = jnp.argmin(dist, axis=0)[j] == jnp.arange(n)
    hit = mutual & (dist[jnp.arange(n), j] < r * r)
    disp = cur_pos[j] - prev_pos
    count = jnp.sum(hit)
    mean = jnp.sum(jnp.where(hit[:, None], disp, 0.0), axis=0) / jnp.maximum(count, 1)
    d = jnp.where(count > 0, cap(mean), d)
  speed = jnp.sum(jnp.where(hit, jnp.linalg.norm(disp, axis=-1), 0.0)) / jnp.maximum(count, 1)
  none = count == 0
  return jnp.where(none, jnp.nan, mean), jnp.where(none, jnp.nan, speed), count


def track_coverage(frames_NxHxWx3, frame_only_NxHxWx3, temporal_id_N, params_N):
  """The layers the tracker reads: `particle_coverage` blurred by `track_sigma`, per frame [N, H, W]."""
  import jax

  from lsd_jax.datasets import effects

  h, w = frames_NxHxWx3.shape[1:3]
  px = min(h, w) / effects.REF_SIZE
  radius = int(np.ceil(3.0 * max_track_sigma(px)))
  sigma = jax.vmap(lambda t, p: track_sigma(t, p, px))(temporal_id_N, params_N)
  cov = jax.vmap(particle_coverage)(frames_NxHxWx3, frame_only_NxHxWx3, temporal_id_N)
  return jax.vmap(lambda l, s: effects.gaussian_blur(l[..., None], s, radius)[..., 0])(cov, sigma)


def track_layers(prev_NxHxW, cur_NxHxW, px: float = 1.0):
  """Tracked (mean displacement [N, 2], mean speed [N], matches [N]) from each previous layer to
  its current one (`track_coverage` layers): the plain correlation's peak as the first guess
  (one `phase_shift` call for all pairs: its FFTs must not run side by side), then
  `track_displacement`, eight pairs at a time (a pair's match holds TRACK_PEAKS^2 distances)."""
  import jax

  guess = jax.lax.optimization_barrier(phase_shift(prev_NxHxW, cur_NxHxW, whiten=False))
  peaks = jax.vmap(lambda l: particle_peaks(l, px))
  (p_prev, ok_prev), (p_cur, ok_cur) = peaks(prev_NxHxW), peaks(cur_NxHxW)
  return jax.lax.map(lambda a: track_displacement(*a, px=px), (p_prev, ok_prev, p_cur, ok_cur, guess),
                     batch_size=8)


def velocity_error(vel_y: float, vel_x: float, speed: float, stats: dict[str, Any]) -> float:
  """The bar's velocity error against `spec_particle_stats`: the mean velocity's miss over the
  nominal speed for a style with a direction, the mean speed's for one without (fireflies)."""
  nominal = stats["nominal_speed"]
  if nominal <= 0:
    return float("nan")
  if stats["directed"]:
    return float(np.hypot(vel_y - stats["nominal_vel_y"], vel_x - stats["nominal_vel_x"]) / nominal)
  return float(abs(speed - nominal) / nominal)


def spec_particle_stats(spec, height: int, width: int) -> dict[str, float] | None:
  """What the effect spec asks for (None for non-particle effects): visible particle count, and
  the nominal mean velocity (dy, dx) in pixels per frame (style direction x mean of its speed
  range x speed_factor x pixel scale; styles with a random direction have nominal velocity 0),
  its magnitude `nominal_speed`, and `directed`: whether the speed to compare with it is the
  magnitude of the mean velocity (a style with a direction) or the particles' mean speed."""
  from lsd_jax.datasets import effects

  name = effects.TEMPORAL_EFFECTS[int(spec.temporal_id)]
  style = effects.particle_style(name)
  if style is None:
    return None
  params = np.asarray(spec.params, np.float32)
  n = round(float(np.clip(params[effects.P_DENSITY], 0, 1)) * style.max_fraction * effects.MAX_PARTICLES)
  px = min(height, width) / effects.REF_SIZE
  speed = float(effects.speed_factor(params)) * 0.5 * (style.speed[0] + style.speed[1]) * px
  d = np.asarray(style.direction, np.float64)
  d = d / np.linalg.norm(d) if np.linalg.norm(d) > 0 else d
  return {"visible_particles": int(n), "nominal_vel_y": float(speed * d[0]),
          "nominal_vel_x": float(speed * d[1]), "nominal_speed": speed,
          "directed": bool(np.linalg.norm(d) > 0)}


# ----------------------------------------------------------------------------- stream summaries


def switch_response(fidelity_T, switch_at: int, *, steady_frames: int | None = None,
                    fraction: float = 0.9) -> int | None:
  """Frames after a prompt switch at index `switch_at` until per-frame fidelity first reaches
  `fraction` of the way from its value at the switch frame to its steady state (the mean of the
  last `steady_frames` frames of the series; default the last quarter after the switch).

  0 when the switch frame already is there (or when fidelity does not rise: the steady state is
  no better than the switch frame); None when the series never gets there.
  """
  f = np.asarray(fidelity_T, np.float64)[switch_at:]
  if f.size == 0:
    raise ValueError(f"switch_at {switch_at} is past the series ({len(fidelity_T)} frames)")
  n = steady_frames or max(1, f.size // 4)
  steady, start = float(np.mean(f[-n:])), float(f[0])
  if steady <= start:
    return 0
  hit = np.flatnonzero(f >= start + fraction * (steady - start))
  return int(hit[0]) if hit.size else None


def hold_drift(fidelity_T, min_frames: int = 100) -> tuple[float, float] | None:
  """Drift while one prompt is held: (early, late) mean fidelity of one prompt's interval, early
  over its second quarter (the first is the switch's transient), late over its last quarter.
  late / early < 1: the output degrades while the prompt stays the same, which a drift curve over
  whole schedule cycles cannot see (every switch starts the effect afresh). None for an interval
  shorter than `min_frames`."""
  f = np.asarray(fidelity_T, np.float64)
  n = f.size
  if n < max(min_frames, 4):
    return None
  q = n // 4
  return float(f[q:2 * q].mean()), float(f[n - q:].mean())


def hold_profile(fidelity_T, bins: int = 10) -> np.ndarray:
  """Mean fidelity in `bins` equal parts of one prompt's interval: how it evolves while the prompt
  is held (the first bin holds the switch's transient)."""
  f = np.asarray(fidelity_T, np.float64)
  if f.size < bins:
    raise ValueError(f"an interval of {f.size} frames cannot be split into {bins} bins")
  return np.array([part.mean() for part in np.array_split(f, bins)])


def drift_curve(fidelity_T, segment: int) -> np.ndarray:
  """Mean fidelity of each full segment of `segment` frames (a trailing partial one is dropped
  unless it is the only one)."""
  f = np.asarray(fidelity_T, np.float64)
  n = f.size // segment
  if n == 0:
    return np.array([f.mean()]) if f.size else np.zeros(0)
  return f[:n * segment].reshape(n, segment).mean(axis=1)


def drift_ratio(curve) -> float:
  """Last segment's fidelity over the first's (1.0: no drift; < 1: fidelity decays). NaN for a
  curve of one segment: a stream shorter than two segments says nothing about drift."""
  c = np.asarray(curve, np.float64)
  if c.size == 0:
    raise ValueError("empty drift curve")
  if c.size == 1:
    return float("nan")
  return float(c[-1] / c[0])
