"""End to end in headless Chromium: fake camera -> page -> lsd-serve -> page, prompt changes output.

Needs Debian's chromium + chromium-driver (scripts/setup.sh --browser) and selenium.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Y4M = os.path.join(REPO, "data", "samples", "box_320x240.y4m")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

pytestmark = pytest.mark.browser

OUTPUT_STATS_JS = """
const c = document.getElementById('output');
if (!c.width) return null;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const s = [0, 0, 0];
for (let i = 0; i < d.length; i += 4) { for (let k = 0; k < 3; k++) s[k] += d[i + k]; }
return s.map((v) => v / (d.length / 4));
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _counter(driver, name):
  return int(driver.find_element("id", name).text)


def _wait(pred, timeout, what):
  end = time.time() + timeout
  while time.time() < end:
    v = pred()
    if v:
      return v
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {what}")


def _mean_stats(driver, n_frames):
  """Per-channel means of the output canvas, averaged over n_frames new frames."""
  vals, last = [], _counter(driver, "received")
  while len(vals) < n_frames:
    now = _wait(lambda: _counter(driver, "received") > last and _counter(driver, "received"), 20,
                "a new output frame")
    vals.append(driver.execute_script(OUTPUT_STATS_JS))
    last = now
  return [sum(v[i] for v in vals) / len(vals) for i in range(3)]


@pytest.fixture
def prompt_sensitive_checkpoint(tmp_path):
  """The random tiny model with its prompt projection scaled up 30x. Random weights barely
  listen to the prompt (a ~1 grey-level change against ~60 from the per-frame noise); this
  makes the prompt's path through page -> socket -> session -> output visible in pixels."""
  from lsd_jax.models import export, lsd
  from tests.stream.conftest import TINY

  params = lsd.random_params(0, TINY)
  params["denoiser"]["prompt_in"]["Dense_0"]["kernel"] *= 30.0
  export.save(str(tmp_path / "ckpt"), TINY, params, dtype="float32",
              metadata={"name": "tiny-prompt-x30", "random_weights": True})
  return str(tmp_path / "ckpt")


def test_browser_round_trip(tmp_path, prompt_sensitive_checkpoint):
  if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver (scripts/setup.sh --browser)")
  webdriver = pytest.importorskip("selenium.webdriver")
  port = _free_port()
  log = open(tmp_path / "serve.log", "w")
  proc = subprocess.Popen(
      [sys.executable, "-m", "lsd_jax.stream.serve_cli", f"--port={port}",
       f"--checkpoint={prompt_sensitive_checkpoint}"],
      cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  driver = None
  try:
    url = f"http://127.0.0.1:{port}/"

    def up():
      try:
        return urllib.request.urlopen(url + "info", timeout=1).status == 200
      except OSError:
        assert proc.poll() is None, open(tmp_path / "serve.log").read()[-3000:]
        return False

    _wait(up, 90, "lsd-serve to start")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={Y4M}",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
                 "--window-size=1100,800"):
      opts.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    driver.get(url)
    _wait(lambda: _counter(driver, "received") >= 5, 40, "5 frames to come back")
    sent, received = driver.execute_script(
        "return ['sent', 'received'].map((i) => +document.getElementById(i).textContent);")
    assert sent >= received >= 5  # one frame in flight at most: latest-frame semantics
    assert "random weights" in driver.find_element("id", "model").text
    # Windows of 20 frames span the fake camera's 20-frame loop, so the control's drift is noise,
    # not which part of the clip a window happened to see.
    before, control = _mean_stats(driver, 20), _mean_stats(driver, 20)
    box = driver.find_element("id", "prompt")
    box.send_keys("thermal camera")
    driver.find_element("id", "apply").click()
    _wait(lambda: "thermal camera" in driver.execute_script(
        "return document.getElementById('prompt').value"), 5, "the prompt text")
    time.sleep(0.5)  # the prompt message is handled before the next frames
    after = _mean_stats(driver, 20)
    os.makedirs(os.path.join(REPO, "test-artifacts"), exist_ok=True)
    driver.save_screenshot(os.path.join(REPO, "test-artifacts", "browser_stream.png"))
    drift = sum(abs(a - b) for a, b in zip(before, control))  # same prompt, later frames
    change = sum(abs(a - b) for a, b in zip(before, after))
    assert change > max(3 * drift, 2.0), (before, control, after)
    assert driver.find_element("id", "fps").text != "-"
    assert driver.find_element("id", "rtt-p99").text != "-"
  finally:
    if driver is not None:
      driver.quit()
    proc.terminate()
    proc.wait(timeout=10)
    log.close()
