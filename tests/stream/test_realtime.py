"""Latest-frame scheduling (drops counted, never queued), lossless mode, histograms, cameras."""

import time

import numpy as np
import pytest

from lsd_jax.stream import io, latency_stats, realtime


class SlowEngine:
  """Takes `delay` seconds a frame; remembers which frames it saw."""

  def __init__(self, delay):
    self.delay, self.seen = delay, []

  def process_timed(self, frame, *, profile=False):
    del profile
    time.sleep(self.delay)
    self.seen.append(int(frame[0, 0, 0]))
    return np.zeros((8, 8, 3), np.uint8), {"preprocess": 0.0, "device": self.delay}


class NumberedSource:
  live = True
  corrupt = 0

  def __init__(self, n, every_s=0.0):
    self.n, self.every_s = n, every_s

  def __iter__(self):
    for i in range(self.n):
      if self.every_s:
        time.sleep(self.every_s)
      yield np.full((8, 8, 3), i, np.uint8)


def test_latest_frame_slot_drops_and_counts():
  eng = SlowEngine(0.03)
  stats = realtime.run(NumberedSource(60, every_s=0.002), eng, None, lossless=False)
  assert stats.dropped > 20  # the source is ~10x faster than the engine
  assert stats.frames == len(eng.seen) and stats.frames + stats.dropped == stats.captured == 60
  assert eng.seen == sorted(eng.seen) and eng.seen[-1] == 59  # newest first, the last one shown
  s = stats.summary()
  assert s["dropped"] == stats.dropped and s["latency_ms"]["p50"] < 0.03 * 3 * 1e3


def test_lossless_processes_every_frame_in_order():
  eng = SlowEngine(0.005)
  stats = realtime.run(NumberedSource(40), eng, None, lossless=True)
  assert eng.seen == list(range(40)) and stats.dropped == 0 and stats.frames == 40


def test_max_frames_and_sink():
  got = []
  stats = realtime.run(NumberedSource(1000), SlowEngine(0.0), lambda i, o: got.append(o.shape),
                       lossless=True, max_frames=7)
  assert stats.frames == 7 and len(got) == 7


def test_source_error_ends_stream_with_message():
  class Broken:
    live, corrupt = False, 0

    def __iter__(self):
      yield np.zeros((8, 8, 3), np.uint8)
      raise io.SourceError("camera 3 disappeared")

  stats = realtime.run(Broken(), SlowEngine(0.0), None, lossless=True)
  assert stats.frames == 1 and "camera 3 disappeared" in stats.summary()["error"]


def test_histogram_percentiles_within_half_a_percent():
  rng = np.random.default_rng(0)
  xs = rng.lognormal(-6, 0.6, 20000)  # ~2.5 ms
  h = latency_stats.Histogram()
  for x in xs:
    h.add(x)
  for q in (50, 95, 99):
    exact = np.percentile(xs, q, method="inverted_cdf")
    assert abs(h.percentile_s(q) / exact - 1) < 0.006
  assert h.max == xs.max() and h.count == 20000
  assert h.counts.nbytes < 30_000  # constant memory, however many frames


class FakeCapture:
  """cv2.VideoCapture stand-in: `frames` good reads, then failures."""

  def __init__(self, frames, opened=True):
    self.left, self.opened = frames, opened

  def isOpened(self):  # noqa: N802  (OpenCV's name)
    return self.opened

  def read(self):
    if self.left <= 0:
      return False, None
    self.left -= 1
    return True, np.zeros((6, 8, 3), np.uint8)

  def get(self, prop):
    del prop
    return 30.0

  def release(self):
    pass


def test_webcam_reconnects_with_backoff_then_gives_up():
  caps = iter([FakeCapture(3), FakeCapture(0, opened=False), FakeCapture(2)] +
              [FakeCapture(0, opened=False)] * 10)
  sleeps = []
  cam = io.WebcamSource(0, reconnect_attempts=4, backoff_s=0.1, capture_factory=lambda i: next(caps),
                        sleep=sleeps.append)
  got = []
  with pytest.raises(io.SourceError, match="did not come back after 4 reconnect attempts"):
    for f in cam:
      got.append(f.shape)
  assert len(got) == 5 and cam.reconnects == 1
  assert sleeps == pytest.approx([0.1, 0.2] + [0.1, 0.2, 0.4, 0.8])


def test_missing_camera_is_a_clear_error():
  with pytest.raises(io.SourceError, match="cannot open camera 7"):
    io.WebcamSource(7, capture_factory=lambda i: FakeCapture(0, opened=False))
