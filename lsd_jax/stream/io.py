"""Stream sources and sinks.

Sources are iterables of uint8 RGB frames with `name`, `fps`, `live` (a camera: realtime by
default) and `corrupt` (frames skipped because they could not be decoded):
  webcam:N      an OpenCV camera; a camera that disappears gets `reconnect_attempts` tries with
                exponential back-off, then the stream ends with SourceError and a clear message;
  PATH          a video file (PyAV) or a folder of images (sorted by name);
  procedural    the endless seeded procedural scenes of lsd_jax.datasets.sources.
Sinks take one uint8 RGB frame at a time: an H.264 mp4 (PyAV), a window (cv2.imshow, only where
a display and a GUI build of OpenCV exist), a virtual camera (the optional `vcam` extra).

PyAV and the dataset modules are imported lazily: `lsd_jax.stream.engine` stays importable
where they are not installed.
"""

from __future__ import annotations

import fractions
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging
import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_FPS = 25.0


class SourceError(RuntimeError):
  """A source that cannot be opened, or a camera that is gone for good."""


class SinkUnavailable(RuntimeError):
  """A sink that cannot work here (no display, a missing optional package)."""


# ---------------------------------------------------------------------------------------------
# Sources.


class VideoFileSource:
  """Frames of a video file, decoded with PyAV; undecodable packets are skipped and counted."""

  live = False

  def __init__(self, path: str | os.PathLike, *, loop: bool = False):
    import av  # pylint: disable=import-outside-toplevel

    self.path = os.fspath(path)
    self.name = self.path
    self.loop = loop
    self.corrupt = 0
    try:
      with av.open(self.path) as c:
        if not c.streams.video:
          raise SourceError(f"{self.path}: no video stream")
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        self.fps = float(rate) if rate else DEFAULT_FPS
        self.num_frames = int(s.frames or 0) or None
    except (av.FFmpegError, OSError, ValueError) as e:
      raise SourceError(f"cannot open video {self.path}: {e}") from e

  def __iter__(self) -> Iterator[np.ndarray]:
    while True:
      yield from self._once()
      if not self.loop:
        return

  def _once(self) -> Iterator[np.ndarray]:
    import av  # pylint: disable=import-outside-toplevel

    try:
      container = av.open(self.path)
    except (av.FFmpegError, OSError) as e:
      raise SourceError(f"cannot open video {self.path}: {e}") from e
    try:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      packets = container.demux(stream)
      while True:
        try:
          packet = next(packets)
        except StopIteration:
          return
        except av.FFmpegError as e:  # the container itself is broken from here on
          self.corrupt += 1
          logging.warning("%s: stopped reading at a broken packet (%s)", self.path, e)
          return
        try:
          decoded = packet.decode()
        except av.FFmpegError as e:
          self.corrupt += 1
          logging.warning("%s: skipped an undecodable packet (%s)", self.path, e)
          continue
        for frame in decoded:
          yield frame.to_ndarray(format="rgb24")
    finally:
      container.close()


class ImageFolderSource:
  """The images of a folder in name order; unreadable files are skipped and counted."""

  live = False

  def __init__(self, path: str | os.PathLike, *, fps: float = DEFAULT_FPS, loop: bool = False):
    self.path = pathlib.Path(path)
    self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not self.files:
      raise SourceError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    self.name, self.fps, self.loop = str(self.path), fps, loop
    self.num_frames = len(self.files)
    self.corrupt = 0

  def __iter__(self) -> Iterator[np.ndarray]:
    while True:
      for p in self.files:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
          self.corrupt += 1
          logging.warning("skipped unreadable image %s", p)
          continue
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      if not self.loop:
        return


class ProceduralStreamSource:
  """An endless seeded procedural scene (no file needed)."""

  live = False

  def __init__(self, *, height: int = 256, width: int = 256, seed: int = 0, scene: int = 0,
               fps: float = DEFAULT_FPS):
    from lsd_jax.datasets import sources  # pylint: disable=import-outside-toplevel

    self._src = sources.ProceduralSource(height=height, width=width, num_frames=1, seed=seed)
    self.scene, self.fps = scene, fps
    self.name = f"procedural:{seed}"
    self.num_frames = None
    self.corrupt = 0

  def __iter__(self) -> Iterator[np.ndarray]:
    return self._src.stream(self.scene)


class WebcamSource:
  """An OpenCV camera (device index). A failed read closes the camera and reopens it up to
  `reconnect_attempts` times, waiting backoff_s, 2 backoff_s, 4 backoff_s, ...; then SourceError."""

  live = True

  def __init__(self, index: int = 0, *, reconnect_attempts: int = 5, backoff_s: float = 0.5,
               capture_factory: Callable[[int], Any] = cv2.VideoCapture,
               sleep: Callable[[float], None] = time.sleep):
    self.index, self.reconnect_attempts, self.backoff_s = index, reconnect_attempts, backoff_s
    self._factory, self._sleep = capture_factory, sleep
    self.name = f"webcam:{index}"
    self.corrupt = 0
    self.reconnects = 0
    self.num_frames = None
    self._cap = self._open()
    fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
    self.fps = fps if 1 <= fps <= 240 else 30.0

  def _open(self):
    cap = self._factory(self.index)
    if cap is not None and cap.isOpened():
      return cap
    raise SourceError(f"cannot open camera {self.index} (is it connected, and free?)")

  def _reconnect(self):
    for attempt in range(1, self.reconnect_attempts + 1):
      wait = self.backoff_s * 2 ** (attempt - 1)
      logging.warning("camera %d stopped delivering frames: reconnect attempt %d/%d in %.1f s",
                      self.index, attempt, self.reconnect_attempts, wait)
      self._sleep(wait)
      try:
        cap = self._open()
      except SourceError:
        continue
      ok, frame = cap.read()
      if ok and frame is not None:
        self.reconnects += 1
        logging.info("camera %d is back", self.index)
        return cap, frame
      cap.release()
    raise SourceError(f"camera {self.index} disappeared and did not come back after "
                      f"{self.reconnect_attempts} reconnect attempts; stopping the stream")

  def __iter__(self) -> Iterator[np.ndarray]:
    try:
      while True:
        ok, frame = self._cap.read()
        if not ok or frame is None:
          self._cap.release()
          self._cap, frame = self._reconnect()
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
          self.corrupt += 1
          continue
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
      self._cap.release()


def open_source(spec: str, *, height: int = 256, width: int = 256, seed: int = 0,
                loop: bool = False, **webcam_kw) -> Any:
  """'webcam:N' | 'procedural[:SEED]' | a video file | an image folder."""
  if spec.startswith("webcam:") or spec == "webcam":
    index = spec.partition(":")[2] or "0"
    if not index.isdigit():
      raise SourceError(f"webcam index must be a number, got {spec!r}")
    return WebcamSource(int(index), **webcam_kw)
  if spec == "procedural" or spec.startswith("procedural:"):
    s = spec.partition(":")[2]
    return ProceduralStreamSource(height=height, width=width, seed=int(s) if s else seed)
  path = pathlib.Path(spec)
  if path.is_dir():
    return ImageFolderSource(path, loop=loop)
  if not path.is_file():
    raise SourceError(f"no such file or folder: {spec} (sources: webcam:N, procedural, a video "
                      "file, an image folder)")
  return VideoFileSource(path, loop=loop)


# ---------------------------------------------------------------------------------------------
# Sinks.


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
  """a and b name one file (through links, relative paths and hard links)."""
  if os.path.realpath(a) == os.path.realpath(b):
    return True
  try:
    return os.path.samefile(a, b)
  except OSError:  # one of them does not exist (yet)
    return False


def check_output_file(what: str, path: str | os.PathLike) -> None:
  """Makes sure a file can be written at `path` before any work starts: its folder is created
  and probed with a temporary file. OSError with a message that names `what` and the path."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise OSError(f"{what}={path} is a folder; give a file name in it (e.g. "
                  f"{os.path.join(path, 'out.mp4')})")
  folder = os.path.dirname(os.path.abspath(path))
  ancestor = folder
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise OSError(f"{what}={path}: {ancestor} is a file, not a folder")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise OSError(f"{what}={path}: cannot create the folder {folder} ({e.strerror or e})") from e
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".lsd-write-probe-"):
      pass
    if os.path.exists(path):
      with open(path, "ab"):
        pass
  except OSError as e:
    raise OSError(f"{what}={path}: cannot write there ({e.strerror or e})") from e


class Mp4Sink:
  """H.264 (yuv420p, crf 20) mp4, written frame by frame; the folder is created. The file is
  created at the first frame: a stream that ends before it leaves no empty, unplayable file."""

  def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 20):
    self.path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._container = None
    self._rate = fractions.Fraction(fps).limit_denominator(1001)
    self._crf = crf
    self._stream = None
    self.frames = 0

  def write(self, frame_HxWx3: np.ndarray) -> None:
    import av  # pylint: disable=import-outside-toplevel

    if self._stream is None:
      h, w = frame_HxWx3.shape[:2]
      if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")
      self._container = av.open(self.path, mode="w", format="mp4",
                                options={"movflags": "+faststart"})
      self._stream = self._container.add_stream("libx264", rate=self._rate)
      self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
      self._stream.options = {"crf": str(self._crf), "preset": "veryfast"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HxWx3), format="rgb24")
    self._container.mux(self._stream.encode(frame))
    self.frames += 1

  def close(self) -> None:
    if self._container is None:
      return
    container, self._container = self._container, None
    try:
      container.mux(self._stream.encode(None))
    finally:
      container.close()


class WindowSink:
  """A desktop window (cv2.imshow); SinkUnavailable where there is no display or no GUI."""

  def __init__(self, title: str = "lsd-stream"):
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
      raise SinkUnavailable("no display (DISPLAY is not set): not opening a window")
    self.title = title
    try:
      cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
    except cv2.error as e:
      raise SinkUnavailable(f"OpenCV cannot open windows here (a headless build?): {e}") from e

  def write(self, frame_HxWx3: np.ndarray) -> None:
    cv2.imshow(self.title, cv2.cvtColor(frame_HxWx3, cv2.COLOR_RGB2BGR))
    cv2.waitKey(1)

  def close(self) -> None:
    try:
      cv2.destroyWindow(self.title)
    except cv2.error:
      pass


class VirtualCamSink:
  """A virtual webcam other programs can open (pyvirtualcam, the optional `vcam` extra)."""

  def __init__(self, width: int, height: int, fps: float):
    try:
      import pyvirtualcam  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise SinkUnavailable("the virtual camera needs pyvirtualcam: pip install 'lsd-jax[vcam]' "
                            "(pyvirtualcam==0.15.0, plus v4l2loopback on Linux)") from e
    try:
      self._cam = pyvirtualcam.Camera(width=width, height=height, fps=fps)
    except RuntimeError as e:
      raise SinkUnavailable(f"no virtual camera device: {e}") from e
    logging.info("virtual camera: %s", self._cam.device)

  def write(self, frame_HxWx3: np.ndarray) -> None:
    self._cam.send(np.ascontiguousarray(frame_HxWx3))

  def close(self) -> None:
    self._cam.close()


class Composite:
  """The realtime sink: (input, output) -> [input | output] or output -> every sink."""

  def __init__(self, sinks: list[Any], *, side_by_side: bool = False):
    self.sinks, self.side_by_side = sinks, side_by_side

  def __call__(self, input_HxWx3: np.ndarray, output_HxWx3: np.ndarray) -> None:
    if self.side_by_side:
      from lsd_jax.stream.preprocess import side_by_side  # pylint: disable=import-outside-toplevel

      frame = side_by_side(input_HxWx3, output_HxWx3)
    else:
      frame = output_HxWx3
    for s in self.sinks:
      s.write(frame)

  def close(self) -> None:
    for s in self.sinks:
      s.close()
