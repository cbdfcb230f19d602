"""Realtime scheduling: a capture thread, a single latest-frame slot, the engine, a sink.

Realtime mode (live sources): the capture thread overwrites ONE slot; a frame the engine did not
take in time is dropped and counted, never queued, so latency cannot grow with the stream.
Lossless mode (files, evaluation, soaks): a bounded queue of `LOSSLESS_PREFETCH` frames with
back-pressure; every frame is processed, the capture thread blocks when the engine is behind.

Times, per frame, all host clocks (time.perf_counter):
  read        the source producing the frame (decode, camera read), in the capture thread;
  preprocess  resize / crop to the model's size;
  device      the fused jitted step including the frame's upload and the result's download
              (host frame in -> host frame out); with profile=True instead three jitted pieces,
              each waited for: encode, denoise, decode;
  write       the sink(s);
  process     engine start -> output ready (preprocess + device);
  latency     capture (the read finished) -> output ready; in lossless mode this includes the
              frame's wait in the prefetch queue, in realtime mode its wait in the slot.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from absl import logging
import numpy as np

from lsd_jax.stream import preprocess
from lsd_jax.stream import latency_stats

LOSSLESS_PREFETCH = 1
STAGES = ("read", "preprocess", "encode", "denoise", "decode", "device", "write")


@dataclasses.dataclass
class Captured:
  frame: Any
  seq: int  # position in the source
  t_capture: float  # perf_counter when the read finished
  read_s: float


class LatestFrameSlot:
  """One slot: `put` replaces an untaken frame (counted in `dropped`); `get` takes the newest."""

  def __init__(self):
    self._cond = threading.Condition()
    self._item: Captured | None = None
    self._closed = False
    self.dropped = 0
    self.captured = 0

  def put(self, item: Captured) -> bool:
    """Returns True if an untaken older frame was dropped."""
    with self._cond:
      dropped = self._item is not None
      if dropped:
        self.dropped += 1
      self._item = item
      self.captured += 1
      self._cond.notify()
      return dropped

  def get(self, timeout: float | None = None) -> Captured | None:
    """The newest frame; None once closed and empty (or on timeout)."""
    with self._cond:
      if not self._cond.wait_for(lambda: self._item is not None or self._closed, timeout):
        return None
      item, self._item = self._item, None
      return item

  def close(self) -> None:
    with self._cond:
      self._closed = True
      self._cond.notify_all()


class BoundedQueue:
  """Lossless hand-over: nothing is dropped. The producer `reserve`s a place before it reads a
  frame, so at most `size` frames are read ahead of the engine (and wait)."""

  def __init__(self, size: int = LOSSLESS_PREFETCH):
    self._q: queue.Queue = queue.Queue()
    self._room = threading.Semaphore(size)
    self._closed = threading.Event()
    self.dropped = 0
    self.captured = 0

  def reserve(self) -> bool:
    """Blocks until a frame may be read; False once closed."""
    while not self._closed.is_set():
      if self._room.acquire(timeout=0.1):
        return True
    return False

  def put(self, item: Captured) -> bool:
    self._q.put(item)
    self.captured += 1
    return False

  def get(self, timeout: float | None = None) -> Captured | None:
    deadline = None if timeout is None else time.perf_counter() + timeout
    while True:
      try:
        item = self._q.get(timeout=0.05)
        self._room.release()
        return item
      except queue.Empty:
        if self._closed.is_set() and self._q.empty():
          return None
        if deadline is not None and time.perf_counter() > deadline:
          return None

  def close(self) -> None:
    self._closed.set()

  def cancel(self) -> None:
    """Unblocks a producer stuck in put (the consumer has stopped)."""
    self._closed.set()
    while True:
      try:
        self._q.get_nowait()
      except queue.Empty:
        return


class Engine(Protocol):
  def process_timed(self, frame, *, profile: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    ...


@dataclasses.dataclass
class StreamStats:
  """Per-frame records and counters of one run; `summary()` makes the stats JSON's numbers."""
  frames: int = 0
  dropped: int = 0
  captured: int = 0
  corrupt: int = 0
  wall_s: float = 0.0
  latency: latency_stats.Histogram = dataclasses.field(default_factory=latency_stats.Histogram)
  process: latency_stats.Histogram = dataclasses.field(default_factory=latency_stats.Histogram)
  stages: dict[str, latency_stats.Histogram] = dataclasses.field(
      default_factory=lambda: {s: latency_stats.Histogram() for s in STAGES})
  error: str | None = None  # the source, engine or sink failure that ended the stream
  exception: BaseException | None = None
  failed: str | None = None  # "source" | "engine" | "sink"
  interrupted: bool = False  # `stop` was set, or Ctrl-C (KeyboardInterrupt) arrived

  def summary(self) -> dict[str, Any]:
    """Counts, fps and {p50, p95, p99, max, mean, count} in ms (None for a stage not timed)."""
    return {
        "frames": self.frames, "dropped": self.dropped, "captured": self.captured,
        "corrupt": self.corrupt, "wall_s": self.wall_s,
        "fps": self.frames / self.wall_s if self.wall_s > 0 else 0.0,
        "latency_ms": self.latency.summary_ms(), "process_ms": self.process.summary_ms(),
        "stages_ms": {s: h.summary_ms() for s, h in self.stages.items()},
        "error": self.error, "failed": self.failed, "interrupted": self.interrupted,
    }

  def fail(self, where: str, e: BaseException) -> None:
    self.error, self.exception, self.failed = f"{type(e).__name__}: {e}", e, where


def _capture_loop(source: Iterable[Any], slot, stop: threading.Event, pace_fps: float | None,
                  errors: list[BaseException]) -> None:
  it: Iterator[Any] = iter(source)
  seq = 0
  t_start = time.perf_counter()
  try:
    reserve = getattr(slot, "reserve", None)
    while not stop.is_set():
      if reserve is not None and not reserve():
        break
      t0 = time.perf_counter()
      try:
        frame = next(it)
      except StopIteration:
        break
      t1 = time.perf_counter()
      slot.put(Captured(frame, seq, t1, t1 - t0))
      seq += 1
      if pace_fps:  # a file played "live": frames arrive at the file's rate
        wait = t_start + seq / pace_fps - time.perf_counter()
        if wait > 0:
          stop.wait(wait)
  except BaseException as e:  # pylint: disable=broad-except  (reported by the engine thread)
    errors.append(e)
  finally:
    slot.close()


def run(source: Iterable[Any], engine: Engine, sink: Callable[[np.ndarray, np.ndarray], None] | None,
        *, lossless: bool, max_frames: int | None = None, profile: bool = False,
        pace_fps: float | None = None, on_frame: Callable[[int, StreamStats], None] | None = None,
        before_frame: Callable[[int], None] | None = None,
        stop: threading.Event | None = None) -> StreamStats:
  """Streams `source` through `engine` into `sink(input_HxWx3, output_HxWx3)` until the source
  ends, `max_frames` frames were processed or `stop` is set.

  `before_frame(n)` runs before the n-th processed frame (prompt schedules), `on_frame(n, stats)`
  after it (progress bars, memory probes). `pace_fps` makes the capture thread deliver frames at
  that rate (a file played as if live). An error in the source ends the stream after the frames
  read before it were processed; an error in the engine or the sink ends it at once; either is
  returned in `stats.error` / `stats.exception` / `stats.failed`, never raised, so the frames
  streamed until then are always counted. So is `stop` or Ctrl-C (`stats.interrupted`).
  """
  stats = StreamStats()
  stop = stop or threading.Event()
  slot = BoundedQueue() if lossless else LatestFrameSlot()
  errors: list[BaseException] = []
  thread = threading.Thread(target=_capture_loop, args=(source, slot, stop, pace_fps, errors),
                            name="lsd-capture", daemon=True)
  t_start = time.perf_counter()
  thread.start()
  try:
    while max_frames is None or stats.frames < max_frames:
      if stop.is_set():
        stats.interrupted = True
        break
      item = slot.get(timeout=0.5)
      if item is None:
        if not thread.is_alive():
          item = slot.get(timeout=0)
          if item is None:
            break
        else:
          continue
      if before_frame is not None:
        before_frame(stats.frames)
      t0 = time.perf_counter()
      try:
        out, times = engine.process_timed(item.frame, profile=profile)
      except Exception as e:  # pylint: disable=broad-except  (returned to the caller, who reports it)
        stats.fail("engine", e)
        break
      t1 = time.perf_counter()
      if sink is not None:
        inp = getattr(engine, "last_input", None)
        if inp is None:
          inp = preprocess.prepare_frame(item.frame, out.shape[0], out.shape[1])
        try:
          sink(inp, out)
        except Exception as e:  # pylint: disable=broad-except
          stats.fail("sink", e)
          break
      t2 = time.perf_counter()
      stats.frames += 1
      stats.latency.add(t1 - item.t_capture)
      stats.process.add(t1 - t0)
      stats.stages["read"].add(item.read_s)
      stats.stages["write"].add(t2 - t1)
      for k, v in times.items():
        stats.stages[k].add(v)
      if on_frame is not None:
        on_frame(stats.frames, stats)
  except KeyboardInterrupt:
    stats.interrupted = True
    logging.warning("interrupted after %d frames", stats.frames)
  finally:
    stop.set()
    if isinstance(slot, BoundedQueue):
      slot.cancel()
    thread.join(timeout=5.0)
    if thread.is_alive():
      logging.warning("capture thread did not stop within 5 s (a blocking source read)")
    stats.wall_s = time.perf_counter() - t_start
    stats.dropped = slot.dropped
    stats.captured = slot.captured
    stats.corrupt = int(getattr(source, "corrupt", 0))
  if errors and stats.error is None:
    stats.fail("source", errors[0])
  return stats
