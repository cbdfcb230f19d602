"""lsd-serve: the browser demo (WebRTC, WebSocket fallback) and its API for other clients.

  lsd-serve                                 # http://127.0.0.1:8765/, the default model
  lsd-serve --token=generate                # also lets non-browser clients in (the token is printed)
  lsd-serve --host=0.0.0.0                  # a token is required (generated and printed)
  lsd-serve --model_dir=checkpoints/lsd_small --steps=2 --max_sessions=1 --vcam

The port is opened first, then the model loads and compiles, then the server serves: a port in
use fails at once. Output frames come at the model's resolution, whatever the camera sends.
Ctrl-C stops it. lsd_jax/stream/server.py describes the security model and the protocol,
lsd_jax/stream/client.py is a Python client.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import threading

from absl import app, flags, logging

from lsd_jax.stream import cli_common, model_flags

FLAGS = flags.FLAGS
TOKEN_ENV = "LSD_SERVE_TOKEN"
flags.DEFINE_string("host", "127.0.0.1", "Address to bind. Anything but loopback needs a token "
                    "(one is generated when --token is not given).")
flags.DEFINE_integer("port", 8765, "TCP port, 1..65535.", lower_bound=1, upper_bound=65535)
flags.DEFINE_string("token", None, "Lets clients that present it stream without a same-origin "
                    "page (Authorization: Bearer TOKEN, or ?token=); 'generate' makes one. At "
                    f"least 16 characters. Also read from ${TOKEN_ENV} (not shown by ps).")
flags.DEFINE_integer("max_sessions", 2, "Concurrent streams (at least 1); more get 'server busy'.",
                     lower_bound=1)
flags.DEFINE_float("max_message_mb", 2.0, "Largest message accepted, MiB.", lower_bound=0.01)
flags.DEFINE_float("idle_timeout", 60.0, "Seconds after which a connection that sends nothing is "
                   "closed (streams and half-sent requests alike).", lower_bound=1.0)
flags.DEFINE_bool("webrtc", True, "Offer WebRTC (aiortc); the page falls back to the WebSocket.")
flags.DEFINE_bool("vcam", False, "Also send the output of the first session to a virtual camera "
                  "(for OBS; pip install 'lsd-jax[vcam]').")


def _token(loopback: bool) -> str | None:
  token = FLAGS.token if FLAGS.token is not None else os.environ.get(TOKEN_ENV) or None
  if token == "generate" or (token is None and not loopback):
    return secrets.token_urlsafe(24)
  if token is not None and len(token) < 16:
    raise app.UsageError("--token needs at least 16 characters (or --token=generate)")
  return token


def _vcam(width: int, height: int):
  from lsd_jax.stream import io  # pylint: disable=import-outside-toplevel

  return io.VirtualCamSink(width, height, 30.0)


def _serve(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lsd_jax.stream import server  # pylint: disable=import-outside-toplevel

  loopback = server.is_loopback(FLAGS.host)
  token = _token(loopback)
  if FLAGS.vcam:
    try:
      import pyvirtualcam  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      print("lsd-serve: error: --vcam needs pyvirtualcam: pip install 'lsd-jax[vcam]' "
            "(pyvirtualcam==0.15.0, plus v4l2loopback on Linux)", file=sys.stderr)
      return 1
  try:
    sock = server.listen(FLAGS.host, FLAGS.port)
  except OSError as e:
    print(f"lsd-serve: error: {e.strerror or e}", file=sys.stderr)
    return 1
  if not loopback:
    logging.warning("lsd-serve listens on %s, NOT loopback: anyone who can reach port %d and "
                    "has the token can stream through this model. Prefer an SSH tunnel to "
                    "127.0.0.1.", FLAGS.host, FLAGS.port)
  stop = threading.Event()
  watch = cli_common.InterruptWatch("lsd-serve", stop, "stopping after the warm-up")
  from lsd_jax.models import export  # pylint: disable=import-outside-toplevel
  from lsd_jax.stream import engine, io  # pylint: disable=import-outside-toplevel

  try:
    model = engine.StreamModel.load(model_flags.MODEL_DIR.value, **model_flags.model_kwargs())
    vcam = _vcam(model.width, model.height) if FLAGS.vcam else None
  except (export.CheckpointError, io.SinkUnavailable, ValueError, OSError) as e:
    print(f"lsd-serve: error: {e}", file=sys.stderr)
    return 1
  logging.info("model: %s; compiling", model.info.label)
  warm = engine.StreamSession(model).warmup()
  if stop.is_set():
    print("lsd-serve: interrupted during the warm-up", file=sys.stderr)
    return cli_common.EXIT_INTERRUPTED
  logging.info("ready after %.1f s of compilation", warm)
  application = server.make_app(
      model, max_sessions=FLAGS.max_sessions, max_message_bytes=int(FLAGS.max_message_mb * 2**20),
      check_host=loopback, token=token, seed=model_flags.SEED.value,
      idle_timeout_s=FLAGS.idle_timeout, vcam=vcam, webrtc=FLAGS.webrtc)
  port = sock.getsockname()[1]
  shown = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
  url = f"http://{shown}:{port}/"

  def ready() -> None:  # called inside the running loop, once the server accepts connections
    print(f"lsd-serve: {url}{'#token=' + token if token else ''}  model: {model.info.label}",
          flush=True)
    if token:
      print(f"lsd-serve: token {token} (clients: Authorization: Bearer TOKEN; the page: the URL "
            "above)", flush=True)

  try:
    # The event loop is built while the watch still holds Ctrl-C: a KeyboardInterrupt inside the
    # loop's constructor left a half-built loop whose destructor printed a traceback (CI,
    # 2026-12-01). After restore(), Runner.run installs asyncio's own SIGINT handler, which
    # cancels serve_forever; the URL is printed only from inside it.
    with asyncio.Runner() as runner:
      runner.get_loop()
      watch.restore()
      if stop.is_set():
        print("lsd-serve: interrupted before listening", file=sys.stderr)
        return cli_common.EXIT_INTERRUPTED
      runner.run(server.serve_forever(application, sock, FLAGS.idle_timeout, on_ready=ready))
  except KeyboardInterrupt:
    print("lsd-serve: stopped", file=sys.stderr)
  finally:
    if vcam is not None:
      vcam.close()
  return 0


def main() -> None:
  """Console-script entry point (setup.cfg: lsd-serve = lsd_jax.stream.serve_cli:main)."""
  cli_common.own_help(__doc__, [__name__, model_flags.__name__])
  cli_common.quiet_backend_probe()
  app.run(lambda argv: sys.exit(_serve(argv)))


if __name__ == "__main__":
  main()
