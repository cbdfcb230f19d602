r"""lsd-stream: stream a webcam, a video file, an image folder or procedural scenes through LSD.

  lsd-stream --source=data/samples/bigbuckbunny_256.mp4 --prompt="pencil sketch" \
      --side_by_side --output=out/demo.mp4 --stats=out/demo_stats.json

Files, folders and procedural scenes are processed losslessly (every frame) by default, cameras
in realtime (newest frame, older ones dropped and counted); --lossless / --nolossless override.
Output frames come at the model's resolution (the summary's "model" row), whatever the input
size. Without --model_dir the shipped model in checkpoints/lsd_small is used, or, until it
exists, a random-init tiny model, labelled so everywhere.

Live prompts: type a prompt and Enter (one line, one prompt; it takes effect on the next frame),
or send OSC /lsd/prompt, /lsd/transition, /lsd/seed to --osc_port. Ctrl-C stops at the next frame
and still writes the output, the summary and --stats; a second Ctrl-C quits at once.
Exit status: 0 done, 1 an error (a truncated source, a failure mid-stream), 130 interrupted.
"""

from __future__ import annotations

import sys
import threading

from absl import app, flags, logging

from lsd_jax.stream import cli_common, model_flags

FLAGS = flags.FLAGS

flags.DEFINE_string("source", None, "webcam:N | a video file | an image folder | procedural[:SEED]")
flags.DEFINE_string("prompt", "", "Text prompt (empty: no effect).")
flags.DEFINE_string("prompt_schedule", None, "JSON or 'frame_index<TAB>prompt' lines: prompt "
                    "changes by frame.")
flags.DEFINE_integer("transition_frames", 0, "Blend prompt embeddings over this many frames at a "
                     "prompt change (0: switch at once).", lower_bound=0)
flags.DEFINE_string("output", None, "Write an H.264 mp4 here (its folder is created; never the "
                    "source).")
flags.DEFINE_integer("frames", None, "Stop after this many frames (at least 1).", lower_bound=1)
flags.DEFINE_bool("lossless", None, "Process every frame (default: yes for files, no for cameras).")
flags.DEFINE_bool("side_by_side", False, "Write input | output side by side.")
flags.DEFINE_string("stats", None, "Write the run's statistics as JSON here.")
flags.DEFINE_bool("window", False, "Also show a window (needs a display).")
flags.DEFINE_bool("vcam", False, "Also send to a virtual camera (pip install 'lsd-jax[vcam]').")
flags.DEFINE_bool("profile", False, "Time encode, denoise and decode separately (three jitted "
                  "pieces instead of one fused step).")
flags.DEFINE_bool("progress", True, "Show a progress bar for files.")
flags.DEFINE_bool("stdin_prompts", True, "Read prompt changes from stdin, one line per prompt.")
flags.DEFINE_integer("osc_port", 0, "Listen for OSC prompt control on this UDP port (0: off; "
                     "pip install 'lsd-jax[osc]').", lower_bound=0, upper_bound=65535)
flags.DEFINE_string("osc_host", "127.0.0.1", "Address the OSC listener binds.")
for _name in ("prompt_schedule", "transition_frames", "side_by_side"):  # earlier spellings
  flags.DEFINE_alias(_name.replace("_", "-"), _name)


def _options():
  from lsd_jax.stream import runner  # pylint: disable=import-outside-toplevel

  return runner.StreamOptions(
      source=FLAGS.source, prompt=FLAGS.prompt, prompt_schedule=FLAGS.prompt_schedule,
      output=FLAGS.output, frames=FLAGS.frames, lossless=FLAGS.lossless,
      side_by_side=FLAGS.side_by_side, stats=FLAGS.stats, model_dir=model_flags.MODEL_DIR.value,
      seed=model_flags.SEED.value, window=FLAGS.window, vcam=FLAGS.vcam, profile=FLAGS.profile,
      transition_frames=FLAGS.transition_frames, progress=FLAGS.progress,
      **model_flags.model_kwargs())


def _live_control(stack: list):
  from lsd_jax.stream import control  # pylint: disable=import-outside-toplevel

  live = control.LiveControl()
  if FLAGS.stdin_prompts and sys.stdin is not None and not sys.stdin.closed:
    control.start_stdin(live, sys.stdin)
    if sys.stdin.isatty():
      print("lsd-stream: type a prompt and Enter to change it live", file=sys.stderr)
  if FLAGS.osc_port:
    osc = control.OscServer(live, FLAGS.osc_host, FLAGS.osc_port)
    stack.append(osc)
  return live


def _main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.source:
    raise app.UsageError("--source is required (webcam:0, a video file, a folder, procedural)")
  stop = threading.Event()
  watch = cli_common.InterruptWatch("lsd-stream", stop, "stopping at the next frame, then "
                                    "writing the output and the stats")
  from lsd_jax.models import export  # pylint: disable=import-outside-toplevel
  from lsd_jax.stream import io, runner  # pylint: disable=import-outside-toplevel

  servers: list = []
  try:
    opts = _options()
    runner.check_options(opts)  # before the OSC port opens and the model loads
    result = runner.run(opts, stop=stop, control=_live_control(servers))
  except (runner.OptionError, io.SourceError, io.SinkUnavailable, export.CheckpointError,
          ValueError, RuntimeError, OSError) as e:
    logging.debug("error", exc_info=True)
    print(f"lsd-stream: error: {e}", file=sys.stderr)
    return cli_common.EXIT_INTERRUPTED if watch.interrupted else 1
  finally:
    for s in servers:
      s.close()
  print(runner.summary_table(result))
  return _report(result, opts, watch.interrupted)


def _report(result: dict, opts, interrupted: bool) -> int:
  """Problems after the summary table, on stderr; the exit status."""
  status = 0
  if result.get("stats_error"):
    print(f"lsd-stream: error: {result['stats_error']}", file=sys.stderr)
    status = 1
  elif opts.stats:
    print(f"stats: {opts.stats}")
  if result.get("error"):
    print(f"lsd-stream: the {result['failed']} failed after {result['frames']} frames: "
          f"{result['error']}", file=sys.stderr)
    status = 1
  if result.get("truncated"):
    print(f"lsd-stream: {result['source']} is truncated: read {result['captured'] + result['corrupt']}"
          f" of the {result['frames_expected']} frames its header promises (damaged or cut short)",
          file=sys.stderr)
    status = 1
  if opts.output and not result.get("output"):
    print(f"lsd-stream: nothing was streamed, so {opts.output} was not written", file=sys.stderr)
  if interrupted or result.get("interrupted"):
    print(f"lsd-stream: interrupted after {result['frames']} frames", file=sys.stderr)
    return cli_common.EXIT_INTERRUPTED
  return status


def main() -> None:
  """Console-script entry point (setup.cfg: lsd-stream = lsd_jax.stream.cli:main)."""
  cli_common.own_help(__doc__, [__name__, model_flags.__name__])
  cli_common.quiet_backend_probe()
  app.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  main()
