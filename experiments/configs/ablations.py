"""Ablation arms (DESIGN.md section 8) as lists of overrides of experiments/configs/lsd.py.

Each ablation is a list of arms; an arm has a label, `train` overrides (dotted config fields, as
`--config.x=...` would set them) and `eval` overrides (inference-only: `steps` S, `tau_inf`).
Arms with the same `train` overrides share one trained model (experiments/sweep.py trains each
distinct model once, with the same budget, and evaluates every arm with the same protocol).

  python -m experiments.sweep --config=experiments/configs/lsd.py:small --ablations=all \
      --config.max_minutes=60 --autoencoder_dir=workdirs/ae_small --workdir=workdirs/sweep

What to expect: full history augmentation should hold the drift ratio closest to 1 on long
streams (none drifts most); tau_inf trades fidelity (low) against robustness to drift (high);
larger K helps temporal effects (echo, particles) more than per-frame ones; S=1 -> 4 raises
fidelity at proportional latency; concat and attention differ mostly in latency.
"""

from experiments.configs import lsd as lsd_config

NO_AUGMENT: list = []


def get_ablations() -> dict[str, list[dict]]:
  k_arms = [{"label": f"K={k}", "train": {"model.history_len": k,
                                          "data.num_frames": lsd_config.WARMUP_FRAMES + k + 1}, "eval": {}}
            for k in (1, 2, 3)]
  return {
      "history_augmentation": [
          {"label": "none", "train": {"train.augment": NO_AUGMENT, "train.tau_max": 0.0}, "eval": {}},
          {"label": "noise only", "train": {"train.augment": NO_AUGMENT}, "eval": {}},
          {"label": "full", "train": {}, "eval": {}},
      ],
      "tau_inf": [{"label": f"tau_inf={t}", "train": {}, "eval": {"tau_inf": t}} for t in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)],
      "history_len": k_arms,
      "steps": [{"label": f"S={s}", "train": {}, "eval": {"steps": s}} for s in (1, 2, 4)],
      "history_mode": [{"label": m, "train": {"model.history_mode": m}, "eval": {}} for m in ("concat", "attention")],
  }


def get_config(arg: str = "all") -> dict[str, list[dict]]:
  """The ablations named in `arg` ("all" or comma-separated names)."""
  every = get_ablations()
  if arg == "all":
    return every
  names = arg.split(",")
  unknown = [n for n in names if n not in every]
  if unknown:
    raise ValueError(f"unknown ablations {unknown}; known: {sorted(every)}")
  return {n: every[n] for n in names}
