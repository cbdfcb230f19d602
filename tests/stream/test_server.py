"""lsd-serve: same-origin only, loopback Host only, message and session caps, bad JPEGs survive."""

import asyncio
import json

import aiohttp
from aiohttp import test_utils
import cv2
import numpy as np
import pytest

from lsd_jax.stream import server


def _jpeg(h=48, w=80, seed=0):
  img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  return cv2.imencode(".jpg", img)[1].tobytes()


def _serve(model, test, **kw):
  async def main():
    async with test_utils.TestClient(test_utils.TestServer(server.make_app(model, **kw))) as client:
      origin = f"http://{client.host}:{client.port}"
      await test(client, origin)

  asyncio.run(asyncio.wait_for(main(), 120))


async def _receive_json(ws, want_type):
  while True:
    msg = await ws.receive(timeout=60)
    if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == want_type:
      return json.loads(msg.data)
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg


def test_page_and_frames_flow(model):
  async def test(client, origin):
    page = await client.get("/")
    assert page.status == 200 and "getUserMedia" not in await page.text()  # it is in page.js
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    js = await (await client.get("/page.js")).text()
    assert "getUserMedia" in js and "new WebSocket" in js
    async with client.ws_connect("/ws", headers={"Origin": origin}) as ws:
      hello = await _receive_json(ws, "hello")
      assert hello["model"]["name"] == "tiny-test" and hello["width"] == 64
      await ws.send_bytes(_jpeg())
      msg = await ws.receive(timeout=60)
      assert msg.type == aiohttp.WSMsgType.BINARY
      out = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
      assert out.shape == (64, 64, 3)
      stats = await _receive_json(ws, "frame")
      assert stats["index"] == 1 and stats["p99_ms"] > 0
      await ws.send_str(json.dumps({"type": "prompt", "text": "pencil sketch", "transition": 3}))
      ack = await _receive_json(ws, "prompt")
      assert ack["text"] == "pencil sketch"

  _serve(model, test)


def test_cross_origin_and_foreign_host_refused(model):
  async def test(client, origin):
    for headers in ({"Origin": "http://evil.example"}, {},
                    {"Origin": origin.replace("http:", "https:")}):
      with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        await client.ws_connect("/ws", headers=headers)
      assert e.value.status == 403
    # DNS rebinding: a foreign name pointing at 127.0.0.1 passes the Origin check, not the Host one.
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
      await client.ws_connect("/ws", headers={"Host": "evil.example:80",
                                              "Origin": "http://evil.example:80"})
    assert e.value.status == 403
    assert (await client.get("/", headers={"Host": "evil.example"})).status == 403

  _serve(model, test)


def test_bad_jpeg_and_bad_messages_do_not_kill_the_session(model):
  async def test(client, origin):
    async with client.ws_connect("/ws", headers={"Origin": origin}) as ws:
      await _receive_json(ws, "hello")
      for junk in (b"\xff\xd8\xff garbage", b"", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()):
        await ws.send_bytes(junk)
        err = await _receive_json(ws, "error")
        assert "bad frame" in err["error"]
      await ws.send_str("{not json")
      assert "bad message" in (await _receive_json(ws, "error"))["error"]
      await ws.send_str(json.dumps({"type": "prompt", "text": 5}))
      assert "bad message" in (await _receive_json(ws, "error"))["error"]
      await ws.send_bytes(_jpeg())
      assert (await ws.receive(timeout=60)).type == aiohttp.WSMsgType.BINARY

  _serve(model, test)


def test_huge_dimensions_refused_before_decoding():
  big = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
  # Patch the SOF0 header to 5000 x 5000: 25 MP, over our cap (PIL itself only objects at 179 MP).
  i = big.index(b"\xff\xc0")
  bomb = big[:i + 5] + (5000).to_bytes(2, "big") * 2 + big[i + 9:]
  with pytest.raises(ValueError, match="pixel limit"):
    server.decode_jpeg(bomb)


def test_oversize_message_closes_with_1009(model):
  async def test(client, origin):
    async with client.ws_connect("/ws", headers={"Origin": origin}) as ws:
      await _receive_json(ws, "hello")
      await ws.send_bytes(b"\xff" * 70_000)
      msg = await ws.receive(timeout=60)
      while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await ws.receive(timeout=60)
      assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
      assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    async with client.ws_connect("/ws", headers={"Origin": origin}) as ws:  # the server lives on
      assert (await _receive_json(ws, "hello"))["width"] == 64

  _serve(model, test, max_message_bytes=64 * 1024)


def test_session_cap_says_server_busy(model):
  async def test(client, origin):
    async with client.ws_connect("/ws", headers={"Origin": origin}) as first:
      await _receive_json(first, "hello")
      async with client.ws_connect("/ws", headers={"Origin": origin}) as second:
        err = await _receive_json(second, "error")
        assert "server busy" in err["error"]
        msg = await second.receive(timeout=30)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert second.close_code == 1013
      info = await (await client.get("/info")).json()
      assert info["active_sessions"] == 1
    for _ in range(50):  # the slot frees when the first one leaves
      if (await (await client.get("/info")).json())["active_sessions"] == 0:
        break
      await asyncio.sleep(0.05)
    async with client.ws_connect("/ws", headers={"Origin": origin}) as third:
      assert (await _receive_json(third, "hello"))["type"] == "hello"

  _serve(model, test, max_sessions=1)


def test_loopback_detection():
  assert server.is_loopback("127.0.0.1") and server.is_loopback("::1")
  assert server.is_loopback("localhost") and server.is_loopback("127.1.2.3")
  assert not server.is_loopback("0.0.0.0") and not server.is_loopback("192.168.1.4")


def test_serve_cli_flags():
  """lsd-serve takes the same model overrides as lsd-stream, and refuses bad values before it
  loads anything."""
  import subprocess
  import sys

  for bad, says in (("--kernel_impl=cuda", "kernel_impl"), ("--tau_inf=1.5", "tau_inf must be in")):
    proc = subprocess.run([sys.executable, "-m", "lsd_jax.stream.serve_cli", bad, "--port=1"],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0 and says in proc.stderr + proc.stdout, (bad, proc.stderr[-500:])
    assert "Traceback" not in proc.stderr  # a message, not a crash
