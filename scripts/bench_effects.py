"""Effect rendering throughput: frames/s of jitted, vmapped render_clip, median after warm-up.

  .venv/bin/python scripts/bench_effects.py                      # 256x256 and 832x480, batch 8
  .venv/bin/python scripts/bench_effects.py --sizes=256x256 --batch=32

Each batch item has a different effect, so every lax.switch branch runs (as in training).
"""

from absl import app
from absl import flags

from lsd_jax.datasets import effects

_SIZES = flags.DEFINE_list("sizes", ["256x256", "480x832"], "HxW frame sizes.")
_BATCH = flags.DEFINE_integer("batch", 8, "Clips per batch.")
_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after one warm-up.")


def main(argv):
  del argv
  for size in _SIZES.value:
    h, w = (int(v) for v in size.split("x"))
    r = effects.benchmark(h, w, _BATCH.value, _FRAMES.value, _REPEATS.value)
    print(f"{r['device']}: {h}x{w} batch {r['batch']}: {r['frames_per_s']:.1f} frames/s "
          f"({r['ms_per_batch_frame']:.1f} ms per batch step)")


if __name__ == "__main__":
  app.run(main)
