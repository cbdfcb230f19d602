"""Input clip sources: real video, moving still photos, procedural scenes, a user's folder.

Every source is a grain random-access data source: `len(source)` is a nominal (huge) length and
`source[index]` returns a uint8 `clip_TxHxWx3` that depends only on (source seed, index), so any
worker, on any host, after any resume, draws the same clip for the same index.

- `VideoClipSource`: clips decoded with PyAV, random crop (the model's aspect), horizontal flip,
  temporal stride, resized to HxW. Built from a list of files, a folder (`from_folder`) or the
  local clip library (`from_manifest`, see data/prepare_library.py). With `decoded_cache=DIR`
  every clip is decoded once into an uncompressed uint8 .npy in DIR and read through a memory
  map (shared by all worker processes through the page cache): the same examples, without the
  H.264 decode that otherwise dominates the input pipeline.
- `PhotoSource`: still photos (scikit-image's bundled ones by default) filmed by a smooth random
  camera path: pan, zoom and roll, rendered with cv2.warpAffine.
- `ProceduralSource`: seeded endless scenes of moving shapes over drifting textures under
  changing light; `stream()` renders one scene forever, frame by frame.

Unreadable files are skipped with an absl warning and counted in `source.skipped`; a source left
with no readable clip raises NoReadableClipError naming where it looked.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import threading
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from absl import logging

from lsd_jax.datasets import video
from lsd_jax.datasets.video import iter_frames  # re-exported for the streaming code

__all__ = [
    "NOMINAL_LENGTH", "NoReadableClipError", "ClipSpec", "VideoClipSource", "PhotoSource",
    "ProceduralSource", "SKIMAGE_PHOTOS", "iter_frames", "resize_to", "example_rng",
]

# Sources are endless: grain sees this length and an index picks a random clip and crop.
NOMINAL_LENGTH = 2**31 - 1

# scikit-image's bundled photos (no download) and their split; the licence of each is in
# data/README.md (all CC0 or public domain).
SKIMAGE_PHOTOS = {
    "astronaut": "train", "chelsea": "train", "rocket": "train", "hubble_deep_field": "train",
    "retina": "train", "immunohistochemistry": "train", "camera": "train", "brick": "train",
    "gravel": "train", "coffee": "heldout", "grass": "heldout",
}


class NoReadableClipError(RuntimeError):
  """A source found no clip it could read."""


def example_rng(seed: int, index: int) -> np.random.Generator:
  """The generator for example `index` of a source seeded with `seed` (order-free, stateless)."""
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])


def resize_to(frame_hxwx3: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
  h, w = frame_hxwx3.shape[:2]
  if (h, w) == (height, width):
    return frame_hxwx3
  shrink = height * width < h * w
  return cv2.resize(frame_hxwx3, (width, height),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _check_geometry(height: int, width: int, num_frames: int) -> None:
  if height < 8 or width < 8 or num_frames < 1:
    raise ValueError(f"need height, width >= 8 and num_frames >= 1, got "
                     f"{height}x{width}x{num_frames}")


# ---------------------------------------------------------------------------------------------
# Real video.


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """A readable video file and what the sampler needs to know about it."""
  path: str
  num_frames: int
  width: int
  height: int
  fps: float


class VideoClipSource:
  """Random crops of real video files, decoded with PyAV.

  Example `index` picks a file (probability proportional to its frame count), a temporal
  stride among `strides` that fits, a start frame, a crop with the output's aspect ratio whose
  side is a uniform fraction in [min_crop_scale, 1] of the largest such crop, and a horizontal
  flip; the same crop holds for all T frames.
  """

  def __init__(self, paths: Sequence[str | os.PathLike], *, height: int, width: int,
               num_frames: int, strides: Sequence[int] = (1, 2), min_crop_scale: float = 0.6,
               flip: bool = True, seed: int = 0, where: str | None = None,
               length: int = NOMINAL_LENGTH, decoded_cache: str | os.PathLike | None = None):
    _check_geometry(height, width, num_frames)
    if not 0 < min_crop_scale <= 1:
      raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale}")
    self.height, self.width, self.num_frames = height, width, num_frames
    self.strides = tuple(sorted(int(s) for s in strides))
    self.min_crop_scale, self.flip, self.seed = min_crop_scale, flip, seed
    self._length = length
    self.max_open_files = 16
    self._local = threading.local()
    self.where = where or f"{len(paths)} listed files"
    self.stats = {"unreadable": 0, "too_short": 0, "read_failures": 0}
    self.clips = self._probe_all(paths)
    if not self.clips:
      raise NoReadableClipError(
          f"no readable video clip of >= {num_frames} frames in {self.where} "
          f"({len(paths)} files tried: {self.stats})")
    self.decoded_cache = os.fspath(decoded_cache) if decoded_cache else None
    self._cache_files: dict[str, str] = {}
    if self.decoded_cache:
      self._build_decoded_cache()
    frames = np.array([c.num_frames for c in self.clips], np.float64)
    self._clip_p = frames / frames.sum()

  def _build_decoded_cache(self) -> None:
    """Decodes each clip once into DIR/<name>-<key>.npy (key: path, size and mtime, so an edited
    file gets a new entry); writes go to a temporary name, then an atomic rename. A clip whose
    decode yields fewer frames than its probe counted keeps what decoded (windows are drawn
    from that count); one that fails to decode at all is dropped, as unreadable."""
    os.makedirs(self.decoded_cache, exist_ok=True)
    kept, total_bytes = [], 0
    for clip in self.clips:
      st = os.stat(clip.path)
      key = hashlib.sha1(f"{os.path.abspath(clip.path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
      dst = os.path.join(self.decoded_cache, f"{pathlib.Path(clip.path).stem}-{key}.npy")
      if not os.path.isfile(dst):
        try:
          frames = np.stack(list(video.iter_frames(clip.path)))
        except (video.VideoReadError, ValueError) as e:
          self.stats["unreadable"] += 1
          logging.warning("Skipping %s: decoding it for the cache failed: %s", clip.path, e)
          continue
        tmp = f"{dst}.{os.getpid()}.tmp.npy"
        np.save(tmp, frames)
        os.replace(tmp, dst)
      arr = np.load(dst, mmap_mode="r")
      if arr.shape[0] < self.num_frames:
        self.stats["too_short"] += 1
        logging.warning("Skipping %s: %d decodable frames < %d needed", clip.path, arr.shape[0], self.num_frames)
        continue
      total_bytes += arr.nbytes
      self._cache_files[clip.path] = dst
      kept.append(dataclasses.replace(clip, num_frames=int(arr.shape[0])))
    self.clips = kept
    if not kept:
      raise NoReadableClipError(f"no clip of {self.where} could be decoded into {self.decoded_cache}")
    logging.info("decoded-frame cache %s: %d clips, %.0f MB", self.decoded_cache, len(kept), total_bytes / 1e6)

  def _cached(self, path: str) -> np.ndarray:
    """This process's memory map of a clip's decoded frames (opened once, read-only)."""
    maps = self.__dict__.setdefault("_maps", {})
    if path not in maps:
      maps[path] = np.load(self._cache_files[path], mmap_mode="r")
    return maps[path]

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, **kwargs) -> VideoClipSource:
    """All video files (by extension, recursively) under `folder`: the user's own videos."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
      raise NoReadableClipError(f"video folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in video.VIDEO_EXTENSIONS)
    return cls(paths, where=f"folder {folder}", **kwargs)

  @classmethod
  def from_manifest(cls, manifest_path: str | os.PathLike, split: str = "train",
                    **kwargs) -> VideoClipSource:
    """The clips of one split ("train" or "heldout") of the library's manifest.json."""
    manifest_path = pathlib.Path(manifest_path)
    if not manifest_path.exists():
      raise NoReadableClipError(
          f"no clip library at {manifest_path}; build it with "
          f"`python data/prepare_library.py`")
    entries = json.loads(manifest_path.read_text())["clips"]
    paths = [manifest_path.parent / e["path"] for e in entries if e["split"] == split]
    return cls(paths, where=f"split {split!r} of {manifest_path}", **kwargs)

  @property
  def skipped(self) -> int:
    """Files left out plus reads that failed and were replaced by another clip (this process)."""
    return sum(self.stats.values())

  def _probe_all(self, paths) -> list[ClipSpec]:
    clips = []
    min_frames = self.num_frames  # at stride 1
    for path in paths:
      try:
        info = video.probe(path)
      except video.VideoReadError as e:
        self.stats["unreadable"] += 1
        logging.warning("Skipping unreadable video %s: %s", path, e)
        continue
      if info.num_frames < min_frames:
        self.stats["too_short"] += 1
        logging.warning("Skipping %s: %d frames < %d needed", path, info.num_frames, min_frames)
        continue
      clips.append(ClipSpec(os.fspath(path), info.num_frames, info.width, info.height, info.fps))
    return clips

  def __len__(self) -> int:
    return self._length

  def _sample_window(self, rng: np.random.Generator, clip: ClipSpec):
    strides = [s for s in self.strides if (self.num_frames - 1) * s < clip.num_frames] or [1]
    stride = int(rng.choice(strides))
    span = (self.num_frames - 1) * stride + 1
    start = int(rng.integers(0, clip.num_frames - span + 1))
    aspect = self.width / self.height
    crop_h_max = min(clip.height, clip.width / aspect)
    scale = rng.uniform(self.min_crop_scale, 1.0)
    crop_h = max(2, int(round(crop_h_max * scale)))
    crop_w = max(2, min(clip.width, int(round(crop_h * aspect))))
    y0 = int(rng.integers(0, clip.height - crop_h + 1))
    x0 = int(rng.integers(0, clip.width - crop_w + 1))
    flip = bool(self.flip and rng.random() < 0.5)
    return start, stride, (y0, x0, crop_h, crop_w), flip

  def _reader(self, path: str) -> video.VideoReader:
    """This thread's open reader of `path` (a few readers kept open, least recent closed)."""
    if not hasattr(self._local, "readers"):
      self._local.readers = collections.OrderedDict()
    readers = self._local.readers
    if path in readers:
      readers.move_to_end(path)
    else:
      readers[path] = video.VideoReader(path)
      if len(readers) > self.max_open_files:
        readers.popitem(last=False)[1].close()
    return readers[path]

  def __getstate__(self):  # grain pickles sources into worker processes; readers and maps stay here
    state = dict(self.__dict__)
    del state["_local"]
    state.pop("_maps", None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def _read(self, rng: np.random.Generator, clip: ClipSpec) -> np.ndarray:
    start, stride, (y0, x0, ch, cw), flip = self._sample_window(rng, clip)
    if self.decoded_cache:
      frames = self._cached(clip.path)[start:start + (self.num_frames - 1) * stride + 1:stride]
    else:
      frames = self._read_decoded(clip, start, stride)
    out = np.empty((self.num_frames, self.height, self.width, 3), np.uint8)
    for t, frame in enumerate(frames):
      crop = frame[y0:y0 + ch, x0:x0 + cw]
      out[t] = resize_to(crop[:, ::-1] if flip else crop, self.height, self.width)
    return out

  def _read_decoded(self, clip: ClipSpec, start: int, stride: int) -> np.ndarray:
    try:
      return self._reader(clip.path).read(start, self.num_frames, stride)
    except video.VideoReadError:
      reader = getattr(self._local, "readers", {}).pop(clip.path, None)
      if reader is not None:  # reopen next time, from a clean state
        reader.close()
      raise

  def __getitem__(self, index: int) -> np.ndarray:
    rng = example_rng(self.seed, index)
    p = self._clip_p.copy()
    while p.sum() > 0:
      choice = rng.choice(len(self.clips), p=p / p.sum())
      clip = self.clips[choice]
      try:
        return self._read(rng, clip)
      except video.VideoReadError as e:
        # A file that probed fine can still be truncated further in: draw another clip.
        self.stats["read_failures"] += 1
        logging.warning("Skipping a clip of %s (example %d): %s", clip.path, index, e)
        p[choice] = 0.0
    raise NoReadableClipError(f"every clip draw for example {index} failed in {self.where}")


# ---------------------------------------------------------------------------------------------
# Still photos under a moving camera.


def _load_skimage_photo(name: str) -> np.ndarray:
  import skimage.data  # pylint: disable=g-import-not-at-top  # heavy; only photo sources need it
  image = getattr(skimage.data, name)()
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3].astype(np.uint8))


@dataclasses.dataclass(frozen=True)
class CameraPath:
  """A smooth camera over a photo: each of pan x, pan y, log-zoom and roll is a sum of two
  sinusoids of frame time, so it is endless and its per-frame change is bounded by
  amplitude x angular frequency."""
  amplitude: np.ndarray  # 4: pan x, pan y (source pixels), log-zoom, roll (radians)
  omega: np.ndarray  # 4x2 radians per frame
  phase: np.ndarray  # 4x2

  def at(self, t: float) -> np.ndarray:
    waves = np.sin(self.omega * t + self.phase) @ np.array([2 / 3, 1 / 3])
    return self.amplitude * waves


class PhotoSource:
  """Clips made by filming still photos with a smooth random camera (pan, zoom, roll, flip)."""

  def __init__(self, images: Sequence[np.ndarray], *, height: int, width: int, num_frames: int,
               seed: int = 0, max_omega: float = 0.08, max_zoom: float = 0.2,
               max_roll_deg: float = 8.0, view_fraction: tuple[float, float] = (0.45, 0.8),
               names: Sequence[str] | None = None, length: int = NOMINAL_LENGTH):
    _check_geometry(height, width, num_frames)
    if not images:
      raise NoReadableClipError("PhotoSource got no images")
    # Shrink photos once so the largest view is at most 1.5 source pixels per output pixel;
    # per-example shrinking of a 1411x1411 photo would cost more than the warp.
    self.images = [self._fit(np.ascontiguousarray(im), height, width, view_fraction[1])
                   for im in images]
    self.names = list(names) if names is not None else [str(i) for i in range(len(images))]
    self.height, self.width, self.num_frames, self.seed = height, width, num_frames, seed
    self.max_omega, self.max_zoom = max_omega, max_zoom
    self.max_roll = math.radians(max_roll_deg)
    self.view_fraction = view_fraction
    self._length = length
    self.skipped = 0

  @staticmethod
  def _fit(image: np.ndarray, height: int, width: int, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    scale = fraction * min(h / height, w / width) / 1.5
    if scale <= 1:
      return image
    return resize_to(image, max(8, round(h / scale)), max(8, round(w / scale)))

  @classmethod
  def from_skimage(cls, split: str = "train", **kwargs) -> PhotoSource:
    names = [n for n, s in SKIMAGE_PHOTOS.items() if s == split]
    return cls([_load_skimage_photo(n) for n in names], names=names, **kwargs)

  def __len__(self) -> int:
    return self._length

  def _prescaled(self, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A (maybe flipped) photo and the source pixels per output pixel at zoom 1.

    The view at zoom 1 spans a random fraction (view_fraction) of the photo's limiting side;
    the photo is shrunk first when that view is larger than the output, so the warp samples
    near 1:1 and does not alias.
    """
    image = self.images[rng.integers(len(self.images))]
    if rng.random() < 0.5:
      image = image[:, ::-1]
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    fraction = rng.uniform(*self.view_fraction)
    scale = fraction * min(h / self.height, w / self.width)
    if scale > 1:
      image = resize_to(image, max(8, round(h / scale)), max(8, round(w / scale)))
      h, w = image.shape[:2]
    return image, fraction * min(h / self.height, w / self.width)

  def camera_path(self, rng: np.random.Generator, image_hxw: tuple[int, int],
                  base_scale: float) -> CameraPath:
    h, w = image_hxw
    view_w, view_h = self.width * base_scale, self.height * base_scale
    slack = np.array([max(0.0, (w - view_w) / 2), max(0.0, (h - view_h) / 2)])
    amplitude = np.concatenate([slack * rng.uniform(0.3, 1.0, 2),
                                [self.max_zoom * rng.uniform(0.2, 1.0),
                                 self.max_roll * rng.uniform(0.0, 1.0)]])
    omega = rng.uniform(0.1, 1.0, (4, 2)) * self.max_omega
    return CameraPath(amplitude, omega, rng.uniform(0, 2 * np.pi, (4, 2)))

  def render(self, image: np.ndarray, path: CameraPath, t: float, base_scale: float) -> np.ndarray:
    """One output frame: the camera at frame time t looking at `image`."""
    h, w = image.shape[:2]
    dx, dy, log_zoom, roll = path.at(t)
    s = base_scale * math.exp(-log_zoom)
    cos, sin = math.cos(roll) * s, math.sin(roll) * s
    centre = np.array([w / 2 + dx, h / 2 + dy])
    half = np.array([self.width / 2, self.height / 2])
    rot = np.array([[cos, -sin], [sin, cos]])
    # Inverse map: source point = centre + s R (output point - output centre).
    matrix = np.concatenate([rot, (centre - rot @ half)[:, None]], axis=1)
    return cv2.warpAffine(image, matrix, (self.width, self.height),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)

  def __getitem__(self, index: int) -> np.ndarray:
    rng = example_rng(self.seed, index)
    image, base_scale = self._prescaled(rng)
    path = self.camera_path(rng, image.shape[:2], base_scale)
    t0 = rng.uniform(0, 1000)
    return np.stack([self.render(image, path, t0 + t, base_scale)
                     for t in range(self.num_frames)])


# ---------------------------------------------------------------------------------------------
# Procedural scenes.


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything that defines a procedural scene; frames are a pure function of (scene, t).

  Lengths are in units of the frame's short side; times in frames.
  """
  wave_k: np.ndarray  # Wx2 spatial frequencies of the background plane waves (radians/unit)
  wave_omega: np.ndarray  # W temporal frequencies (radians/frame)
  wave_phase: np.ndarray  # W
  wave_rgb: np.ndarray  # Wx3 colour amplitude of each wave
  wave_hard: np.ndarray  # W bool: stripes (sign of the wave) instead of a smooth wave
  base_rgb: np.ndarray  # 3
  shape_kind: np.ndarray  # S: 0 disc, 1 rectangle, 2 triangle, 3 star
  shape_pos: np.ndarray  # Sx2 position at t = 0
  shape_vel: np.ndarray  # Sx2 per frame
  shape_size: np.ndarray  # S radius
  shape_spin: np.ndarray  # S radians per frame
  shape_angle: np.ndarray  # S
  shape_rgb: np.ndarray  # Sx3
  light_gain: np.ndarray  # 3: mean, amplitude, omega of the global brightness
  light_phase: float
  spot_pos: np.ndarray  # 2 spotlight centre at t = 0
  spot_vel: np.ndarray  # 2
  spot_strength: float
  t0: float  # where in the scene's endless time a clip starts


def sample_scene(rng: np.random.Generator, start_range: float = 10_000.0) -> Scene:
  num_waves, num_shapes = int(rng.integers(2, 5)), int(rng.integers(2, 9))
  return Scene(
      wave_k=rng.normal(0, 1, (num_waves, 2)) * rng.uniform(2, 25, (num_waves, 1)),
      wave_omega=rng.uniform(-0.15, 0.15, num_waves),
      wave_phase=rng.uniform(0, 2 * np.pi, num_waves),
      wave_rgb=rng.uniform(-0.25, 0.25, (num_waves, 3)),
      wave_hard=rng.random(num_waves) < 0.3,
      base_rgb=rng.uniform(0.2, 0.8, 3),
      shape_kind=rng.integers(0, 4, num_shapes),
      shape_pos=rng.uniform(0, 1.5, (num_shapes, 2)),
      shape_vel=rng.normal(0, 0.008, (num_shapes, 2)),
      shape_size=rng.uniform(0.04, 0.2, num_shapes),
      shape_spin=rng.normal(0, 0.05, num_shapes),
      shape_angle=rng.uniform(0, 2 * np.pi, num_shapes),
      shape_rgb=rng.uniform(0, 1, (num_shapes, 3)),
      light_gain=np.array([rng.uniform(0.8, 1.1), rng.uniform(0, 0.25), rng.uniform(0.01, 0.1)]),
      light_phase=float(rng.uniform(0, 2 * np.pi)),
      spot_pos=rng.uniform(0, 1.5, 2),
      spot_vel=rng.normal(0, 0.006, 2),
      spot_strength=float(rng.uniform(0, 0.5)),
      t0=float(rng.uniform(0, start_range)),
  )


def _polygon(kind: int, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
  if kind == 1:
    corners = np.array([np.pi / 4, 3 * np.pi / 4, 5 * np.pi / 4, 7 * np.pi / 4])
    radii = np.full(4, radius)
  elif kind == 2:
    corners, radii = np.arange(3) * 2 * np.pi / 3, np.full(3, radius)
  else:
    corners = np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
  theta = corners + angle
  return centre + radii[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=-1)


def render_scene(scene: Scene, t: float, height: int, width: int) -> np.ndarray:
  """Frame `t` (frames since the scene's t0) of `scene` at HxW, uint8. Pure and endless."""
  unit = min(height, width)
  extent = np.array([width, height]) / unit  # frame size in units
  time = scene.t0 + t
  xs, ys = np.arange(width) / unit, np.arange(height) / unit
  # Plane waves are separable: sin(a_x + b_y) = sin a_x cos b_y + cos a_x sin b_y.
  # Phases in float64 (scene time grows without bound), the H x W products in float32.
  a_wxx = (scene.wave_k[:, :1] * xs).astype(np.float32)
  b_wxy = (scene.wave_k[:, 1:] * ys
           + (scene.wave_omega * time + scene.wave_phase)[:, None]).astype(np.float32)
  waves_wxhxw = (np.cos(b_wxy)[:, :, None] * np.sin(a_wxx)[:, None, :]
                 + np.sin(b_wxy)[:, :, None] * np.cos(a_wxx)[:, None, :])
  waves_wxhxw = np.where(scene.wave_hard[:, None, None], np.sign(waves_wxhxw), waves_wxhxw)
  image = np.tensordot(waves_wxhxw, scene.wave_rgb.astype(np.float32), axes=(0, 0))
  image += scene.base_rgb.astype(np.float32)
  # Shapes move on a torus slightly larger than the frame, so they leave and come back.
  margin = scene.shape_size.max()
  period = extent + 2 * margin
  positions = np.mod(scene.shape_pos + scene.shape_vel * time, period) - margin
  for kind, pos, size, spin, angle, rgb in zip(scene.shape_kind, positions, scene.shape_size,
                                               scene.shape_spin, scene.shape_angle,
                                               scene.shape_rgb):
    colour = tuple(float(c) for c in rgb)
    if kind == 0:
      cv2.circle(image, tuple(int(v) for v in np.round(pos * unit * 16)),
                 int(size * unit * 16), colour, -1, cv2.LINE_AA, shift=4)
    else:
      pts = _polygon(int(kind), pos, size, angle + spin * time) * unit * 16
      cv2.fillPoly(image, [np.round(pts).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
  mean, amplitude, omega = scene.light_gain
  gain = mean + amplitude * math.sin(omega * time + scene.light_phase)
  spot = np.mod(scene.spot_pos + scene.spot_vel * time, extent)
  spot_x, spot_y = np.exp(-(xs - spot[0]) ** 2 / 0.08), np.exp(-(ys - spot[1]) ** 2 / 0.08)
  light_hxw = (gain + scene.spot_strength * np.outer(spot_y, spot_x)).astype(np.float32)
  image *= light_hxw[..., None]
  return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


class ProceduralSource:
  """Endless seeded procedural scenes: example `index` is scene `index` of seed `seed`."""

  def __init__(self, *, height: int, width: int, num_frames: int, seed: int = 0,
               length: int = NOMINAL_LENGTH):
    _check_geometry(height, width, num_frames)
    self.height, self.width, self.num_frames, self.seed = height, width, num_frames, seed
    self._length = length
    self.skipped = 0

  def __len__(self) -> int:
    return self._length

  def scene(self, index: int) -> Scene:
    return sample_scene(example_rng(self.seed, index))

  def __getitem__(self, index: int) -> np.ndarray:
    scene = self.scene(index)
    return np.stack([render_scene(scene, t, self.height, self.width)
                     for t in range(self.num_frames)])

  def stream(self, index: int = 0, start: int = 0) -> Iterator[np.ndarray]:
    """Scene `index` frame by frame from frame `start`, forever."""
    scene = self.scene(index)
    t = start
    while True:
      yield render_scene(scene, t, self.height, self.width)
      t += 1
