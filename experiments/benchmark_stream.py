r"""Streaming latency and soak benchmark: host frame in -> host frame out, through StreamSession.

1. Latency, per model size: --iters calls of `session(frame)` on synthetic uint8 frames already
   in host memory at the model's resolution (each call: upload, the one fused jitted
   stream_step, download to a numpy array), host clock around each call; p50/p95/p99/max and
   fps = 1 / mean. Then --profile_iters calls in the profile mode (encode / denoise / decode as
   three jitted pieces, each waited for) for the stage split.
2. Soak, for --soak_size: --soak_frames frames through the realtime runner in lossless mode
   (capture thread, bounded hand-over, every frame processed, no sink), recording host RSS,
   device memory in use and the interval's per-frame latency percentiles every --mem_every
   frames. A prompt switch (between --prompt_npy's embedding and the empty prompt) every
   --mem_every frames exercises the prompt path too.

Weights are random (every leaf, see lsd.random_params) unless --checkpoint is given; the
results say which. Needs jax, flax, numpy, OpenCV and absl only (no PyAV, grain, ml_collections,
tokenizers). Writes stream_bench.json and stream_bench.md under --out_dir.

  python -m experiments.benchmark_stream --sizes=tiny,small --soak_frames=100000 \
      --out_dir=$OUT
  # CPU smoke: --sizes=tiny --iters=50 --soak_frames=300 --mem_every=100
  # the autoencoder's convs as cuDNN calls vs as GEMMs (issue 17), one latency row each:
  #   --checkpoint=checkpoints/lsd_small --ae_conv=xla,gemm --soak_frames=0
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.models import gemm_conv, lsd
from lsd_jax.stream import engine, latency_stats, realtime
from pallas_kernels import api

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["tiny", "small"], "Model sizes for the latency table.")
flags.DEFINE_string("resolution", "256x256", "WxH.")
flags.DEFINE_integer("steps", 2, "Shortcut steps per frame.")
flags.DEFINE_integer("iters", 2000, "Timed calls per size.")
flags.DEFINE_integer("warmup", 50, "Untimed calls first.")
flags.DEFINE_integer("profile_iters", 300, "Calls in the profile (stage split) mode.")
flags.DEFINE_string("param_dtype", "bfloat16", "Parameter dtype on device (the denoiser and "
                    "autoencoder compute in bf16 either way).")
flags.DEFINE_string("checkpoint", None, "A shipped-model folder instead of random weights "
                    "(its size replaces --sizes).")
flags.DEFINE_string("soak_size", "small", "Model size of the soak ('' to skip the soak).")
flags.DEFINE_integer("soak_frames", 100_000, "Frames in the soak.")
flags.DEFINE_integer("mem_every", 10_000, "Record memory and interval latency every N frames.")
flags.DEFINE_float("soak_max_s", 400.0, "Stop the soak after this long (recorded if it happens).")
flags.DEFINE_string("prompt_npy", "reports/stream/prompt_pencil_sketch.npy",
                    "A saved 384-d prompt embedding ('' for the empty prompt only).")
flags.DEFINE_list("ae_conv", ["auto"], "The autoencoder's convolutions, a latency row each: xla (cuDNN "
                  "calls on a GPU, outside XLA's command buffers) and/or gemm (im2col + GEMM). The soak "
                  "runs the first.")
flags.DEFINE_list("kernel_impl", [""], "Denoiser implementations, a latency row each ('' the model's own; "
                  "auto, xla, mosaic, triton, megastep: the whole step as one Mosaic GPU kernel on a Hopper, "
                  "one CUDA-graph node a step instead of about a hundred).")
flags.DEFINE_list("bake_params", ["false"], "false and/or true, a latency row each: the weights as "
                  "arguments of every call, or baked into the compiled frame as constants "
                  "(StreamModel(bake_params=True): a call passes 7 arguments, not 116 more). The soak "
                  "runs the first.")
flags.DEFINE_string("out_dir", "reports/stream", "Where stream_bench.json / .md go.")


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _device_mb() -> float | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get("bytes_in_use", 0) / 2**20


def _model(size: str, ae_conv: str, bake: bool = False, impl: str = "") -> engine.StreamModel:
  width, height = (int(v) for v in FLAGS.resolution.split("x"))
  dtype = jnp.dtype(FLAGS.param_dtype)
  kw = {"kernel_impl": impl or None}
  if FLAGS.checkpoint:
    model = engine.StreamModel.load(FLAGS.checkpoint, steps=FLAGS.steps, param_dtype=dtype, ae_conv=ae_conv,
                                    bake_params=bake, **kw)
    if FLAGS.prompt_npy and os.path.exists(FLAGS.prompt_npy):  # no text encoder needed
      model.add_embedding("pencil sketch", np.load(FLAGS.prompt_npy))
    return model
  cfg = lsd.LSDConfig(size=size, height=height, width=width, steps=FLAGS.steps)
  model = engine.StreamModel.random(cfg, param_dtype=dtype, ae_conv=ae_conv, bake_params=bake, **kw)
  if FLAGS.prompt_npy and os.path.exists(FLAGS.prompt_npy):
    model.add_embedding("pencil sketch", np.load(FLAGS.prompt_npy))
  return model


def _synthetic_frames(model: engine.StreamModel, n: int = 16) -> list[np.ndarray]:
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (model.height, model.width, 3), dtype=np.uint8) for _ in range(n)]


def _bakes() -> list[bool]:
  words = {"false": False, "true": True}
  bad = [v for v in FLAGS.bake_params if v.lower() not in words]
  if bad or not FLAGS.bake_params:
    raise app.UsageError(f"--bake_params takes false and/or true, got {FLAGS.bake_params}")
  return [words[v.lower()] for v in FLAGS.bake_params]


def _prompt() -> str:
  return "pencil sketch" if FLAGS.prompt_npy and os.path.exists(FLAGS.prompt_npy) else ""


def latency(size: str, ae_conv: str, bake: bool = False, impl: str = "") -> dict:
  model = _model(size, ae_conv, bake, impl)
  session = engine.StreamSession(model, prompt=_prompt())
  compile_s = session.warmup(profile=True)
  frames = _synthetic_frames(model)
  for i in range(FLAGS.warmup):
    session(frames[i % len(frames)])
  hist = latency_stats.Histogram()
  t_start = time.perf_counter()
  for i in range(FLAGS.iters):
    t0 = time.perf_counter()
    session(frames[i % len(frames)])
    hist.add(time.perf_counter() - t0)
  wall = time.perf_counter() - t_start
  stages = {k: latency_stats.Histogram() for k in ("preprocess", "encode", "denoise", "decode", "device")}
  for i in range(FLAGS.profile_iters):
    _, times = session.process_timed(frames[i % len(frames)], profile=True)
    for k, v in times.items():
      stages[k].add(v)
  row = {"size": model.cfg.size, "model": model.info.label, "trained": model.info.trained,
         "resolution": f"{model.width}x{model.height}", "steps": model.cfg.steps,
         "param_dtype": FLAGS.param_dtype, "kernel_impl": model.cfg.kernel_impl, "ae_conv": model.cfg.ae_conv,
         "bake_params": model.bake_params,
         "compile_s": compile_s, "iters": FLAGS.iters,
         "latency_ms": hist.summary_ms(), "fps": FLAGS.iters / wall,
         "profile_ms": {k: h.summary_ms() for k, h in stages.items()},
         "compilations": model.compilations()}
  logging.info("%s", row)
  return row


class _Synthetic:
  """A lossless source of n synthetic frames (cycling over a few arrays in host memory)."""
  live = False
  corrupt = 0

  def __init__(self, frames, n):
    self.frames, self.n = frames, n

  def __iter__(self):
    for i in range(self.n):
      yield self.frames[i % len(self.frames)]


def soak(size: str) -> dict:
  model = _model(size, FLAGS.ae_conv[0], _bakes()[0])
  session = engine.StreamSession(model, prompt=_prompt())
  session.warmup()
  frames = _synthetic_frames(model)
  samples = []
  prev = {"counts": np.zeros_like(latency_stats.Histogram().counts), "t": time.perf_counter(), "n": 0}
  stop = threading.Event()
  t_start = time.perf_counter()
  prompts = [_prompt(), ""]

  def on_frame(n, stats):
    if n % FLAGS.mem_every and n != FLAGS.soak_frames:
      return
    interval = latency_stats.Histogram()
    interval.counts = stats.process.counts - prev["counts"]
    interval.count = int(interval.counts.sum())
    interval.min, interval.max = 0.0, stats.process.max  # clamps for the bin centres only
    now = time.perf_counter()
    s = {"frame": n, "t_s": now - t_start, "rss_mb": _rss_mb(), "device_mb": _device_mb(),
         "interval_fps": (n - prev["n"]) / (now - prev["t"]),
         "interval_p50_ms": interval.percentile_s(50) * 1e3,
         "interval_p99_ms": interval.percentile_s(99) * 1e3,
         "compilations": model.compilations()}
    samples.append(s)
    logging.info("soak %s", s)
    prev.update(counts=stats.process.counts.copy(), t=now, n=n)
    session.set_prompt(prompts[(n // FLAGS.mem_every) % 2])
    if now - t_start > FLAGS.soak_max_s:
      stop.set()

  first = {"frame": 0, "t_s": 0.0, "rss_mb": _rss_mb(), "device_mb": _device_mb()}
  stats = realtime.run(_Synthetic(frames, FLAGS.soak_frames), session, None, lossless=True,
                       on_frame=on_frame, stop=stop)
  summary = stats.summary()
  return {"size": size, "model": model.info.label, "frames": summary["frames"],
          "requested_frames": FLAGS.soak_frames, "stopped_early": summary["frames"] < FLAGS.soak_frames,
          "fps": summary["fps"], "process_ms": summary["process_ms"],
          "latency_ms": summary["latency_ms"], "stages_ms": summary["stages_ms"],
          "dropped": summary["dropped"], "start": first, "samples": samples}


def _markdown(result: dict) -> str:
  lines = [f"Device: {result['device']}; jax {jax.__version__}; {result['date']}.", "",
           "| model | WxH | S | params | kernels | AE conv | weights | p50 ms | p95 ms | p99 ms | max ms | fps | encode / "
           "denoise / decode p50 ms (profile mode) | compile s |", "|" + "---|" * 14]
  for r in result["latency"]:
    lat, pr = r["latency_ms"], r["profile_ms"]
    lines.append(f"| {r['model']} | {r['resolution']} | {r['steps']} | {r['param_dtype']} | "
                 f"{r.get('kernel_impl', 'xla')} | {r.get('ae_conv', 'xla')} | "
                 f"{'baked' if r.get('bake_params') else 'arguments'} | "
                 f"{lat['p50']:.3f} | {lat['p95']:.3f} | {lat['p99']:.3f} | {lat['max']:.3f} | "
                 f"{r['fps']:.1f} | {pr['encode']['p50']:.3f} / {pr['denoise']['p50']:.3f} / "
                 f"{pr['decode']['p50']:.3f} | {r['compile_s']:.1f} |")
  s = result.get("soak")
  if s:
    lines += ["", f"Soak: {s['model']}, {s['frames']} frames lossless (requested "
              f"{s['requested_frames']}), {s['fps']:.1f} fps, per-frame process p50 "
              f"{s['process_ms']['p50']:.3f} ms, p99 {s['process_ms']['p99']:.3f} ms, max "
              f"{s['process_ms']['max']:.3f} ms; dropped {s['dropped']}.", "",
              "| frame | t s | host RSS MB | device MB | interval fps | p50 ms | p99 ms | compiled |",
              "|---|---|---|---|---|---|---|---|",
              f"| 0 | 0 | {s['start']['rss_mb']:.1f} | {s['start']['device_mb']} | | | | |"]
    for m in s["samples"]:
      dev = "-" if m["device_mb"] is None else f"{m['device_mb']:.1f}"
      lines.append(f"| {m['frame']} | {m['t_s']:.0f} | {m['rss_mb']:.1f} | {dev} | "
                   f"{m['interval_fps']:.1f} | {m['interval_p50_ms']:.3f} | "
                   f"{m['interval_p99_ms']:.3f} | {m['compilations']} |")
  return "\n".join(lines) + "\n"


def main(argv) -> None:
  del argv
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  d = jax.devices()[0]
  result = {"device": f"{d.platform}: {d.device_kind}", "date": time.strftime("%Y-%m-%d"),
            "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "flags": {k: FLAGS[k].value for k in ("sizes", "resolution", "steps", "iters",
                                                   "param_dtype", "soak_frames", "checkpoint", "ae_conv",
                                                   "bake_params", "kernel_impl")},
            "latency": []}
  for conv in FLAGS.ae_conv:
    try:
      gemm_conv.resolve(conv)
    except ValueError as e:
      raise app.UsageError(f"--ae_conv: {e}")
  bad = [i for i in FLAGS.kernel_impl if i and i not in api.IMPLEMENTATIONS]
  if bad:
    raise app.UsageError(f"--kernel_impl: {bad} not in {api.IMPLEMENTATIONS} ('' for the model's own)")
  for size in ([""] if FLAGS.checkpoint else FLAGS.sizes):
    for impl, conv, bake in itertools.product(FLAGS.kernel_impl or [""], FLAGS.ae_conv, _bakes()):
      result["latency"].append(latency(size, conv, bake, impl))
      print(json.dumps({k: result["latency"][-1][k] for k in ("model", "kernel_impl", "ae_conv", "bake_params",
                                                              "latency_ms", "fps")}), flush=True)
  if FLAGS.soak_size and FLAGS.soak_frames > 0:
    result["soak"] = soak(FLAGS.soak_size)
  with open(os.path.join(FLAGS.out_dir, "stream_bench.json"), "w") as f:
    json.dump(result, f, indent=1)
  md = _markdown(result)
  with open(os.path.join(FLAGS.out_dir, "stream_bench.md"), "w") as f:
    f.write(md)
  print(md)


if __name__ == "__main__":
  app.run(main)
