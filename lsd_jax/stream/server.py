r"""lsd-serve: the browser demo and an API for non-browser clients (serve_cli.py parses flags).

The page captures the camera (getUserMedia) and streams it over WebRTC (a video track each way,
webrtc.py; aiortc), or over a WebSocket of JPEG frames where WebRTC cannot connect. It shows
input and output side by side, a prompt box with the nearest known effect, and fps and latency
from the server's own per-frame timestamps.

Security:
- Binds 127.0.0.1 unless told otherwise. On a loopback bind, requests must name a loopback Host
  (against DNS rebinding) and streams are open to same-origin pages only (Origin == Host).
- With a token (`lsd-serve --token`, always on a non-loopback bind, where one is generated if
  none is given) a client presenting it may stream from anywhere: `Authorization: Bearer TOKEN`
  or `?token=TOKEN` (what the page does, reading it from its URL's #token=...). A wrong token is
  refused (401) after a constant-time comparison of digests. On a non-loopback bind nothing
  streams without the token, the page included.
- Messages are capped (--max_message_mb, default 2), JPEGs larger than MAX_PIXELS are refused
  before decoding, sessions are capped (--max_sessions; the next one gets "server busy"), idle
  connections are closed (--idle_timeout), and clients never name a file: they send frames and
  prompt text only. `/info` and `hello` name the model, never its folder.

WebSocket protocol (`/ws`; one StreamSession per connection, all sharing one StreamModel):
  client -> server  binary: a JPEG frame
                    text: {"type": "prompt", "text": str, "transition": int frames in 0..1000}
  server -> client  text {"type": "hello", "model": {...}, "width", "height", ...} once;
                    per frame a binary JPEG (at the model's resolution), then text
                    {"type": "frame", "index", "server_ms", "p50_ms", "p99_ms", "fps", "dropped",
                    "bad_frames"}; {"type": "prompt", "text", "effect": {"name", "score", "weak"}}
                    after a prompt; {"type": "error", "error": str} for a bad message or frame
                    (the session goes on) or, before the socket closes, for a fatal one.
  close codes: 1013 server busy, 4000 idle for --idle_timeout s, 1011 the model failed.
The server keeps only the newest unprocessed frame of a connection (older ones are dropped and
counted: `dropped`), so a client may send faster than the model runs.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import socket
from typing import Any, Callable

from absl import logging
from aiohttp import WSMsgType, web

from lsd_jax.stream import engine, session_worker
# The shared pieces, under their old names here too (tests and callers use server.X).
from lsd_jax.stream.access import (CLOSE_BUSY, CLOSE_FAILED, CLOSE_IDLE, IDLE_TIMEOUT_S, JPEG_QUALITY,  # noqa: F401
                                   LOOPBACK_NAMES, MAX_MESSAGE_BYTES, MAX_PIXELS, MAX_SESSIONS, MAX_TEXT_BYTES,
                                   MIN_TOKEN_CHARS, SECURITY_HEADERS, STATE_KEY, WEB_FILES, ServerState,
                                   _hostname, access_denied, decode_jpeg, encode_jpeg, hello, is_loopback,
                                   new_worker, parse_prompt_message, presented_token, prompt_reply, public_model,
                                   same_origin)

@web.middleware
async def _guard(request: web.Request, handler):
  st = request.app[STATE_KEY]
  if st.loopback and not is_loopback(_hostname(request.host or "")):
    return web.Response(status=403, text="Host not allowed (the server is bound to loopback)")
  resp = await handler(request)
  if isinstance(resp, web.Response):
    resp.headers.update(SECURITY_HEADERS)
  return resp


async def _static(request: web.Request) -> web.Response:
  name, ctype = WEB_FILES[request.path]
  body = importlib.resources.files("lsd_jax.stream").joinpath("web", name).read_bytes()
  return web.Response(body=body, content_type=ctype)


def _webrtc_available() -> bool:
  from lsd_jax.stream import webrtc  # pylint: disable=import-outside-toplevel

  return webrtc.available()


async def _info(request: web.Request) -> web.Response:
  st = request.app[STATE_KEY]
  return web.json_response({"model": public_model(st.model.info), "width": st.model.width,
                            "height": st.model.height, "max_sessions": st.max_sessions,
                            "active_sessions": st.active, "max_message_bytes": st.max_message_bytes,
                            "webrtc": st.webrtc, "token_required": not st.loopback,
                            "idle_timeout_s": st.idle_timeout_s})


async def _websocket(request: web.Request) -> web.StreamResponse:
  st = request.app[STATE_KEY]
  denied = access_denied(request)
  if denied is not None:
    return denied
  ws = web.WebSocketResponse(max_msg_size=st.max_message_bytes, heartbeat=30.0)
  await ws.prepare(request)
  if not st.open_session():
    await ws.send_json({"type": "error", "error": f"server busy: {st.max_sessions} session(s) "
                        "already streaming; try again later"})
    await ws.close(code=CLOSE_BUSY, message=b"server busy")
    return ws
  loop = asyncio.get_running_loop()
  worker = None
  fatal: list[str] = []

  def deliver(result: session_worker.Result) -> None:  # in the worker thread
    if result.error is not None:
      msg = {"type": "error", "error": result.error, **result.stats}
      if result.fatal:
        fatal.append(result.error)
      fut = asyncio.run_coroutine_threadsafe(_send_error(ws, msg, result.fatal), loop)
    else:
      st.to_vcam(worker, result.frame)
      fut = asyncio.run_coroutine_threadsafe(_send_frame(ws, encode_jpeg(result.frame),
                                                         result.stats), loop)
    try:
      fut.result(timeout=30)  # back-pressure: one frame in the socket at a time
    except Exception:  # pylint: disable=broad-except  (the socket went away; the loop ends it)
      pass

  try:
    worker = await loop.run_in_executor(None, new_worker, st, decode_jpeg, deliver, "lsd-ws")
    await ws.send_json(hello(st, "websocket"))
    while not ws.closed:
      try:
        msg = await ws.receive(timeout=st.idle_timeout_s)
      except asyncio.TimeoutError:
        await ws.send_json({"type": "error", "error": f"idle for {st.idle_timeout_s:.0f} s: "
                            "closing (reconnect to go on)"})
        await ws.close(code=CLOSE_IDLE, message=b"idle")
        break
      if msg.type == WSMsgType.BINARY:
        worker.offer(msg.data)
      elif msg.type == WSMsgType.TEXT:
        await ws.send_json(await prompt_reply(st, worker, msg.data))
      elif msg.type == WSMsgType.ERROR:
        logging.warning("WebSocket closed with an error: %s", ws.exception())
        break
      elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        break
  finally:
    st.close_session(worker)
    if worker is not None:
      await loop.run_in_executor(None, worker.close)
  return ws


async def _send_frame(ws: web.WebSocketResponse, jpeg: bytes, stats: dict[str, Any]) -> None:
  if ws.closed:
    return
  await ws.send_bytes(jpeg)
  await ws.send_json(stats)


async def _send_error(ws: web.WebSocketResponse, msg: dict[str, Any], fatal: bool) -> None:
  if ws.closed:
    return
  await ws.send_json(msg)
  if fatal:
    await ws.close(code=CLOSE_FAILED, message=b"the model failed")


def make_app(model: engine.StreamModel, *, max_sessions: int = MAX_SESSIONS,
             max_message_bytes: int = MAX_MESSAGE_BYTES, check_host: bool = True,
             token: str | None = None, seed: int = 0, idle_timeout_s: float = IDLE_TIMEOUT_S,
             vcam: Any = None, webrtc: bool = True) -> web.Application:
  """The aiohttp application (tests drive it with aiohttp.test_utils). `check_host` means a
  loopback bind (Host names checked, same-origin pages may stream without a token)."""
  application = web.Application(middlewares=[_guard], client_max_size=max_message_bytes)
  st = ServerState(model, max_sessions=max_sessions, max_message_bytes=max_message_bytes,
                   loopback=check_host, token=token, seed=seed, idle_timeout_s=idle_timeout_s,
                   vcam=vcam)
  application[STATE_KEY] = st
  for path in WEB_FILES:
    application.router.add_get(path, _static)
  application.router.add_get("/info", _info)
  application.router.add_get("/ws", _websocket)
  if webrtc and _webrtc_available():
    from lsd_jax.stream import webrtc as webrtc_lib  # pylint: disable=import-outside-toplevel

    webrtc_lib.add_routes(application)
    st.webrtc = True

  async def _shutdown(a: web.Application) -> None:
    a[STATE_KEY].matcher.shutdown(wait=False, cancel_futures=True)

  application.on_shutdown.append(_shutdown)
  return application


def listen(host: str, port: int) -> socket.socket:
  """A bound, listening socket, or OSError naming the address (before any model loads)."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
  except OSError as e:
    sock.close()
    why = {98: "the address is already in use (another lsd-serve? pick --port)",
           99: "this machine has no such address",
           13: "permission denied (ports below 1024 need privileges)"}.get(e.errno, e.strerror)
    raise OSError(e.errno, f"cannot listen on {host}:{port}: {why}") from e
  sock.setblocking(False)
  return sock


async def start(application: web.Application, sock: socket.socket,
                idle_timeout_s: float = IDLE_TIMEOUT_S) -> web.AppRunner:
  """Serves `application` on an already listening socket. Connections that send no complete
  request within idle_timeout_s (idle keep-alive, half-sent headers) are closed."""
  runner = web.AppRunner(application, access_log=None, handle_signals=False,
                         keepalive_timeout=idle_timeout_s)
  await runner.setup()
  await web.SockSite(runner, sock).start()
  return runner


async def serve_forever(application: web.Application, sock: socket.socket, idle_timeout_s: float = IDLE_TIMEOUT_S,
                        on_ready: Callable[[], None] | None = None) -> None:
  """Serves until cancelled; `on_ready()` runs once the server accepts connections."""
  runner = await start(application, sock, idle_timeout_s)
  if on_ready is not None:
    on_ready()
  try:
    while True:
      await asyncio.sleep(3600)
  finally:
    await runner.cleanup()
