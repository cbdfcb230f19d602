"""Small synthetic videos, corrupt files and clip libraries for the dataset tests."""

import json
import os
import pathlib

import numpy as np
import pytest

from lsd_jax.datasets import video

NUM_FRAMES = 24
STEP = 6  # brightness added per frame; 20 + 60 + 23 * 6 < 256
FRAME_HW = (48, 64)


def ramp_frames(num_frames: int = NUM_FRAMES, hw: tuple[int, int] = FRAME_HW,
                step: int = STEP) -> list[np.ndarray]:
  """Frame i is a left-to-right ramp (dark to bright) lifted by i * step: the frame index and
  the orientation can be read back from the pixels."""
  h, w = hw
  ramp = np.linspace(0, 60, w)[None, :, None]
  return [np.broadcast_to(ramp + 20 + i * step, (h, w, 3)).astype(np.uint8)
          for i in range(num_frames)]


def write_clip(path: pathlib.Path, **kwargs) -> pathlib.Path:
  video.write_mp4(path, ramp_frames(**kwargs), fps=25, crf=10, gop=4)
  return path


class ClipFactory:
  """What tests need to make videos, as a fixture (tests do not import conftest)."""
  num_frames, step = NUM_FRAMES, STEP
  write = staticmethod(write_clip)
  add_corrupt = staticmethod(lambda folder, rng: add_corrupt_files(folder, rng))


@pytest.fixture
def clips():
  return ClipFactory()


@pytest.fixture
def good_folder(tmp_path):
  folder = tmp_path / "videos"
  (folder / "sub").mkdir(parents=True)
  write_clip(folder / "a.mp4")
  write_clip(folder / "sub" / "b.mp4", hw=(64, 80))
  return folder


def add_corrupt_files(folder: pathlib.Path, rng: np.random.Generator) -> list[pathlib.Path]:
  """A truncated mp4 (moov atom at its end lost), random bytes and an empty file."""
  whole = write_clip(folder / "whole.tmp.mp4").read_bytes()
  os.remove(folder / "whole.tmp.mp4")
  paths = [folder / "truncated.mp4", folder / "noise.mp4", folder / "empty.avi"]
  # write_mp4 moves the moov atom to the front (faststart), so cut the front to lose it.
  paths[0].write_bytes(whole[len(whole) // 2:])
  paths[1].write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
  paths[2].write_bytes(b"")
  return paths


@pytest.fixture
def library_manifest(tmp_path):
  """A manifest.json in the library's format with two train clips and one held-out clip."""
  root = tmp_path / "library"
  (root / "clips").mkdir(parents=True)
  clips = []
  for name, split, hw in [("t1", "train", (48, 64)), ("t2", "train", (64, 48)),
                          ("h1", "heldout", (48, 48))]:
    write_clip(root / "clips" / f"{name}.mp4", hw=hw)
    clips.append({"name": name, "path": f"clips/{name}.mp4", "split": split})
  (root / "manifest.json").write_text(json.dumps({"clips": clips, "photos": []}))
  return root / "manifest.json"
