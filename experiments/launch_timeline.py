r"""Where a call's host-to-host time goes: a `jax.profiler` trace of --iters calls of the denoiser
step (as benchmark_latency times it) and of the stream frame (as benchmark_stream times it:
`StreamSession(frame)`, upload, the fused stream_step, download, the NaN check), per
implementation, read by `lsd_jax.eval.timeline`: per call the wall span, the host's time to its
first launch, launch to the first kernel, the device's busy time, idle gaps and tail, kernels per
stream, memcpys by direction, CUDA API calls by name (cuLaunchKernel* one by one, or one
cuGraphLaunch per command buffer) and which kernels a graph launch started. Writes
timeline.json, timeline.md and traces/<variant>/ under --out_dir; a later run into the same
folder adds its variants to the report (one process per variant keeps the others if it fails).

A profiler session makes XLA run its command buffers (CUDA graphs) op by op unless the process
starts with XLA_FLAGS=--xla_enable_command_buffers_during_profiling=true: trace in both modes
(two processes) to see what an untraced call launches and what each op costs one by one; the
report names each table's mode.

  # issue 17 on an H200: small (step + the shipped model's frame), then large at 832x480
  export XLA_FLAGS=--xla_enable_command_buffers_during_profiling=true
  python -m experiments.launch_timeline --sizes=small --resolutions=256x256 --impls=xla,mosaic \
      --what=step,stream --checkpoint=checkpoints/lsd_small --out_dir=$OUT/timeline
  python -m experiments.launch_timeline --sizes=large --resolutions=832x480 --impls=xla \
      --what=step --out_dir=$OUT/timeline
  # the autoencoder's convs as cuDNN calls vs as GEMMs (in the command buffers), side by side
  python -m experiments.launch_timeline --what=stream --impls=xla --ae_conv=xla,gemm \
      --checkpoint=checkpoints/lsd_small --out_dir=$OUT/timeline
  # the stage that runs these: pallas_kernels/gpu_session.sh timeline
  # CPU smoke (no device kernels: the report says so): --sizes=tiny --iters=3 --warmup=1
"""

from __future__ import annotations

import itertools
import os

from absl import app, flags, logging
import jax.numpy as jnp
import numpy as np

from lsd_jax.eval import timeline_capture
from lsd_jax.models import gemm_conv, lsd
from lsd_jax.stream import engine
from pallas_kernels import api

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["small"], "Model sizes (the step; the stream frame without --checkpoint).")
flags.DEFINE_list("resolutions", ["256x256"], "WxH (the stream frame of a --checkpoint: its own).")
flags.DEFINE_list("impls", ["xla", "mosaic"], "pallas_kernels implementations to compare.")
flags.DEFINE_list("kernel_ops", ["attention"], "Ops the kernel backends run as kernels (as benchmark_latency).")
flags.DEFINE_list("what", ["step", "stream"], "step: one denoiser step; stream: one StreamSession frame.")
flags.DEFINE_string("checkpoint", "", "A shipped-model folder for the stream frame ('' : random weights).")
flags.DEFINE_integer("steps", 0, "Shortcut steps S of the stream frame (0: the checkpoint's own; 2 for "
                     "random weights).")
flags.DEFINE_integer("iters", 20, "Traced calls per variant.", lower_bound=1)
flags.DEFINE_integer("warmup", 5, "Untraced calls first (after the compile).", lower_bound=0)
flags.DEFINE_list("ae_conv", ["xla"], "The stream frame's autoencoder convolutions, each a variant: xla "
                  "(cuDNN calls on a GPU, outside the command buffers) and/or gemm (im2col + GEMM).")
flags.DEFINE_bool("bake_params", False, "The stream frame with its weights baked in as constants "
                  "(StreamModel(bake_params=True): a call passes 7 arguments, not every parameter leaf).")
flags.DEFINE_bool("python_tracer", False, "Also trace Python calls (adds host time inside the windows).")
flags.DEFINE_string("out_dir", "reports/latency/timeline", "Where timeline.json, .md and traces/ go.")


def _variant(impl: str, ae_conv: str, bake: bool = False) -> str:
  """A variant's implementation name: the ae_conv in it when not the default (the names of earlier
  reports stay, and both convs of one implementation sit in one table)."""
  name = impl if ae_conv == "xla" else f"{impl} ae_conv={ae_conv}"
  return f"{name} baked" if bake else name


def stream_case(size: str, resolution: str, impl: str, ae_conv: str = "xla") -> timeline_capture.Case:
  """One frame through a StreamSession (empty prompt: no text encoder), cycling 4 random frames."""
  bf16 = jnp.bfloat16
  kw = {"kernel_impl": impl, "param_dtype": bf16, "ae_conv": ae_conv, "bake_params": FLAGS.bake_params}
  if FLAGS.checkpoint:
    model = engine.StreamModel.load(FLAGS.checkpoint, steps=FLAGS.steps or None, **kw)
  else:
    width, height = (int(v) for v in resolution.split("x"))
    cfg = lsd.LSDConfig(size=size, height=height, width=width, steps=FLAGS.steps or 2)
    model = engine.StreamModel.random(cfg, **kw)
  session = engine.StreamSession(model)
  rng = np.random.default_rng(0)
  frames = itertools.cycle([rng.integers(0, 256, (model.height, model.width, 3), dtype=np.uint8) for _ in range(4)])
  return timeline_capture.Case(
      "stream", f"{model.info.name} S={model.cfg.steps}", f"{model.width}x{model.height}", _variant(impl, ae_conv, model.bake_params),
      api.resolve(impl), lambda: session(next(frames)),
      extra=(("trained", model.info.trained), ("steps", model.cfg.steps), ("ae_conv", ae_conv),
             ("bake_params", model.bake_params)))


def cases():
  """(name, builder) per variant, built one at a time (a failure costs only its own)."""
  for what in FLAGS.what:
    if what not in ("step", "stream"):
      raise app.UsageError(f"--what takes step and stream, got {what!r}")
  for what in FLAGS.what:
    build = timeline_capture.step_case if what == "step" else stream_case
    cells = ([("", "")] if what == "stream" and FLAGS.checkpoint else
             [(s, r) for s in FLAGS.sizes for r in FLAGS.resolutions])
    convs = FLAGS.ae_conv if what == "stream" else ["xla"]  # the step is the denoiser's alone
    for size, res in cells:
      for impl, conv in itertools.product(FLAGS.impls, convs):  # a failure's label (a built case names itself)
        model = os.path.basename(os.path.normpath(FLAGS.checkpoint)) if what == "stream" and FLAGS.checkpoint else size
        label = f"{what} {model} {res or '(its own WxH)'} {_variant(impl, conv, what == 'stream' and FLAGS.bake_params)}, {timeline_capture.profiling_mode()}"
        args = (size, res, impl) if what == "step" else (size, res, impl, conv)
        yield label, (lambda b=build, a=args: b(*a))


def main(argv) -> None:
  del argv
  for impl in FLAGS.impls:
    try:
      api.resolve(impl)
    except ValueError as e:
      raise app.UsageError(str(e))
  for conv in FLAGS.ae_conv:
    try:
      gemm_conv.conv_fn(conv)
    except ValueError as e:
      raise app.UsageError(f"--ae_conv: {e}")
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  result = None
  with api.kernel_ops(FLAGS.kernel_ops, backends=("mosaic", "triton")):
    for label, build in cases():
      try:
        case = build()
        report = timeline_capture.measure(case, FLAGS.out_dir, FLAGS.iters, FLAGS.warmup, FLAGS.python_tracer)
        result = timeline_capture.save(FLAGS.out_dir, {case.key: report})
      except Exception as e:  # noqa: BLE001  (one variant's compile or trace failing keeps the rest)
        logging.exception("%s failed", label)
        result = timeline_capture.save(FLAGS.out_dir, {label: {"error": f"{type(e).__name__}: {e}"[:2000]}})
  print(timeline_capture.markdown(result))


if __name__ == "__main__":
  app.run(main)
