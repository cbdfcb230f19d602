"""PyAV helpers: probe, iterate, random-access read and write video files.

Frames are always uint8 RGB arrays `frame_HxWx3`. These helpers do no resizing or cropping
(that is the sources' job) and hold no state between calls, so the streaming runtime and the
training sources can share them. PyAV is imported on first use, so code that never touches a
video file (procedural or photo sources, the evaluation of procedural streams) runs without it.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
from collections.abc import Iterable, Iterator

import numpy as np


class _LazyPyAV:
  """The `av` module, imported on first attribute access."""

  def __getattr__(self, name):
    try:
      import av as module  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("reading or writing video files needs PyAV (the `av` package): "
                        "install the project with scripts/setup.sh") from e
    globals()["av"] = module  # later accesses go straight to the module
    return getattr(module, name)


av = _LazyPyAV()

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ogv",
                    ".y4m", ".flv", ".wmv", ".ts")


class VideoReadError(RuntimeError):
  """A video file could not be opened or decoded."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What a source needs to know about a file before decoding it."""
  path: str
  width: int
  height: int
  fps: float
  num_frames: int
  codec: str
  duration_s: float  # 0 where the container does not say


def _open(path: str | os.PathLike) -> av.container.InputContainer:
  try:
    container = av.open(os.fspath(path), mode="r")
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoReadError(f"cannot open {path}: {e}") from e
  if not container.streams.video:
    container.close()
    raise VideoReadError(f"{path} has no video stream")
  return container


def _fps(stream: av.video.stream.VideoStream) -> float:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  return float(rate) if rate else 25.0


def probe(path: str | os.PathLike, *, count_packets: bool = True) -> VideoInfo:
  """Opens `path`, decodes its first frame and returns its geometry and length.

  Raises VideoReadError if the file cannot be opened or its first frame cannot be decoded.
  num_frames comes from an mp4/mov header; for other containers the non-empty video packets
  are counted, which reads the file but decodes nothing.
  """
  container = _open(path)
  try:
    stream = container.streams.video[0]
    try:
      first = next(container.decode(stream))
    except (av.FFmpegError, StopIteration, ValueError) as e:
      raise VideoReadError(f"cannot decode a frame of {path}: {e!r}") from e
    num_frames = int(stream.frames or 0)
    # Only mp4/mov headers count frames reliably: avi headers count empty (dropped) frames,
    # mkv/webm have no count at all.
    trusted = "mp4" in container.format.name and num_frames > 0
    if not trusted and count_packets:
      container.seek(0)
      num_frames = sum(1 for p in container.demux(stream) if p.size)
    return VideoInfo(path=os.fspath(path), width=first.width, height=first.height,
                     fps=_fps(stream), num_frames=num_frames, codec=stream.codec_context.name,
                     duration_s=float(container.duration or 0) / 1e6)
  finally:
    container.close()


def iter_frames(path: str | os.PathLike, *, start: int = 0, stride: int = 1,
                threads: bool = True) -> Iterator[np.ndarray]:
  """Yields the frames of a video file in order, as uint8 `frame_HxWx3`, lazily.

  start skips that many frames (by seeking when it can); stride keeps every stride-th frame.
  Decoding errors after the first frame end the iteration with VideoReadError.
  """
  if stride < 1 or start < 0:
    raise ValueError(f"need start >= 0 and stride >= 1, got {start=} {stride=}")
  container = _open(path)
  try:
    stream = container.streams.video[0]
    if threads:
      stream.thread_type = "AUTO"
    frames = _decode_from(container, stream, start)
    try:
      for i, frame in enumerate(frames):
        if i % stride == 0:
          yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as e:
      raise VideoReadError(f"decoding {path} failed: {e!r}") from e
  finally:
    container.close()


def _frame_time_s(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float | None:
  if frame.pts is None:
    return None
  start = stream.start_time or 0
  return float((frame.pts - start) * stream.time_base)


def _decode_from(container, stream, start: int) -> Iterator[av.VideoFrame]:
  """Decoded frames from frame number `start` on (seek to the keyframe before, then skip)."""
  if start == 0:
    # A reused reader's demuxer sits wherever its last read stopped: rewind (seek also flushes
    # the decoder) so that frame 0 really is the first frame, not the next one in the file.
    container.seek(stream.start_time or 0, stream=stream, backward=True, any_frame=False)
    yield from container.decode(stream)
    return
  fps = _fps(stream)
  target_s = start / fps
  # Half a frame of tolerance: frame times are rounded to the stream's time base.
  tolerance_s = 0.5 / fps
  offset = int((stream.start_time or 0) + target_s / stream.time_base)
  try:
    container.seek(offset, stream=stream, backward=True, any_frame=False)
    seeked = True
  except av.FFmpegError:
    seeked = False
  if not seeked:
    container.seek(0)
  decoded = 0
  for frame in container.decode(stream):
    t = _frame_time_s(frame, stream)
    if seeked and t is not None:
      if t < target_s - tolerance_s:
        continue
    elif decoded < start:  # no usable timestamps: count frames from the beginning
      decoded += 1
      continue
    yield frame


class VideoReader:
  """An open file for repeated random-access reads (opening an mp4 costs ~10 ms).

  Not thread-safe: give each thread its own. Decoding is single-threaded, since a read is a few
  frames and the pipeline already reads clips in parallel.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._container = _open(path)
    self._stream = self._container.streams.video[0]

  def read(self, start: int, num_frames: int, stride: int = 1) -> np.ndarray:
    """Frames start, start + stride, ... (num_frames of them) as uint8 `clip_TxHxWx3`.

    Raises VideoReadError if the file ends or fails before num_frames frames were read.
    """
    if stride < 1 or start < 0:
      raise ValueError(f"need start >= 0 and stride >= 1, got {start=} {stride=}")
    frames = []
    try:
      for i, frame in enumerate(_decode_from(self._container, self._stream, start)):
        if i % stride == 0:
          frames.append(frame.to_ndarray(format="rgb24"))
          if len(frames) == num_frames:
            break
    except av.FFmpegError as e:
      raise VideoReadError(f"decoding {self.path} failed: {e!r}") from e
    if len(frames) < num_frames:
      raise VideoReadError(f"{self.path}: wanted {num_frames} frames from {start} "
                           f"(stride {stride}), got {len(frames)}")
    return np.stack(frames)

  def close(self) -> None:
    self._container.close()


def read_frames(path: str | os.PathLike, start: int, num_frames: int,
                stride: int = 1) -> np.ndarray:
  """One random-access read (opens and closes the file); see VideoReader.read."""
  reader = VideoReader(path)
  try:
    return reader.read(start, num_frames, stride)
  finally:
    reader.close()


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, *,
              crf: int = 20, gop: int = 8, preset: str = "veryfast") -> int:
  """Encodes uint8 HxWx3 frames as H.264 (yuv420p) mp4 with the moov atom up front.

  A short GOP (keyframe every `gop` frames) keeps random access cheap for training. H and W
  must be even (yuv420p). Returns the number of frames written.
  """
  rate = fractions.Fraction(fps).limit_denominator(1001)
  count = 0
  with av.open(os.fspath(path), mode="w", format="mp4",
               options={"movflags": "+faststart"}) as container:
    stream = None
    for frame_HxWx3 in frames:
      if stream is None:
        height, width = frame_HxWx3.shape[:2]
        if height % 2 or width % 2:
          raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "g": str(gop),
                          "keyint_min": str(gop), "sc_threshold": "0"}
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HxWx3), format="rgb24")
      container.mux(stream.encode(frame))
      count += 1
    if stream is None:
      raise ValueError(f"no frames to write to {path}")
    container.mux(stream.encode(None))
  return count


def write_y4m(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int) -> int:
  """Writes uint8 HxWx3 frames as an uncompressed YUV4MPEG2 (C420) file.

  This is the format Chromium's --use-file-for-fake-video-capture reads. Returns the number of
  frames written.
  """
  count = 0
  with open(path, "wb") as f:
    for frame_HxWx3 in frames:
      height, width = frame_HxWx3.shape[:2]
      if count == 0:
        f.write(f"YUV4MPEG2 W{width} H{height} F{int(fps)}:1 Ip A1:1 C420jpeg\n".encode())
      yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HxWx3), format="rgb24")
      planes = yuv.reformat(format="yuv420p").to_ndarray()  # (H * 3 / 2) x W, planar
      f.write(b"FRAME\n")
      f.write(planes.tobytes())
      count += 1
  if count == 0:
    raise ValueError(f"no frames to write to {path}")
  return count
