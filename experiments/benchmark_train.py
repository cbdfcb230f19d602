r"""Training throughput and model-FLOP utilisation (MFU) of the LSD train step.

Builds the train step of an experiment config exactly as `lsd_jax.train.loop` does (same
models, sharding, donation), with a random autoencoder of the config's size (the step's cost
does not depend on its values) and one real host batch from the config's pipeline (procedural
scenes and photos, so no clip library is needed), held on device and reused: this times the
step, not the input pipeline. For each batch size: steps/s (median of --repeats timed loops of
--iters steps, each closed by block_until_ready), and the FLOPs of one step two ways:

- model FLOPs (analytic, `lsd_jax.train.flops` on `lsd_jax.models.sizes`): the frozen encoder on the 2 x B x (K+1) input
  and target frames, the denoiser forward + backward (3 forward-equivalents) on B targets, the
  bootstrap teacher's two forwards on bootstrap_frac x B, and the model-history hook's forward
  on the K history frames of every clip (it is computed for the whole batch, then selected);
- XLA FLOPs: `cost_analysis()` of the compiled step (everything XLA executes, elementwise too).

MFU = model FLOPs per second / --peak_tflops (989.4: H100 SXM dense bf16 spec; the previous
BENCHMARKS entries also quote 790, the measured cuBLAS rate). Writes train_mfu.json and .md.

  python -m experiments.benchmark_train --config=experiments/configs/lsd.py:base \
      --batch_sizes=32,64 --out_dir=/tmp/mfu

Scaling (`lsd_jax.train.scaling`): --device_counts=1,4,8 times the step on a mesh over the first
N devices for each N (the config's mesh, e.g. data x fsdp, with -1 filled from N), and
--per_device_batch=B makes the global batch B x N (weak scaling). Each run reports samples/s in
all and per device; scaling efficiency is a run's samples/s per device over the one-device run's
at the same per-device batch (this invocation's, or --baseline's JSON from another machine):

  python -m experiments.benchmark_train --config=experiments/configs/lsd.py:base \
      --device_counts=1,4,8 --per_device_batch=8 --out_dir=/tmp/scaling
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags, logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from lsd_jax.datasets import pipeline
from lsd_jax.models import export, lsd
from lsd_jax.train import flops, loop, scaling, sharding, tasks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/lsd.py:base", "An LSD experiment config.")
flags.DEFINE_list("batch_sizes", ["32"], "Global batch sizes to time.")
flags.DEFINE_integer("iters", 20, "Steps per timed loop.")
flags.DEFINE_integer("repeats", 5, "Timed loops (the median is reported).")
flags.DEFINE_float("peak_tflops", 989.4, "Peak dense bf16 rate for MFU (H100 SXM spec).")
flags.DEFINE_string("out_dir", "/tmp/train_mfu", "Where train_mfu.json/.md go.")
flags.DEFINE_string("label", "", "Name of this run (defaults to the config name).")
flags.DEFINE_list("device_counts", [], "Time on a mesh over the first N devices, for each N "
                  "(empty: all of them, once).")
flags.DEFINE_integer("per_device_batch", 0, "> 0: the global batch is this times the devices of "
                     "each run (weak scaling), instead of --batch_sizes.", lower_bound=0)
flags.DEFINE_string("baseline", "", "A train_mfu JSON whose one-device run is the reference of "
                    "the scaling efficiency (default: this invocation's one-device run).")


def _random_autoencoder(config, directory: str) -> None:
  cfg = lsd.LSDConfig.from_config(config)
  from lsd_jax.models.autoencoder import Autoencoder
  ae = Autoencoder(cfg.model_size.autoencoder)
  params = nn.meta.unbox(ae.init(jax.random.key(0), jnp.zeros((1, cfg.height, cfg.width, 3)))["params"])
  export.save_params(os.path.join(directory, tasks.AE_FILE), params, dtype="float32")
  with open(os.path.join(directory, tasks.AE_META), "w") as f:
    json.dump({"size": config.model.size, "kind": cfg.autoencoder, "latent_scale": 1.0, "steps": 0}, f)


def time_batch(config, batch_size: int, devices=None) -> dict[str, float]:
  config = config.copy_and_resolve_references()
  config.data.global_batch_size = batch_size
  config.data.sources.library.weight = 0.0
  config.data.worker_count = 0
  with tempfile.TemporaryDirectory() as tmp:
    _random_autoencoder(config, tmp)
    config.autoencoder_dir = tmp
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    rules = [(r[0], tuple(r[1]) if isinstance(r[1], (list, tuple)) else r[1]) for r in config.rules]
    table = loop.prompt_table(config.data.prompt_split)
    task = tasks.build(config, table)
    state, shardings = sharding.sharded_init(task.init, mesh, rules)
    it = pipeline.make_iterator(config.data, table)
    batch_sh = sharding.batch_sharding(mesh)
    batch = pipeline.to_global_batch(next(it), mesh, batch_sh.spec)
    repl = sharding.replicated(mesh)
    extras = jax.device_put(task.frozen, repl)
    jitted = jax.jit(lambda s, b, k, ex: task.step(s, b, k, **ex), in_shardings=(shardings, batch_sh, repl, repl),
                     out_shardings=(shardings, repl), donate_argnums=0)
    key = jax.random.key(1)
    with sharding.activate(mesh, rules):
      t0 = time.perf_counter()
      compiled = jitted.lower(state, batch, key, extras).compile()
      compile_s = time.perf_counter() - t0
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
      for _ in range(3):
        state, metrics = compiled(state, batch, key, extras)
      jax.block_until_ready(metrics)
      rates = []
      for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        for _ in range(FLAGS.iters):
          state, metrics = compiled(state, batch, key, extras)
        jax.block_until_ready((state, metrics))
        rates.append(FLAGS.iters / (time.perf_counter() - t0))
  steps_s = float(np.median(rates))
  mf = flops.train_step_flops(config, batch_size)
  n_dev = mesh.devices.size
  peak = FLAGS.peak_tflops * 1e12 * n_dev
  return {"batch": batch_size, "devices": n_dev, "mesh": dict(mesh.shape), "steps_per_s": steps_s,
          "steps_per_s_all": rates, "samples_per_s": batch_size * steps_s,
          "samples_per_s_per_device": batch_size * steps_s / n_dev,
          "ms_per_step": 1e3 / steps_s, "compile_s": compile_s,
          "model_tflop_per_step": mf["total"] / 1e12, "model_flops_parts": mf,
          "xla_tflop_per_step": xla_flops / 1e12,
          "mfu": mf["total"] * steps_s / peak, "hfu_xla": xla_flops * steps_s / peak,
          "mfu_denoiser_only": (mf["total"] - mf["encoder"]) * steps_s / peak}


def main(argv):
  del argv
  config = FLAGS.config
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  dev = jax.devices()[0]
  res = {"config": config.name, "device": getattr(dev, "device_kind", dev.platform),
         "date": time.strftime("%Y-%m-%d"), "peak_tflops": FLAGS.peak_tflops, "runs": []}
  label = FLAGS.label or config.name.replace(":", "_")
  baseline = []
  if FLAGS.baseline:
    with open(FLAGS.baseline) as f:
      baseline = json.load(f)["runs"]
  try:
    todo = scaling.runs(FLAGS.batch_sizes, FLAGS.device_counts, FLAGS.per_device_batch, jax.device_count())
  except ValueError as e:
    raise app.UsageError(str(e))
  for b, n in todo:
    r = time_batch(config, b, jax.devices()[:n])
    logging.info("%s batch %d on %d devices: %.2f steps/s, %.1f samples/s per device, %.1f ms, model %.2f "
                 "TFLOP/step, MFU %.1f%% (XLA-counted %.1f%%)", config.name, r["batch"], r["devices"],
                 r["steps_per_s"], r["samples_per_s_per_device"], r["ms_per_step"], r["model_tflop_per_step"],
                 100 * r["mfu"], 100 * r["hfu_xla"])
    res["runs"].append(r)
    scaling.add_efficiency(res["runs"], baseline)
    with open(os.path.join(FLAGS.out_dir, f"train_mfu_{label}.json"), "w") as f:
      json.dump(res, f, indent=2)
  lines = [f"# Train-step MFU: {config.name} on {res['device']} ({res['date']})", "",
           f"Peak {FLAGS.peak_tflops} TFLOP/s per device. Model FLOPs analytic (encoder + denoiser fwd/bwd + "
           "bootstrap teacher + history hook); XLA FLOPs from cost_analysis. Scaling efficiency: samples/s "
           "per device over the one-device run's at the same per-device batch.", "",
           "| batch | devices | mesh | steps/s | ms/step | samples/s | samples/s/device | scaling eff. | "
           "model TFLOP/step | XLA TFLOP/step | MFU | MFU w/o encoder | XLA-counted |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in res["runs"]:
    mesh = ",".join(f"{k}:{v}" for k, v in r["mesh"].items())
    eff = f"{100 * r['scaling_efficiency']:.0f}%" if "scaling_efficiency" in r else ""
    lines.append(f"| {r['batch']} | {r['devices']} | {mesh} | {r['steps_per_s']:.2f} | {r['ms_per_step']:.1f} | "
                 f"{r['samples_per_s']:.1f} | {r['samples_per_s_per_device']:.1f} | {eff} | "
                 f"{r['model_tflop_per_step']:.2f} | {r['xla_tflop_per_step']:.2f} | {100 * r['mfu']:.1f}% | "
                 f"{100 * r['mfu_denoiser_only']:.1f}% | {100 * r['hfu_xla']:.1f}% |")
  with open(os.path.join(FLAGS.out_dir, f"train_mfu_{label}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
