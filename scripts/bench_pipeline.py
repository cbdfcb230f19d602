"""Input pipeline throughput: frames per second delivered, per source and for the mixture.

    .venv/bin/python scripts/bench_pipeline.py                      # 256x256, T=4, batch 8
    .venv/bin/python scripts/bench_pipeline.py --worker_counts=0,2 --read_threads=2
    .venv/bin/python scripts/bench_pipeline.py --decoded_cache=/tmp/lsd_decoded   # library pre-decoded

Needs the clip library (`.venv/bin/python data/prepare_library.py`). Prompts are a random
table of the real shape: their content does not change the pipeline's cost. Reports the median
over --repeats timed runs of --batches batches each, after --warmup batches.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags, logging
import numpy as np

from lsd_jax.datasets import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_integer("height", 256, "Clip height.")
flags.DEFINE_integer("width", 256, "Clip width.")
flags.DEFINE_integer("num_frames", 4, "Frames per clip (T).")
flags.DEFINE_integer("batch", 8, "Batch size (one process).")
flags.DEFINE_list("worker_counts", ["0", "2"], "grain worker processes to try (0 = threads).")
flags.DEFINE_integer("read_threads", 2, "grain read threads per process / worker.")
flags.DEFINE_integer("warmup", 4, "Untimed batches first.")
flags.DEFINE_integer("batches", 12, "Batches per timed run.")
flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
flags.DEFINE_string("manifest", "data/library/manifest.json", "Clip library manifest.")
flags.DEFINE_string("decoded_cache", "", "config.sources.library.decoded_cache (empty: decode per read).")
flags.DEFINE_list("sources", ["mixture", "library", "photos", "procedural"], "What to time.")
flags.DEFINE_float("step_ms", 100.0, "Train step time to compare with (ms).")
flags.DEFINE_integer("step_batch", 32, "Clips per train step to compare with.")


def random_prompt_table(num_prompts: int = 64, num_params: int = 8) -> pipeline.PromptTable:
  rng = np.random.default_rng(0)
  return pipeline.PromptTable(
      texts=tuple(f"prompt {i}" for i in range(num_prompts)),
      embeddings=rng.normal(size=(num_prompts, pipeline.EMBED_DIM)),
      frame_ids=rng.integers(0, 8, num_prompts), temporal_ids=rng.integers(0, 4, num_prompts),
      params=rng.normal(size=(num_prompts, num_params)))


def frames_per_second(config, table) -> tuple[float, list[float]]:
  iterator = pipeline.make_iterator(config, table, process_index=0, process_count=1)
  try:
    for _ in range(FLAGS.warmup):
      next(iterator)
    rates = []
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      for _ in range(FLAGS.batches):
        next(iterator)
      elapsed = time.perf_counter() - start
      rates.append(FLAGS.batches * config.global_batch_size * config.num_frames / elapsed)
  finally:
    if hasattr(iterator, "close"):
      iterator.close()
  return statistics.median(rates), rates


def main(argv):
  del argv
  table = random_prompt_table()
  base = pipeline.default_data_config()
  base.height, base.width, base.num_frames = FLAGS.height, FLAGS.width, FLAGS.num_frames
  base.global_batch_size, base.read_threads = FLAGS.batch, FLAGS.read_threads
  base.sources.library.manifest = FLAGS.manifest
  base.sources.library.decoded_cache = FLAGS.decoded_cache
  mixtures = {label: (None if label == "mixture" else label) for label in FLAGS.sources}
  rows = []
  for workers in [int(w) for w in FLAGS.worker_counts]:
    for label, only in mixtures.items():
      config = base.copy_and_resolve_references()
      config.worker_count = workers
      if only is not None:
        for name in pipeline.SOURCE_NAMES:
          config.sources[name].weight = 1.0 if name == only else 0.0
      median, rates = frames_per_second(config, table)
      rows.append((label, workers, median))
      logging.info("%-10s workers=%d  %.1f frames/s (runs: %s)", label, workers, median,
                   ", ".join(f"{r:.1f}" for r in rates))
  needed = FLAGS.step_batch * FLAGS.num_frames / (FLAGS.step_ms / 1000)
  print(f"\n{FLAGS.height}x{FLAGS.width}, T={FLAGS.num_frames}, batch {FLAGS.batch}, "
        f"read_threads={FLAGS.read_threads}, decoded_cache={FLAGS.decoded_cache or 'off'}; "
        f"median of {FLAGS.repeats} x {FLAGS.batches} batches")
  print("| source | grain workers | frames/s |\n|---|---|---|")
  for label, workers, median in rows:
    print(f"| {label} | {workers} | {median:.0f} |")
  print(f"\nA train step of {FLAGS.step_batch} clips x {FLAGS.num_frames} frames every "
        f"{FLAGS.step_ms:.0f} ms needs {needed:.0f} frames/s.")


if __name__ == "__main__":
  app.run(main)
