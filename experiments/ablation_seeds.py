r"""One ablation repeated with several training seeds: mean and standard deviation per arm.

Each seed is a separate `experiments/sweep.py` run with `--config.seed=N` and the same protocol;
this reads their JSONs and writes a markdown table (and a JSON) of every arm's columns by seed:

  python experiments/ablation_seeds.py --ablation=history_augmentation \
      --sweeps=0=reports/ablations_cpu_tiny/ablations.json,1=/tmp/sweep_seed1/report/ablations.json \
      --out=reports/ablations_cpu_tiny/seeds.md
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from lsd_jax.eval import ablation

_SWEEPS = flags.DEFINE_list("sweeps", [], "seed=sweep JSON, one per training seed")
_ABLATION = flags.DEFINE_string("ablation", "history_augmentation", "which ablation of the sweeps")
_OUT = flags.DEFINE_string("out", "", "markdown table; the JSON goes beside it")


def main(argv):
  del argv
  pairs = [s.split("=", 1) for s in _SWEEPS.value]
  if len(pairs) < 2 or any(len(p) != 2 for p in pairs) or not _OUT.value:
    raise app.UsageError("--sweeps=seed=json,seed=json,... (at least two) and --out are required")
  sweeps = {seed: ablation.load(path) for seed, path in pairs}
  table = ablation.across_seeds(sweeps, _ABLATION.value)
  md = ablation.seeds_markdown(table, _ABLATION.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    f.write(md + "\n")
  with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as f:
    json.dump({"ablation": _ABLATION.value, "sweeps": dict(pairs), "arms": table}, f, indent=2)
  print(md)


if __name__ == "__main__":
  app.run(main)
