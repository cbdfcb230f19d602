"""Small commands the device-call shell scripts (scripts/gpu_*.sh) run, so the scripts hold no
Python of their own.

  python -m experiments.device_tools versions [grain av skimage ...]   # versions and devices
  python -m experiments.device_tools decode_cache MANIFEST DIR [SPLIT ...]  # decode a library once
  python -m experiments.device_tools drift_summary EVAL_JSON           # one long stream's drift
  python -m experiments.device_tools frontier RESULTS MODEL ...        # fidelity and drift per model and S
  python -m experiments.device_tools arms ABLATION                     # an ablation's arm labels
  python -m experiments.device_tools minutes SECONDS                   # SECONDS as minutes (>= 0.5)
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


COMMANDS = {"versions": lambda a: versions(a), "decode_cache": lambda a: decode_cache(a[0], a[1], a[2:]),
            "drift_summary": lambda a: drift_summary(a[0]), "frontier": lambda a: frontier(a[0], a[1:]),
            "arms": lambda a: arms(a[0]), "minutes": lambda a: minutes(a[0])}


def main(argv: list[str]) -> int:
  if not argv or argv[0] not in COMMANDS:
    print(f"usage: python -m experiments.device_tools {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
    return 2
  COMMANDS[argv[0]](argv[1:])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
