"""Evaluation metrics against hand-computed values and against skimage."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lsd_jax.datasets import effects
from lsd_jax.eval import metrics


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
