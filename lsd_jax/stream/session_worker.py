"""One served stream on its own thread: newest frame first, prompt changes between frames.

Both of lsd-serve's transports (WebSocket JPEGs and WebRTC video tracks) hand their incoming
frames to a `SessionWorker`. It keeps them in a `realtime.LatestFrameSlot` (the frame that
waited while the model was busy is replaced by a newer one and counted as dropped, never
queued), runs the StreamSession on the newest one, and calls `deliver` with the output and the
server's own per-frame timings (arrival -> output ready, fps from output times).
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from absl import logging
import numpy as np

from lsd_jax.stream import engine, latency_stats, realtime

FPS_WINDOW = 60  # outputs the live fps is measured over


@dataclasses.dataclass
class Result:
  """What a worker hands its transport per frame: an output frame, a bad frame, or the end."""
  frame: np.ndarray | None  # uint8 HxWx3 at the model's resolution; None for an error
  stats: dict[str, Any]
  error: str | None = None
  fatal: bool = False  # the stream cannot go on (the model produced NaN/Inf)


class SessionWorker:
  """Processes the newest offered frame of one stream in a thread of its own.

  `decode(payload) -> frame` turns what the transport received into an image (a JPEG's bytes,
  a WebRTC frame; ValueError for a bad one), in the worker thread; `deliver(result)` is called
  in the worker thread too, and may block (the transport's own back-pressure).
  """

  def __init__(self, session: engine.StreamSession, decode: Callable[[Any], Any],
               deliver: Callable[[Result], None], *, name: str = "lsd-session"):
    self.session, self._decode, self._deliver = session, decode, deliver
    self.slot = realtime.LatestFrameSlot()
    self._commands: queue.SimpleQueue = queue.SimpleQueue()
    self._seq = 0
    self.frames = self.bad = 0
    self.server_ms = latency_stats.Window(300)
    self._done_at: collections.deque[float] = collections.deque(maxlen=FPS_WINDOW)
    self.last_frame_at = time.monotonic()
    self._closed = threading.Event()
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  @property
  def dropped(self) -> int:
    return self.slot.dropped

  def offer(self, payload: Any) -> None:
    """A newly arrived frame (any thread); replaces one still waiting."""
    self.last_frame_at = time.monotonic()
    self.slot.put(realtime.Captured(payload, self._seq, time.perf_counter(), 0.0))
    self._seq += 1

  def set_prompt(self, text: str, transition: int = 0) -> None:
    """Takes effect before the next frame this worker processes."""
    self._commands.put(("prompt", text, transition))

  def close(self, timeout_s: float = 5.0) -> None:
    self._closed.set()
    self.slot.close()
    if threading.current_thread() is not self._thread:
      self._thread.join(timeout_s)

  def _apply_commands(self) -> None:
    while True:
      try:
        kind, text, transition = self._commands.get_nowait()
      except queue.Empty:
        return
      if kind == "prompt":
        self.session.set_prompt(text, transition)

  def _stats(self, t_arrival: float, t_done: float) -> dict[str, Any]:
    self.server_ms.add(t_done - t_arrival)
    self._done_at.append(t_done)
    span = self._done_at[-1] - self._done_at[0]
    fps = (len(self._done_at) - 1) / span if span > 0 else 0.0
    return {"type": "frame", "index": self.frames, "server_ms": (t_done - t_arrival) * 1e3,
            "p50_ms": self.server_ms.percentile_ms(50), "p99_ms": self.server_ms.percentile_ms(99),
            "fps": fps, "dropped": self.dropped, "bad_frames": self.bad}

  def _run(self) -> None:
    while not self._closed.is_set():
      item = self.slot.get(timeout=0.5)
      if item is None:
        continue
      try:
        self._apply_commands()
        frame = self._decode(item.frame)
      except ValueError as e:
        self.bad += 1
        self._deliver(Result(None, {"bad_frames": self.bad}, f"bad frame: {e}"))
        continue
      try:
        out = self.session(frame)
      except engine.NonFiniteOutput as e:
        self._deliver(Result(None, {"frames": self.frames}, str(e), fatal=True))
        return
      except ValueError as e:  # a frame the preprocessing refuses (NaN pixels, odd shapes)
        self.bad += 1
        self._deliver(Result(None, {"bad_frames": self.bad}, f"bad frame: {e}"))
        continue
      except Exception as e:  # pylint: disable=broad-except  (the session ends with a message)
        logging.exception("a served stream failed")
        self._deliver(Result(None, {"frames": self.frames}, f"server error: {type(e).__name__}",
                             fatal=True))
        return
      self.frames += 1
      self._deliver(Result(out, self._stats(item.t_capture, time.perf_counter())))
