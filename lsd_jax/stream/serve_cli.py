"""`lsd-serve`: the command line of the browser demo (lsd_jax/stream/server.py is the app).

  lsd-serve [--host=127.0.0.1] [--port=8765] [--checkpoint=DIR] [--steps=S] [--tau_inf=T]
            [--kernel_impl=auto|xla|mosaic|triton|megastep]
"""

from __future__ import annotations

import socket
import sys

from absl import app, flags, logging
from aiohttp import web

from lsd_jax.models import export
from lsd_jax.stream import engine, server
from pallas_kernels import api

FLAGS = flags.FLAGS
flags.DEFINE_string("host", "127.0.0.1", "Address to bind. Anything but loopback exposes the model "
                    "(and your GPU) to the network.")
flags.DEFINE_integer("port", 8765, "Port.")
flags.DEFINE_string("checkpoint", None, "Model folder (default: checkpoints/lsd_small, else a "
                    "labelled random-init tiny model).")
flags.DEFINE_integer("steps", None, "Shortcut steps per frame (default: the model's).")
flags.DEFINE_float("tau_inf", None, "History noise level at inference, in [0, 1) (default: the model's).")
flags.DEFINE_enum("kernel_impl", None, list(api.IMPLEMENTATIONS),
                  "Denoiser ops implementation (default: the model's); as lsd-stream --kernel-impl.")
flags.DEFINE_integer("max_sessions", server.MAX_SESSIONS, "Concurrent streams; more get 'server busy'.")
flags.DEFINE_float("max_message_mb", server.MAX_MESSAGE_BYTES / 2**20, "Largest message accepted, MiB.")
flags.DEFINE_integer("seed", 0, "Seed of the first session (each next one adds 1).")


def _serve(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  loopback = server.is_loopback(FLAGS.host)
  if not loopback:
    banner = "!" * 78
    logging.warning("\n%s\nlsd-serve is listening on %s, NOT loopback: anyone who can reach port %d "
                    "can stream through this model.\nThere is no authentication. Prefer an SSH "
                    "tunnel to 127.0.0.1.\n%s", banner, FLAGS.host, FLAGS.port, banner)
  try:
    model = engine.StreamModel.load(FLAGS.checkpoint, steps=FLAGS.steps, tau_inf=FLAGS.tau_inf,
                                    kernel_impl=FLAGS.kernel_impl)
  except (export.CheckpointError, ValueError, OSError) as e:
    print(f"lsd-serve: error: {e}", file=sys.stderr)
    sys.exit(1)
  logging.info("model: %s; compiling", model.info.label)
  warm = engine.StreamSession(model).warmup()
  logging.info("ready after %.1f s of compilation", warm)
  application = server.make_app(model, max_sessions=FLAGS.max_sessions,
                                max_message_bytes=int(FLAGS.max_message_mb * 2**20), check_host=loopback,
                                seed=FLAGS.seed)
  shown = f"[{FLAGS.host}]" if ":" in FLAGS.host else FLAGS.host
  print(f"lsd-serve: http://{shown}:{FLAGS.port}/  model: {model.info.label}", flush=True)
  web.run_app(application, host=FLAGS.host, port=FLAGS.port, print=None,
              reuse_address=True, family=socket.AF_INET6 if ":" in FLAGS.host else socket.AF_INET)


def main() -> None:
  """Console-script entry point (setup.cfg: lsd-serve = lsd_jax.stream.serve_cli:main)."""
  app.run(_serve)


if __name__ == "__main__":
  main()
