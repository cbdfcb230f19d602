"""lsd-serve's WebRTC transport with an aiortc peer (no browser): tracks both ways, the newest
frame processed and the rest counted, stats and prompts on the data channel, the access rules.

ICE stays on loopback: the server, bound to 127.0.0.1, makes aioice gather loopback candidates
only (this process's peer included) and no STUN server is configured on either side.
"""

import asyncio
import fractions
import json
import time

import numpy as np
import pytest

from lsd_jax.stream import server

aiortc = pytest.importorskip("aiortc")
av = pytest.importorskip("av")


class NumberedTrack(aiortc.MediaStreamTrack):
  """Frames of one grey level each, at `fps` (faster than the model: some must be dropped)."""

  kind = "video"

  def __init__(self, fps=1000.0):
    super().__init__()
    self.fps, self.n, self.t0 = fps, 0, None

  async def recv(self):
    if self.t0 is None:
      self.t0 = time.monotonic()
    wait = self.t0 + self.n / self.fps - time.monotonic()
    if wait > 0:
      await asyncio.sleep(wait)
    img = np.full((96, 128, 3), (self.n * 7) % 256, np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24")
    frame.pts, frame.time_base = self.n * 1500, fractions.Fraction(1, 90_000)
    self.n += 1
    return frame


async def _serve(model, **kw):
  sock = server.listen("127.0.0.1", 0)
  app = server.make_app(model, **kw)
  runner = await server.start(app, sock)
  return runner, f"http://127.0.0.1:{sock.getsockname()[1]}", app[server.STATE_KEY]


async def _connect(url, headers):
  import aiohttp

  from lsd_jax.stream import webrtc

  webrtc._loopback_only_ice()  # pylint: disable=protected-access  (this peer too: loopback only)

  pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
  channel = pc.createDataChannel("control")
  messages, frames = asyncio.Queue(), []
  channel.on("message", lambda m: messages.put_nowait(json.loads(m)))
  pc.addTransceiver(NumberedTrack(), direction="sendrecv")

  @pc.on("track")
  def on_track(track):
    async def read():
      while True:
        try:
          frames.append((await track.recv()).to_ndarray(format="rgb24"))
        except aiortc.mediastreams.MediaStreamError:
          return
    asyncio.ensure_future(read())

  await pc.setLocalDescription(await pc.createOffer())
  async with aiohttp.ClientSession() as s:
    r = await s.post(url + "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"},
                     headers=headers)
    text = await r.text()
    body = json.loads(text) if r.content_type == "application/json" else {"error": text}
    if r.status != 200:
      await pc.close()
      return r.status, body, None, None, None, None
  await pc.setRemoteDescription(aiortc.RTCSessionDescription(**body))
  return 200, body, pc, channel, messages, frames


async def _next(messages, kind, timeout=60):
  end = time.monotonic() + timeout
  while True:
    msg = await asyncio.wait_for(messages.get(), max(0.1, end - time.monotonic()))
    if msg["type"] == kind:
      return msg


def test_webrtc_tracks_both_ways_newest_frame_first(model):
  async def main():
    runner, url, st = await _serve(model, max_sessions=1)
    try:
      status, answer, pc, channel, messages, frames = await _connect(url, {"Origin": url})
      assert status == 200, answer
      for line in answer["sdp"].splitlines():
        if line.startswith("a=candidate:"):
          assert line.split()[4] in ("127.0.0.1", "::1"), line  # loopback only
      hello = await _next(messages, "hello")
      assert hello["transport"] == "webrtc" and "checkpoint" not in hello["model"]
      stats = None
      for _ in range(200):
        stats = await _next(messages, "frame")
        if stats["index"] >= 30 and frames:
          break
      assert frames and frames[-1].shape == (64, 64, 3)  # the model's resolution, back as a track
      assert stats["server_ms"] > 0 and stats["fps"] > 0
      # the capture runs at up to 1000 fps, far above what the model keeps up with
      assert stats["dropped"] > 0, stats
      # Prompts and their replies on the data channel, errors per message.
      channel.send(json.dumps({"type": "prompt", "text": "thermal camera", "transition": 2}))
      reply = await _next(messages, "prompt")
      assert reply["text"] == "thermal camera" and reply["effect"]["name"]
      channel.send('{"type": "prompt", "transition": 1e400}')
      assert "bad message" in (await _next(messages, "error"))["error"]
      # A second peer finds the server busy; the first one's end frees the slot.
      status, body, *_ = await _connect(url, {"Origin": url})
      assert status == 503 and "server busy" in body["error"]
      await pc.close()
      for _ in range(100):
        if st.active == 0:
          break
        await asyncio.sleep(0.05)
      assert st.active == 0
    finally:
      await runner.cleanup()

  asyncio.run(asyncio.wait_for(main(), 180))


def test_webrtc_offer_follows_the_access_rules(model):
  async def main():
    runner, url, _ = await _serve(model, token="a-test-token-of-some-length")
    try:
      status, *_ = await _connect(url, {"Origin": "http://evil.example"})
      assert status == 401  # a token server: no token, no stream, whatever the Origin says
      status, *_ = await _connect(url, {"Authorization": "Bearer wrong-token-wrong-token"})
      assert status == 401
      status, _, pc, *_ = await _connect(url, {"Authorization": "Bearer a-test-token-of-some-length"})
      assert status == 200
      await pc.close()
    finally:
      await runner.cleanup()
    runner, url, _ = await _serve(model)
    try:
      status, *_ = await _connect(url, {"Origin": "http://evil.example"})
      assert status == 403
    finally:
      await runner.cleanup()

  asyncio.run(asyncio.wait_for(main(), 180))


def test_loopback_candidate_filter():
  sdp = ("v=0\r\na=candidate:1 1 udp 2130706431 192.0.2.2 50000 typ host\r\n"
         "a=candidate:2 1 udp 2130706431 127.0.0.1 50001 typ host\r\n"
         "a=candidate:3 1 udp 2130706431 abcd-ef.local 50002 typ host\r\n"
         "a=candidate:4 1 udp 2130706431 ::1 50003 typ host\r\n")
  from lsd_jax.stream import webrtc

  kept = [l for l in webrtc.keep_loopback_candidates(sdp).splitlines() if "candidate" in l]
  assert [l.split()[4] for l in kept] == ["127.0.0.1", "::1"]
