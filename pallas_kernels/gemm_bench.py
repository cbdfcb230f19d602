r"""The epilogue-fused GEMM, the MLP on it and the FP8 path against XLA, at the denoiser's shapes,
on one Hopper GPU in one call: correctness first, then kernel times, written as rows to a folder.

  python -m pallas_kernels.gemm_bench --out_dir=$OUT --budget_s=170

For every GEMM of a block of the three model sizes (`gemm_mgpu.MODEL_SHAPES`: qkv, out, fc1 with
GELU, fc2) it times, with fresh random bf16 inputs (never zeros):
- `xla`: `xla.linear_xla` (cuBLAS GEMM + XLA's epilogue fusion, the model's path; for fc1 that
  fusion is the f32 -> bf16 convert the kernel removes), with its kernels listed;
- `cublas`: a bare bf16-out `jnp.dot` (cuBLAS, no bias, no activation): the GEMM alone;
- `kernel`: `gemm_mgpu.linear` at the shape's `auto_config`, then (phase 3, if time is left) a
  few other tunings; the fastest is marked;
- `fp8` (large shapes): `fp8.linear_fp8` on a pre-quantised weight, and whether the compiled HLO
  holds a cuBLASLt FP8 GEMM;
and the whole MLP (`xla.mlp_xla` vs `mlp_gemm_mgpu.mlp`, and `fp8.mlp_fp8` for large).
Times: CUPTI kernel sums per call over `--iters` calls (launch gaps and host work excluded):
p50 and p99; plus the mean device time of back-to-back calls (host clock around `--iters` calls
without a sync in between: launch gaps included). Errors: relative Frobenius norm against the f32
reference (`reference.py`); a NaN (an unwritten output) is inf. The inputs fit in L2 for the
small and base shapes, for every implementation alike.

Phases, in order, each row written as soon as it is measured (`gemm_bench.jsonl`), so a time-out
keeps what ran: 1 every shape at xla / cublas / kernel (auto); 2 the MLPs; 3 FP8; 4 the tuning
sweep. `--budget_s` stops starting new rows once spent. At the end: `gemm_bench.md` (the table,
also printed) and `gemm_bench.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import traceback

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import bench, device, fp8, gemm_mgpu, mlp_gemm_mgpu, reference, xla

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", os.environ.get("OUT", "/tmp/out"), "Where the rows and the table go.")
flags.DEFINE_float("budget_s", 170.0, "Start no new row after this many seconds.")
flags.DEFINE_integer("iters", 100, "Timed calls per measurement.")
flags.DEFINE_list("sizes", list(gemm_mgpu.MODEL_SHAPES), "Model sizes whose GEMMs are timed.")
flags.DEFINE_list("phases", ["gemm", "mlp", "fp8", "sweep"], "Which phases run (in this order).")

G = gemm_mgpu.TuningConfig


def sweep_configs(auto: gemm_mgpu.TuningConfig, n: int, k: int) -> list[gemm_mgpu.TuningConfig]:
  """A few tunings beside the shape's auto pick (each fitted to N and K, those that fit shared
  memory, none twice): one wgmma in flight, the other tiles of AUTO_TILES with it, a deeper
  ring, and a column-major snake."""
  cands = [dataclasses.replace(auto, wgmma_in_flight=1)]
  cands += [dataclasses.replace(auto, tile_m=tm, tile_n=tn, wgmma_in_flight=1) for tm, tn in gemm_mgpu.AUTO_TILES]
  cands += [dataclasses.replace(auto, max_concurrent_steps=6, wgmma_in_flight=1),
            dataclasses.replace(auto, grid_minor_dim=gemm_mgpu.Dim.M, grid_tile_width=4, wgmma_in_flight=1)]
  fitted = []
  for c in cands:
    try:
      fitted.append(gemm_mgpu.fit_config(n, k, c))
    except ValueError:
      continue
  return [c for c in dict.fromkeys(fitted) if c != auto]


def _inputs(key, m, k, n):
  kx, kw, kb = jax.random.split(key, 3)
  x = jax.random.normal(kx, (m, k), jnp.float32).astype(jnp.bfloat16)
  w = (jax.random.normal(kw, (k, n), jnp.float32) / np.sqrt(k)).astype(jnp.bfloat16)
  b = (0.5 * jax.random.normal(kb, (n,), jnp.float32)).astype(jnp.bfloat16)
  return x, w, b


def _times(fn, args, iters: int) -> dict:
  """CUPTI kernel-sum p50/p99 per call, back-to-back mean, kernels per call."""
  from jax.experimental.mosaic.gpu import profiler

  jax.block_until_ready(fn(*args))
  per_call = np.asarray(profiler.measure(fn, iterations=iters)(*args)[1], np.float64)
  launches = bench.kernel_profile(fn, *args, calls=3) or []
  return {"p50_ms": float(np.percentile(per_call, 50)), "p99_ms": float(np.percentile(per_call, 99)),
          "back_to_back_ms": bench.device_time_fn(fn, *args, iters=iters),
          "kernels": [(k["name"], k["launches"], round(k["ms"], 5)) for k in launches]}


class Rows:
  """The rows so far, appended to gemm_bench.jsonl as they come; the budget."""

  def __init__(self, out_dir: str, budget_s: float):
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir, self.deadline, self.rows = out_dir, time.monotonic() + budget_s, []
    self.jsonl = open(os.path.join(out_dir, "gemm_bench.jsonl"), "w")

  def time_left(self) -> bool:
    return time.monotonic() < self.deadline

  def add(self, **row) -> None:
    self.rows.append(row)
    self.jsonl.write(json.dumps(row) + "\n")
    self.jsonl.flush()
    logging.info("%s", row)


def _measure(rows: Rows, phase: str, what: str, impl: str, fn, args, ref, iters: int, **extra) -> None:
  """One row: compile, check against the f32 reference (two fresh input draws when `args` is a
  callable of a key), time. Failures are rows too."""
  if not rows.time_left():
    return
  t0 = time.monotonic()
  try:
    errs = []
    for seed in (0, 1):  # fresh inputs twice: a stale output buffer would not match the second
      a = args(jax.random.key(seed))
      errs.append(bench.rel_err(fn(*a), ref(*a)))
    rows.add(phase=phase, what=what, impl=impl, rel_err=max(errs), compile_and_check_s=time.monotonic() - t0,
             **_times(fn, a, iters), **extra)
  except Exception as e:  # noqa: BLE001  (a kernel that fails to compile or run is a result)
    rows.add(phase=phase, what=what, impl=impl, error=f"{type(e).__name__}: {str(e)[:400]}", **extra)
    logging.error("%s %s: %s", what, impl, traceback.format_exc(limit=3))


def _gemm_rows(rows: Rows, sizes, iters: int, sweep: bool) -> None:
  for size in sizes:
    for m, k, n, act in gemm_mgpu.MODEL_SHAPES[size]:
      what = f"{size} {m}x{k}->{n}" + (" +gelu" if act else "")
      args = lambda key, m=m, k=k, n=n: _inputs(key, m, k, n)  # noqa: E731
      ref = functools.partial(reference.linear_reference, activation=act)
      auto = gemm_mgpu.auto_config(m, n, k)
      if not sweep:
        _measure(rows, "gemm", what, "xla", jax.jit(functools.partial(xla.linear_xla, activation=act)), args, ref,
                 iters)
        cublas = jax.jit(lambda x, w, b: jnp.dot(x, w, preferred_element_type=jnp.bfloat16))
        _measure(rows, "gemm", what, "cublas", cublas, args, lambda x, w, b: reference.linear_reference(x, w),
                 iters)
        configs = [auto]
      else:
        configs = sweep_configs(auto, n, k)
      for cfg in configs:
        _measure(rows, "sweep" if sweep else "gemm", what, "kernel",
                 jax.jit(functools.partial(gemm_mgpu.linear, activation=act, config=cfg)), args, ref, iters,
                 config=_config_str(cfg))


def _config_str(c: gemm_mgpu.TuningConfig) -> str:
  return (f"{c.tile_m}x{c.tile_n} wg{c.wg_dimension.name} steps{c.max_concurrent_steps} "
          f"inflight{c.wgmma_in_flight} minor{c.grid_minor_dim.name}{c.grid_tile_width}")


def _mlp_args(key, l, d):
  ks = jax.random.split(key, 5)
  n = lambda kk, s, sc: (sc * jax.random.normal(kk, s, jnp.float32)).astype(jnp.bfloat16)  # noqa: E731
  return (n(ks[0], (1, l, d), 1.0), n(ks[1], (d, 4 * d), 1 / np.sqrt(d)), n(ks[2], (4 * d,), 0.1),
          n(ks[3], (4 * d, d), 1 / np.sqrt(4 * d)), n(ks[4], (d,), 0.1))


_WIDTH = {"small": 384, "base": 768, "large": 1536}
_TOKENS = {"small": 256, "base": 256, "large": 1560}


def _mlp_rows(rows: Rows, sizes, iters: int) -> None:
  for size in sizes:
    l, d = _TOKENS[size], _WIDTH[size]
    args = functools.partial(_mlp_args, l=l, d=d)
    for impl, fn in (("xla", xla.mlp_xla), ("kernel", mlp_gemm_mgpu.mlp)):
      _measure(rows, "mlp", f"{size} mlp {l}x{d}", impl, jax.jit(fn), args, reference.mlp_reference, iters)


def _has_fp8_gemm(fn, *args) -> bool:
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return "f8" in hlo and "cublas$lt$matmul$f8" in hlo


def _fp8_rows(rows: Rows, sizes, iters: int) -> None:
  for size in sizes:
    if size != "large":
      continue
    for m, k, n, act in gemm_mgpu.MODEL_SHAPES[size]:
      def args(key, m=m, k=k, n=n):
        x, w, b = _inputs(key, m, k, n)
        return (x, *fp8.quantize_weight(w), b, w)

      fn = jax.jit(lambda x, w_q, s, b, w, act=act: fp8.linear_fp8(x, w_q, s, b, activation=act))
      ref = lambda x, w_q, s, b, w, act=act: reference.linear_reference(x, w, b, activation=act)  # noqa: E731
      extra = {}
      try:
        extra["fp8_gemm_in_hlo"] = _has_fp8_gemm(fn, *args(jax.random.key(0)))
      except Exception as e:  # noqa: BLE001
        extra["fp8_gemm_in_hlo"] = f"{type(e).__name__}: {str(e)[:200]}"
      _measure(rows, "fp8", f"{size} {m}x{k}->{n}" + (" +gelu" if act else ""), "fp8", fn, args, ref, iters, **extra)
    l, d = _TOKENS[size], _WIDTH[size]

    def margs(key, l=l, d=d):
      x, w1, b1, w2, b2 = _mlp_args(key, l, d)
      return (x, *fp8.quantize_weight(w1), b1, *fp8.quantize_weight(w2), b2, w1, w2)

    fn = jax.jit(lambda x, q1, s1, b1, q2, s2, b2, w1, w2: fp8.mlp_fp8(x, q1, s1, b1, q2, s2, b2))
    ref = lambda x, q1, s1, b1, q2, s2, b2, w1, w2: reference.mlp_reference(x, w1, b1, w2, b2)  # noqa: E731
    _measure(rows, "fp8", f"{size} mlp {l}x{d}", "fp8", fn, margs, ref, iters)


def table(rows: list[dict]) -> str:
  """Markdown: one line per (what, impl, config); ratio = XLA's p50 over the row's p50."""
  xla_p50 = {r["what"]: r["p50_ms"] for r in rows if r.get("impl") == "xla" and "p50_ms" in r}
  best = {}
  for r in rows:
    if r.get("impl") == "kernel" and "p50_ms" in r and r["p50_ms"] < best.get(r["what"], (np.inf,))[0]:
      best[r["what"]] = (r["p50_ms"], r.get("config"))
  dev = jax.devices()[0]
  lines = [f"GEMM kernels vs XLA, {dev.device_kind}, jax {jax.__version__}, {time.strftime('%Y-%m-%d')}. "
           "CUPTI kernel sums per call (launch gaps excluded): p50 / p99 ms; back-to-back: mean per call "
           "with launch gaps; XLA/row: XLA's p50 over the row's (> 1: faster than XLA). Random bf16 inputs.", "",
           "| what | impl | config | p50 ms | p99 ms | back-to-back ms | XLA/row | rel err | kernels/call | note |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['what']} | {r['impl']} | {r.get('config', '')} | | | | | | | {r['error'][:120]} |")
      continue
    ratio = xla_p50.get(r["what"], np.nan) / r["p50_ms"]
    note = []
    if r.get("impl") == "kernel" and best.get(r["what"], (None, None))[1] == r.get("config"):
      note.append("fastest kernel")
    if "fp8_gemm_in_hlo" in r:
      note.append(f"FP8 GEMM in HLO: {r['fp8_gemm_in_hlo']}")
    lines.append(f"| {r['what']} | {r['impl']} | {r.get('config', '')} | {r['p50_ms']:.4f} | {r['p99_ms']:.4f} | "
                 f"{r['back_to_back_ms']:.4f} | {ratio:.2f} | {r['rel_err']:.1e} | "
                 f"{sum(c for _, c, _ in r['kernels'])} | {'; '.join(note)} |")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  rows = Rows(FLAGS.out_dir, FLAGS.budget_s)
  if not device.is_hopper():
    rows.add(phase="setup", what="device", impl="-", error=f"needs a Hopper GPU, have {jax.devices()[0]}")
    raise SystemExit(2)
  for phase in FLAGS.phases:
    {"gemm": lambda: _gemm_rows(rows, FLAGS.sizes, FLAGS.iters, sweep=False),
     "mlp": lambda: _mlp_rows(rows, FLAGS.sizes, FLAGS.iters),
     "fp8": lambda: _fp8_rows(rows, FLAGS.sizes, FLAGS.iters),
     "sweep": lambda: _gemm_rows(rows, FLAGS.sizes, FLAGS.iters, sweep=True)}[phase]()
  md = table(rows.rows)
  if not rows.time_left():
    md += f"\n\nStopped at the {FLAGS.budget_s:.0f} s budget: later rows did not run."
  with open(os.path.join(FLAGS.out_dir, "gemm_bench.md"), "w") as f:
    f.write(md + "\n")
  with open(os.path.join(FLAGS.out_dir, "gemm_bench.json"), "w") as f:
    json.dump(rows.rows, f, indent=1)
  logging.info("GEMM table (also in %s):\n%s", os.path.join(FLAGS.out_dir, "gemm_bench.md"), md)


if __name__ == "__main__":
  app.run(main)
