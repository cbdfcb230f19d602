"""Clip sources: shapes, determinism, augmentation, smooth photo paths, corrupt files."""

import logging
import pathlib

import numpy as np
import pytest

from lsd_jax.datasets import sources, video

SAMPLES = pathlib.Path(__file__).parents[2] / "data" / "samples"


def test_iter_frames_and_read_frames_agree(tmp_path, clips):
  path = clips.write(tmp_path / "c.mp4")
  frames = np.stack(list(video.iter_frames(path)))
  assert frames.shape == (clips.num_frames, 48, 64, 3) and frames.dtype == np.uint8
  # Brightness encodes the frame index (+step per frame), so the order must come back.
  np.testing.assert_allclose(np.diff(frames.mean(axis=(1, 2, 3))), clips.step, atol=1.5)
  for start, stride in [(0, 1), (5, 3), (13, 2)]:  # 13 is past a keyframe: a real seek
    clip = video.read_frames(path, start, 4, stride)
    np.testing.assert_array_equal(clip, frames[start:start + 4 * stride:stride])
  with pytest.raises(video.VideoReadError):
    video.read_frames(path, clips.num_frames - 2, 4)


def test_reused_reader_reads_any_window_in_any_order(tmp_path, clips):
  """One open reader, as the clip source keeps them: every read, frame 0 after a later window
  included, gives the same frames as a fresh decode of the whole file."""
  path = clips.write(tmp_path / "c.mp4")
  frames = np.stack(list(video.iter_frames(path)))
  reader = video.VideoReader(path)
  try:
    for start, stride in [(13, 2), (0, 1), (20, 1), (0, 3), (0, 1), (5, 3), (clips.num_frames - 4, 1), (0, 2)]:
      np.testing.assert_array_equal(reader.read(start, 4, stride), frames[start:start + 4 * stride:stride])
  finally:
    reader.close()


@pytest.mark.parametrize("hw", [(32, 48), (40, 24)])
def test_clip_source_shape_dtype_any_resolution(good_folder, hw):
  src = sources.VideoClipSource.from_folder(good_folder, height=hw[0], width=hw[1],
                                            num_frames=5)
  assert len(src.clips) == 2 and src.skipped == 0
  for i in range(6):
    clip = src[i]
    assert clip.shape == (5, *hw, 3) and clip.dtype == np.uint8


def test_clip_source_deterministic_given_seed_and_index(good_folder):
  make = lambda seed: sources.VideoClipSource.from_folder(
      good_folder, height=32, width=32, num_frames=4, seed=seed)
  a, b, c = make(0), make(0), make(1)
  for i in [0, 7, 10**9]:
    np.testing.assert_array_equal(a[i], b[i])
  assert any(not np.array_equal(a[i], a[i + 1]) for i in range(5))
  assert any(not np.array_equal(a[i], c[i]) for i in range(5))


def test_clip_source_temporal_stride_and_flip(good_folder, clips):
  src = sources.VideoClipSource.from_folder(good_folder, height=16, width=16, num_frames=4,
                                            strides=(3,), min_crop_scale=0.3)
  orientations = set()
  for i in range(24):
    clip = src[i].astype(np.float64)
    # +step brightness per source frame and stride 3: +3 steps per output frame.
    np.testing.assert_allclose(np.diff(clip.mean(axis=(1, 2, 3))), 3 * clips.step, atol=2.0)
    left, right = clip[..., :4, :].mean(), clip[..., -4:, :].mean()
    orientations.add(bool(left < right))
  assert orientations == {True, False}  # both the original ramp and its mirror occur


def test_corrupt_files_are_skipped_counted_and_warned(good_folder, clips, caplog):
  clips.add_corrupt(good_folder, np.random.default_rng(0))
  with caplog.at_level(logging.WARNING):
    src = sources.VideoClipSource.from_folder(good_folder, height=32, width=32, num_frames=4)
  assert sorted(pathlib.Path(c.path).name for c in src.clips) == ["a.mp4", "b.mp4"]
  assert src.stats["unreadable"] == 3 and src.skipped == 3
  warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  for name in ["truncated.mp4", "noise.mp4", "empty.avi"]:
    assert name in warned
  assert src[0].shape == (4, 32, 32, 3)


def test_too_short_clips_are_skipped(good_folder, clips):
  clips.write(good_folder / "short.mp4", num_frames=3)
  src = sources.VideoClipSource.from_folder(good_folder, height=32, width=32, num_frames=4)
  assert len(src.clips) == 2 and src.stats["too_short"] == 1


def test_all_corrupt_folder_raises_naming_the_folder(tmp_path, clips):
  folder = tmp_path / "bad_videos"
  folder.mkdir()
  clips.add_corrupt(folder, np.random.default_rng(1))
  with pytest.raises(sources.NoReadableClipError, match="bad_videos"):
    sources.VideoClipSource.from_folder(folder, height=32, width=32, num_frames=4)
  with pytest.raises(sources.NoReadableClipError, match="does_not_exist"):
    sources.VideoClipSource.from_folder(tmp_path / "does_not_exist", height=32, width=32,
                                        num_frames=4)


def test_file_truncated_after_its_header_is_replaced_and_counted(tmp_path, clips, caplog):
  folder = tmp_path / "v"
  folder.mkdir()
  clips.write(folder / "good.mp4")
  whole = clips.write(folder / "cut.mp4", num_frames=200).read_bytes()
  (folder / "cut.mp4").write_bytes(whole[:len(whole) // 3])  # header intact, frames lost
  src = sources.VideoClipSource.from_folder(folder, height=16, width=16, num_frames=4)
  assert len(src.clips) == 2  # the cut file probes fine
  with caplog.at_level(logging.WARNING):
    clips = [src[i] for i in range(12)]
  assert all(c.shape == (4, 16, 16, 3) for c in clips)
  assert src.stats["read_failures"] > 0
  assert any("cut.mp4" in r.getMessage() for r in caplog.records)


def test_from_manifest_reads_only_its_split(library_manifest):
  train = sources.VideoClipSource.from_manifest(library_manifest, "train", height=16,
                                                width=16, num_frames=4)
  held = sources.VideoClipSource.from_manifest(library_manifest, "heldout", height=16,
                                               width=16, num_frames=4)
  assert sorted(pathlib.Path(c.path).stem for c in train.clips) == ["t1", "t2"]
  assert [pathlib.Path(c.path).stem for c in held.clips] == ["h1"]
  with pytest.raises(sources.NoReadableClipError, match="prepare_library"):
    sources.VideoClipSource.from_manifest(library_manifest.parent / "nope.json", height=16,
                                          width=16, num_frames=4)


def _textured_photo(seed, hw=(200, 300)):
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (hw[0] // 10, hw[1] // 10, 3), dtype=np.uint8)
  return sources.resize_to(coarse, *hw)


def _mean_abs(a, b):
  return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()


def test_photo_camera_paths_are_smooth_and_move():
  src = sources.PhotoSource([_textured_photo(s) for s in range(3)], height=48, width=80,
                            num_frames=12)
  step_diffs, other_diffs = [], []
  for i in range(8):
    clip = src[i]
    assert clip.shape == (12, 48, 80, 3) and clip.dtype == np.uint8
    step_diffs.append(max(_mean_abs(a, b) for a, b in zip(clip[:-1], clip[1:])))
    other_diffs.append(_mean_abs(clip[0], src[i + 100][0]))
    assert _mean_abs(clip[0], clip[-1]) > 0.5  # the camera moves
  # Each step changes the picture far less than a cut to another view would.
  assert max(step_diffs) < 0.35 * np.mean(other_diffs)


def test_photo_source_deterministic_and_skimage_photos():
  images = [_textured_photo(0)]
  a = sources.PhotoSource(images, height=24, width=40, num_frames=3, seed=4)
  b = sources.PhotoSource(images, height=24, width=40, num_frames=3, seed=4)
  np.testing.assert_array_equal(a[123], b[123])
  assert not np.array_equal(a[123], a[124])
  held = sources.PhotoSource.from_skimage("heldout", height=24, width=40, num_frames=2)
  assert held.names == [n for n, s in sources.SKIMAGE_PHOTOS.items() if s == "heldout"]
  assert held[0].shape == (2, 24, 40, 3)


def test_procedural_deterministic_endless_and_streamable():
  a = sources.ProceduralSource(height=40, width=72, num_frames=5, seed=3)
  b = sources.ProceduralSource(height=40, width=72, num_frames=5, seed=3)
  for i in [0, 17, 10**15]:
    clip = a[i]
    assert clip.shape == (5, 40, 72, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, b[i])
  assert not np.array_equal(a[0], a[1])
  assert not np.array_equal(a[0], sources.ProceduralSource(height=40, width=72, num_frames=5,
                                                           seed=4)[0])
  stream = a.stream(17)
  np.testing.assert_array_equal(np.stack([next(stream) for _ in range(5)]), a[17])
  late = [next(a.stream(17, start=100_000 + t)) for t in range(2)]
  assert late[0].shape == (40, 72, 3) and not np.array_equal(late[0], late[1])


def test_committed_samples():
  mp4, y4m = SAMPLES / "bigbuckbunny_256.mp4", SAMPLES / "box_320x240.y4m"
  assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 3 * 2**20
  info = video.probe(mp4)
  assert (info.width, info.height) == (256, 256) and info.num_frames / info.fps >= 4.9
  frames = list(video.iter_frames(y4m))
  assert len(frames) >= 20 and frames[0].shape == (240, 320, 3)
  assert frames[0].std() > 10  # real content, not a blank frame


def test_decoded_cache_gives_the_same_examples(good_folder, tmp_path):
  kw = dict(height=32, width=48, num_frames=5, seed=3)
  plain = sources.VideoClipSource.from_folder(good_folder, **kw)
  cached = sources.VideoClipSource.from_folder(good_folder, decoded_cache=tmp_path / "cache", **kw)
  files = sorted((tmp_path / "cache").glob("*.npy"))
  assert len(files) == 2 and not list((tmp_path / "cache").glob("*.tmp*"))
  for i in range(12):
    np.testing.assert_array_equal(cached[i], plain[i])
  # A second source reuses the files (no new decode), and pickling (grain workers) keeps working.
  import pickle
  again = pickle.loads(pickle.dumps(sources.VideoClipSource.from_folder(good_folder, decoded_cache=tmp_path / "cache", **kw)))
  assert sorted((tmp_path / "cache").glob("*.npy")) == files
  np.testing.assert_array_equal(again[7], plain[7])


def test_decoded_cache_skips_files_that_do_not_decode(good_folder, tmp_path, clips, caplog):
  from tests.datasets.conftest import add_corrupt_files
  add_corrupt_files(good_folder, np.random.default_rng(0))
  with caplog.at_level(logging.WARNING):
    src = sources.VideoClipSource.from_folder(good_folder, height=32, width=48, num_frames=5,
                                              decoded_cache=tmp_path / "cache")
  assert len(src.clips) == 2 and src.skipped == 3
  assert src[0].shape == (5, 32, 48, 3)


def test_procedural_streams_need_no_pyav():
  """Without PyAV, the procedural source and the stream evaluation import and run; a video read
  fails with a message that names the missing package."""
  import subprocess
  import sys
  code = (
      "import sys; sys.modules['av'] = None\n"
      "from lsd_jax.datasets import sources, video\n"
      "import lsd_jax.eval.protocol, lsd_jax.eval.runner\n"
      "clip = sources.ProceduralSource(height=16, width=16, num_frames=2)[0]\n"
      "assert clip.shape == (2, 16, 16, 3)\n"
      "try:\n"
      "  video.probe('x.mp4')\n"
      "except ImportError as e:\n"
      "  assert 'PyAV' in str(e), e\n"
      "  print('ok')\n")
  root = pathlib.Path(__file__).parents[2]
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root)})
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
