"""lsd-stream end to end, sources and sinks, and bad inputs (truncated files, schedules)."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from lsd_jax.datasets import video
from lsd_jax.stream import io, runner
from tests.stream.conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNNY = os.path.join(REPO, "data", "samples", "bigbuckbunny_256.mp4")
STATS_FIELDS = {"frames", "dropped", "fps", "latency_ms", "stages_ms", "model", "device"}


def _count(path):
  return video.probe(path).num_frames


def test_cli_writes_mp4_and_stats(tmp_path, tiny_checkpoint):
  out, stats = tmp_path / "new" / "demo.mp4", tmp_path / "new" / "stats.json"
  r = subprocess.run(
      [sys.executable, "-m", "lsd_jax.stream.cli", f"--source={BUNNY}", "--prompt=pencil sketch",
       "--side_by_side", f"--output={out}", f"--stats={stats}", "--frames=12",
       f"--checkpoint={tiny_checkpoint}", "--noprogress"],
      capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert _count(out) == 12
  info = video.probe(out)
  assert (info.width, info.height) == (2 * TINY.width, TINY.height)  # input | output
  s = json.loads(stats.read_text())
  assert STATS_FIELDS <= set(s)
  assert s["frames"] == 12 and s["dropped"] == 0 and s["fps"] > 0
  assert set(s["latency_ms"]) >= {"p50", "p95", "p99", "max"}
  assert set(s["stages_ms"]) >= {"read", "encode", "denoise", "decode", "write"}
  assert s["stages_ms"]["device"]["p50"] > 0 and s["stages_ms"]["encode"] is None  # fused mode
  assert s["model"]["name"] == "tiny-test" and "random weights" in s["model"]["label"]
  assert s["device"].startswith("cpu")
  assert "random weights" in r.stdout and "latency ms" in r.stdout  # the summary table


def test_run_profile_schedule_and_folder(tmp_path, tiny_checkpoint):
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(6):
    cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((40, 90, 3), 30 * i, np.uint8))
  (folder / "004_bad.jpg").write_bytes(b"not a jpeg at all")
  sched = tmp_path / "sched.txt"
  sched.write_text("# frame\tprompt\n0\tsepia\n3\tthermal camera\n")
  res = runner.run(runner.StreamOptions(source=str(folder), model_dir=tiny_checkpoint,
                                  prompt_schedule=str(sched), profile=True, progress=False,
                                  output=str(tmp_path / "o.mp4"), stats=str(tmp_path / "s.json")))
  assert res["frames"] == 6 and res["corrupt"] == 1
  assert [p["prompt"] for p in res["prompts"]] == ["", "sepia", "thermal camera"]
  assert [p["frame"] for p in res["prompts"]] == [0, 0, 3]
  assert all(res["stages_ms"][k]["p50"] > 0 for k in ("encode", "denoise", "decode"))
  assert _count(tmp_path / "o.mp4") == 6


def test_truncated_mp4_is_read_up_to_the_damage(tmp_path, tiny_checkpoint):
  data = open(BUNNY, "rb").read()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[: len(data) // 2])
  src = io.VideoFileSource(cut)
  n = sum(1 for _ in src)
  assert 0 < n < _count(BUNNY)
  res = runner.run(runner.StreamOptions(source=str(cut), model_dir=tiny_checkpoint, progress=False,
                                  frames=5))
  assert res["frames"] == 5


def test_garbage_video_is_a_clear_cli_error(tmp_path, tiny_checkpoint):
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"\x00" * 5000)
  r = subprocess.run(
      [sys.executable, "-m", "lsd_jax.stream.cli", f"--source={bad}",
       f"--checkpoint={tiny_checkpoint}"],
      capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 1
  assert "cannot open video" in r.stderr and "Traceback" not in r.stderr


def test_schedule_formats_and_errors(tmp_path):
  j = tmp_path / "s.json"
  j.write_text(json.dumps({"10": "cartoon", "0": "sepia"}))
  assert runner.load_schedule(j) == [(0, "sepia"), (10, "cartoon")]
  j.write_text(json.dumps([{"frame": 5, "prompt": "snow"}, [2, "rain"]]))
  assert runner.load_schedule(j) == [(2, "rain"), (5, "snow")]
  t = tmp_path / "s.txt"
  t.write_text("0\tsepia\nfive\tsnow\n")
  with pytest.raises(ValueError, match=r"s.txt:2"):
    runner.load_schedule(t)


def test_sinks_and_sources_fail_clearly(tmp_path, monkeypatch):
  monkeypatch.delenv("DISPLAY", raising=False)
  monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
  with pytest.raises(io.SinkUnavailable, match="no display"):
    io.WindowSink()
  monkeypatch.setitem(sys.modules, "pyvirtualcam", None)
  with pytest.raises(io.SinkUnavailable, match=r"lsd-jax\[vcam\]"):
    io.VirtualCamSink(64, 64, 25)
  with pytest.raises(io.SourceError, match="no such file"):
    io.open_source(str(tmp_path / "missing.mp4"))
  src = io.open_source("procedural:3", height=32, width=48)
  first = next(iter(src))
  assert first.shape == (32, 48, 3) and first.dtype == np.uint8
