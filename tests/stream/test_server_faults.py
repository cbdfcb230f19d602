"""lsd-serve's fault suite (issue 19's table) and its API for non-browser clients, loopback only.

Malformed messages are per-message errors, idle connections close, bad flags and busy ports end
with a message before the model loads, nothing reveals the model's path, and the token admits
foreign clients (the Python client among them) while a missing or wrong one is refused.
"""

import asyncio
import contextlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import aiohttp
import cv2
import numpy as np
import pytest

from lsd_jax.stream import client as client_lib
from lsd_jax.stream import access, server

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TOKEN = "a-test-token-of-some-length"


def _jpeg(h=48, w=80, seed=0):
  img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  return cv2.imencode(".jpg", img)[1].tobytes()


@contextlib.contextmanager
def live_server(model, *, idle_timeout_s=60.0, **kw):
  """The app on a real loopback socket, served by server.start in a thread of its own."""
  sock = server.listen("127.0.0.1", 0)
  app = server.make_app(model, idle_timeout_s=idle_timeout_s, webrtc=False, **kw)
  loop = asyncio.new_event_loop()
  started = threading.Event()
  runner = {}

  def serve():
    asyncio.set_event_loop(loop)
    runner["r"] = loop.run_until_complete(server.start(app, sock, idle_timeout_s))
    started.set()
    loop.run_forever()
    loop.run_until_complete(runner["r"].cleanup())
    loop.close()

  t = threading.Thread(target=serve, daemon=True)
  t.start()
  assert started.wait(30)
  try:
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app[server.STATE_KEY]
  finally:
    loop.call_soon_threadsafe(loop.stop)
    t.join(30)


async def _receive_json(ws, want_type, timeout=60):
  while True:
    msg = await ws.receive(timeout=timeout)
    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == want_type:
      return json.loads(msg.data)
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg


def _run(coro, timeout=120):
  asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------------------------------
# Malformed messages: an error each, the session goes on.


def test_malformed_messages_are_per_message_errors(model):
  nested = "[" * 100_000 + "]" * 100_000
  bad = ['{"type":"prompt","text":"x","transition":1e400}', nested[:60_000],
         '{"type":"prompt","text":"x","transition":-1}', '{"type":"prompt","text":"x","transition":true}',
         '{"type":"prompt","text":"x","transition":2.5}', '{"type":"prompt","text":null}',
         '{"type":"other"}', '[]', '"x"', "x" * 70_000]

  async def main(url):
    async with aiohttp.ClientSession() as s:
      async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
        await _receive_json(ws, "hello")
        for raw in bad:
          await ws.send_str(raw)
          err = await _receive_json(ws, "error")
          assert err["error"].startswith("bad message"), (raw[:60], err)
        await ws.send_str(json.dumps({"type": "prompt", "text": "sepia", "transition": 4.0}))
        assert (await _receive_json(ws, "prompt"))["transition"] == 4
        await ws.send_bytes(_jpeg())
        assert (await ws.receive(timeout=60)).type == aiohttp.WSMsgType.BINARY

  with live_server(model) as (url, _):
    _run(main(url))


def test_parse_prompt_message_limits():
  assert server.parse_prompt_message('{"type": "prompt", "text": " sepia "}') == ("sepia", 0)
  for raw, says in (('{"type":"prompt","transition":1e400}', "whole number"),
                    ("[" * 50_000, "nested too deeply"), ('{"type":"prompt","transition":1001}',
                                                           "0..1000")):
    with pytest.raises(ValueError, match=says):
      server.parse_prompt_message(raw)


# ---------------------------------------------------------------------------------------------
# Idle connections.


def test_idle_websocket_is_closed_and_frees_its_slot(model):
  async def main(url, st):
    async with aiohttp.ClientSession() as s:
      async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
        await _receive_json(ws, "hello")
        t0 = time.perf_counter()
        err = await _receive_json(ws, "error", timeout=20)
        assert "idle for" in err["error"]
        msg = await ws.receive(timeout=20)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == server.CLOSE_IDLE and time.perf_counter() - t0 < 10
    for _ in range(100):
      if st.active == 0:
        break
      await asyncio.sleep(0.05)
    assert st.active == 0

  with live_server(model, idle_timeout_s=1.5, max_sessions=1) as (url, st):
    _run(main(url, st))


def test_idle_and_half_sent_http_connections_are_closed(model):
  with live_server(model, idle_timeout_s=1.0) as (url, _):
    port = int(url.rsplit(":", 1)[1])
    for payload in (b"", b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "):
      with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(payload)
        t0 = time.perf_counter()
        assert c.recv(1024) == b""  # closed by the server, not by our 10 s timeout
        assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------------------------------------
# What the server reveals.


def test_hello_and_info_name_the_model_not_its_folder(model, tiny_checkpoint):
  from lsd_jax.stream import engine

  m = engine.StreamModel.load(tiny_checkpoint, text_encoder=model._text_encoder)  # pylint: disable=protected-access
  assert m.info.checkpoint == tiny_checkpoint

  async def main(url):
    async with aiohttp.ClientSession() as s:
      info = await (await s.get(url + "/info")).text()
      async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
        hello = (await ws.receive(timeout=60)).data
    for text in (info, hello):
      assert tiny_checkpoint not in text and os.path.basename(tiny_checkpoint) not in text
      assert json.loads(text)["model"]["name"] == "tiny-test"

  with live_server(m) as (url, _):
    _run(main(url))


# ---------------------------------------------------------------------------------------------
# Latest-frame semantics on the server.


def test_server_processes_the_newest_frame_and_counts_the_rest(model):
  async def main(url):
    async with aiohttp.ClientSession() as s:
      async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
        await _receive_json(ws, "hello")
        for i in range(30):  # far faster than the model
          await ws.send_bytes(_jpeg(seed=i))
        last = None
        while True:
          try:
            last = await _receive_json(ws, "frame", timeout=3)
          except asyncio.TimeoutError:
            break
        assert last is not None and last["index"] < 30
        assert last["dropped"] == 30 - last["index"] and last["dropped"] > 0
        assert last["server_ms"] > 0 and last["fps"] >= 0

  with live_server(model) as (url, _):
    _run(main(url))


# ---------------------------------------------------------------------------------------------
# Tokens: foreign clients.


def test_foreign_client_without_token_is_refused(model):
  with live_server(model) as (url, _):  # no token: same-origin pages only, as before
    with pytest.raises(client_lib.ServerError, match="403"):
      client_lib.Client(url)
  with live_server(model, token=TOKEN) as (url, _):
    with pytest.raises(client_lib.ServerError, match="401"):
      client_lib.Client(url)


def test_client_with_the_token_streams_and_sets_prompts(model):
  frames = [np.random.default_rng(i).integers(0, 256, (90, 120, 3), dtype=np.uint8) for i in range(4)]
  with live_server(model, token=TOKEN) as (url, _):
    with client_lib.Client(url, token=TOKEN) as c:
      assert c.hello["model"]["name"] == "tiny-test" and c.hello["width"] == 64
      assert c.set_prompt("thermal camera")["name"]
      outs = [c.process(f) for f in frames]
      assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in outs)
      assert c.last_stats["index"] == 4 and c.last_stats["server_ms"] > 0
      with pytest.raises(client_lib.ServerError, match="bad message"):
        c.set_prompt("x", transition_frames=5000)
      c.send(np.zeros((4, 4, 3), np.uint8))
      assert c.receive().shape == (64, 64, 3)  # the session went on
    # A page the server served itself still needs no token on a loopback bind.
    async def page(url):
      async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
          assert (await _receive_json(ws, "hello"))["transport"] == "websocket"
    _run(page(url))


def test_client_command_line_streams_into_an_mp4_and_reports_a_refusal(model, tmp_path, capsys):
  """`python -m lsd_jax.stream.client_cli` (called in-process): procedural frames through the
  server into an mp4 of the model's size, the model and fps on stderr; a wrong token is exit 1
  with the server's refusal, no traceback."""
  import av

  from lsd_jax.stream import client_cli

  out = tmp_path / "remote.mp4"
  with live_server(model, token=TOKEN) as (url, _):
    rc = client_cli.main([f"--url={url}", f"--token={TOKEN}", "--source=procedural", "--frames=3",
                          "--prompt=thermal camera", f"--output={out}"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "model: " in err and "nearest known effect" in err and "3 frames," in err
    with av.open(str(out)) as f:
      frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)
    assert client_cli.main([f"--url={url}", "--token=" + "b" * len(TOKEN), "--source=procedural",
                            "--frames=1"]) == 1
    err = capsys.readouterr().err
    assert "lsd client: error:" in err and "401" in err and "Traceback" not in err


def test_wrong_token_is_refused_in_constant_time(model, monkeypatch):
  calls = []
  real = hmac.compare_digest

  def spy(a, b):
    calls.append((len(a), len(b)))
    return real(a, b)

  monkeypatch.setattr(access.hmac, "compare_digest", spy)
  with live_server(model, token=TOKEN) as (url, _):
    for wrong in ("x", TOKEN[:-1], TOKEN + "x", "b" * len(TOKEN)):
      with pytest.raises(client_lib.ServerError, match="401"):
        client_lib.Client(url, token=wrong)
  # Every comparison went through hmac.compare_digest, on fixed-length digests: neither the
  # content nor the length of a wrong token changes what is compared.
  assert len(calls) == 4 and set(calls) == {(32, 32)}
  with pytest.raises(ValueError, match="at least 16"):
    server.ServerState(None, token="short")


def test_non_loopback_bind_requires_the_token_even_from_pages(model):
  app = server.make_app(model, check_host=False, token=TOKEN, webrtc=False)

  async def main():
    from aiohttp import test_utils

    async with test_utils.TestClient(test_utils.TestServer(app)) as c:
      origin = f"http://{c.host}:{c.port}"
      with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await c.ws_connect("/ws", headers={"Origin": origin})
      assert e.value.status == 401
      async with c.ws_connect(f"/ws?token={TOKEN}", headers={"Origin": origin}) as ws:
        assert (await _receive_json(ws, "hello"))["type"] == "hello"
      assert (await (await c.get("/info")).json())["token_required"] is True

  _run(main())


# ---------------------------------------------------------------------------------------------
# Reconnects and the virtual camera.


def test_reconnect_cycles_free_their_sessions(model):
  async def main(url, st):
    async with aiohttp.ClientSession() as s:
      for i in range(10):
        async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
          await _receive_json(ws, "hello")
          await ws.send_bytes(_jpeg(seed=i))
          assert (await ws.receive(timeout=60)).type == aiohttp.WSMsgType.BINARY
    for _ in range(100):
      if st.active == 0:
        break
      await asyncio.sleep(0.05)
    assert st.active == 0 and st.served == 10

  with live_server(model, max_sessions=1) as (url, st):
    _run(main(url, st))


class FakeVcam:
  def __init__(self):
    self.frames = []

  def write(self, frame):
    self.frames.append(frame.shape)


def test_vcam_gets_the_first_sessions_output(model):
  cam = FakeVcam()

  async def main(url):
    async with aiohttp.ClientSession() as s:
      ws_url = url.replace("http", "ws") + "/ws"
      async with s.ws_connect(ws_url, headers={"Origin": url}) as a, \
          s.ws_connect(ws_url, headers={"Origin": url}) as b:
        await _receive_json(a, "hello")
        await _receive_json(b, "hello")
        for ws in (a, b, a):
          await ws.send_bytes(_jpeg())
          await _receive_json(ws, "frame")
    assert cam.frames == [(64, 64, 3)] * 2  # a's two frames; b did not own the camera

  with live_server(model, vcam=cam) as (url, _):
    _run(main(url))


# ---------------------------------------------------------------------------------------------
# The command line: flags, ports, logs.


def _serve(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "lsd_jax.stream.serve_cli", *args],
                        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def test_bad_port_and_sessions_are_usage_errors():
  for args, says in ((["--port=70000"], "--port=70000"), (["--port=0"], "--port=0"),
                     (["--max_sessions=0"], "--max_sessions=0"), (["--steps=99"], "--steps"),
                     (["--token=short"], "at least 16 characters")):
    r = _serve(*args)
    assert r.returncode == 1 and says in r.stderr, (args, r.stderr[-1500:])
    assert "Traceback" not in r.stderr and "lsd-serve: http" not in r.stdout


def test_port_in_use_fails_before_the_model_loads(tiny_checkpoint):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = _serve(f"--port={port}", f"--model_dir={tiny_checkpoint}")
  assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
  assert "already in use" in r.stderr and "Traceback" not in r.stderr
  assert "lsd-serve: http" not in r.stdout and "compiling" not in r.stderr
  assert time.perf_counter() - t0 < 60


def test_vcam_without_pyvirtualcam_is_a_clear_error():
  try:
    import pyvirtualcam  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    pytest.skip("pyvirtualcam is installed")
  except ImportError:
    pass
  r = _serve("--vcam", "--port=1")
  assert r.returncode == 1 and "lsd-jax[vcam]" in r.stderr and "Traceback" not in r.stderr


def test_serving_logs_no_warning_per_connection(tmp_path, tiny_checkpoint):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = open(tmp_path / "serve.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", "lsd_jax.stream.serve_cli", f"--port={port}",
                           f"--model_dir={tiny_checkpoint}"], cwd=REPO, env=ENV, stdout=log,
                          stderr=subprocess.STDOUT)
  try:
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
      try:
        urllib.request.urlopen(url + "/info", timeout=1)
        break
      except OSError:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        time.sleep(0.1)
    for _ in range(5):
      urllib.request.urlopen(url + "/info", timeout=5).read()

    async def ws():
      async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as w:
          await _receive_json(w, "hello")
    for _ in range(3):
      _run(ws())
  finally:
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
  text = (tmp_path / "serve.log").read_text()
  assert "Failed to create request handler" not in text and "Traceback" not in text, text[-3000:]
  assert "Unable to initialize backend" not in text
  assert f"lsd-serve: http://127.0.0.1:{port}/" in text


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_100_reconnect_cycles_keep_memory_flat(model):
  """The soak of the issue's table: 100 connect / stream / disconnect cycles; the server's
  sessions are all freed and its memory (this process's RSS) stops growing after warm-up."""
  async def main(url, st):
    rss = []
    async with aiohttp.ClientSession() as s:
      for i in range(100):
        async with s.ws_connect(url.replace("http", "ws") + "/ws", headers={"Origin": url}) as ws:
          await _receive_json(ws, "hello")
          for k in range(3):
            await ws.send_bytes(_jpeg(seed=i * 3 + k))
            await _receive_json(ws, "frame")
        if i in (19, 99):
          rss.append(_rss_mb())
    for _ in range(100):
      if st.active == 0:
        break
      await asyncio.sleep(0.05)
    assert st.active == 0 and st.served == 100
    assert not [t for t in threading.enumerate() if t.name == "lsd-ws"]  # every worker ended
    assert rss[1] - rss[0] < 40, rss  # MB over 80 cycles

  with live_server(model, max_sessions=1) as (url, st):
    _run(main(url, st), timeout=600)


def test_webrtc_off_is_what_info_says(model):
  async def main():
    from aiohttp import test_utils

    for on in (False, True):
      app = server.make_app(model, webrtc=on)
      async with test_utils.TestClient(test_utils.TestServer(app)) as c:
        assert (await (await c.get("/info")).json())["webrtc"] is on
        offer = await c.post("/offer", json={"sdp": "v=0", "type": "offer"},
                             headers={"Origin": f"http://{c.host}:{c.port}"})
        assert offer.status == (400 if on else 404), await offer.text()  # a bad SDP / no route

  _run(main())


def test_ctrl_c_stops_the_server_cleanly(tmp_path, tiny_checkpoint):
  import signal

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  for wait_for, code in (("compiling", 130), (f"127.0.0.1:{port}/", 0)):
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
      proc = subprocess.Popen([sys.executable, "-m", "lsd_jax.stream.serve_cli", f"--port={port}",
                               f"--model_dir={tiny_checkpoint}"], cwd=REPO, env=ENV, stdout=f,
                              stderr=subprocess.STDOUT)
    for _ in range(1200):
      if wait_for in log.read_text():
        break
      assert proc.poll() is None, log.read_text()[-2000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == code, log.read_text()[-2000:]
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]


def test_ctrl_c_between_the_warm_up_and_listening_is_clean(tmp_path, tiny_checkpoint):
  """Ctrl-C right after the warm-up, while the server builds its app and event loop (CI caught a
  half-built event loop printing a traceback there): the server stops with 130 (before
  listening) or 0 (listening), never a traceback; the URL is only shown once it listens."""
  import signal

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  for delay in (0.0, 0.02, 0.1):
    log = tmp_path / f"serve_{delay}.log"
    with open(log, "w") as f:
      proc = subprocess.Popen([sys.executable, "-m", "lsd_jax.stream.serve_cli", f"--port={port}",
                               f"--model_dir={tiny_checkpoint}"], cwd=REPO, env=ENV, stdout=f,
                              stderr=subprocess.STDOUT)
    for _ in range(1200):
      if "ready after" in log.read_text():
        break
      assert proc.poll() is None, log.read_text()[-2000:]
      time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    text = log.read_text()
    assert code in (0, 130), text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "never awaited" not in text, text[-2000:]
    if code == 130:
      assert f"127.0.0.1:{port}/" not in text, text[-2000:]  # no URL shown for a server that never listened
