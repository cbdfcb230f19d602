"""lsd-serve's WebRTC transport (aiortc): the camera arrives as a video track, the output leaves
as one, prompts and per-frame stats travel over a data channel named "control".

  POST /offer  {"sdp", "type": "offer"} -> {"sdp", "type": "answer"}   (non-trickle ICE)

Access rules are the WebSocket's (access.access_denied); a session counts against
--max_sessions. Incoming frames go to a SessionWorker: the newest is processed, the rest are
dropped and counted. Output frames carry their own timestamps (the time they were ready), so the
browser shows them as they come; the data channel carries the server's per-frame stats
({"type": "frame", "server_ms", "fps", "dropped", ...}) and the replies to prompt messages.

On a loopback bind every ICE candidate is a loopback one, ours and the browser's: no STUN server
is asked, no other interface is offered, and the browser's non-loopback candidates are removed
from its offer (which also keeps aioice from resolving mDNS names on the network).
"""

from __future__ import annotations

import asyncio
import fractions
import ipaddress
import json
import time
from typing import Any

from absl import logging
from aiohttp import web
import numpy as np

from lsd_jax.stream import access, session_worker

MAX_SDP_CHARS = 64 * 1024
CONNECT_TIMEOUT_S = 20.0  # an offer whose connection never carries a frame is dropped after this
VIDEO_CLOCK = 90_000  # RTP's video clock rate


def available() -> bool:
  try:
    import aiortc  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def _loopback_only_ice() -> None:
  """Makes aioice gather loopback host candidates only (it skips 127.0.0.1 by default)."""
  from aioice import ice  # pylint: disable=import-outside-toplevel

  if getattr(ice.get_host_addresses, "lsd_loopback", False):
    return

  def loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return (["127.0.0.1"] if use_ipv4 else []) + (["::1"] if use_ipv6 else [])

  loopback_addresses.lsd_loopback = True
  ice.get_host_addresses = loopback_addresses


def keep_loopback_candidates(sdp: str) -> str:
  """The SDP without its ICE candidates whose address is not a loopback IP."""
  lines = []
  for line in sdp.splitlines():
    if line.startswith("a=candidate:"):
      parts = line.split()
      try:
        if len(parts) < 6 or not ipaddress.ip_address(parts[4]).is_loopback:
          continue
      except ValueError:  # an mDNS name (xxxx.local)
        continue
    lines.append(line)
  return "\r\n".join(lines) + "\r\n"


class OutputTrack:
  """Factory of the aiortc track that sends the model's frames (the newest one, when asked)."""

  @staticmethod
  def make():
    from aiortc import MediaStreamTrack  # pylint: disable=import-outside-toplevel
    import av  # pylint: disable=import-outside-toplevel

    class _Track(MediaStreamTrack):
      kind = "video"

      def __init__(self):
        super().__init__()
        self._frame: np.ndarray | None = None
        self._ready = asyncio.Event()
        self._t0 = time.monotonic()
        self.sent = self.replaced = 0

      def push(self, frame: np.ndarray) -> None:  # in the event loop
        if self._frame is not None:
          self.replaced += 1
        self._frame = frame
        self._ready.set()

      async def recv(self):
        await self._ready.wait()
        self._ready.clear()
        frame, self._frame = self._frame, None
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        out.pts = int((time.monotonic() - self._t0) * VIDEO_CLOCK)
        out.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return out

    return _Track()


def _frame_to_rgb(frame: Any) -> np.ndarray:
  return frame.to_ndarray(format="rgb24")


class _Peer:
  """One WebRTC session: the peer connection, its worker, its tracks and channel."""

  def __init__(self, st: access.ServerState, pc: Any, peers: set):
    self.st, self.pc, self.peers = st, pc, peers
    self.loop = asyncio.get_running_loop()
    self.out = OutputTrack.make()
    self.channel = None
    self.worker: session_worker.SessionWorker | None = None
    self.tasks: list[asyncio.Task] = []
    self.closed = False

  def send(self, msg: dict[str, Any]) -> None:  # in the event loop
    if self.channel is not None and self.channel.readyState == "open":
      self.channel.send(json.dumps(msg))

  def deliver(self, result: session_worker.Result) -> None:  # in the worker thread
    if self.closed:
      return
    try:
      if result.error is not None:
        msg = {"type": "error", "error": result.error, **result.stats}
        self.loop.call_soon_threadsafe(self.send, msg)
        if result.fatal:
          asyncio.run_coroutine_threadsafe(self.close(), self.loop)
        return
      self.st.to_vcam(self, result.frame)
      self.loop.call_soon_threadsafe(self.out.push, result.frame)
      self.loop.call_soon_threadsafe(self.send, result.stats)
    except RuntimeError:  # the event loop has closed (the server is shutting down)
      self.closed = True

  async def read(self, track: Any) -> None:
    """Hands every incoming frame to the worker (which keeps only the newest)."""
    from aiortc.mediastreams import MediaStreamError  # pylint: disable=import-outside-toplevel

    try:
      while not self.closed:
        self.worker.offer(await track.recv())
    except MediaStreamError:
      pass
    finally:
      await self.close()

  async def watch_idle(self) -> None:
    while not self.closed:
      await asyncio.sleep(1.0)
      idle = time.monotonic() - self.worker.last_frame_at
      limit = self.st.idle_timeout_s if self.worker.frames else max(self.st.idle_timeout_s,
                                                                   CONNECT_TIMEOUT_S)
      if idle > limit:
        logging.info("closing a WebRTC session idle for %.0f s", idle)
        self.send({"type": "error", "error": f"idle for {idle:.0f} s: closing (reconnect to go on)"})
        await self.close()

  def on_message(self, raw: Any) -> None:
    if not isinstance(raw, str):
      self.send({"type": "error", "error": "bad message: the control channel takes JSON text"})
      return

    async def reply():
      self.send(await access.prompt_reply(self.st, self.worker, raw))

    self.tasks.append(asyncio.ensure_future(reply()))

  async def close(self) -> None:
    if self.closed:
      return
    self.closed = True
    self.peers.discard(self)
    self.st.close_session(self)
    for t in self.tasks:
      if t is not asyncio.current_task():
        t.cancel()
    await self.loop.run_in_executor(None, self.worker.close)
    await self.pc.close()


async def _offer(request: web.Request) -> web.Response:
  st = request.app[access.STATE_KEY]
  denied = access.access_denied(request)
  if denied is not None:
    return denied
  try:
    params = await request.json()
    sdp, kind = params["sdp"], params["type"]
    if not isinstance(sdp, str) or kind != "offer" or len(sdp) > MAX_SDP_CHARS:
      raise ValueError("want {\"sdp\": str, \"type\": \"offer\"}")
    if "\nm=video " not in f"\n{sdp}":
      raise ValueError("the offer sends no video track")
  except (ValueError, KeyError, TypeError, RecursionError) as e:
    return web.json_response({"error": f"bad offer: {e}"}, status=400)
  if not st.open_session():
    return web.json_response({"error": f"server busy: {st.max_sessions} session(s) already "
                              "streaming; try again later"}, status=503)
  from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # pylint: disable=import-outside-toplevel

  if st.loopback:
    _loopback_only_ice()
    sdp = keep_loopback_candidates(sdp)
  pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing leaves the host
  peer = _Peer(st, pc, request.app[PEERS_KEY])
  try:
    peer.worker = await peer.loop.run_in_executor(None, access.new_worker, st, _frame_to_rgb,
                                                  peer.deliver, "lsd-rtc")

    @pc.on("datachannel")
    def on_datachannel(channel):
      peer.channel = channel
      channel.on("message", peer.on_message)
      if channel.readyState == "open":
        peer.send(access.hello(st, "webrtc"))
      else:
        channel.on("open", lambda: peer.send(access.hello(st, "webrtc")))

    @pc.on("track")
    def on_track(track):
      if track.kind == "video":
        pc.addTrack(peer.out)
        peer.tasks.append(asyncio.ensure_future(peer.read(track)))

    @pc.on("connectionstatechange")
    async def on_state():
      if pc.connectionState in ("failed", "closed"):
        await peer.close()

    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    answer = await pc.createAnswer()
    await pc.setLocalDescription(answer)
    peer.tasks.append(asyncio.ensure_future(peer.watch_idle()))
  except Exception as e:  # pylint: disable=broad-except  (a malformed SDP: aiortc raises many kinds)
    if peer.worker is not None:
      await peer.close()
    else:
      st.close_session(peer)
      await pc.close()
    return web.json_response({"error": f"bad offer: {type(e).__name__}: {e}"}, status=400)
  request.app[PEERS_KEY].add(peer)
  return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})


PEERS_KEY = web.AppKey("lsd_webrtc_peers", set)


def add_routes(application: web.Application) -> None:
  application[PEERS_KEY] = set()
  application.router.add_post("/offer", _offer)

  async def _close_all(a: web.Application) -> None:
    await asyncio.gather(*(p.close() for p in list(a[PEERS_KEY])), return_exceptions=True)

  application.on_shutdown.append(_close_all)
