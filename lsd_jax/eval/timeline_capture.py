"""Capturing launch timelines: a `jax.profiler` trace of N marked calls of one jitted function,
read by `eval.timeline` into timeline.json / timeline.md (`experiments/launch_timeline.py` is the
command line; the stream frame's case is built there, since `eval/` does not import `stream/`).

A `Case` is one thing to time: `call()` runs it once, host to host (the call, its wait, and
whatever copy back the timed benchmark makes). `step_case` is the denoiser step exactly as
`benchmark_latency` times it (`eval.latency`'s builders: random bf16 weights, `step_fn`,
`step_inputs`, `block_until_ready` on the result, which stays on the device).

The Python tracer is off by default: it records every Python call, and the host time it adds
would land inside the windows this tool measures (TraceMe annotations and the GPU tracer stay).

While a profiler session is active, XLA runs each command buffer (CUDA graph) as its thunks one
by one (`CommandBufferThunk::ExecuteOnStream`, "Profiler (CUPTI) + CUDA graphs lead to memory
corruption"), unless the process was started with
`XLA_FLAGS=--xla_enable_command_buffers_during_profiling=true` (default false in jax 0.11.2's
XLA): a default trace shows the op-by-op launches, not what an untraced call runs. Each variant
therefore records the mode it was traced in (`profiling_mode`, part of its table's title) and
the host clock's p50 of as many untraced calls beside the traced one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from lsd_jax.eval import latency, timeline
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd
from pallas_kernels import bench


@dataclasses.dataclass(frozen=True)
class Case:
  """One variant: `what` (step, stream), the model, WxH, the implementation asked for and the
  one that runs, and `call()`, one host-to-host call."""
  what: str
  model: str
  resolution: str
  impl: str
  runs: str
  call: Callable[[], Any]
  extra: tuple[tuple[str, Any], ...] = ()

  @property
  def name(self) -> str:
    return f"{self.what} {self.model} {self.resolution} {self.impl}"

  @property
  def key(self) -> str:
    """The variant's entry in timeline.json: its name and the trace mode."""
    return f"{self.name}, {profiling_mode()}"

  @property
  def group(self) -> str:
    """The variants one table compares (the implementations of one thing, in one trace mode)."""
    return f"{self.what} {self.model} {self.resolution}, {profiling_mode()}"


def profiling_mode(xla_flags: str | None = None) -> str:
  """How XLA's command buffers ran under the profiler, from XLA_FLAGS (see the module docstring)."""
  flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  names = r"xla_enable_command_buffers_during_profiling|xla_gpu_enable_command_buffer"
  values = dict(re.findall(rf"--({names})=(\S*)", flags))
  if values.get("xla_gpu_enable_command_buffer") == "":
    return "command buffers off"
  if values.get("xla_enable_command_buffers_during_profiling", "false").lower() in ("true", "1"):
    return "command buffers on in the trace"
  return "command buffers off in the trace (XLA's default)"


def step_case(size: str, resolution: str, impl: str) -> Case:
  """One denoiser step (S = 1, one frame, concat history) of a named size on random weights."""
  width, height = (int(v) for v in resolution.split("x"))
  cfg = lsd.LSDConfig(size=size, height=height, width=width, kernel_impl=impl)
  params = model_frame.prepare_params(cfg, latency.random_weights(size))
  step_params = {k: v for k, v in params.items() if k != "autoencoder"}
  x = latency.step_inputs(cfg, jax.random.fold_in(jax.random.key(0), 2))
  step = latency.step_fn(cfg)
  return Case("step", size, resolution, impl, latency.impl_name(cfg, impl),
              lambda: jax.block_until_ready(step(step_params, x)))


def capture(case: Case, log_dir: str, iters: int, warmup: int, python_tracer: bool = False) -> dict:
  """Compiles and warms `case` up, times `iters` untraced calls, then traces `iters` calls, each
  inside a `timeline.CALL_PREFIX<i>` annotation, into `log_dir`; returns the compile time, the
  host clock's p50 untraced (`bench.time_fn`, as benchmark_latency times) and per traced call,
  and the perfetto trace's path."""
  t0 = time.perf_counter()
  case.call()
  compile_s = time.perf_counter() - t0
  untraced_p50_ms = bench.time_fn(case.call, warmup=warmup, iters=iters)["p50_ms"]
  shutil.rmtree(log_dir, ignore_errors=True)
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = int(python_tracer)
  host_ms = []
  with jax.profiler.trace(log_dir, create_perfetto_trace=True, profiler_options=options):
    for i in range(iters):
      t = time.perf_counter()
      with jax.profiler.TraceAnnotation(f"{timeline.CALL_PREFIX}{i}"):
        case.call()
      host_ms.append((time.perf_counter() - t) * 1e3)
  return {"compile_s": compile_s, "host_ms": host_ms, "untraced_p50_ms": untraced_p50_ms,
          "trace": timeline.find_trace(log_dir)}


def run_info() -> dict:
  d = jax.devices()[0]
  return {"device": d.device_kind, "platform": d.platform, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "date": time.strftime("%Y-%m-%d %H:%M")}


def measure(case: Case, out_dir: str, iters: int, warmup: int, python_tracer: bool = False) -> dict:
  """`capture` + `timeline.analyze`: one variant's entry of timeline.json."""
  slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", case.key)
  got = capture(case, os.path.join(out_dir, "traces", slug), iters, warmup, python_tracer)
  report = timeline.analyze(timeline.load(got["trace"]))
  report.update(what=case.what, model=case.model, resolution=case.resolution, impl=case.impl,
                runs=case.runs, group=case.group, compile_s=got["compile_s"], iters=iters,
                trace=os.path.relpath(got["trace"], out_dir), host_clock_p50_ms=float(np.percentile(got["host_ms"], 50)),
                untraced_p50_ms=got["untraced_p50_ms"], xla_flags=os.environ.get("XLA_FLAGS", ""),
                profiling_mode=profiling_mode(), **dict(case.extra))
  logging.info("%s: wall p50 %.3f ms (host clock %.3f ms), %d device events", case.name,
               (report["median"].get("wall_us") or 0) * 1e-3, report["host_clock_p50_ms"], report["device_events"])
  return report


def markdown(result: dict) -> str:
  """timeline.md: per group, the implementations side by side, then each variant's API calls and
  raw histogram."""
  info = result["info"]
  variants = {n: r for n, r in result["variants"].items() if "error" not in r}
  lines = [f"# Launch timeline: {info['device']} ({info['platform']}), jax {info['jax']}, {info['date']}", "",
           "Medians over the traced calls; each call is host to host (the call, its wait, its copy back). "
           "Ratios: each column over the first. A table's title says how XLA's command buffers ran in its "
           "trace (a profiler session runs them op by op unless "
           "`--xla_enable_command_buffers_during_profiling=true`).", ""]
  lines += [f"**{n} failed**: {r['error']}\n" for n, r in result["variants"].items() if "error" in r]
  groups: dict[str, list] = {}
  for name, r in variants.items():
    column = r["impl"] + (f" ({r['runs']})" if r["runs"] != r["impl"] else "")  # e.g. auto (mosaic)
    groups.setdefault(r["group"], []).append((column, r))
  for group, cols in groups.items():
    lines.append(timeline.comparison_markdown(group, cols))
    lines.append("| | " + " | ".join(n for n, _ in cols) + " |\n|" + "---|" * (len(cols) + 1) + "\n"
                 + "| calls traced | " + " | ".join(str(r["calls"]) for _, r in cols) + " |\n"
                 + "| host clock p50 (ms, traced) | " + " | ".join(f"{r['host_clock_p50_ms']:.3f}" for _, r in cols)
                 + " |\n| host clock p50 (ms, untraced) | " + " | ".join(f"{r['untraced_p50_ms']:.3f}" for _, r in cols)
                 + " |\n| compile (s) | " + " | ".join(f"{r['compile_s']:.1f}" for _, r in cols)
                 + " |\n| XLA_FLAGS | " + " | ".join(f"`{r['xla_flags']}`" if r["xla_flags"] else "-" for _, r in cols)
                 + " |\n")
  for r in variants.values():
    name = f"{r['what']} {r['model']} {r['resolution']} {r['impl']} ({r['profiling_mode']})"
    lines.append(timeline.api_markdown(name, r))
    lines.append(timeline.histogram_markdown(name, r))
  return "\n".join(lines)


def save(out_dir: str, reports: dict[str, dict]) -> dict:
  """Adds `reports` to out_dir's timeline.json (the variants of earlier runs into the same
  folder stay, so one process per variant builds one report) and rewrites timeline.md."""
  path = os.path.join(out_dir, "timeline.json")
  result = {"info": run_info(), "variants": {}}
  if os.path.exists(path):
    with open(path) as f:
      result["variants"] = json.load(f).get("variants", {})
  result["variants"].update(reports)  # keyed by name and mode: the same variant in two modes is two
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, "timeline.md"), "w") as f:
    f.write(markdown(result))
  return result
