r"""Drives lsd-serve from headless Chromium with a fake camera; prints one JSON line of results.

  python -m tests.stream.browser_probe --model_dir=DIR --camera=clip.y4m --phases=webrtc,prompt,websocket

The browser tests run it inside a fresh network namespace (`unshare -n`, only a loopback
interface) where they can, so that WebRTC's candidates, checks and media cannot leave the host;
lsd-serve itself keeps ICE on loopback when bound there, and Chromium is told to offer loopback
candidates (--allow-loopback-in-peer-connection) and not to publish mDNS names.

Phases (each on a fresh page load, same server and browser):
  <transport>          stream for --seconds; page fps (frames drawn), the server's fps, drops,
                       whether frames kept flowing in every 2 s window, and how far the output
                       is from the input (mean absolute difference of the two, 0..255)
  prompt               (on the WebRTC page) output means over 20 frames, again (the control),
                       and after a prompt change
  reconnect            (WebSocket page) the server restarts on the same port; the page reconnects
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

CANVAS_MEAN_JS = """
const c = document.getElementById(arguments[0]);
if (!c || !c.width) return null;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const s = [0, 0, 0];
for (let i = 0; i < d.length; i += 4) { for (let k = 0; k < 3; k++) s[k] += d[i + k]; }
return s.map((v) => v / (d.length / 4));
"""
# Output vs input: the camera frame drawn at the output's size (centre crop, as the page sends).
IN_OUT_DIFF_JS = """
const out = document.getElementById('output'), cam = document.getElementById('camera');
if (!out.width || !cam.videoWidth) return null;
const c = document.createElement('canvas'); c.width = out.width; c.height = out.height;
const vw = cam.videoWidth, vh = cam.videoHeight, a = out.width / out.height;
let sw = vw, sh = vh; if (vw / vh > a) sw = Math.round(vh * a); else sh = Math.round(vw / a);
c.getContext('2d').drawImage(cam, (vw - sw) / 2, (vh - sh) / 2, sw, sh, 0, 0, c.width, c.height);
const x = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const y = out.getContext('2d').getImageData(0, 0, out.width, out.height).data;
let s = 0; for (let i = 0; i < x.length; i += 4) for (let k = 0; k < 3; k++) s += Math.abs(x[i+k] - y[i+k]);
return s / (3 * x.length / 4);
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait(pred, timeout: float, what: str):
  end = time.time() + timeout
  while time.time() < end:
    v = pred()
    if v:
      return v
    time.sleep(0.1)
  raise TimeoutError(f"timed out waiting for {what}")


class Server:
  def __init__(self, model_dir: str, port: int, log_path: str):
    self.model_dir, self.port, self.log_path = model_dir, port, log_path
    self.proc = None

  def start(self) -> None:
    self.log = open(self.log_path, "a")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "lsd_jax.stream.serve_cli", f"--port={self.port}",
         f"--model_dir={self.model_dir}"], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    url = f"http://127.0.0.1:{self.port}/info"

    def up():
      try:
        return urllib.request.urlopen(url, timeout=1).status == 200
      except OSError:
        if self.proc.poll() is not None:
          raise RuntimeError(open(self.log_path).read()[-3000:])
        return False

    wait(up, 180, "lsd-serve to start")

  def stop(self) -> None:
    if self.proc is not None:
      self.proc.terminate()
      self.proc.wait(timeout=30)
      self.proc = None
      self.log.close()


def chrome(camera: str, profile_dir: str):
  from selenium import webdriver  # pylint: disable=import-outside-toplevel

  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--use-fake-ui-for-media-stream",
               "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-gpu", "--disable-quic", "--no-first-run",
               *([] if os.environ.get("LSD_PROBE_NO_LOOPBACK_FLAG") else ["--allow-loopback-in-peer-connection"]),
               "--disable-features=WebRtcHideLocalIpsWithMdns", f"--user-data-dir={profile_dir}",
               "--window-size=1100,900"):
    opts.add_argument(flag)
  driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=opts)
  driver.set_page_load_timeout(30)
  return driver


def text(driver, element_id: str) -> str:
  return driver.find_element("id", element_id).text


def received(driver) -> int:
  return int(text(driver, "received"))


def mean_over(driver, n_frames: int) -> list[float]:
  vals, last = [], received(driver)
  while len(vals) < n_frames:
    now = wait(lambda: received(driver) > last and received(driver), 20, "a new output frame")
    vals.append(driver.execute_script(CANVAS_MEAN_JS, "output"))
    last = now
  return [sum(v[i] for v in vals) / len(vals) for i in range(3)]


def stream(driver, url: str, transport: str, seconds: float) -> dict:
  driver.get(f"{url}?transport={transport}")
  wait(lambda: received(driver) >= 5, 60, f"5 frames over {transport}")
  r0, t0 = received(driver), time.time()
  windows, diffs = [], []
  while time.time() - t0 < seconds:
    before = received(driver)
    time.sleep(2.0)
    windows.append(received(driver) - before)
    d = driver.execute_script(IN_OUT_DIFF_JS)
    if d is not None:
      diffs.append(d)
  r1, t1 = received(driver), time.time()
  return {"transport": text(driver, "transport"), "seconds": t1 - t0, "frames": r1 - r0,
          "page_fps": (r1 - r0) / (t1 - t0), "server_fps": float(text(driver, "fps")),
          "server_p50_ms": float(text(driver, "server-p50")), "dropped": int(text(driver, "dropped")),
          "frames_per_2s": windows, "in_out_diff": sum(diffs) / max(1, len(diffs)),
          "status": text(driver, "status")}


def prompt_change(driver, prompt: str) -> dict:
  before, control = mean_over(driver, 20), mean_over(driver, 20)
  driver.find_element("id", "prompt").send_keys(prompt)
  driver.find_element("id", "apply").click()
  wait(lambda: "nearest effect" in text(driver, "effect"), 30, "the prompt's effect line")
  time.sleep(0.5)
  after = mean_over(driver, 20)
  return {"before": before, "control": control, "after": after, "effect": text(driver, "effect"),
          "drift": sum(abs(a - b) for a, b in zip(before, control)),
          "change": sum(abs(a - b) for a, b in zip(before, after))}


def reconnect(driver, url: str, srv: Server) -> dict:
  driver.get(f"{url}?transport=websocket")
  wait(lambda: received(driver) >= 3, 60, "frames before the restart")
  srv.stop()
  wait(lambda: "reconnecting" in text(driver, "status"), 20, "the page to notice")
  seen = text(driver, "status")
  srv.start()
  n = received(driver)
  wait(lambda: received(driver) >= n + 3, 90, "frames after the restart")
  return {"status_while_down": seen, "frames_after": received(driver) - n}


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--model_dir", required=True)
  p.add_argument("--camera", required=True)
  p.add_argument("--phases", default="webrtc,prompt,websocket")
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--websocket_seconds", type=float, default=None, help="(default: --seconds)")
  p.add_argument("--prompt", default="thermal camera")
  p.add_argument("--workdir", required=True)
  p.add_argument("--screenshot", default=None)
  a = p.parse_args()
  port = free_port()
  srv = Server(a.model_dir, port, os.path.join(a.workdir, "serve.log"))
  srv.start()
  driver = None
  out: dict = {}
  try:
    driver = chrome(a.camera, os.path.join(a.workdir, "chrome"))
    url = f"http://127.0.0.1:{port}/"
    for i, phase in enumerate(a.phases.split(",")):
      if phase in ("webrtc", "websocket"):
        secs = a.websocket_seconds if phase == "websocket" and a.websocket_seconds else a.seconds
        out[phase if phase not in out else f"{phase}_{i}"] = stream(driver, url, phase, secs)
        if a.screenshot and phase == "webrtc":
          driver.save_screenshot(a.screenshot)
      elif phase == "prompt":
        out[phase] = prompt_change(driver, a.prompt)
      elif phase == "reconnect":
        out[phase] = reconnect(driver, url, srv)
  finally:
    if driver is not None:
      driver.quit()
    srv.stop()
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
