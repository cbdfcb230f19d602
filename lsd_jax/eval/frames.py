"""Frame sources for evaluation streams, addressed by absolute frame index so that a stream can
resume part-way: `source(lo, n)` returns frames lo .. lo + n - 1 as uint8 `frames_TxHxWx3`.

- `ClipFrames`: an in-memory clip (held-out clips, a notebook's sample clip).
- `ProceduralFrames`: an endless procedural scene (`sources.render_scene`, a pure function of
  the scene and t), rendered by a pool of worker processes when `workers` > 0 (one 256x256 frame
  costs ~2.5 ms of one CPU core: 100,000 frames are ~4 minutes on one core, seconds on 14).
- `Prefetcher`: asks a source for the next chunk on a background thread while the device works
  on the current one.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Callable

import numpy as np

from lsd_jax.datasets import sources

FrameSource = Callable[[int, int], np.ndarray]


class ClipFrames:
  """Frames of an in-memory clip (uint8 TxHxWx3); asking past its end is an error."""

  def __init__(self, clip_TxHxWx3: np.ndarray):
    self.clip = np.asarray(clip_TxHxWx3)

  def __call__(self, lo: int, n: int) -> np.ndarray:
    if lo < 0 or lo + n > len(self.clip):
      raise IndexError(f"frames {lo}..{lo + n - 1} of a {len(self.clip)}-frame clip")
    return self.clip[lo:lo + n]

  def close(self) -> None:
    pass


def _render_range(scene: sources.Scene, lo: int, n: int, height: int, width: int) -> np.ndarray:
  return np.stack([sources.render_scene(scene, t, height, width) for t in range(lo, lo + n)])


class ProceduralFrames:
  """Scene `scene_index` of `ProceduralSource(seed=seed)`, frame t = the stream's frame t."""

  def __init__(self, *, height: int, width: int, seed: int = 0, scene_index: int = 0, workers: int = 0):
    src = sources.ProceduralSource(height=height, width=width, num_frames=1, seed=seed)
    self.scene, self.height, self.width = src.scene(scene_index), height, width
    self.workers = workers
    # spawn, not fork: the parent runs JAX's threads, which a forked child must not inherit.
    self._pool = (concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                  if workers > 0 else None)

  def __call__(self, lo: int, n: int) -> np.ndarray:
    if self._pool is None:
      return _render_range(self.scene, lo, n, self.height, self.width)
    bounds = np.linspace(lo, lo + n, min(self.workers, n) + 1).round().astype(int)
    parts = [self._pool.submit(_render_range, self.scene, int(a), int(b - a), self.height, self.width)
             for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return np.concatenate([p.result() for p in parts])

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
      self._pool = None


class Prefetcher:
  """`get(lo, n)` returns source(lo, n), computed ahead when it was `ahead(lo, n)`-requested."""

  def __init__(self, source: FrameSource):
    self.source = source
    self._thread = concurrent.futures.ThreadPoolExecutor(1)
    self._pending: tuple[tuple[int, int], concurrent.futures.Future] | None = None

  def ahead(self, lo: int, n: int) -> None:
    if n > 0 and (self._pending is None or self._pending[0] != (lo, n)):
      self._pending = ((lo, n), self._thread.submit(self.source, lo, n))

  def get(self, lo: int, n: int) -> np.ndarray:
    if self._pending is not None and self._pending[0] == (lo, n):
      out = self._pending[1].result()
      self._pending = None
      return out
    return self.source(lo, n)

  def close(self) -> None:
    self._thread.shutdown(cancel_futures=True)
