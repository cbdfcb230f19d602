"""Per-frame latency of the LSD denoiser step and of a whole frame, XLA path vs kernel path, over a
grid of model size x resolution x S x implementation (`experiments/benchmark_latency.py` is its
command line).

For each cell: one denoiser step (one frame, concat history mode) and one whole frame (the
model's frame function, `models.frame`: encode the input frame, S shortcut steps, push the ring,
decode: what the stream engine runs) for S in `Grid.steps`, each timed per call (host clock
around a synchronised call: what a one-frame-at-a-time stream sees), p50 and p99; plus the FLOP
floor (matmul/conv FLOPs over `peak_tflops`) and the byte floor (bf16 weights read once over
`hbm_tbps`), and the kernel path's output error against the XLA path on the same weights.
Weights are random (`lsd.random_params`, in bf16) unless an exported model is given.

Several devices: `tp` (tensor-parallel sizes, `models.parallel`) times the same step and frame
with the denoiser split over `model:TP`, and `streams` > 1 a batch of that many independent
streams split over a `data` axis (as many groups as the devices left beside TP hold and the batch
divides into): the many-streams throughput mode, with frames per second in all (synchronised per
call, and pipelined: back-to-back calls without waiting). The floors of such rows are per device
(the denoiser's FLOPs and trunk weights split over TP, the rest replicated), and a profile's
communication kernels (NCCL) are summed apart (`comm_ms`, `comm_share` of the kernel time).

A grid longer than one device call fills in call by call: the JSON is written after every
implementation, and `resume` keeps an earlier run's rows and measures only the missing cells,
refusing to mix rows measured under other conditions (device, XLA flags, kernel ops, iters) in
one table; with nothing left to run it only re-renders the table and plot, headed by the run
that measured them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import Mesh

from lsd_jax.models import frame as model_frame
from lsd_jax.models import layers, lsd, parallel, sizes
from pallas_kernels import api, bench

CONDITIONS = ("device", "xla_flags", "kernel_ops", "iters")  # what one table's rows must share


@dataclasses.dataclass(frozen=True)
class Grid:
  """What to measure and where the results go."""
  sizes: tuple[str, ...] = ("small", "base", "large")
  resolutions: tuple[str, ...] = ("256x256", "512x512", "832x480")  # WxH
  steps: tuple[int, ...] = (1, 2, 4)
  impls: tuple[str, ...] = ("xla", "auto")  # pallas_kernels implementations
  kernel_ops: tuple[str, ...] = ("attention",)  # ops the kernel backends run as kernels
  frame_only: tuple[str, ...] = ()  # size:WxH:S triples the whole frame is timed for (empty: all)
  iters: int = 100
  warmup: int = 10
  peak_tflops: float = 790.0  # bf16 matmul rate for the FLOP floor (H100 measured)
  hbm_tbps: float = 3.0  # device-memory bandwidth for the byte floor
  out_dir: str = "reports/latency"
  label: str = "default"
  resume: bool = False
  profile: bool = False  # CUPTI kernel profiles of one step and one frame (GPU only)
  model: str = ""  # an exported model folder: its architecture and weights instead of `sizes`
  tp: tuple[int, ...] = (1,)  # tensor-parallel sizes (devices per model copy)
  streams: tuple[int, ...] = (1,)  # streams per call (> 1: the throughput mode, over `data`)
  tp_reduce: str = "bfloat16"  # dtype of the tensor-parallel partial sums (layers.TensorParallel)
  tp_chunks: int = 1  # token chunks per reduction, for overlap (layers.TensorParallel)
  tp_pad_heads: bool = False  # zero heads where the heads do not divide over tp (layers.TensorParallel)

  def check(self) -> None:
    """Every size x resolution x S the grid will visit, checked before anything is built
    (ValueError that names the bad value)."""
    for impl in self.impls:
      api.resolve(impl)
    for res in self.resolutions:
      if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", res):
        raise ValueError(f"a resolution is WIDTHxHEIGHT, e.g. 832x480, got {res!r}")
      w, h = (int(v) for v in res.split("x"))
      for name in ([] if self.model else self.sizes):  # an exported model: its own size
        sizes.tokens_per_frame(sizes.get_size(name), h, w)
    if not self.steps or min(self.steps) < 1:
      raise ValueError(f"--steps must be integers >= 1, got {list(self.steps)}")
    if self.iters < 1 or self.warmup < 0:
      raise ValueError("--iters must be >= 1 and --warmup >= 0")
    layers.TensorParallel(self.tp_reduce, self.tp_chunks, self.tp_pad_heads)  # validates
    if not self.tp or min(self.tp) < 1 or not self.streams or min(self.streams) < 1:
      raise ValueError(f"--tp and --streams must be integers >= 1, got {list(self.tp)}, {list(self.streams)}")
    for tp in self.tp:
      if tp > jax.device_count():
        raise ValueError(f"--tp={tp} needs {tp} devices, have {jax.device_count()}")
      for name in ([] if self.model else self.sizes):
        parallel.check(lsd.LSDConfig(size=name), {"model": tp}, pad_heads=self.tp_pad_heads)

  @property
  def meshes(self) -> list[tuple[int, int]]:
    """(tp, streams) per measured mesh, in order."""
    return [(tp, b) for tp in self.tp for b in self.streams]

  @property
  def stem(self) -> str:
    return os.path.join(self.out_dir, f"latency_{self.label}")


# ----------------------------------------------------------------------------- what is timed


def step_inputs(cfg: lsd.LSDConfig, key, batch: int = 1) -> dict[str, jax.Array]:
  """Random arguments of one denoiser step (`batch` frames, concat history)."""
  h, w, c = cfg.latent_shape
  k, b = cfg.history_len, batch
  ks = jax.random.split(key, 5)
  return dict(
      z=jax.random.normal(ks[0], (b, 1, h, w, c)), c=jax.random.normal(ks[1], (b, 1, h, w, c)),
      t=jnp.full((b, 1), 0.5), d=jnp.full((b, 1), 0.5),
      prompt=jax.random.normal(ks[2], (b, sizes.PROMPT_DIM)),
      hist=jax.random.normal(ks[3], (b, 1, k, h, w, c)),
      tau=jax.random.uniform(ks[4], (b, 1, k)))


def step_fn(cfg: lsd.LSDConfig, mesh: Mesh | None = None,
            tensor: layers.TensorParallel | None = None) -> Callable:
  """jit(f(params, x) -> velocity): one denoiser step; params {"denoiser"[, "megastep"]} (with a
  `mesh`: from `frame.prepare_params(cfg, params, mesh)`, traced under the mesh)."""
  _, den = lsd.build(cfg, parallel.block_options(mesh, tensor))

  def step(params, x):
    vel = lsd.velocity_fn(den, params["denoiser"], params.get("megastep"))
    cond = {"c": x["c"], "prompt": x["prompt"], "hist": x["hist"], "tau": x["tau"]}
    return vel(x["z"], x["t"], x["d"], cond)

  if mesh is None:
    return jax.jit(step)

  def step_under_mesh(params, x):
    with parallel.traced_under(mesh):
      return step(params, x)

  return jax.jit(step_under_mesh, out_shardings=parallel.stream_sharding(mesh, batch_axis=True))


def frame_fn(cfg: lsd.LSDConfig, steps: int, mesh: Mesh | None = None,
             tensor: layers.TensorParallel | None = None) -> Callable:
  """The timed whole frame: the model's frame function at S = `steps`, jitted
  (params, ring, frames_BxHxWx3, prompt_BxE, key) -> (ring, out); with a `mesh`, that mesh's."""
  cfg = dataclasses.replace(cfg, steps=steps)
  if mesh is None:
    return jax.jit(model_frame.frame_fn(cfg))
  return jax.jit(model_frame.frame_fns(cfg, mesh, tensor).frame,
                 out_shardings=parallel.stream_sharding(mesh, batch_axis=True))


def stream_mesh(tp: int, streams: int, devices: int | None = None) -> Mesh | None:
  """The mesh of `streams` streams at tensor-parallel size `tp`: `model:tp` x as many `data`
  groups as the devices left hold and the batch divides into (one stream per group or more)."""
  devices = jax.device_count() if devices is None else devices
  groups = max(d for d in range(1, max(1, devices // tp) + 1) if streams % d == 0)
  return parallel.make_mesh({"data": groups, "model": tp})


@functools.lru_cache(maxsize=1)
def random_weights(size: str) -> dict[str, Any]:
  """`lsd.random_params` of a named size in bf16 on the device (parameter shapes do not depend
  on the resolution, so one draw serves a size's whole row of the grid)."""
  host = lsd.random_params(0, lsd.LSDConfig(size=size))
  return jax.tree.map(lambda p: jax.device_put(p).astype(jnp.bfloat16), host)


def floors(cfg: lsd.LSDConfig, steps: int, grid: Grid, tp: int = 1, streams: int = 1,
           data: int = 1) -> dict[str, float]:
  """FLOP and byte floors of one call, per device: the denoiser's FLOPs and its blocks' weights
  split over `tp` devices, everything else replicated; `streams` frames over `data` groups."""
  rep = sizes.report(cfg.model_size, cfg.height, cfg.width, steps, cfg.history_mode, cfg.history_len)
  peak = grid.peak_tflops * 1e12
  bw = grid.hbm_tbps * 1e12
  frames = streams / data  # per device group
  den_step = rep["flops_denoiser_step"] / tp
  other = rep["flops_frame"] - steps * rep["flops_denoiser_step"]  # the autoencoder's
  den_bytes = 2 * (rep["params_denoiser"] - (1 - 1 / tp) * _trunk_params(cfg))
  return {
      "tokens": rep["tokens_per_frame"],
      "params_denoiser": rep["params_denoiser"],
      "step_flop_floor_ms": frames * den_step / peak * 1e3,
      "step_byte_floor_ms": den_bytes / bw * 1e3,
      "frame_flop_floor_ms": frames * (other + steps * den_step) / peak * 1e3,
      "frame_byte_floor_ms": (steps * den_bytes + 2 * rep["params_autoencoder"]) / bw * 1e3,
  }


def _trunk_params(cfg: lsd.LSDConfig) -> int:
  """Parameters of the blocks' q/k/v, out-projection and MLP: what tensor parallelism splits."""
  s = cfg.model_size.denoiser
  total = 0
  for i in range(s.depth):
    a, f = s.heads_of(i) * s.head_dim, s.mlp_of(i)
    total += s.width * 3 * a + 3 * a + a * s.width + s.width * f + f + f * s.width
  return total


def impl_name(cfg: lsd.LSDConfig, impl: str, mesh: Mesh | None = None) -> str:
  """The implementation that actually runs: "megastep" only where the mega kernel supports the
  shape on this device (and on one device), else the per-op backend it falls back to (e.g.
  "megastep->mosaic")."""
  if impl != "megastep":
    return api.resolve(impl)
  ok = mesh is None and lsd.megastep_unsupported(cfg) is None
  return "megastep" if ok else f"megastep->{api.resolve(impl)}"


def kernel_profile(grid: Grid, fn, *args) -> dict:
  """With `grid.profile` on a GPU: the kernels of one call (`bench.kernel_profile`), their sum and
  the time per category, for the row."""
  if not grid.profile:
    return {}
  kernels = bench.kernel_profile(fn, *args)
  if kernels is None:
    logging.warning("--profile: no CUPTI kernel profile on %s; rows go without one",
                    jax.devices()[0].platform)
    return {}
  total = sum(k["ms"] for k in kernels)
  by_cat = bench.by_category(kernels)
  comm = by_cat.get(bench.COMMUNICATION, 0.0)
  return {"kernel_sum_ms": total, "kernel_ms_by_category": by_cat, "kernels": kernels,
          "comm_ms": comm, "comm_share": comm / total if total else 0.0}


def _want_frame(grid: Grid, size: str, res: str, steps: int) -> bool:
  return not grid.frame_only or f"{size}:{res}:{steps}" in grid.frame_only


def bench_cell(grid: Grid, size: str, res: str, model=None, skip=frozenset(), save=None,
               tp: int = 1, streams: int = 1) -> list[dict]:
  """The rows of one size x resolution x (tp, streams). `model`: (LSDConfig, params) of an
  exported model, timed with its own weights. Skips the implementations in `skip`; `save(rows)`
  after each implementation's rows."""
  if all(impl in skip for impl in grid.impls):  # resumed and finished: nothing to build
    return []
  width, height = (int(v) for v in res.split("x"))
  rows = []
  key = jax.random.key(0)
  if model is None:
    base_cfg = lsd.LSDConfig(size=size, height=height, width=width)
    params = random_weights(size)
  else:
    base_cfg = dataclasses.replace(model[0], height=height, width=width, kernel_impl="xla")
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), model[1])
  mesh = stream_mesh(tp, streams)
  tensor = layers.TensorParallel(grid.tp_reduce, grid.tp_chunks, grid.tp_pad_heads)
  on_mesh = {"tp": tp, "streams": streams, "mesh": parallel.format_mesh(mesh),
             "devices": parallel.model_size(mesh) * parallel.data_size(mesh)}
  if tp > 1:
    on_mesh.update(tp_reduce=grid.tp_reduce, tp_chunks=grid.tp_chunks, tp_pad_heads=grid.tp_pad_heads)
  put = ((lambda x: x) if mesh is None else  # noqa: E731
         (lambda x: jax.device_put(x, parallel.stream_sharding(mesh, batch_axis=True))))
  x = put(step_inputs(base_cfg, jax.random.fold_in(key, 2), streams))
  frame_u8 = put(jax.random.randint(jax.random.fold_in(key, 3), (streams, height, width, 3), 0, 256,
                                    jnp.int32).astype(jnp.uint8))
  ring = model_frame.empty_ring(base_cfg, streams)
  ring = put(ring._replace(frames_BxKxHxWxC=jax.random.normal(jax.random.fold_in(key, 4),
                                                              ring.frames_BxKxHxWxC.shape)))
  prompt = x["prompt"]
  place_key = ((lambda k: k) if mesh is None else  # noqa: E731
               (lambda k: jax.device_put(k, parallel.stream_sharding(mesh))))
  host_params = {k: v for k, v in params.items() if k != "megastep"}
  ref_step = None
  for impl in grid.impls:
    if impl in skip:
      continue
    cfg = dataclasses.replace(base_cfg, kernel_impl=impl)
    if ref_step is None and impl != "xla" and "xla" in skip:  # resumed: the reference again
      xla_cfg = dataclasses.replace(base_cfg, kernel_impl="xla")
      xla_params = model_frame.prepare_params(xla_cfg, host_params, mesh, tensor)
      ref_step = step_fn(xla_cfg, mesh, tensor)({k: v for k, v in xla_params.items() if k != "autoencoder"}, x)
    step = step_fn(cfg, mesh, tensor)
    params = model_frame.prepare_params(cfg, host_params, mesh, tensor)
    step_params = {k: v for k, v in params.items() if k != "autoencoder"}
    name = impl_name(cfg, impl, mesh)  # what runs, for every row of this implementation
    t0 = time.perf_counter()
    out = jax.block_until_ready(step(step_params, x))
    compile_s = time.perf_counter() - t0
    if ref_step is None:
      ref_step = out
    err = bench.rel_err(out, ref_step)
    st = bench.time_fn(step, step_params, x, warmup=grid.warmup, iters=grid.iters)
    fl = lambda s: floors(cfg, s, grid, tp, streams, parallel.data_size(mesh))  # noqa: E731
    row = {"label": grid.label, "size": size, "resolution": res, "impl": name,
           "what": "step", "steps": 1, **st, "rel_err_vs_xla": err, "compile_s": compile_s,
           "impl_requested": impl, "random_weights": model is None, **fl(1), **on_mesh,
           **kernel_profile(grid, step, step_params, x)}
    row.update(exposed(row))
    logging.info("%s", row)
    rows.append(row)
    for s in grid.steps:
      if not _want_frame(grid, size, res, s):
        continue
      frame = frame_fn(cfg, s, mesh, tensor)
      fkey = place_key(jax.random.fold_in(key, 10 + s))
      jax.block_until_ready(frame(params, ring, frame_u8, prompt, fkey))
      ft = bench.time_fn(frame, params, ring, frame_u8, prompt, fkey, warmup=grid.warmup, iters=grid.iters)
      row = {"label": grid.label, "size": size, "resolution": res, "impl": name,
             "what": "frame", "steps": s, **ft, "random_weights": model is None, **fl(s),
             "impl_requested": impl, **on_mesh, **throughput(grid, streams, ft, frame, params, ring,
                                                              frame_u8, prompt, fkey),
             **kernel_profile(grid, frame, params, ring, frame_u8, prompt, fkey)}
      row.update(exposed(row))
      logging.info("%s", row)
      rows.append(row)
    if save is not None:
      save(rows)
  return rows


def exposed(row: dict) -> dict:
  """For a profiled row on several devices: the non-NCCL kernel time per device (the kernels of
  every device summed over their count: all devices run the same program) and p50 minus it, an
  upper bound on the communication left exposed (launch gaps and host work included)."""
  if "kernel_sum_ms" not in row or row["devices"] == 1:
    return {}
  compute = (row["kernel_sum_ms"] - row["comm_ms"]) / row["devices"]
  return {"compute_ms_per_device": compute, "exposed_comm_ms_bound": max(0.0, row["p50_ms"] - compute)}


def throughput(grid: Grid, streams: int, timed: dict, fn, *args) -> dict:
  """Frames per second in all, for a batch of streams: from the synchronised p50, and pipelined
  (back-to-back calls, one wait at the end: what a server that queues frames gets)."""
  if streams == 1:
    return {}
  pipelined_ms = bench.device_time_fn(fn, *args, iters=grid.iters)
  return {"frames_per_s": streams * 1e3 / timed["p50_ms"], "pipelined_ms": pipelined_ms,
          "frames_per_s_pipelined": streams * 1e3 / pipelined_ms}


# ----------------------------------------------------------------------------- tables and plots


def _mesh(r: dict) -> str:
  return r.get("mesh", "1")  # rows from before tensor parallelism ran on one device


def ratios(rows: list[dict]) -> None:
  """Adds xla_over_kernel (>1: kernel path faster) to each non-XLA row, and tp_speedup (p50 on
  one device over p50 on this row's mesh, same implementation and streams) to each multi-device
  row."""
  key = lambda r: (r["label"], r["size"], r["resolution"], r["what"], r["steps"])  # noqa: E731
  xla = {(*key(r), _mesh(r)): r for r in rows if r["impl"] == "xla"}
  one = {(*key(r), r["impl"], r.get("streams", 1)): r for r in rows if r.get("tp", 1) == 1}
  for r in rows:
    ref = xla.get((*key(r), _mesh(r)))
    if ref is not None and r["impl"] != "xla":
      r["xla_over_kernel_p50"] = ref["p50_ms"] / r["p50_ms"]
    base = one.get((*key(r), r["impl"], r.get("streams", 1)))
    if base is not None and r.get("tp", 1) > 1:
      r["tp_speedup_p50"] = base["p50_ms"] / r["p50_ms"]


def run_info(grid: Grid) -> dict:
  """What a run's numbers depend on besides its rows; stored in the JSON beside them."""
  dev = jax.devices()[0]
  return {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "kernel_ops": list(grid.kernel_ops),
          "iters": grid.iters}


def markdown(rows: list[dict], info: dict, label: str) -> str:
  """The table, its header from `info` (the run that measured the rows, not this process)."""
  weights = ("random weights (all sizes)" if all(r.get("random_weights", True) for r in rows)
             else "the model's own weights")
  head = (f"Device: {info['device']} ({info.get('platform', '?')}), jax {info['jax']}, "
          f"XLA_FLAGS={info['xla_flags']!r}, label {label!r}, "
          f"kernel ops {','.join(info['kernel_ops'])}, "
          f"{info.get('iters', '?')} timed calls each, {weights}. "
          "x floor: p50 over the larger of the two floors (1.0 = at the roofline).\n\n")
  lines = ["| size | WxH | tokens | what | S | impl | mesh | p50 ms | p99 ms | FLOP floor ms | "
           "byte floor ms | x floor | XLA/kernel p50 | rel err vs XLA |", "|" + "---|" * 14]
  for r in rows:
    floor_f = r["step_flop_floor_ms"] if r["what"] == "step" else r["frame_flop_floor_ms"]
    floor_b = r["step_byte_floor_ms"] if r["what"] == "step" else r["frame_byte_floor_ms"]
    ratio = f"{r['xla_over_kernel_p50']:.2f}" if "xla_over_kernel_p50" in r else ""
    err = f"{r['rel_err_vs_xla']:.1e}" if "rel_err_vs_xla" in r else ""
    lines.append(f"| {r['size']} | {r['resolution']} | {r['tokens']} | {r['what']} | "
                 f"{r['steps']} | {r['impl']} | {_mesh(r)} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                 f"{floor_f:.3f} | {floor_b:.3f} | {r['p50_ms'] / max(floor_f, floor_b):.1f} | "
                 f"{ratio} | {err} |")
  return head + "\n".join(lines) + "\n" + _mesh_markdown(rows)


def _mesh_markdown(rows: list[dict]) -> str:
  """Rows on several devices: speed-up over one device, communication share, throughput."""
  multi = [r for r in rows if r.get("devices", 1) > 1]
  if not multi:
    return ""
  lines = ["", "Several devices (floors above are per device). With --profile: comm = the NCCL kernels' "
           "share of the kernel time (all devices' kernels); exposed <= p50 minus the other kernels' time "
           "per device (launch gaps and host work included):", "",
           "| size | WxH | what | S | impl | mesh | streams | p50 ms | p99 ms | speed-up vs 1 | comm | "
           "exposed <= ms | frames/s | frames/s pipelined |", "|" + "---|" * 14]
  fmt = lambda r, k, f: format(r[k], f) if k in r else ""  # noqa: E731
  for r in multi:
    lines.append(f"| {r['size']} | {r['resolution']} | {r['what']} | {r['steps']} | {r['impl']} | "
                 f"{_mesh(r)} | {r.get('streams', 1)} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                 f"{fmt(r, 'tp_speedup_p50', '.2f')} | {fmt(r, 'comm_share', '.0%')} | "
                 f"{fmt(r, 'exposed_comm_ms_bound', '.3f')} | "
                 f"{fmt(r, 'frames_per_s', '.0f')} | {fmt(r, 'frames_per_s_pipelined', '.0f')} |")
  return "\n".join(lines) + "\n"


def kernels_markdown(rows: list[dict], info: dict, label: str, top: int = 12) -> str:
  """Per profiled row: the time per kernel category, then the `top` kernels by time."""
  out = [f"Kernel profiles (CUPTI, median of 5 calls), {info['device']}, label {label!r}. "
         "host p50 is the timed row's; the kernels' sum leaves out launch gaps and host work.\n"]
  for r in rows:
    if "kernels" not in r:
      continue
    what = "step" if r["what"] == "step" else f"frame, S={r['steps']}"
    if _mesh(r) != "1":
      what += f", mesh {_mesh(r)}"
    out.append(f"\n### {r['size']} {r['resolution']} {what}, {r['impl']}: kernels "
               f"{r['kernel_sum_ms']:.3f} ms of {r['p50_ms']:.3f} ms host p50\n")
    out.append("| category | ms | share |\n|---|---|---|")
    for cat, ms in r["kernel_ms_by_category"].items():
      out.append(f"| {cat} | {ms:.3f} | {ms / r['kernel_sum_ms']:.0%} |")
    out.append("\n| top kernels | launches | ms | category |\n|---|---|---|---|")
    for k in r["kernels"][:top]:
      out.append(f"| `{k['name'][:90]}` | {k['launches']} | {k['ms']:.3f} | {k['category']} |")
  return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str, device: str, label: str, size_order: tuple[str, ...]) -> None:
  """Step p50 per size x resolution and implementation, with the floor, on a log scale."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps_rows = [r for r in rows if r["what"] == "step"]
  fig, ax = plt.subplots(figsize=(10, 4.5))
  order = {s: i for i, s in enumerate(size_order)}
  names = sorted({(r["size"], r["resolution"]) for r in steps_rows},
                 key=lambda k: (order.get(k[0], len(order)), k[1]))
  label_of = lambda r: r["impl"] if _mesh(r) == "1" else f"{r['impl']} {_mesh(r)}"  # noqa: E731
  impls = sorted({label_of(r) for r in steps_rows})
  width = 0.8 / (len(impls) + 1)
  for j, impl in enumerate(impls):
    vals = [next((r["p50_ms"] for r in steps_rows if (r["size"], r["resolution"]) == n
                  and label_of(r) == impl), np.nan) for n in names]
    ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"{impl} p50")
  floor = [next(max(r["step_flop_floor_ms"], r["step_byte_floor_ms"]) for r in steps_rows
                if (r["size"], r["resolution"]) == n and _mesh(r) == "1") if any(
                    (r["size"], r["resolution"]) == n and _mesh(r) == "1" for r in steps_rows) else np.nan
           for n in names]
  ax.bar(np.arange(len(names)) + len(impls) * width, floor, width,
         label="floor (FLOPs or bytes, the larger)")
  ax.set_xticks(np.arange(len(names)) + width * len(impls) / 2)
  ax.set_xticklabels([f"{s}\n{r}" for s, r in names])
  ax.set_yscale("log")
  ax.set_ylabel("ms per denoiser step (one frame)")
  ax.set_title(f"LSD denoiser step latency, {device}, {label}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ----------------------------------------------------------------------------- the grid


def done(rows: list[dict], size: str, res: str, tp: int = 1, streams: int = 1) -> set[str]:
  """The implementations whose rows for (size, res, tp, streams) a resumed run already has."""
  return {r.get("impl_requested") for r in rows if r["size"] == size and r["resolution"] == res
          and r["what"] == "step" and r.get("tp", 1) == tp and r.get("streams", 1) == streams}


def _resumed(grid: Grid, size_names: tuple[str, ...], info: dict) -> tuple[list[dict], dict]:
  """(rows, info) of an earlier run of this grid's --out_dir and --label; ValueError when cells
  are left to run under other conditions than the earlier run's."""
  with open(grid.stem + ".json") as f:
    earlier_run = json.load(f)
  rows = earlier_run.pop("rows")
  logging.info("resuming: %d rows from %s.json", len(rows), grid.stem)
  left = [(size, res) for size in size_names for res in grid.resolutions for tp, b in grid.meshes
          if set(grid.impls) - done(rows, size, res, tp, b)]
  changed = {k: (earlier_run[k], info[k]) for k in CONDITIONS if k in earlier_run and earlier_run[k] != info[k]}
  if left and changed:  # one table, one set of conditions
    raise ValueError(f"--resume: {grid.stem}.json was measured with {changed} (earlier, now); "
                     "finish it under the same conditions or use another --label")
  # Nothing left to run: only re-render, with the header of the run that measured the rows.
  return rows, ({**info, **earlier_run} if left else earlier_run)


def run(grid: Grid) -> str:
  """Measures the grid (resuming per `grid.resume`), writes latency_<label>.{json,md,png} (and
  _kernels.md with profiles) under `grid.out_dir`; returns the markdown table."""
  grid.check()
  os.makedirs(grid.out_dir, exist_ok=True)
  model, size_names = None, grid.sizes
  if grid.model:
    from lsd_jax.models import export

    cfg, params, _ = export.load(grid.model)
    model, size_names = (cfg, params), (cfg.model_size.name,)
  rows: list[dict] = []
  info = run_info(grid)
  if grid.resume and os.path.exists(grid.stem + ".json"):
    rows, info = _resumed(grid, size_names, info)
  tag = lambda new: [{**r, "model": grid.model} if model else r for r in new]  # noqa: E731

  def save(all_rows):
    ratios(all_rows)
    with open(grid.stem + ".json", "w") as f:  # after every implementation: a timeout keeps the rest
      json.dump({**info, "rows": all_rows}, f, indent=1)

  with api.kernel_ops(grid.kernel_ops, backends=("mosaic", "triton")):
    for size in size_names:
      for res in grid.resolutions:
        for tp, streams in grid.meshes:
          earlier = list(rows)
          new = bench_cell(grid, size, res, model, skip=frozenset(done(rows, size, res, tp, streams)),
                           save=lambda new_rows: save(earlier + tag(new_rows)), tp=tp, streams=streams)
          rows = earlier + tag(new)
          save(rows)
  md = markdown(rows, info, grid.label)
  with open(grid.stem + ".md", "w") as f:
    f.write(md)
  plot(rows, grid.stem + ".png", info["device"], grid.label, size_names)
  if any("kernels" in r for r in rows):
    with open(grid.stem + "_kernels.md", "w") as f:
      f.write(kernels_markdown(rows, info, grid.label))
  return md
