"""The fault suite of lsd-stream (issue 19's table, one test per row at least), loopback only.

Each row: a clear message naming the file or value, no traceback, and where the check allows it,
before any model compiles ("compiling the step" never logged). The lsd-serve rows are in
test_server_faults.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lsd_jax.datasets import video
from lsd_jax.models import export, lsd
from lsd_jax.stream import engine, preprocess, runner
from tests.stream.conftest import TINY, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNNY = os.path.join(REPO, "data", "samples", "bigbuckbunny_256.mp4")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
COMPILING = "compiling the step"


def _cli(*args, timeout=300, stdin=subprocess.DEVNULL, wrap=None):
  cmd = [sys.executable, "-m", "lsd_jax.stream.cli", "--noprogress", *args]
  if wrap:
    cmd = wrap(cmd)
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV,
                        stdin=stdin)


def _refused_early(r, *says):
  assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
  for s in says:
    assert s in r.stderr, (s, r.stderr[-2000:])
  assert "Traceback" not in r.stderr and COMPILING not in r.stderr


def _readonly(cmd_dir):
  """Runs a command with `cmd_dir` read-only: a read-only tmpfs in a private mount namespace
  (root ignores file modes), or mode 0555 for other users."""
  if os.geteuid() != 0:
    os.chmod(cmd_dir, 0o555)
    return lambda cmd: cmd
  if not shutil.which("unshare"):
    pytest.skip("needs unshare(1) to make a read-only folder as root")
  probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
  if probe.returncode:
    pytest.skip("unshare -m is not allowed here")
  return lambda cmd: ["unshare", "-m", "sh", "-c",
                      f"mount -t tmpfs -o ro tmpfs {cmd_dir} && exec \"$@\"", "sh", *cmd]


# ---------------------------------------------------------------------------------------------
# Output paths: refused before anything loads.


def test_output_that_is_the_source_is_refused_through_links(tmp_path, tiny_checkpoint):
  src = tmp_path / "clip.mp4"
  shutil.copy(BUNNY, src)
  link = tmp_path / "link.mp4"
  link.symlink_to(src)
  before = src.read_bytes()
  for out in (src, link, tmp_path / "." / "clip.mp4"):
    with pytest.raises(runner.OptionError, match="is the source file"):
      runner.check_options(runner.StreamOptions(source=str(src), output=str(out)))
  r = _cli(f"--source={src}", f"--output={link}", f"--model_dir={tiny_checkpoint}")
  _refused_early(r, f"--output={link} is the source file", "refusing to overwrite")
  assert src.read_bytes() == before  # 125 frames stay 125 frames
  hard = tmp_path / "hard.mp4"
  os.link(src, hard)
  with pytest.raises(runner.OptionError, match="--stats=.*is the source file"):
    runner.check_options(runner.StreamOptions(source=str(src), stats=str(hard)))


def test_output_folder_or_parent_file_named_in_the_error(tmp_path):
  (tmp_path / "afile").write_text("x")
  cases = [(str(tmp_path), "is a folder"),
           (str(tmp_path / "afile" / "out.mp4"), f"{tmp_path / 'afile'} is a file, not a folder")]
  for out, says in cases:
    with pytest.raises(runner.OptionError, match="--output=") as e:
      runner.check_options(runner.StreamOptions(source="procedural", output=out))
    assert says in str(e.value) and out in str(e.value)


def test_read_only_output_and_stats_refused_before_the_model_loads(tmp_path, tiny_checkpoint):
  ro = tmp_path / "ro"
  ro.mkdir()
  wrap = _readonly(ro)
  r = _cli("--source=procedural", "--frames=3", f"--stats={ro / 's.json'}",
           f"--model_dir={tiny_checkpoint}", wrap=wrap)
  _refused_early(r, f"--stats={ro / 's.json'}", "cannot write there")
  r = _cli("--source=procedural", "--frames=3", f"--output={ro / 'sub' / 'o.mp4'}",
           f"--model_dir={tiny_checkpoint}", wrap=wrap)
  _refused_early(r, f"--output={ro / 'sub' / 'o.mp4'}", "cannot create the folder")


def test_bad_counts_are_usage_errors_before_anything_loads():
  for args, says in ((["--frames=0"], "--frames=0"), (["--steps=1000"], "--steps must be in 1..16"),
                     (["--steps=0"], "--steps must be in 1..16"),
                     (["--tau_inf=1.5"], "--tau_inf must be in [0, 1)")):
    t0 = time.perf_counter()
    r = _cli("--source=procedural", *args, timeout=60)
    assert r.returncode == 1 and says in r.stderr, (args, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and COMPILING not in r.stderr
    assert time.perf_counter() - t0 < 60
  with pytest.raises(runner.OptionError, match="--frames must be at least 1"):
    runner.check_options(runner.StreamOptions(source="procedural", frames=0))


def test_steps_bound_in_the_engine():
  with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.16"):
    engine.StreamModel(TINY, {}, None, steps=1000)


# ---------------------------------------------------------------------------------------------
# Ctrl-C.


def _wait_for(proc, path, text, timeout=120):
  end = time.time() + timeout
  while time.time() < end:
    if text in path.read_text(errors="replace"):
      return
    assert proc.poll() is None, path.read_text()[-3000:]
    time.sleep(0.05)
  raise AssertionError(f"timed out waiting for {text!r}: {path.read_text()[-2000:]}")


def _start(tmp_path, *args):
  err = tmp_path / "err.txt"
  with open(err, "w") as f, open(tmp_path / "out.txt", "w") as o:
    proc = subprocess.Popen([sys.executable, "-m", "lsd_jax.stream.cli", "--noprogress", *args],
                            stdout=o, stderr=f, stdin=subprocess.DEVNULL, cwd=REPO, env=ENV)
  return proc, err


def test_sigint_while_writing_keeps_frames_stats_and_summary(tmp_path, tiny_checkpoint):
  out, stats = tmp_path / "o.mp4", tmp_path / "s.json"
  proc, err = _start(tmp_path, "--source=procedural", f"--output={out}", f"--stats={stats}",
                     f"--model_dir={tiny_checkpoint}")
  _wait_for(proc, err, "first frame out")
  time.sleep(1.0)
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=60) == 130
  s = json.loads(stats.read_text())
  assert s["interrupted"] and s["frames"] > 0 and s["latency_ms"]["p50"] > 0
  assert video.probe(str(out)).num_frames == s["frames"]
  summary = (tmp_path / "out.txt").read_text()
  assert f"{s['frames']} (interrupted)" in summary and "Traceback" not in err.read_text()


def test_sigint_during_warmup_is_a_message_not_a_traceback(tmp_path, tiny_checkpoint):
  stats = tmp_path / "s.json"
  proc, err = _start(tmp_path, "--source=procedural", f"--stats={stats}",
                     f"--output={tmp_path / 'o.mp4'}", f"--model_dir={tiny_checkpoint}")
  _wait_for(proc, err, COMPILING)
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=60) == 130
  text = err.read_text()
  assert "Traceback" not in text and "KeyboardInterrupt" not in text
  assert "interrupted" in text and "Ctrl-C again" in text
  assert json.loads(stats.read_text())["frames"] == 0
  assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------------------------------------------------
# The model: NaN weights, NaN output.


def test_nan_weights_are_refused_at_load(tmp_path):
  params = lsd.random_params(0, TINY)
  params["denoiser"]["prompt_in"]["Dense_0"]["kernel"][0, 0] = np.nan
  export.save(str(tmp_path / "m"), TINY, params, dtype="float32")
  with pytest.raises(export.CheckpointError, match="hold NaN or Inf.*prompt_in/Dense_0/kernel"):
    export.load(str(tmp_path / "m"))
  r = _cli("--source=procedural", "--frames=2", f"--model_dir={tmp_path / 'm'}")
  _refused_early(r, "params.safetensors: 1 of", "NaN or Inf")


def test_nan_output_stops_the_stream_with_a_message(tmp_path):
  params = lsd.random_params(0, TINY)
  params["denoiser"]["prompt_in"]["Dense_0"]["kernel"][0, 0] = np.nan  # past the load check
  m = engine.StreamModel(TINY, params, tiny_model().info, text_encoder=tiny_model()._text_encoder)
  session = engine.StreamSession(m, prompt="")
  session.set_prompt("sepia")
  with pytest.raises(engine.NonFiniteOutput, match="NaN or Inf at frame 1"):
    session(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("profile", [False, True])
def test_nan_output_stops_the_timed_stream_too(profile):
  """The fused step's own finite flag (fetched with the frame) and the profile mode's separate
  check both stop the stream."""
  params = lsd.random_params(0, TINY)
  params["denoiser"]["prompt_in"]["Dense_0"]["kernel"][0, 0] = np.nan
  m = engine.StreamModel(TINY, params, tiny_model().info, text_encoder=tiny_model()._text_encoder)
  session = engine.StreamSession(m, prompt="sepia")
  with pytest.raises(engine.NonFiniteOutput, match="NaN or Inf at frame 1"):
    session.process_timed(np.zeros((64, 64, 3), np.uint8), profile=profile)


def test_overflowing_weights_stop_the_cli_with_the_frames_counted(tmp_path):
  """Finite weights whose output overflows to Inf: the stream stops with a message and exit 1,
  and the stats say how many frames came out before."""
  params = lsd.random_params(0, TINY)
  for leaf in ("kernel", "bias"):
    params["denoiser"]["prompt_in"]["Dense_0"][leaf] = (
        params["denoiser"]["prompt_in"]["Dense_0"][leaf] * np.float32(1e38))
  export.save(str(tmp_path / "m"), TINY, params, dtype="float32")
  stats = tmp_path / "s.json"
  r = _cli("--source=procedural", "--frames=5", "--prompt=thermal camera", f"--stats={stats}",
           f"--model_dir={tmp_path / 'm'}")
  assert r.returncode == 1, r.stderr[-2000:]
  assert "the engine failed after 0 frames" in r.stderr and "NaN or Inf" in r.stderr
  assert "Traceback" not in r.stderr
  s = json.loads(stats.read_text())
  assert s["failed"] == "engine" and s["frames"] == 0


# ---------------------------------------------------------------------------------------------
# Sources.


def test_truncated_mp4_is_reported_as_truncated(tmp_path, tiny_checkpoint):
  data = open(BUNNY, "rb").read()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[: len(data) * 3 // 10])
  res = runner.run(runner.StreamOptions(source=str(cut), model_dir=tiny_checkpoint,
                                        progress=False, output=str(tmp_path / "o.mp4")))
  full = video.probe(BUNNY).num_frames
  assert res["truncated"] and res["frames_expected"] == full and 0 < res["frames"] < full
  assert "source truncated" in runner.summary_table(res)
  whole = runner.run(runner.StreamOptions(source=BUNNY, model_dir=tiny_checkpoint,
                                          progress=False, frames=3))
  assert not whole["truncated"]  # stopped by --frames: not the source's fault


def test_frames_zero_writes_nothing_and_names_no_output(tmp_path):
  with pytest.raises(runner.OptionError):
    runner.run(runner.StreamOptions(source="procedural", frames=0,
                                    output=str(tmp_path / "o.mp4")))
  assert not (tmp_path / "o.mp4").exists()


# ---------------------------------------------------------------------------------------------
# The Python API.


def test_set_prompt_checks_its_type(model):
  session = engine.StreamSession(model)
  for bad in (None, 5, b"sepia", ["sepia"]):
    with pytest.raises(TypeError, match="the prompt must be a str"):
      session.set_prompt(bad)
  with pytest.raises(TypeError, match="transition_frames must be an int"):
    session.set_prompt("sepia", 2.5)
  with pytest.raises(TypeError):
    engine.StreamSession(model, prompt=None)
  session.set_prompt("sepia", 3)  # still usable


def test_float_frames_in_0_255_are_not_clipped_to_white(monkeypatch):
  warnings = []
  monkeypatch.setattr(preprocess.logging, "warning", lambda *a: warnings.append(a))
  monkeypatch.setattr(preprocess, "_warned", type(preprocess._warned)())
  x = np.tile(np.linspace(0, 255, 64, dtype=np.float32)[None, :, None], (64, 1, 3))
  y = preprocess.prepare_frame(x, 64, 64)
  assert abs(int(y[0, 0, 0]) - 0) <= 1 and abs(int(y[0, -1, 0]) - 255) <= 1
  assert abs(float(y.mean()) - 127.5) < 2  # not near white
  preprocess.prepare_frame(x * 0.5, 64, 64)
  assert len(warnings) == 1  # once
  unit = preprocess.prepare_frame(x / 255.0, 64, 64)  # [0, 1] frames as before
  np.testing.assert_allclose(unit.astype(int), y.astype(int), atol=1)
