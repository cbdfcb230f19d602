"""End to end in headless Chromium with a fake camera: WebRTC both ways, the WebSocket fallback,
a reconnect after a server restart, and WebRTC's fps against the WebSocket's.

Needs Debian's chromium + chromium-driver (scripts/setup.sh --browser) and selenium. The page
and server run inside tests/stream/browser_probe.py, in a network namespace of their own where
`unshare -n` is allowed (root), so WebRTC traffic cannot leave loopback.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Y4M = os.path.join(REPO, "data", "samples", "box_320x240.y4m")  # 10 fps
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = os.path.join(REPO, "test-artifacts")

pytestmark = pytest.mark.browser


def _isolated(cmd):
  """`cmd` in a fresh network namespace with only loopback, where that is allowed."""
  if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
      return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
  return cmd


def _probe(tmp_path, model_dir, camera, phases, seconds=10.0, screenshot=None, extra=()):
  if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver (scripts/setup.sh --browser)")
  pytest.importorskip("selenium.webdriver")
  work = tmp_path / "probe"
  work.mkdir(exist_ok=True)
  cmd = [sys.executable, "-m", "tests.stream.browser_probe", f"--model_dir={model_dir}",
         f"--camera={camera}", f"--phases={phases}", f"--seconds={seconds}", f"--workdir={work}"]
  if screenshot:
    cmd.append(f"--screenshot={screenshot}")
  cmd += list(extra)
  r = subprocess.run(_isolated(cmd), capture_output=True, text=True, timeout=420, cwd=REPO,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  log = (work / "serve.log").read_text() if (work / "serve.log").exists() else ""
  assert r.returncode == 0, r.stderr[-3000:] + "\n--- lsd-serve ---\n" + log[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1]), log


@pytest.fixture
def prompt_sensitive_checkpoint(tmp_path):
  """The random tiny model with its prompt projection scaled up 30x. Random weights barely
  listen to the prompt (a ~1 grey-level change against ~60 from the per-frame noise); this
  makes the prompt's path through page -> transport -> session -> output visible in pixels."""
  from lsd_jax.models import export, lsd
  from tests.stream.conftest import TINY

  params = lsd.random_params(0, TINY)
  params["denoiser"]["prompt_in"]["Dense_0"]["kernel"] *= 30.0
  export.save(str(tmp_path / "ckpt"), TINY, params, dtype="float32",
              metadata={"name": "tiny-prompt-x30", "random_weights": True})
  return str(tmp_path / "ckpt")


def _flowed(run, seconds=10.0):
  assert run["seconds"] >= seconds and run["frames"] > 0, run
  assert all(n > 0 for n in run["frames_per_2s"]), run  # no stall in any 2 s window


def test_webrtc_both_ways_prompt_websocket_fallback_and_reconnect(tmp_path,
                                                                  prompt_sensitive_checkpoint):
  """One server and one browser for all of it (a start of each costs seconds): WebRTC for 10 s,
  a prompt change over its data channel, then the WebSocket page, and its reconnect after the
  server restarts on the same port."""
  os.makedirs(ARTIFACTS, exist_ok=True)
  res, log = _probe(tmp_path, prompt_sensitive_checkpoint, Y4M, "webrtc,prompt,websocket,reconnect",
                    extra=["--websocket_seconds=4"],
                    screenshot=os.path.join(ARTIFACTS, "browser_webrtc.png"))
  rtc = res["webrtc"]
  assert rtc["transport"] == "webrtc" and rtc["status"] == "streaming", rtc
  _flowed(rtc)
  assert rtc["server_fps"] > 0 and rtc["server_p50_ms"] > 0  # the server's own timestamps
  assert rtc["in_out_diff"] > 10, rtc  # the output is the model's, not the camera echoed
  p = res["prompt"]
  assert "thermal" in p["effect"]
  assert p["change"] > max(3 * p["drift"], 2.0), p
  ws = res["websocket"]
  assert ws["transport"] == "websocket", ws
  _flowed(ws, seconds=4.0)
  assert ws["in_out_diff"] > 10, ws
  rc = res["reconnect"]
  assert "reconnecting in" in rc["status_while_down"] and rc["frames_after"] >= 3, rc
  assert "Traceback" not in log


@pytest.mark.slow
def test_webrtc_fps_beats_the_websocket_on_this_machine(tmp_path):
  """A 256x256 tiny model and a 60 fps camera: the model, not the camera, sets the pace. Over
  the WebSocket a frame is sent only when the last result is back (fps = 1 / round trip);
  WebRTC pipelines capture, transport and the model. Alternating runs, the mean of each."""
  from lsd_jax.models import export, lsd
  from lsd_jax.stream import engine

  cfg = lsd.LSDConfig(size="tiny", height=256, width=256)
  export.save(str(tmp_path / "m"), cfg, lsd.random_params(0, cfg), dtype="float32",
              metadata={"name": "tiny256", "random_weights": True})
  cam = tmp_path / "cam60.y4m"
  data = open(Y4M, "rb").read()
  cam.write_bytes(data.replace(b"F10:1", b"F60:1", 1))
  res, _ = _probe(tmp_path, str(tmp_path / "m"), str(cam), "webrtc,websocket,webrtc,websocket")
  os.makedirs(ARTIFACTS, exist_ok=True)
  with open(os.path.join(ARTIFACTS, "webrtc_vs_websocket.json"), "w") as f:
    json.dump(res, f, indent=2)
  rtc = [r["page_fps"] for k, r in res.items() if k.startswith("webrtc")]
  ws = [r["page_fps"] for k, r in res.items() if k.startswith("websocket")]
  assert sum(rtc) / len(rtc) > sum(ws) / len(ws), res
