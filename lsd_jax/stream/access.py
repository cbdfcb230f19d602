"""What both lsd-serve transports share (the WebSocket in server.py, WebRTC in webrtc.py): the
limits, the access rules (`access_denied`: loopback Host names, same-origin pages, the token), the
server's state (`ServerState`, under `STATE_KEY` in the aiohttp app), the session protocol's
messages (`hello`, `prompt_reply`, `parse_prompt_message`) and a session's worker (`new_worker`),
and JPEG coding. Both transports import it; it imports neither (server.py documents the
protocol and the security model).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import hmac
import io as _io
import ipaddress
import json
import math
import threading
import urllib.parse
from typing import Any

from absl import logging
from aiohttp import web
import cv2
import numpy as np

from lsd_jax.stream import control, engine, session_worker

MAX_MESSAGE_BYTES = 2 * 1024 * 1024
MAX_TEXT_BYTES = 64 * 1024  # a prompt message; larger text is refused before parsing
MAX_SESSIONS = 2
IDLE_TIMEOUT_S = 60.0
MAX_PIXELS = 4096 * 4096  # a decoded frame's cap: a small JPEG can claim a huge size
JPEG_QUALITY = 85
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WEB_FILES = {"/": ("index.html", "text/html"), "/page.js": ("page.js", "text/javascript"),
             "/style.css": ("style.css", "text/css")}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' blob: data:; "
                                "media-src 'self' blob: mediastream:; connect-src 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
CLOSE_BUSY, CLOSE_IDLE, CLOSE_FAILED = 1013, 4000, 1011


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


def public_model(info: engine.ModelInfo) -> dict[str, Any]:
  """What clients learn about the model: its name and shape, never where its files are."""
  d = info.to_dict()
  d.pop("checkpoint", None)
  return d


def parse_prompt_message(raw: str) -> tuple[str, int]:
  """(text, transition) of a {"type": "prompt"} message; ValueError with the reason otherwise
  (oversized, not JSON, nested too deep for the parser, wrong types, out of range)."""
  if len(raw) > MAX_TEXT_BYTES:
    raise ValueError(f"text message over {MAX_TEXT_BYTES} bytes")
  try:
    msg = json.loads(raw)
  except RecursionError as e:
    raise ValueError("JSON nested too deeply") from e
  if not isinstance(msg, dict) or msg.get("type") != "prompt":
    raise ValueError('want {"type": "prompt", "text": ..., "transition": N}')
  text, transition = msg.get("text", ""), msg.get("transition", 0)
  if isinstance(transition, float) and math.isfinite(transition) and transition.is_integer():
    transition = int(transition)
  if isinstance(transition, bool) or not isinstance(transition, int):
    raise ValueError(f"transition must be a whole number of frames, got {transition!r:.40}")
  cmd = control.validate("transition", transition, "ws")  # range
  return control.validate("prompt", text, "ws").value, cmd.value


@dataclasses.dataclass
class ServerState:
  model: engine.StreamModel
  max_sessions: int = MAX_SESSIONS
  max_message_bytes: int = MAX_MESSAGE_BYTES
  loopback: bool = True  # bound to loopback: Host names checked, same-origin pages may stream
  token: str | None = None  # a client presenting it may stream from anywhere
  seed: int = 0
  idle_timeout_s: float = IDLE_TIMEOUT_S
  vcam: Any = None  # a sink with write(frame): the output of one session at a time
  webrtc: bool = False  # /offer is served (aiortc is installed and --webrtc)
  active: int = 0
  served: int = 0
  vcam_owner: Any = None
  vcam_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
  matcher: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
      default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lsd-match"))

  def __post_init__(self):
    if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
      raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters")
    self._digest = hashlib.sha256(self.token.encode()).digest() if self.token else None

  def token_matches(self, presented: str) -> bool:
    """Constant time: the digests (of fixed length) are compared with hmac.compare_digest."""
    if self._digest is None:
      return False
    return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest)

  def open_session(self) -> bool:
    if self.active >= self.max_sessions:
      return False
    self.active += 1
    self.served += 1
    return True

  def close_session(self, owner: Any) -> None:
    self.active -= 1
    with self.vcam_lock:
      if self.vcam_owner is owner:
        self.vcam_owner = None

  def to_vcam(self, owner: Any, frame: np.ndarray) -> None:
    """The first session to stream owns the virtual camera until it ends."""
    if self.vcam is None:
      return
    with self.vcam_lock:
      if self.vcam_owner is None:
        self.vcam_owner = owner
      if self.vcam_owner is owner:
        self.vcam.write(frame)


STATE_KEY = web.AppKey("lsd_state", ServerState)


def presented_token(request: web.Request) -> str | None:
  auth = request.headers.get("Authorization", "")
  if auth.lower().startswith("bearer "):
    return auth[7:].strip()
  return request.query.get("token")


def access_denied(request: web.Request) -> web.Response | None:
  """None if this request may open a stream; else the refusal (401 token, 403 origin)."""
  st = request.app[STATE_KEY]
  token = presented_token(request)
  peer = request.remote
  if token is not None:
    if st.token_matches(token):
      return None
    logging.warning("refused a stream from %s: wrong token", peer)
    return web.Response(status=401, text="wrong token", headers={"WWW-Authenticate": "Bearer"})
  if st.loopback and same_origin(request):
    return None
  if st.token is not None:
    logging.warning("refused a stream from %s: no token", peer)
    return web.Response(status=401, text="this server needs a token (Authorization: Bearer ...)",
                        headers={"WWW-Authenticate": "Bearer"})
  logging.warning("refused a stream from Origin %r (Host %r)", request.headers.get("Origin"),
                  request.host)
  return web.Response(status=403, text="cross-origin stream refused (start lsd-serve with "
                      "--token to let other clients in)")



def hello(st: ServerState, transport: str) -> dict[str, Any]:
  return {"type": "hello", "transport": transport, "model": public_model(st.model.info),
          "width": st.model.width, "height": st.model.height,
          "max_message_bytes": st.max_message_bytes, "idle_timeout_s": st.idle_timeout_s}


async def prompt_reply(st: ServerState, worker: session_worker.SessionWorker,
                       raw: str) -> dict[str, Any]:
  """Handles one prompt message of either transport; the reply to send (an error included)."""
  try:
    text, transition = parse_prompt_message(raw)
  except ValueError as e:
    return {"type": "error", "error": f"bad message: {e}"}
  worker.set_prompt(text, transition)
  loop = asyncio.get_running_loop()
  encoder = st.model.text_encoder if text.strip() else None
  effect = await loop.run_in_executor(st.matcher, control.nearest_effect, text, encoder)
  return {"type": "prompt", "text": text, "transition": transition, "effect": effect}


def new_worker(st: ServerState, decode, deliver, owner_name: str) -> session_worker.SessionWorker:
  session = engine.StreamSession(st.model, seed=st.seed + st.served)
  return session_worker.SessionWorker(session, decode, deliver, name=owner_name)
