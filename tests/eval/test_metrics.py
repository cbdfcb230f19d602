"""Evaluation metrics against hand-computed values and against skimage."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lsd_jax.datasets import effects
from lsd_jax.eval import loading, metrics

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "samples", "bigbuckbunny_256.mp4")


@pytest.mark.parametrize("seed,shape,noise", [(0, (32, 32, 3), 0.1), (1, (40, 29, 3), 0.3), (2, (24, 50, 1), 0.02)])
def test_ssim_matches_skimage(seed, shape, noise):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=shape).astype(np.float32)
  y = np.clip(x + noise * rng.normal(size=shape), 0, 1).astype(np.float32)
  want = structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, use_sample_covariance=False,
                               data_range=1.0)
  assert abs(float(metrics.ssim(x, y)) - want) < 1e-3
  assert abs(float(metrics.ssim(x, x)) - 1.0) < 1e-5


def test_ssim_keeps_leading_axes():
  rng = np.random.default_rng(3)
  x = rng.uniform(size=(2, 3, 16, 16, 3)).astype(np.float32)
  y = rng.uniform(size=(2, 3, 16, 16, 3)).astype(np.float32)
  s = np.asarray(metrics.ssim(x, y))
  assert s.shape == (2, 3)
  want = structural_similarity(x[1, 2], y[1, 2], channel_axis=-1, gaussian_weights=True,
                               use_sample_covariance=False, data_range=1.0)
  assert abs(s[1, 2] - want) < 1e-3


def test_flicker_by_hand():
  # One pixel, one channel. Output changes 0 -> 0.5 -> 0.5, truth 0 -> 0.2 -> 0.6.
  y = np.array([0.0, 0.5, 0.5]).reshape(3, 1, 1, 1)
  g = np.array([0.0, 0.2, 0.6]).reshape(3, 1, 1, 1)
  # |0.5 - 0.2| = 0.3, |0.0 - 0.4| = 0.4 -> mean 0.35
  assert metrics.flicker(y, g) == pytest.approx(0.35)
  steps = [float(metrics.flicker_step(y[t - 1], y[t], g[t - 1], g[t])) for t in (1, 2)]
  assert steps == pytest.approx([0.3, 0.4])
  # A static output of a static truth does not flicker, whatever its error.
  assert metrics.flicker(np.full((4, 2, 2, 3), 0.9), np.zeros((4, 2, 2, 3))) == 0.0


def test_drift_curve_and_ratio_by_hand():
  f = np.array([30, 30, 28, 28, 24, 24, 99], np.float64)  # trailing partial segment dropped
  curve = metrics.drift_curve(f, 2)
  np.testing.assert_allclose(curve, [30, 28, 24])
  assert metrics.drift_ratio(curve) == pytest.approx(24 / 30)
  np.testing.assert_allclose(metrics.drift_curve(f[:1], 2), [30])
  assert np.isnan(metrics.drift_ratio([30.0]))  # one segment: no statement about drift


def test_hold_drift_by_hand():
  # 8 frames: a transient quarter, then 20, 20 (second quarter), 18, 18, then 16, 16 (last quarter).
  f = np.array([5, 5, 20, 20, 18, 18, 16, 16], np.float64)
  assert metrics.hold_drift(f, min_frames=8) == (20.0, 16.0)
  assert metrics.hold_drift(f, min_frames=9) is None  # too short to say
  np.testing.assert_allclose(metrics.hold_profile(f, bins=4), [5, 20, 18, 16])
  with pytest.raises(ValueError, match="bins"):
    metrics.hold_profile(f[:3], bins=4)
  early, late = metrics.hold_drift(np.full(400, 17.0))
  assert early == late == 17.0


def test_hold_summary_and_stream_intervals():
  from lsd_jax.eval import protocol, runner, summary

  # Two held intervals of 100 frames: sepia decays from 20 to 10 dB, cartoon stays at 15; a third
  # interval (sepia again) stopped after 40 of its 100 frames is left out.
  sepia = np.linspace(20, 10, 100)
  psnr = np.concatenate([sepia, np.full(100, 15.0), np.full(40, 3.0)])
  n = psnr.size
  sched = runner.Schedule.cycle(["sepia", "cartoon"], 100, 300)
  res = runner.StreamResult(per_frame={"psnr": psnr, "ssim": np.ones(n), "flicker": np.zeros(n)},
                            prompt_index=sched.segment_index(np.arange(n)), chunk_seconds=np.ones(3),
                            chunk_frames=np.full(3, 80), schedule=sched, num_frames=300)
  h = summary.hold_summary({"sepia": [metrics.hold_drift(sepia)], "cartoon": [metrics.hold_drift(psnr[100:200])]})
  assert h["per_effect"]["cartoon"]["ratio"] == pytest.approx(1.0)
  early, late = sepia[25:50].mean(), sepia[75:].mean()
  assert h["per_effect"]["sepia"]["ratio"] == pytest.approx(late / early)
  assert h["psnr_ratio"] == pytest.approx((late + 15) / (early + 15))
  prompts = protocol.choose_prompts(["sepia", "cartoon"])
  s = summary.summarize_stream(res, prompts, segment=200, warm=0, height=8, width=8)
  assert s["hold"]["per_effect"]["sepia"]["holds"] == 1  # the cut-short third interval is not counted
  assert s["hold"]["per_effect"]["sepia"]["ratio"] == pytest.approx(late / early)
  assert s["hold"]["psnr_ratio"] == pytest.approx(h["psnr_ratio"])
  np.testing.assert_allclose(s["hold"]["per_effect"]["sepia"]["profile"], [sepia[i:i + 10].mean() for i in range(0, 100, 10)])
  assert s["hold"]["per_effect"]["cartoon"]["profile"] == pytest.approx([15.0] * 10)
  empty = summary.hold_summary({"echo": []})
  assert empty["per_effect"]["echo"]["holds"] == 0 and np.isnan(empty["psnr_ratio"])


def test_switch_response_on_a_known_step():
  # Steady at 30 dB, the switch at frame 20 drops to 10 dB, then a linear ramp of 2 dB per frame
  # back to 30 (reached 10 frames after the switch), steady after.
  f = np.concatenate([np.full(20, 30.0), 10.0 + 2.0 * np.arange(10), np.full(50, 30.0)])
  # 90% of the way from 10 to 30 is 28: reached at 9 frames after the switch.
  assert metrics.switch_response(f, 20) == 9
  assert metrics.switch_response(f, 20, fraction=0.5) == 5
  assert metrics.switch_response(np.full(30, 5.0), 10) == 0  # nothing to recover
  g = np.concatenate([np.full(10, 10.0), np.full(10, 20.0), np.full(5, 18.0)])
  assert metrics.switch_response(g, 0, steady_frames=10) == 10  # steady 19, bar 18.1: first 10 frames below


def test_phase_shift_recovers_a_known_displacement():
  rng = np.random.default_rng(0)
  layer = np.zeros((64, 64), np.float32)
  for y, x in rng.integers(8, 56, size=(12, 2)):
    layer[y - 1:y + 2, x - 1:x + 2] = 1.0
  moved = np.roll(layer, (5, -3), axis=(0, 1))
  np.testing.assert_allclose(np.asarray(metrics.phase_shift(layer, moved)), [5, -3])


def test_particle_density_and_layer():
  frame_only = np.full((10, 10, 3), 0.3, np.float32)
  frame = frame_only.copy()
  frame[2:4, 2:7] = 1.0  # 10 bright pixels
  frame[8, 8] = 0.35  # a faint change below the threshold
  frame[0, 0] = 0.0  # darker: not a particle
  layer = metrics.particle_layer(frame, frame_only)
  assert float(metrics.particle_density(layer)) == pytest.approx(0.10)


def test_spec_particle_stats_follow_the_spec():
  slow = metrics.spec_particle_stats(effects.make_spec("identity", "snowfall", density=0.5, speed=0.0), 256, 256)
  fast = metrics.spec_particle_stats(effects.make_spec("identity", "snowfall", density=1.0, speed=1.0), 256, 256)
  assert fast["visible_particles"] == 2 * slow["visible_particles"] == effects.MAX_PARTICLES
  assert fast["nominal_vel_y"] == pytest.approx(7 * slow["nominal_vel_y"])  # 1.75 / 0.25
  assert fast["nominal_vel_x"] == 0.0
  assert metrics.spec_particle_stats(effects.make_spec("sepia"), 256, 256) is None


def test_phase_shift_subpixel_moves_toward_the_true_shift():
  yy, xx = np.mgrid[:64, :64].astype(np.float32)
  blob = lambda cy, cx: np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0 ** 2))
  a = blob(30, 30) + blob(12, 45)
  b = blob(30.4, 29.7) + blob(12.4, 44.7)
  dy, dx = np.asarray(metrics.phase_shift(a, b))
  assert 0.1 < dy < 0.5 and -0.5 < dx < -0.1


def test_particle_coverage_inverts_the_draw_whatever_the_background():
  """Composited rain over a bright and a dark half, additive fireflies: the coverage is the one
  drawn (particle_layer loses the rain over the bright half)."""
  frame_only = np.zeros((8, 8, 3), np.float32)
  frame_only[:, 4:] = 0.95
  rain = effects.particle_style("rain")
  alpha = np.zeros((8, 8), np.float32)
  alpha[2:6, 1:7] = 0.3
  base = rain.backdrop * frame_only
  frame = base * (1 - alpha[..., None]) + alpha[..., None] * np.asarray(rain.color, np.float32)
  tid = effects.TEMPORAL_EFFECTS.index("rain")
  np.testing.assert_allclose(np.asarray(metrics.particle_coverage(frame, frame_only, tid)), alpha / rain.opacity,
                             atol=1e-5)
  assert float(np.asarray(metrics.particle_layer(frame, frame_only))[2:6, 4:7].max()) < 0.01
  ff = effects.particle_style("fireflies")
  cover = np.zeros((8, 8), np.float32)
  cover[3, 3] = 0.5
  glow = ff.backdrop * frame_only * 0.3 + ff.opacity * cover[..., None] * np.asarray(ff.color, np.float32)
  got = metrics.particle_coverage(glow, frame_only * 0.3, effects.TEMPORAL_EFFECTS.index("fireflies"))
  np.testing.assert_allclose(np.asarray(got), cover, atol=1e-5)
  assert not np.asarray(metrics.particle_coverage(frame, frame_only, effects.TEMPORAL_EFFECTS.index("echo"))).any()


def test_tracking_measures_the_speed_of_particles_in_random_directions():
  """Blobs that each move 1.5 px in its own direction: the mean velocity is near 0, the tracked
  mean speed is 1.5 (a whole-layer correlation would report ~0)."""
  rng = np.random.default_rng(1)
  yy, xx = np.mgrid[:96, :96].astype(np.float32)
  p = rng.uniform(12, 84, size=(30, 2))
  ang = rng.uniform(0, 2 * np.pi, 30)
  q = p + 1.5 * np.stack([np.sin(ang), np.cos(ang)], -1)
  draw = lambda pts: sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5 ** 2)) for y, x in pts)
  (pa, oka), (pb, okb) = metrics.particle_peaks(draw(p)), metrics.particle_peaks(draw(q))
  vel, speed, n = metrics.track_displacement(pa, oka, pb, okb, jnp.zeros(2))
  assert int(n) >= 20
  assert float(speed) == pytest.approx(1.5, rel=0.05)
  assert float(jnp.linalg.norm(vel)) < 0.5


@pytest.mark.parametrize("name", ["snowfall", "rain", "fireflies", "bubbles"])
def test_tracked_speed_of_the_ground_truth_matches_the_spec(name):
  """The estimator on the effect's own render (truth as output): within 8% of the spec's nominal
  speed on a real clip (the phase correlation it replaced read rain at 1.6 of 11.5 px/frame and
  fireflies at 0.01 of 0.85)."""
  from lsd_jax.eval import chunks, summary

  clip = np.asarray(loading.file_clip(SAMPLE, 17, 256, 256), np.float32) / 255.0
  spec = effects.make_spec("identity", name)
  _, (target, frame_only) = chunks.truth_chunk_fn(
      effects.init_state(spec, clip.shape[1:], jax.random.key(0)), (clip * 255).astype(np.uint8),
      effects.stack_specs([spec] * len(clip)), np.zeros(len(clip), bool), np.arange(len(clip), dtype=np.int32),
      jax.random.key(3))
  spec_T = effects.stack_specs([spec] * len(clip))
  _, row = chunks.metrics_chunk_fn(chunks.empty_metric_carry(256, 256), target, target, frame_only,
                                   np.zeros(len(clip), bool), spec_T)
  row = {k: np.asarray(v) for k, v in row.items()}
  stats = metrics.spec_particle_stats(spec, 256, 256)
  q = summary.particle_summary(row, np.arange(len(clip)) > 0, stats["directed"])
  assert q["speed_gt"] == pytest.approx(stats["nominal_speed"], rel=0.08), (q, stats)
  assert q["speed_out"] == pytest.approx(q["speed_gt"], rel=1e-6) and np.nanmin(row["tracked_gt"][1:]) >= 5


def test_velocity_error_uses_the_direction_for_directed_styles():
  """Snow at the spec's speed but sideways misses by sqrt(2) of its speed; fireflies are judged
  on their speed alone."""
  from lsd_jax.eval import summary

  def frames(vy, vx, speed):
    n = 6
    pf = {k: np.full(n, v, np.float32) for k, v in (
        ("psnr", 20.0), ("ssim", 0.5), ("flicker", 0.01), ("density_out", 0.1), ("density_gt", 0.1),
        ("vel_out_y", vy), ("vel_out_x", vx), ("vel_gt_y", vy), ("vel_gt_x", vx), ("speed_out", speed),
        ("speed_gt", speed), ("tracked_out", 50.0), ("tracked_gt", 50.0))}
    return pf, np.ones(n, bool)

  snow = effects.make_spec("identity", "snowfall")
  v = metrics.spec_particle_stats(snow, 256, 256)["nominal_speed"]
  on = summary.summarize_frames(*frames(v, 0.0, v), snow, 256, 256)["particles"]
  side = summary.summarize_frames(*frames(0.0, v, v), snow, 256, 256)["particles"]
  assert on["velocity_error_out"] == pytest.approx(0.0, abs=1e-6)
  assert side["speed_ratio"] == pytest.approx(1.0) and side["velocity_error_out"] == pytest.approx(np.sqrt(2))
  ff = effects.make_spec("identity", "fireflies")
  s = metrics.spec_particle_stats(ff, 256, 256)["nominal_speed"]
  q = summary.summarize_frames(*frames(0.0, 0.0, 1.1 * s), ff, 256, 256)["particles"]
  assert q["velocity_error_out"] == pytest.approx(0.1, rel=1e-4)
