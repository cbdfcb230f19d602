"""Live prompt control: stdin lines and OSC messages take effect on the next frame; each prompt
is matched to its nearest known effect (logged, in the stats, weak ones warned about)."""

import io as std_io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lsd_jax.stream import control, engine, runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def test_read_lines_makes_one_prompt_per_line():
  live = control.LiveControl()
  control.read_lines(std_io.StringIO("thermal camera\n\n  sepia  \r\n"), live)
  assert [(c.kind, c.value, c.origin) for c in live.drain()] == [
      ("prompt", "thermal camera", "stdin"), ("prompt", "", "stdin"), ("prompt", "sepia", "stdin")]
  assert live.drain() == []


def test_commands_are_validated():
  for kind, value in (("transition", -1), ("transition", 5000), ("transition", "3"),
                      ("seed", 2**40), ("seed", True), ("prompt", 5), ("volume", 1)):
    with pytest.raises(ValueError):
      control.validate(kind, value, "osc")


def _free_udp_port():
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_osc_messages_become_commands():
  pytest.importorskip("pythonosc")
  from pythonosc import udp_client

  live = control.LiveControl()
  port = _free_udp_port()
  osc = control.OscServer(live, "127.0.0.1", port)
  try:
    c = udp_client.SimpleUDPClient("127.0.0.1", port)
    c.send_message("/lsd/prompt", "pencil sketch")
    c.send_message("/lsd/transition", 8)
    c.send_message("/lsd/seed", 7.0)  # Max sends floats
    c.send_message("/lsd/transition", -3)  # refused, logged
    c.send_message("/lsd/nothing", 1)
    got = []
    for _ in range(100):
      got += live.drain()
      if len(got) >= 3:
        break
      time.sleep(0.02)
    time.sleep(0.1)
    got += live.drain()
  finally:
    osc.close()
  assert [(g.kind, g.value) for g in got] == [("prompt", "pencil sketch"), ("transition", 8),
                                              ("seed", 7)]


def test_osc_port_in_use_is_a_clear_error():
  pytest.importorskip("pythonosc")
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("127.0.0.1", 0))
    with pytest.raises(RuntimeError, match=f"cannot listen for OSC on 127.0.0.1:{s.getsockname()[1]}"):
      control.OscServer(control.LiveControl(), "127.0.0.1", s.getsockname()[1])


class ListSource:
  live, corrupt, fps, name = False, 0, 25.0, "list"

  def __init__(self, frames):
    self.frames, self.num_frames = frames, len(frames)

  def __iter__(self):
    return iter(self.frames)


def test_live_commands_apply_before_the_next_frame(model, monkeypatch):
  """A seed command at frame n restarts the stream: the frames after it equal a fresh stream of
  that seed; prompt and transition commands land in the records at the frame they took effect."""
  frames = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(8)]
  live = control.LiveControl()
  session = engine.StreamSession(model, seed=0)
  outs = []
  opts = runner.StreamOptions(source="list", transition_frames=0)
  prompts = runner._Prompts(session, opts, [], live)  # pylint: disable=protected-access
  for n, f in enumerate(frames):
    if n == 3:
      live.put("transition", 2, "osc")
      live.put("prompt", "sepia", "osc")
      live.put("seed", 11, "osc")
    prompts.before_frame(n)
    outs.append(session(f))
  prompts.finish()
  fresh = engine.StreamSession(model, seed=11, prompt="sepia")  # a reset ends a transition
  for n in range(3, 8):
    np.testing.assert_array_equal(outs[n], fresh(frames[n]))
  unseeded = engine.StreamSession(model, seed=0, prompt="sepia")  # control: the seed matters
  assert not np.array_equal(unseeded(frames[3]), outs[3])
  assert [(r["frame"], r["prompt"], r["origin"]) for r in prompts.records] == [
      (0, "", "flag"), (3, "sepia", "osc")]
  assert prompts.records[1]["effect"]["name"]  # matched (with the fake encoder: any name)
  assert prompts.seeds == [{"frame": 3, "seed": 11}]


def test_stdin_prompt_takes_effect_and_is_matched_in_the_stats(tmp_path, tiny_checkpoint):
  stats = tmp_path / "s.json"
  err = tmp_path / "err.txt"
  with open(err, "w") as f:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lsd_jax.stream.cli", "--source=procedural", "--noprogress",
         f"--stats={stats}", f"--model_dir={tiny_checkpoint}", "--prompt=underwater scene"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=f, text=True, cwd=REPO, env=ENV)
  try:
    def wait(text):
      for _ in range(1200):
        if text in err.read_text():
          return
        assert proc.poll() is None, err.read_text()[-3000:]
        time.sleep(0.05)
      raise AssertionError(err.read_text()[-3000:])

    wait("first frame out")
    proc.stdin.write("thermal camera\nturn me into a cat\n")
    proc.stdin.flush()
    wait("'turn me into a cat': nearest known effect")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
  finally:
    if proc.poll() is None:
      proc.kill()
  s = json.loads(stats.read_text())
  by_text = {p["prompt"]: p for p in s["prompts"]}
  assert by_text["thermal camera"]["origin"] == "stdin" and by_text["thermal camera"]["frame"] > 0
  assert by_text["thermal camera"]["effect"] == {"name": "thermal", "score": 1.0, "weak": False}
  assert by_text["turn me into a cat"]["effect"]["weak"]
  assert by_text["underwater scene"]["origin"] == "flag"
  text = err.read_text()
  assert "nearest known effect thermal (score 1.00)" in text and "a weak match" in text
