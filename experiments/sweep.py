"""Ablation sweep: train each arm of experiments/configs/ablations.py with the same budget, evaluate
every arm with evaluate.py's protocol (lsd_jax.eval.protocol, flags from eval_flags.py), write a markdown report (one
table and one drift plot per ablation) and a JSON the ablations notebook reads. Each sweep writes
its own folder under reports/; reports/ablations.md is the index of what the sweeps found.

CPU smoke run (tiny model at 32x32, a handful of steps; trains its own smoke autoencoder):
  python -m experiments.sweep --config=experiments/configs/lsd.py:smoke --config.total_steps=3 \
      --ablations=history_augmentation,steps --workdir=/tmp/sweep_smoke --clips=0 --stream_frames=16 \
      --switch_every=4 --chunk=8 --effects=sepia,snowfall --report=/tmp/sweep_smoke/ablations.md

GPU run (one H100; each distinct trained arm gets the same 60-minute budget; 6 trainings for
--ablations=all trains 6 models: S, tau_inf, K=3 and concat arms reuse the base model):
  python -m experiments.sweep --config=experiments/configs/lsd.py:small --config.max_minutes=60 \
      --config.total_steps=20000 --autoencoder_dir=workdirs/ae_small --workdir=workdirs/sweep \
      --ablations=all --steps=2 --clips=8 --clip_frames=64 --stream_frames=20000 --switch_every=500 \
      --chunk=500 --report=reports/ablations_small_h100/ablations.md

Fine-tune ablation (one H100, a session's budget): every arm warm-starts from the shipped model and
trains the same number of steps with its own settings, so the arms compare at the shipped model's
quality instead of from scratch; one process per arm trains in parallel into the shared workdir,
then a last run (the same flags, no --train_only and no --arms) evaluates them all:
  for arm in none "noise only" full; do python -m experiments.sweep --config=experiments/configs/lsd.py:small \
      --config.init_from=checkpoints/lsd_small --autoencoder_dir=checkpoints/lsd_small --config.total_steps=2000 \
      --ablations=history_augmentation --arms="$arm" --train_only --workdir=workdirs/sweep_ft & done; wait
Only arms that keep the shipped model's shapes can warm-start (history augmentation; tau_inf and
S are inference-only); K and the history mode change the parameters.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import eval_flags

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/lsd.py:small", "base LSD config")
_ABLATIONS = flags.DEFINE_string("ablations", "all", "ablation names (comma-separated) or all")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/sweep", "one training folder per distinct arm")
_AE_DIR = flags.DEFINE_string("autoencoder_dir", "", "trained autoencoder; empty: train the config's own "
                              "(autoencoder.py with the same size argument) into workdir/autoencoder")
_REPORT = flags.DEFINE_string("report", "reports/ablations_sweep/ablations.md", "markdown report (plots go beside it)")
_JSON = flags.DEFINE_string("json", "", "sweep JSON (default: the report's name with .json)")
_ARMS = flags.DEFINE_list("arms", [], "only these arm labels (e.g. none,'noise only'); empty: every arm")
_TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "train the selected arms' models and stop (no evaluation): "
                                "several such processes can share --workdir, one per arm, and a last run "
                                "without it evaluates what they trained")


def main(argv):
  del argv
  from experiments.configs import ablations as ablation_configs
  from experiments.configs import autoencoder as ae_configs
  from lsd_jax.eval import ablation, loading
  from lsd_jax.train import loop, tasks

  base = _CONFIG.value
  ablations = ablation_configs.get_config(_ABLATIONS.value)
  if _ARMS.value:
    ablations = ablation.select_arms(ablations, _ARMS.value)
  ae_dir = _AE_DIR.value
  if not ae_dir:
    ae_dir = os.path.join(_WORKDIR.value, "autoencoder")
    if not os.path.isfile(os.path.join(ae_dir, tasks.AE_META)):
      ae_cfg = ae_configs.get_config(base.name.split(":")[-1])
      ae_cfg.total_steps = base.total_steps
      ae_cfg.max_minutes = base.max_minutes
      loop.train(ae_cfg, ae_dir)
  base.autoencoder_dir = ae_dir
  exports = ablation.train_runs(base, ablations, _WORKDIR.value)
  if _TRAIN_ONLY.value:
    logging.info("trained %s (--train_only: no evaluation)", exports)
    return
  ec = eval_flags.eval_config()
  some = next(iter(exports.values()))
  from lsd_jax.models import export

  cfg, _, _ = export.load(some)
  clips = loading.heldout_clips(eval_flags.MANIFEST.value, ec.clips, ec.clip_frames, cfg.height, cfg.width)
  results = ablation.evaluate_arms(ablations, exports, ec, clips, out_dir=os.path.join(_WORKDIR.value, "eval"),
                                    base=base)
  meta = {"config": base.name, "total_steps": base.total_steps, "max_minutes": base.max_minutes,
          "autoencoder_dir": ae_dir, "protocol": {k: v for k, v in vars(ec).items() if k != "progress"}}
  json_path = _JSON.value or os.path.splitext(_REPORT.value)[0] + ".json"
  ablation.write(results, meta, _REPORT.value, json_path)
  logging.info("wrote %s and %s", _REPORT.value, json_path)
  print(json.dumps({n: [(a["label"], a["summary"]["drift_ratio"]) for a in arms] for n, arms in results.items()}))


if __name__ == "__main__":
  app.run(main)
