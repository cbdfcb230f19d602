r"""lsd-serve: a browser demo. The page captures the webcam (getUserMedia), sends JPEG frames over
a WebSocket and shows input and output side by side, with a prompt box and live fps / latency.

  lsd-serve                       # http://127.0.0.1:8765, the default model
  lsd-serve --port=9000 --checkpoint=checkpoints/lsd_small --max_sessions=1

Security: binds 127.0.0.1 unless --host says otherwise (and then warns loudly: anyone who can
reach the port can use the GPU and see what they send). The WebSocket accepts same-origin pages
only (the Origin header must match the Host), and on a loopback bind only loopback Host names
(against DNS rebinding). Messages are capped (--max_message_mb, default 2), JPEGs larger than
MAX_PIXELS are refused before decoding, sessions are capped (--max_sessions; the next one gets
"server busy"), and clients never name a file: they send JPEG bytes and prompt text only.

Protocol (one StreamSession per connection, all sharing one StreamModel):
  client -> server  binary: a JPEG frame; text: {"type": "prompt", "text": ..., "transition": N}
  server -> client  text {"type": "hello", "model": ..., ...} once; then per frame a binary JPEG
                    followed by text {"type": "frame", ...stats}; {"type": "prompt", "effect": ...}
                    after a prompt; {"type": "error", "error": ...} for a bad message.
Latest-frame semantics twice over: the page sends a frame only after the previous result came
back, and the server keeps only the newest unprocessed frame of a connection (older ones are
dropped and counted).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import importlib.resources
import io as _io
import ipaddress
import json
import threading
import time
import urllib.parse
from typing import Any

from absl import logging
from aiohttp import WSMsgType, web
import cv2
import numpy as np

from lsd_jax.stream import engine, metrics

MAX_MESSAGE_BYTES = 2 * 1024 * 1024
MAX_SESSIONS = 2
MAX_PIXELS = 4096 * 4096  # a decoded frame's cap: a small JPEG can claim a huge size
MAX_PROMPT_CHARS = 2000  # the text encoder keeps 254 word pieces anyway
JPEG_QUALITY = 85
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WEB_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
             "/style.css": ("style.css", "text/css")}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; "
                                "media-src 'self' blob: mediastream:; connect-src 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
  if host in LOOPBACK_NAMES:
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def _hostname(netloc: str) -> str:
  return (urllib.parse.urlsplit(f"//{netloc}").hostname or "").lower()


def same_origin(request: web.Request) -> bool:
  """The page that opened the socket was served by this server (Origin matches Host)."""
  origin = request.headers.get("Origin")
  if not origin:
    return False
  u = urllib.parse.urlsplit(origin)
  return u.scheme == request.scheme and u.netloc.lower() == (request.host or "").lower()


def decode_jpeg(data: bytes) -> np.ndarray:
  """JPEG bytes -> uint8 RGB; ValueError for anything that is not a sane JPEG."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  try:
    with Image.open(_io.BytesIO(data)) as im:
      fmt, (w, h) = im.format, im.size
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many kinds for bad bytes)
    raise ValueError(f"not an image ({type(e).__name__})") from e
  if fmt != "JPEG":
    raise ValueError(f"expected a JPEG, got {fmt}")
  if w * h > MAX_PIXELS:
    raise ValueError(f"frame of {w}x{h} is over the {MAX_PIXELS} pixel limit")
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if bgr is None:
    raise ValueError("could not decode the JPEG")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_jpeg(rgb: np.ndarray) -> bytes:
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
  if not ok:
    raise RuntimeError("JPEG encoding failed")
  return buf.tobytes()


@functools.cache
def _matcher():
  """prompts.match(text) -> (effect, score) where lsd_jax.datasets.prompts provides it."""
  try:
    from lsd_jax.datasets import prompts  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return getattr(prompts, "match", None)


def match_effect(text: str) -> dict[str, Any] | None:
  fn = _matcher()
  if fn is None or not text.strip():
    return None
  try:
    name, score = fn(text)
  except Exception as e:  # pylint: disable=broad-except  (a UI hint must not end the session)
    logging.warning("prompts.match failed: %s", e)
    return None
  return {"name": str(name), "score": float(score)}


class ServerState:
  def __init__(self, model: engine.StreamModel, *, max_sessions: int, max_message_bytes: int,
               check_host: bool, seed: int = 0):
    self.model, self.max_sessions, self.max_message_bytes = model, max_sessions, max_message_bytes
    self.check_host, self.seed = check_host, seed
    self.active = 0
    self.served = 0
    self.executor = concurrent.futures.ThreadPoolExecutor(max(1, max_sessions),
                                                          thread_name_prefix="lsd-serve")


STATE_KEY = web.AppKey("lsd_state", ServerState)


@web.middleware
async def _guard(request: web.Request, handler):
  st = request.app[STATE_KEY]
  if st.check_host and not is_loopback(_hostname(request.host or "")):
    return web.Response(status=403, text="Host not allowed (the server is bound to loopback)")
  resp = await handler(request)
  if isinstance(resp, web.Response):
    resp.headers.update(SECURITY_HEADERS)
  return resp


async def _static(request: web.Request) -> web.Response:
  name, ctype = WEB_FILES[request.path]
  body = importlib.resources.files("lsd_jax.stream").joinpath("web", name).read_bytes()
  return web.Response(body=body, content_type=ctype)


async def _info(request: web.Request) -> web.Response:
  st = request.app[STATE_KEY]
  return web.json_response({"model": st.model.info.to_dict(), "width": st.model.width,
                            "height": st.model.height, "max_sessions": st.max_sessions,
                            "active_sessions": st.active,
                            "max_message_bytes": st.max_message_bytes})


class _Connection:
  """One socket's stream: the newest unprocessed frame, a worker, its StreamSession."""

  def __init__(self, st: ServerState, ws: web.WebSocketResponse, session: engine.StreamSession):
    self.st, self.ws, self.session = st, ws, session
    self.pending: bytes | None = None
    self.wake = asyncio.Event()
    self.lock = threading.Lock()  # the session: frames and prompt changes in turn
    self.frames = self.dropped = self.bad = 0
    self.step_ms = metrics.Window(300)
    self.done_at: collections.deque[float] = collections.deque(maxlen=60)  # for fps

  def offer(self, data: bytes) -> None:
    if self.pending is not None:
      self.dropped += 1
    self.pending = data
    self.wake.set()

  def _process(self, data: bytes) -> tuple[bytes, float]:
    frame = decode_jpeg(data)
    with self.lock:
      t0 = time.perf_counter()
      out = self.session(frame)
      dt = time.perf_counter() - t0
    return encode_jpeg(out), dt

  async def worker(self) -> None:
    loop = asyncio.get_running_loop()
    while not self.ws.closed:
      await self.wake.wait()
      self.wake.clear()
      data, self.pending = self.pending, None
      if data is None:
        continue
      try:
        jpeg, dt = await loop.run_in_executor(self.st.executor, self._process, data)
      except ValueError as e:
        self.bad += 1
        await self.ws.send_json({"type": "error", "error": f"bad frame: {e}", "bad_frames": self.bad})
        continue
      self.frames += 1
      self.step_ms.add(dt)
      now = time.perf_counter()
      self.done_at.append(now)
      span = now - self.done_at[0]
      fps = (len(self.done_at) - 1) / span if span > 0 else 0.0
      if self.ws.closed:
        return
      await self.ws.send_bytes(jpeg)
      await self.ws.send_json({"type": "frame", "index": self.frames, "server_ms": dt * 1e3,
                               "p50_ms": self.step_ms.percentile_ms(50),
                               "p99_ms": self.step_ms.percentile_ms(99), "fps": fps,
                               "dropped": self.dropped, "bad_frames": self.bad})

  def set_prompt(self, text: str, transition: int) -> None:
    with self.lock:
      self.session.set_prompt(text, transition)

  async def on_text(self, raw: str) -> None:
    try:
      msg = json.loads(raw)
      if not isinstance(msg, dict) or msg.get("type") != "prompt":
        raise ValueError("want {\"type\": \"prompt\", \"text\": ...}")
      text = msg.get("text", "")
      transition = int(msg.get("transition", 0))
      if not isinstance(text, str) or not 0 <= transition <= 1000:
        raise ValueError("text must be a string and transition in [0, 1000]")
    except (ValueError, TypeError) as e:
      await self.ws.send_json({"type": "error", "error": f"bad message: {e}"})
      return
    text = text[:MAX_PROMPT_CHARS]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(self.st.executor, self.set_prompt, text, transition)
    await self.ws.send_json({"type": "prompt", "text": text, "effect": match_effect(text)})


async def _websocket(request: web.Request) -> web.StreamResponse:
  st = request.app[STATE_KEY]
  if not same_origin(request):
    logging.warning("refused a WebSocket from Origin %r (Host %r)", request.headers.get("Origin"),
                    request.host)
    return web.Response(status=403, text="cross-origin WebSocket refused")
  ws = web.WebSocketResponse(max_msg_size=st.max_message_bytes, heartbeat=30.0)
  await ws.prepare(request)
  if st.active >= st.max_sessions:
    await ws.send_json({"type": "error", "error": f"server busy: {st.max_sessions} session(s) "
                        "already streaming; try again later"})
    await ws.close(code=1013, message=b"server busy")
    return ws
  st.active += 1
  st.served += 1
  worker = None
  try:
    loop = asyncio.get_running_loop()
    session = await loop.run_in_executor(
        st.executor, lambda: engine.StreamSession(st.model, seed=st.seed + st.served))
    conn = _Connection(st, ws, session)
    await ws.send_json({"type": "hello", "model": st.model.info.to_dict(),
                        "width": st.model.width, "height": st.model.height,
                        "max_message_bytes": st.max_message_bytes})
    worker = asyncio.create_task(conn.worker())
    async for msg in ws:
      if msg.type == WSMsgType.BINARY:
        conn.offer(msg.data)
      elif msg.type == WSMsgType.TEXT:
        await conn.on_text(msg.data)
      elif msg.type == WSMsgType.ERROR:
        logging.warning("WebSocket closed with an error: %s", ws.exception())
        break
  finally:
    st.active -= 1
    if worker is not None:
      worker.cancel()
      await asyncio.gather(worker, return_exceptions=True)
  return ws


def make_app(model: engine.StreamModel, *, max_sessions: int = MAX_SESSIONS,
             max_message_bytes: int = MAX_MESSAGE_BYTES, check_host: bool = True,
             seed: int = 0) -> web.Application:
  """The aiohttp application (tests drive it with aiohttp.test_utils)."""
  application = web.Application(middlewares=[_guard], client_max_size=max_message_bytes)
  application[STATE_KEY] = ServerState(model, max_sessions=max_sessions,
                                       max_message_bytes=max_message_bytes,
                                       check_host=check_host, seed=seed)
  for path in WEB_FILES:
    application.router.add_get(path, _static)
  application.router.add_get("/info", _info)
  application.router.add_get("/ws", _websocket)

  async def _shutdown(a: web.Application) -> None:
    a[STATE_KEY].executor.shutdown(wait=False, cancel_futures=True)

  application.on_cleanup.append(_shutdown)
  return application
