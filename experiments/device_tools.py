"""Small commands the device-call shell scripts (scripts/gpu_*.sh) run, so the scripts hold no
Python of their own.

  python -m experiments.device_tools versions [grain av skimage ...]   # versions and devices
  python -m experiments.device_tools decode_cache MANIFEST DIR [SPLIT ...]  # decode a library once
  python -m experiments.device_tools drift_summary EVAL_JSON           # one long stream's drift
  python -m experiments.device_tools frontier RESULTS MODEL ...        # fidelity and drift per model and S
  python -m experiments.device_tools arms ABLATION                     # an ablation's arm labels
  python -m experiments.device_tools minutes SECONDS                   # SECONDS as minutes (>= 0.5)
  python -m experiments.device_tools random_autoencoder CONFIG DIR     # a random autoencoder of lsd.py:CONFIG's size
  python -m experiments.device_tools loop_rate WORKDIR DEVICES BATCH JSONL  # a training loop's steps/s, appended
  python -m experiments.device_tools loop_scaling JSONL OUT            # those runs' scaling efficiency
  python -m experiments.device_tools render_time N T [H]               # the train step's effect render alone
"""

from __future__ import annotations

import importlib
import json
import sys


def versions(modules: list[str]) -> None:
  import jax

  print("jax", jax.__version__, jax.devices())
  for name in ["flax", "optax", *modules]:
    try:
      mod = importlib.import_module(name)
      print(name, getattr(mod, "__version__", "(no version)"))
    except ImportError as e:
      print(name, "MISSING:", e)


def decode_cache(manifest: str, directory: str, splits: list[str]) -> None:
  from lsd_jax.datasets import sources

  for split in splits or ["train", "heldout"]:
    src = sources.VideoClipSource.from_manifest(manifest, split, height=256, width=256, num_frames=6,
                                                decoded_cache=directory)
    print(f"{split}: {len(src.clips)} clips decoded into {directory}")
  print("cache ready")


def drift_summary(path: str) -> None:
  with open(path) as f:
    s = json.load(f)["stream"]
  print("drift:", "COMPLETE" if s["complete"] else "PARTIAL", s["frames"], "of", s["planned_frames"], "frames;",
        "psnr ratio", round(s["drift"]["psnr_ratio"], 4), "| pipeline frames/s",
        round(s["latency"].get("pipeline_frames_per_s", 0), 1))
  for e, r in s["drift"]["per_effect"].items():
    print(f"  {e:14s} ratio {r['psnr_ratio']:.4f}  curve", [round(c, 2) for c in r["psnr_curve"]])


def frontier(results: str, models: list[str]) -> None:
  from lsd_jax.eval import frontier as fr

  for m in models:
    print(m, " ".join(f"S={s}: {fr.fidelity_psnr(results, m, s):.2f} dB, drift {fr.drift_ratio(results, m, s):.4f}"
                      for s in (1, 2, 4)))


def arms(ablation: str) -> None:
  from experiments.configs import ablations

  print("\n".join(a["label"] for a in ablations.get_config(ablation)[ablation]))


def minutes(seconds: str) -> None:
  print(max(0.5, float(seconds) / 60))


def random_autoencoder(config_arg: str, directory: str) -> None:
  """An autoencoder folder of `experiments/configs/lsd.py:<config_arg>`'s size with random
  weights: what a timed training loop needs (its cost does not depend on the values)."""
  import os

  from experiments import benchmark_train
  from experiments.configs import lsd as lsd_config

  os.makedirs(directory, exist_ok=True)
  benchmark_train._random_autoencoder(lsd_config.get_config(config_arg), directory)  # pylint: disable=protected-access
  print("random autoencoder in", directory)


def loop_rate(workdir: str, devices: str, batch: str, jsonl: str) -> None:
  from lsd_jax.train import scaling

  rate = scaling.loop_rate(f"{workdir}/train_metrics.jsonl", int(devices), int(batch))
  with open(jsonl, "a") as f:
    f.write(json.dumps(rate) + "\n")
  print(json.dumps(rate))


def loop_scaling(jsonl: str, out: str) -> None:
  from lsd_jax.train import scaling

  with open(jsonl) as f:
    runs = [json.loads(line) for line in f if line.strip()]
  scaling.add_efficiency(runs)
  with open(out, "w") as f:
    json.dump(runs, f, indent=1)
  for r in runs:
    eff = f", efficiency {r['scaling_efficiency']:.0%}" if "scaling_efficiency" in r else ""
    print(f"{r['devices']} devices, batch {r['batch']}: {r['steps_per_s']:.2f} steps/s, "
          f"{r['samples_per_s_per_device']:.1f} samples/s per device{eff}")


def render_time(n: str, t: str, size: str = "256") -> None:
  """p50 / p99 ms of `steps.render_targets` (the effect ground truth the LSD train step renders
  on device) for N clips of T frames, specs drawn from the train prompt table: its share of the
  step says whether rendering every effect per clip under vmap is what the MFU lacks."""
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from lsd_jax.datasets import prompts
  from lsd_jax.train import steps

  n_, t_, hw = int(n), int(t), int(size)
  table = prompts.load_embedding_table("train")
  rows = np.random.default_rng(0).integers(0, len(table.texts), n_)
  batch = {"clip": jnp.asarray(np.random.default_rng(1).integers(0, 256, (n_, t_, hw, hw, 3), np.uint8)),
           "effect_frame_id": jnp.asarray(table.frame_ids[rows]),
           "effect_temporal_id": jnp.asarray(table.temporal_ids[rows]),
           "effect_params": jnp.asarray(table.params[rows])}
  fn = jax.jit(steps.render_targets)
  key = jax.random.key(0)
  fn(batch, key).block_until_ready()
  ms = []
  for i in range(30):
    t0 = time.perf_counter()
    fn(batch, jax.random.fold_in(key, i)).block_until_ready()
    ms.append(1e3 * (time.perf_counter() - t0))
  print(f"render_targets {n_} clips x {t_} frames at {hw}x{hw}: p50 {np.percentile(ms, 50):.2f} ms, "
        f"p99 {np.percentile(ms, 99):.2f} ms ({jax.devices()[0].device_kind})")


COMMANDS = {"versions": lambda a: versions(a), "decode_cache": lambda a: decode_cache(a[0], a[1], a[2:]),
            "drift_summary": lambda a: drift_summary(a[0]), "frontier": lambda a: frontier(a[0], a[1:]),
            "arms": lambda a: arms(a[0]), "minutes": lambda a: minutes(a[0]),
            "random_autoencoder": lambda a: random_autoencoder(a[0], a[1]),
            "loop_rate": lambda a: loop_rate(*a[:4]), "loop_scaling": lambda a: loop_scaling(a[0], a[1]),
            "render_time": lambda a: render_time(*a[:3])}


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in COMMANDS:
    print(f"usage: python -m experiments.device_tools {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
    return 2
  COMMANDS[argv[0]](argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
