r"""A Python client of lsd-serve's WebSocket API, for scripts, OBS, TouchDesigner and the like.

  from lsd_jax.stream.client import Client
  with Client("http://127.0.0.1:8765", token="...") as c:   # token: lsd-serve --token
    label = c.hello["model"]["label"]
    effect = c.set_prompt("thermal camera")                # {"name", "score", "weak"}
    out = c.process(frame)                                 # uint8 HxWx3 in, the model's size out
    server_ms, fps = c.last_stats["server_ms"], c.last_stats["fps"]

or from a shell (a source through a remote model into an mp4):

  python -m lsd_jax.stream.client_cli --url=http://127.0.0.1:8765 --token=... \
      --source=data/samples/bigbuckbunny_256.mp4 --prompt="pencil sketch" --frames=100 \
      --output=out/remote.mp4

The protocol is in lsd_jax/stream/server.py (and the README): JPEG frames in and out over
`/ws`, prompts as JSON text. `process` keeps one frame in flight; `send` and `receive` let a
client pipeline (the server keeps only the newest waiting frame and counts the rest as dropped).
A client needs the server's token unless it is a page the server served itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from typing import Any

import aiohttp
import cv2
import numpy as np

JPEG_QUALITY = 90


class ServerError(RuntimeError):
  """The server refused a frame or a message, or ended the session; the text says why."""


def _ws_url(url: str) -> str:
  u = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
  scheme = {"http": "ws", "https": "wss"}.get(u.scheme, u.scheme)
  return urllib.parse.urlunsplit((scheme, u.netloc, "/ws", "", ""))


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"want a uint8 HxWx3 RGB frame, got {rgb.dtype} {rgb.shape}")
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise ValueError("JPEG encoding failed")
  return buf.tobytes()


class Client:
  """A blocking client; the socket lives in a background event loop of its own."""

  def __init__(self, url: str = "http://127.0.0.1:8765", *, token: str | None = None,
               timeout_s: float = 60.0):
    self.url, self.timeout_s = _ws_url(url), timeout_s
    self._headers = {"Authorization": f"Bearer {token}"} if token else {}
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name="lsd-client", daemon=True)
    self._thread.start()
    self._session: aiohttp.ClientSession | None = None
    self._ws: aiohttp.ClientWebSocketResponse | None = None
    self._frames: asyncio.Queue | None = None
    self._prompts: asyncio.Queue | None = None
    self.hello: dict[str, Any] = {}
    self.last_stats: dict[str, Any] = {}
    self.errors: list[str] = []
    try:
      self._call(self._connect())
    except BaseException:
      self.close()
      raise

  def _call(self, coro, timeout_s: float | None = None):
    fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
    try:
      return fut.result(timeout=timeout_s or self.timeout_s)
    except TimeoutError as e:
      fut.cancel()
      raise TimeoutError(f"no answer from {self.url} within {timeout_s or self.timeout_s} s") from e

  async def _connect(self) -> None:
    self._frames, self._prompts = asyncio.Queue(), asyncio.Queue()
    self._session = aiohttp.ClientSession()
    try:
      self._ws = await self._session.ws_connect(self.url, headers=self._headers,
                                                max_msg_size=64 * 2**20)
    except aiohttp.WSServerHandshakeError as e:
      raise ServerError(f"{self.url} refused the connection: {e.status} {e.message}") from e
    except aiohttp.ClientError as e:
      raise ServerError(f"cannot connect to {self.url}: {e}") from e
    first = await self._ws.receive(timeout=self.timeout_s)
    if first.type != aiohttp.WSMsgType.TEXT:
      raise ServerError(f"{self.url}: no hello from the server ({first.type.name})")
    msg = json.loads(first.data)
    if msg.get("type") != "hello":
      raise ServerError(f"{self.url}: {msg.get('error', msg)}")
    self.hello = msg
    asyncio.ensure_future(self._read())

  async def _read(self) -> None:
    """Sorts the server's messages: frames (a JPEG, then its stats), prompt replies, errors."""
    pending: np.ndarray | None = None
    async for msg in self._ws:
      if msg.type == aiohttp.WSMsgType.BINARY:
        bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
        pending = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      elif msg.type == aiohttp.WSMsgType.TEXT:
        data = json.loads(msg.data)
        kind = data.get("type")
        if kind == "frame":
          self.last_stats = data
          self._frames.put_nowait(pending)
          pending = None
        elif kind == "prompt":
          self._prompts.put_nowait(data)
        elif kind == "error":
          self.errors.append(data["error"])
          error = ServerError(data["error"])
          if data["error"].startswith("bad message"):
            self._prompts.put_nowait(error)
          else:
            self._frames.put_nowait(error)
      else:
        break
    end = ServerError(f"the server closed the session ({self._ws.close_code})")
    self._frames.put_nowait(end)
    self._prompts.put_nowait(end)

  # -- the API --------------------------------------------------------------------------------

  def send(self, frame_HxWx3: np.ndarray) -> None:
    """Sends one frame without waiting for its output."""
    data = encode_jpeg(frame_HxWx3)
    self._call(self._ws.send_bytes(data))

  def receive(self, timeout_s: float | None = None) -> np.ndarray:
    """The next output frame (uint8 HxWx3 at the model's resolution); ServerError for a frame
    the server refused or a session it ended."""
    got = self._call(self._frames.get(), timeout_s)
    if isinstance(got, Exception):
      raise got
    return got

  def process(self, frame_HxWx3: np.ndarray) -> np.ndarray:
    """One frame in, its output back."""
    self.send(frame_HxWx3)
    return self.receive()

  def set_prompt(self, text: str, transition_frames: int = 0) -> dict[str, Any] | None:
    """Takes effect on the next frame; returns the nearest known effect of the prompt."""
    msg = json.dumps({"type": "prompt", "text": text, "transition": transition_frames})
    self._call(self._ws.send_str(msg))
    got = self._call(self._prompts.get())
    if isinstance(got, Exception):
      raise got
    return got.get("effect")

  def close(self) -> None:
    async def _close():
      if self._ws is not None:
        await self._ws.close()
      if self._session is not None:
        await self._session.close()

    if self._loop.is_running():
      try:
        self._call(_close(), 10)
      except (TimeoutError, aiohttp.ClientError):
        pass
      self._loop.call_soon_threadsafe(self._loop.stop)
      self._thread.join(10)

  def __enter__(self) -> "Client":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

