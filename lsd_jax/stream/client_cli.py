"""`python -m lsd_jax.stream.client_cli`: streams a source through a remote lsd-serve with the
Python client (`lsd_jax.stream.client.Client`), into an mp4 or nowhere, and prints what it got
(the model, the prompt's nearest effect, fps and the server's p50)."""

import argparse
import sys
import time

from lsd_jax.stream import io
from lsd_jax.stream.client import Client, ServerError


def main(argv: list[str] | None = None) -> int:
  """Streams a source through a remote lsd-serve into an mp4 (or nowhere), printing fps."""
  p = argparse.ArgumentParser(prog="python -m lsd_jax.stream.client_cli", description=main.__doc__)
  p.add_argument("--url", default="http://127.0.0.1:8765")
  p.add_argument("--token", default=None, help="the server's token (lsd-serve --token)")
  p.add_argument("--source", required=True, help="a video file, an image folder, procedural")
  p.add_argument("--prompt", default="")
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--output", default=None, help="an mp4 of the output frames")
  args = p.parse_args(argv)
  try:
    source = io.open_source(args.source)
    with Client(args.url, token=args.token) as c:
      print(f"model: {c.hello['model']['label']}", file=sys.stderr)
      if args.prompt:
        effect = c.set_prompt(args.prompt)
        if effect:
          print(f"prompt {args.prompt!r}: nearest known effect {effect['name']} "
                f"({effect['score']:.2f})", file=sys.stderr)
      sink = io.Mp4Sink(args.output, source.fps) if args.output else None
      n, t0 = 0, time.perf_counter()
      try:
        for frame in source:
          out = c.process(frame)
          if sink is not None:
            sink.write(out)
          n += 1
          if args.frames is not None and n >= args.frames:
            break
      finally:
        if sink is not None:
          sink.close()
      dt = time.perf_counter() - t0
      print(f"{n} frames, {n / dt if dt else 0:.2f} fps, server p50 "
            f"{c.last_stats.get('p50_ms', float('nan')):.1f} ms", file=sys.stderr)
  except (ServerError, io.SourceError, TimeoutError, OSError, ValueError) as e:
    print(f"lsd client: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
