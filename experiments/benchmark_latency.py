r"""Per-frame latency of the LSD denoiser step and of a whole frame, XLA path vs kernel path.

For each model size x resolution: one denoiser step (one frame, concat history mode) and one whole
frame (encode the input frame, S shortcut steps, decode) for S in --steps, each timed per call
(host clock around a synchronised call: what a one-frame-at-a-time stream sees), p50 and p99;
plus the FLOP floor (matmul/conv FLOPs over --peak_tflops) and the byte floor (bf16 weights
read once over --hbm_tbps), and the kernel path's output error against the XLA path on the same
weights. Weights are random (every leaf, the adaLN-zero gates too, so that every block does
work); large is labelled so. Writes latency.md, latency.json and latency.png under --out_dir.

Run on one H100 (the XLA flags are process-wide, so compare command-buffer settings in separate
processes, e.g. with XLA_FLAGS=--xla_gpu_enable_command_buffer= for "off"):

  PYTHONPATH=. python experiments/benchmark_latency.py --sizes=small,base \
      --out_dir=reports/latency --label=default
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.diffusion import sampler
from lsd_jax.models import lsd, sizes
from pallas_kernels import api, bench

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["small", "base", "large"], "Model sizes.")
flags.DEFINE_list("resolutions", ["256x256", "512x512", "832x480"], "WxH.")
flags.DEFINE_list("steps", ["1", "2", "4"], "Shortcut steps S per frame.")
flags.DEFINE_list("impls", ["xla", "auto"], "pallas_kernels implementations to compare.")
flags.DEFINE_list("kernel_ops", ["attention"], "Ops the kernel backend runs as kernels "
                  "(pallas_kernels.api.set_kernel_ops); the others use XLA.")
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


def _random_params(key, params):
  """Every leaf random: matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.02^2); cast to bf16."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, p in zip(keys, leaves):
    std = 1.0 / np.sqrt(np.prod(p.shape[:-1])) if p.ndim >= 2 else 0.02
    out.append((jax.random.normal(k, p.shape, jnp.float32) * std).astype(jnp.bfloat16))
  return jax.tree.unflatten(treedef, out)


def _step_inputs(cfg: lsd.LSDConfig, key):
  h, w, c = cfg.latent_shape
  k = cfg.history_len
  ks = jax.random.split(key, 5)
  return dict(
      z=jax.random.normal(ks[0], (1, 1, h, w, c)), c=jax.random.normal(ks[1], (1, 1, h, w, c)),
      t=jnp.full((1, 1), 0.5), d=jnp.full((1, 1), 0.5),
      prompt=jax.random.normal(ks[2], (1, sizes.PROMPT_DIM)),
      hist=jax.random.normal(ks[3], (1, 1, k, h, w, c)),
      tau=jax.random.uniform(ks[4], (1, 1, k)))


def _make_fns(cfg: lsd.LSDConfig):
  ae, den = lsd.build(cfg)

  @jax.jit
  def step(params, x):  # params: {"denoiser"[, "megastep"]}
    vel = lsd.velocity_fn(den, params["denoiser"], params.get("megastep"))
    cond = {"c": x["c"], "prompt": x["prompt"], "hist": x["hist"], "tau": x["tau"]}
    return vel(x["z"], x["t"], x["d"], cond)

  def frame_fn(steps: int):
    @jax.jit
    def frame(params, frame_u8, ring, prompt, key):
      c = lsd.encode(ae, params["autoencoder"], frame_u8)
      vel = lsd.velocity_fn(den, params["denoiser"], params.get("megastep"))
      z = sampler.sample_frame(vel, key, c, ring, prompt, tau_inf=cfg.tau_inf, steps=steps,
                               mode=cfg.history_mode, residual=cfg.residual)
      return lsd.decode(ae, params["autoencoder"], z)

    return frame

  return step, frame_fn


def _floors(cfg: lsd.LSDConfig, steps: int) -> dict[str, float]:
  rep = sizes.report(cfg.model_size, cfg.height, cfg.width, steps, cfg.history_mode, cfg.history_len)
  peak = FLAGS.peak_tflops * 1e12
  bw = FLAGS.hbm_tbps * 1e12
  return {
      "tokens": rep["tokens_per_frame"],
      "params_denoiser": rep["params_denoiser"],
      "step_flop_floor_ms": rep["flops_denoiser_step"] / peak * 1e3,
      "step_byte_floor_ms": 2 * rep["params_denoiser"] / bw * 1e3,
      "frame_flop_floor_ms": rep["flops_frame"] / peak * 1e3,
      "frame_byte_floor_ms": (steps * 2 * rep["params_denoiser"] + 2 * rep["params_autoencoder"])
                             / bw * 1e3,
  }


def _impl_name(cfg: lsd.LSDConfig, impl: str) -> str:
  """The implementation that actually runs: "megastep" only where the mega kernel supports the
  shape on this device, else the per-op backend it falls back to (e.g. "megastep->mosaic")."""
  if impl != "megastep":
    return api.resolve(impl)
  return "megastep" if lsd.megastep_unsupported(cfg) is None else f"megastep->{api.resolve(impl)}"


def _profile(fn, *args) -> dict:
  """With --profile on a GPU: the kernels of one call (`bench.kernel_profile`), their sum and the
  time per category, for the row."""
  if not FLAGS.profile:
    return {}
  kernels = bench.kernel_profile(fn, *args)
  if kernels is None:
    logging.warning("--profile: no CUPTI kernel profile on %s; rows go without one",
                    jax.devices()[0].platform)
    return {}
  return {"kernel_sum_ms": sum(k["ms"] for k in kernels),
          "kernel_ms_by_category": bench.by_category(kernels), "kernels": kernels}


def _kernels_markdown(rows: list[dict], info: dict, top: int = 12) -> str:
  """Per profiled row: the time per kernel category, then the `top` kernels by time."""
  out = [f"Kernel profiles (CUPTI, median of 5 calls), {info['device']}, label {FLAGS.label!r}. "
         "host p50 is the timed row's; the kernels' sum leaves out launch gaps and host work.\n"]
  for r in rows:
    if "kernels" not in r:
      continue
    what = "step" if r["what"] == "step" else f"frame, S={r['steps']}"
    out.append(f"\n### {r['size']} {r['resolution']} {what}, {r['impl']}: kernels "
               f"{r['kernel_sum_ms']:.3f} ms of {r['p50_ms']:.3f} ms host p50\n")
    out.append("| category | ms | share |\n|---|---|---|")
    for cat, ms in r["kernel_ms_by_category"].items():
      out.append(f"| {cat} | {ms:.3f} | {ms / r['kernel_sum_ms']:.0%} |")
    out.append("\n| top kernels | launches | ms | category |\n|---|---|---|---|")
    for k in r["kernels"][:top]:
      out.append(f"| `{k['name'][:90]}` | {k['launches']} | {k['ms']:.3f} | {k['category']} |")
  return "\n".join(out) + "\n"


def _want_frame(size: str, res: str, steps: int) -> bool:
  return not FLAGS.frame_only or f"{size}:{res}:{steps}" in FLAGS.frame_only


def _bench_one(size: str, res: str, model=None, skip=frozenset(), save=None) -> list[dict]:
  """`model`: (LSDConfig, params) of an exported model, timed with its own weights. Skips the
  implementations in `skip`; `save(rows)` after each implementation's rows."""
  if all(impl in skip for impl in FLAGS.impls):  # resumed and finished: nothing to build
    return []
  width, height = (int(v) for v in res.split("x"))
  rows = []
  key = jax.random.key(0)
  if model is None:
    base_cfg = lsd.LSDConfig(size=size, height=height, width=width)
    shapes = jax.eval_shape(functools.partial(lsd.init_params, cfg=base_cfg), key)  # no init run
    params = _random_params(jax.random.fold_in(key, 1), shapes)
  else:
    base_cfg = dataclasses.replace(model[0], height=height, width=width, kernel_impl="xla")
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), model[1])
  x = _step_inputs(base_cfg, jax.random.fold_in(key, 2))
  frame_u8 = jax.random.randint(jax.random.fold_in(key, 3), (1, height, width, 3), 0, 256,
                                jnp.int32).astype(jnp.uint8)
  h, w, c = base_cfg.latent_shape
  ring = sampler.empty_ring(1, base_cfg.history_len, h, w, c)
  ring = ring._replace(frames_BxKxHxWxC=jax.random.normal(jax.random.fold_in(key, 4),
                                                          ring.frames_BxKxHxWxC.shape))
  prompt = x["prompt"]
  ref_step = None
  if "xla" in skip and any(i not in skip for i in FLAGS.impls):  # resumed: the reference again
    step, _ = _make_fns(dataclasses.replace(base_cfg, kernel_impl="xla"))
    ref_step = step({k: v for k, v in params.items() if k != "autoencoder"}, x)
  for impl in FLAGS.impls:
    if impl in skip:
      continue
    cfg = dataclasses.replace(base_cfg, kernel_impl=impl)
    step, frame_fn = _make_fns(cfg)
    params = lsd.with_kernel_params(cfg, {k: v for k, v in params.items() if k != "megastep"})
    step_params = {k: v for k, v in params.items() if k != "autoencoder"}
    name = _impl_name(cfg, impl)  # what runs, for every row of this implementation
    t0 = time.perf_counter()
    out = jax.block_until_ready(step(step_params, x))
    compile_s = time.perf_counter() - t0
    if ref_step is None:
      ref_step = out
    err = bench.rel_err(out, ref_step)
    st = bench.time_fn(step, step_params, x, warmup=FLAGS.warmup, iters=FLAGS.iters)
    fl = _floors(cfg, 1)
    row = {"label": FLAGS.label, "size": size, "resolution": res, "impl": name,
           "what": "step", "steps": 1, **st, "rel_err_vs_xla": err, "compile_s": compile_s,
           "impl_requested": impl,
           "random_weights": model is None, **fl, **_profile(step, step_params, x)}
    logging.info("%s", row)
    rows.append(row)
    for s in (int(v) for v in FLAGS.steps):
      if not _want_frame(size, res, s):
        continue
      frame = frame_fn(s)
      fkey = jax.random.fold_in(key, 10 + s)
      jax.block_until_ready(frame(params, frame_u8, ring, prompt, fkey))
      ft = bench.time_fn(frame, params, frame_u8, ring, prompt, fkey, warmup=FLAGS.warmup,
                         iters=FLAGS.iters)
      row = {"label": FLAGS.label, "size": size, "resolution": res, "impl": name,
             "what": "frame", "steps": s, **ft, "random_weights": model is None, **_floors(cfg, s),
             "impl_requested": impl,
             **_profile(frame, params, frame_u8, ring, prompt, fkey)}
      logging.info("%s", row)
      rows.append(row)
    if save is not None:
      save(rows)
  return rows


def _tag(rows: list[dict], model) -> list[dict]:
  return [{**r, "model": FLAGS.model} if model else r for r in rows]


def _ratios(rows: list[dict]) -> None:
  """Adds xla_over_kernel (>1: kernel path faster) to each non-XLA row."""
  xla = {(r["label"], r["size"], r["resolution"], r["what"], r["steps"]): r for r in rows
         if r["impl"] == "xla"}
  for r in rows:
    ref = xla.get((r["label"], r["size"], r["resolution"], r["what"], r["steps"]))
    if ref is not None and r["impl"] != "xla":
      r["xla_over_kernel_p50"] = ref["p50_ms"] / r["p50_ms"]


def _run_info() -> dict:
  """What a run's numbers depend on besides its rows; stored in the JSON beside them."""
  dev = jax.devices()[0]
  return {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "kernel_ops": list(FLAGS.kernel_ops),
          "iters": FLAGS.iters}


def _markdown(rows: list[dict], info: dict) -> str:
  """The table, its header from `info` (the run that measured the rows, not this process)."""
  weights = ("random weights (all sizes)" if all(r.get("random_weights", True) for r in rows)
             else "the model's own weights")
  head = (f"Device: {info['device']} ({info.get('platform', '?')}), jax {info['jax']}, "
          f"XLA_FLAGS={info['xla_flags']!r}, label {FLAGS.label!r}, "
          f"kernel ops {','.join(info['kernel_ops'])}, "
          f"{info.get('iters', '?')} timed calls each, {weights}. "
          "x floor: p50 over the larger of the two floors (1.0 = at the roofline).\n\n")
  lines = ["| size | WxH | tokens | what | S | impl | p50 ms | p99 ms | FLOP floor ms | "
           "byte floor ms | x floor | XLA/kernel p50 | rel err vs XLA |", "|" + "---|" * 13]
  for r in rows:
    floor_f = r["step_flop_floor_ms"] if r["what"] == "step" else r["frame_flop_floor_ms"]
    floor_b = r["step_byte_floor_ms"] if r["what"] == "step" else r["frame_byte_floor_ms"]
    ratio = f"{r['xla_over_kernel_p50']:.2f}" if "xla_over_kernel_p50" in r else ""
    err = f"{r['rel_err_vs_xla']:.1e}" if "rel_err_vs_xla" in r else ""
    lines.append(f"| {r['size']} | {r['resolution']} | {r['tokens']} | {r['what']} | "
                 f"{r['steps']} | {r['impl']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                 f"{floor_f:.3f} | {floor_b:.3f} | {r['p50_ms'] / max(floor_f, floor_b):.1f} | "
                 f"{ratio} | {err} |")
  return head + "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: str, device: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps_rows = [r for r in rows if r["what"] == "step"]
  fig, ax = plt.subplots(figsize=(10, 4.5))
  names = sorted({(r["size"], r["resolution"]) for r in steps_rows},
                 key=lambda k: (FLAGS.sizes.index(k[0]), k[1]))
  impls = sorted({r["impl"] for r in steps_rows})
  width = 0.8 / (len(impls) + 1)
  for j, impl in enumerate(impls):
    vals = [next((r["p50_ms"] for r in steps_rows if (r["size"], r["resolution"]) == n
                  and r["impl"] == impl), np.nan) for n in names]
    ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"{impl} p50")
  floors = [next(max(r["step_flop_floor_ms"], r["step_byte_floor_ms"]) for r in steps_rows
                 if (r["size"], r["resolution"]) == n) for n in names]
  ax.bar(np.arange(len(names)) + len(impls) * width, floors, width,
         label="floor (FLOPs or bytes, the larger)")
  ax.set_xticks(np.arange(len(names)) + width * len(impls) / 2)
  ax.set_xticklabels([f"{s}\n{r}" for s, r in names])
  ax.set_yscale("log")
  ax.set_ylabel("ms per denoiser step (one frame)")
  ax.set_title(f"LSD denoiser step latency, {device}, {FLAGS.label}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _done(rows: list[dict], size: str, res: str) -> set[str]:
  """The implementations whose rows for (size, res) a resumed run already has."""
  return {r.get("impl_requested") for r in rows if r["size"] == size and r["resolution"] == res
          and r["what"] == "step"}


def _check_flags() -> None:
  """Every size x resolution x S the grid will visit, checked before anything is built."""
  try:
    steps = [int(v) for v in FLAGS.steps]
    for impl in FLAGS.impls:
      api.resolve(impl)
    names = [] if FLAGS.model else FLAGS.sizes  # an exported model: its own size
    for res in FLAGS.resolutions:
      if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", res):
        raise ValueError(f"a resolution is WIDTHxHEIGHT, e.g. 832x480, got {res!r}")
      w, h = (int(v) for v in res.split("x"))
      for name in names:
        sizes.tokens_per_frame(sizes.get_size(name), h, w)
  except ValueError as e:  # not a number, an unknown name, a shape that does not tile
    raise app.UsageError(f"benchmark_latency: {e} (--sizes={','.join(FLAGS.sizes)} "
                         f"--resolutions={','.join(FLAGS.resolutions)} "
                         f"--steps={','.join(FLAGS.steps)} --impls={','.join(FLAGS.impls)})")
  if not steps or min(steps) < 1:
    raise app.UsageError(f"benchmark_latency: --steps must be integers >= 1, got {FLAGS.steps}")
  if FLAGS.iters < 1 or FLAGS.warmup < 0:
    raise app.UsageError("benchmark_latency: --iters must be >= 1 and --warmup >= 0")


def main(argv) -> None:
  del argv
  _check_flags()
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  for backend in ("mosaic", "triton"):
    api.set_kernel_ops(backend, FLAGS.kernel_ops)
  rows = []
  info = _run_info()
  stem = os.path.join(FLAGS.out_dir, f"latency_{FLAGS.label}")
  model = None
  if FLAGS.model:
    from lsd_jax.models import export

    cfg, params, _ = export.load(FLAGS.model)
    model = (cfg, params)
    FLAGS.sizes = [cfg.model_size.name]
  if FLAGS.resume and os.path.exists(stem + ".json"):
    with open(stem + ".json") as f:
      earlier_run = json.load(f)
    rows = earlier_run.pop("rows")
    logging.info("resuming: %d rows from %s.json", len(rows), stem)
    left = [(size, res) for size in FLAGS.sizes for res in FLAGS.resolutions
            if set(FLAGS.impls) - _done(rows, size, res)]
    changed = {k: (earlier_run[k], info[k]) for k in ("device", "xla_flags", "kernel_ops", "iters")
               if k in earlier_run and earlier_run[k] != info[k]}
    if left and changed:  # one table, one set of conditions
      raise app.UsageError(f"--resume: {stem}.json was measured with {changed} (earlier, now); "
                           "finish it under the same conditions or use another --label")
    # Nothing left to run: only re-render, with the header of the run that measured the rows.
    info = {**info, **earlier_run} if left else earlier_run

  def save(all_rows):
    _ratios(all_rows)
    with open(stem + ".json", "w") as f:  # after every implementation: a timeout keeps the rest
      json.dump({**info, "rows": all_rows}, f, indent=1)

  for size in FLAGS.sizes:
    for res in FLAGS.resolutions:
      earlier = list(rows)
      new = _bench_one(size, res, model, skip=frozenset(_done(rows, size, res)),
                       save=lambda new_rows: save(earlier + _tag(new_rows, model)))
      rows = earlier + _tag(new, model)
      save(rows)
  md = _markdown(rows, info)
  with open(stem + ".md", "w") as f:
    f.write(md)
  _plot(rows, stem + ".png", info["device"])
  if any("kernels" in r for r in rows):
    with open(stem + "_kernels.md", "w") as f:
      f.write(_kernels_markdown(rows, info))
  print(md)


if __name__ == "__main__":
  app.run(main)
