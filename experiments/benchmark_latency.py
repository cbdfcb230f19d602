r"""Per-frame latency of the LSD denoiser step and of a whole frame, XLA path vs kernel path: the
command line of `lsd_jax.eval.latency` (what is timed, the floors, resuming a grid call by call).
Writes latency_<label>.md, .json and .png under --out_dir.

Run on one H100 (the XLA flags are process-wide, so compare command-buffer settings in separate
processes, e.g. with XLA_FLAGS=--xla_gpu_enable_command_buffer= for "off"):

  python -m experiments.benchmark_latency --sizes=small,base --out_dir=reports/latency --label=default

On the GPUs of one host, the large model split over 1, 2, 4 and 8 of them (tensor parallelism),
and eight streams at once, one per GPU (the throughput mode):

  python -m experiments.benchmark_latency --sizes=large --resolutions=832x480 --steps=2 \
      --impls=xla --tp=1,2,4,8 --profile --label=tp
  python -m experiments.benchmark_latency --sizes=large --resolutions=832x480 --steps=2 \
      --impls=xla --tp=1 --streams=8 --label=streams
"""

from __future__ import annotations

from absl import app, flags

from lsd_jax.eval import latency

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["small", "base", "large"], "Model sizes.")
flags.DEFINE_list("resolutions", ["256x256", "512x512", "832x480"], "WxH.")
flags.DEFINE_list("steps", ["1", "2", "4"], "Shortcut steps S per frame.")
flags.DEFINE_list("impls", ["xla", "auto"], "pallas_kernels implementations to compare.")
flags.DEFINE_list("kernel_ops", ["attention"], "Ops the kernel backend runs as kernels "
                  "(pallas_kernels.api.kernel_ops); the others use XLA.")
flags.DEFINE_list("frame_only", [], "size:WxH:S triples to restrict the whole-frame timing to "
                  "(empty: all); the step is always timed.")
flags.DEFINE_integer("iters", 100, "Timed calls per measurement.")
flags.DEFINE_integer("warmup", 10, "Untimed calls first.")
flags.DEFINE_float("peak_tflops", 790.0, "bf16 matmul rate for the FLOP floor (H100 measured).")
flags.DEFINE_float("hbm_tbps", 3.0, "Device-memory bandwidth for the byte floor, TB/s.")
flags.DEFINE_string("out_dir", "reports/latency", "Where the table, JSON and plot go.")
flags.DEFINE_string("label", "default", "Name of this run (e.g. the command-buffer setting).")
flags.DEFINE_bool("resume", False, "Keep the rows of an earlier run with the same --out_dir and "
                  "--label and skip the size x resolution x implementation triples it finished (the "
                  "JSON is written after each), so a grid longer than one device call fills in call "
                  "by call.")
flags.DEFINE_bool("profile", False, "Also record every GPU kernel of one step and one frame (CUPTI: "
                  "name, launches, ms, category) in the rows, and write latency_<label>_kernels.md "
                  "(GPU only; elsewhere logged and skipped).")
flags.DEFINE_string("model", "", "An exported model folder (e.g. a pruned one): time its architecture "
                    "and its own weights at --resolutions instead of --sizes.")
flags.DEFINE_list("tp", ["1"], "Tensor-parallel sizes: the denoiser split over this many devices "
                  "(heads and MLP columns; models.parallel), each its own rows.")
flags.DEFINE_list("streams", ["1"], "Streams per call: > 1 times a batch of independent streams split "
                  "over the devices left beside --tp (the throughput mode: frames/s in all).")
flags.DEFINE_enum("tp_reduce", "bfloat16", ["bfloat16", "float32"], "dtype of the tensor-parallel "
                  "partial sums each all-reduce carries.")
flags.DEFINE_bool("tp_pad_heads", False, "Where the heads do not divide over --tp (the large model's "
                  "12 over 8 devices), add zero heads up to the next multiple instead of refusing.")
flags.DEFINE_integer("tp_chunks", 1, "Token chunks per tensor-parallel reduction (> 1: chunk i's "
                     "all-reduce can overlap chunk i+1's matmul).", lower_bound=1)


def main(argv) -> None:
  del argv
  try:
    grid = latency.Grid(
        sizes=tuple(FLAGS.sizes), resolutions=tuple(FLAGS.resolutions), steps=tuple(int(v) for v in FLAGS.steps),
        impls=tuple(FLAGS.impls), kernel_ops=tuple(FLAGS.kernel_ops), frame_only=tuple(FLAGS.frame_only),
        iters=FLAGS.iters, warmup=FLAGS.warmup, peak_tflops=FLAGS.peak_tflops, hbm_tbps=FLAGS.hbm_tbps,
        out_dir=FLAGS.out_dir, label=FLAGS.label, resume=FLAGS.resume, profile=FLAGS.profile, model=FLAGS.model,
        tp=tuple(int(v) for v in FLAGS.tp), streams=tuple(int(v) for v in FLAGS.streams),
        tp_reduce=FLAGS.tp_reduce, tp_chunks=FLAGS.tp_chunks, tp_pad_heads=FLAGS.tp_pad_heads)
    grid.check()
  except ValueError as e:  # not a number, an unknown name, a shape that does not tile
    raise app.UsageError(f"benchmark_latency: {e} (--sizes={','.join(FLAGS.sizes)} "
                         f"--resolutions={','.join(FLAGS.resolutions)} --steps={','.join(FLAGS.steps)} "
                         f"--impls={','.join(FLAGS.impls)} --tp={','.join(FLAGS.tp)})")
  try:
    md = latency.run(grid)
  except ValueError as e:  # --resume under other conditions than the rows it would extend
    if "--resume" not in str(e):
      raise
    raise app.UsageError(str(e))
  print(md)


if __name__ == "__main__":
  app.run(main)
