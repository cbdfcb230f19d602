r"""lsd-stream: stream a webcam, a video file, an image folder or procedural scenes through LSD.

  lsd-stream --source=data/samples/bigbuckbunny_256.mp4 --prompt="pencil sketch" \
      --side-by-side --output=out/demo.mp4 --stats=out/demo_stats.json

Files, folders and procedural scenes are processed losslessly (every frame) by default, cameras
in realtime (newest frame, older ones dropped and counted); --lossless / --nolossless override.
Without --checkpoint the shipped model in checkpoints/lsd_small is used, or, until it exists,
a random-init tiny model, labelled so everywhere.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS

flags.DEFINE_string("source", None, "webcam:N | a video file | an image folder | procedural[:SEED]")
flags.DEFINE_string("prompt", "", "Text prompt (empty: no effect).")
flags.DEFINE_string("prompt-schedule", None, "JSON or 'frame_index<TAB>prompt' lines: prompt "
                    "changes by frame.")
flags.DEFINE_integer("transition-frames", 0, "Blend prompt embeddings over this many frames at a "
                     "prompt change (0: switch at once).")
flags.DEFINE_string("output", None, "Write an H.264 mp4 here (its folder is created).")
flags.DEFINE_integer("frames", None, "Stop after this many frames.")
flags.DEFINE_bool("lossless", None, "Process every frame (default: yes for files, no for cameras).")
flags.DEFINE_bool("side-by-side", False, "Write input | output side by side.")
flags.DEFINE_string("stats", None, "Write the run's statistics as JSON here.")
flags.DEFINE_string("checkpoint", None, "Model folder (default: checkpoints/lsd_small, else a "
                    "labelled random-init tiny model).")
flags.DEFINE_integer("steps", None, "Shortcut steps per frame (default: the model's).")
flags.DEFINE_float("tau-inf", None, "History noise level at inference, in [0, 1) (default: the "
                  "model's). Higher follows the input and prompt switches faster but flickers more.")
# pallas_kernels.api.IMPLEMENTATIONS, spelt out: this module imports jax only in _main.
flags.DEFINE_enum("kernel-impl", None, ["auto", "xla", "mosaic", "triton", "megastep"],
                  "Denoiser ops implementation (default: the model's, xla): auto picks Pallas kernels "
                  "on GPUs; megastep runs each denoiser step as one Mosaic GPU kernel on a Hopper GPU "
                  "(pallas_kernels/megastep_mgpu.py; elsewhere it acts as auto).")
flags.DEFINE_integer("seed", 0, "Stream seed (the noise of every frame derives from it).")
flags.DEFINE_bool("window", False, "Also show a window (needs a display).")
flags.DEFINE_bool("vcam", False, "Also send to a virtual camera (pip install 'lsd-jax[vcam]').")
flags.DEFINE_bool("profile", False, "Time encode, denoise and decode separately (three jitted "
                  "pieces instead of one fused step).")
flags.DEFINE_bool("progress", True, "Show a progress bar for files.")
for _name in ("prompt-schedule", "transition-frames", "side-by-side", "tau-inf", "kernel-impl"):
  flags.DEFINE_alias(_name.replace("-", "_"), _name)


def _main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.source:
    raise app.UsageError("--source is required (webcam:0, a video file, a folder, procedural)")
  from lsd_jax.models import export  # pylint: disable=import-outside-toplevel
  from lsd_jax.stream import app as stream_app  # pylint: disable=import-outside-toplevel
  from lsd_jax.stream import io  # pylint: disable=import-outside-toplevel

  opts = stream_app.StreamOptions(
      source=FLAGS.source, prompt=FLAGS.prompt, prompt_schedule=FLAGS["prompt-schedule"].value,
      output=FLAGS.output, frames=FLAGS.frames, lossless=FLAGS.lossless,
      side_by_side=FLAGS["side-by-side"].value, stats=FLAGS.stats, checkpoint=FLAGS.checkpoint,
      steps=FLAGS.steps, tau_inf=FLAGS["tau-inf"].value, kernel_impl=FLAGS["kernel-impl"].value,
      seed=FLAGS.seed, window=FLAGS.window, vcam=FLAGS.vcam,
      profile=FLAGS.profile, transition_frames=FLAGS["transition-frames"].value,
      progress=FLAGS.progress)
  try:
    result = stream_app.run(opts)
  except (io.SourceError, io.SinkUnavailable, export.CheckpointError, ValueError, OSError) as e:
    logging.error("%s", e)
    print(f"lsd-stream: error: {e}", file=sys.stderr)
    return 1
  print(stream_app.summary_table(result))
  if opts.stats:
    print(f"stats: {opts.stats}")
  if result.get("error"):
    print(f"lsd-stream: the source failed after {result['frames']} frames: {result['error']}",
          file=sys.stderr)
    return 1
  return 0


def main() -> None:
  """Console-script entry point (setup.cfg: lsd-stream = lsd_jax.stream.cli:main)."""
  app.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  main()
