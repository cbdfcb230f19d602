r"""The distillation and pruning report: teacher vs students on the latency-quality frontier.

For each model (label=folder) and S in --steps: parameters and FLOPs per frame (analytic, from
the folder's architecture), per-frame latency p50 (whole frame: encode, S steps, decode) from
experiments/benchmark_latency.py JSONs (rows whose label is the model's label), held-out PSNR
(mean over effects) from experiments/eval_fidelity.py's fidelity.json and the drift ratio from
experiments/evaluate.py's eval.json. Results are read from --results laid out as
scripts/gpu_distill.sh writes them:

  <results>/latency/latency_<label>.json
  <results>/<label>/fidelity/fidelity.json
  <results>/<label>/eval_s<S>/eval.json

Missing measurements are reported as n/a. Writes --out (markdown) and a frontier PNG beside it:

  python experiments/distill_prune_report.py \
      --models=teacher=checkpoints/lsd_small,pruned=workdirs/pruned_small,distilled=workdirs/distill_pruned/export \
      --results=reports/distill_prune_h100 --out=reports/distill_prune.md
"""

from __future__ import annotations

from absl import app, flags

from lsd_jax.eval.frontier import write

_MODELS = flags.DEFINE_list("models", [], "label=model_folder, teacher first")
_RESULTS = flags.DEFINE_string("results", "reports/distill_prune_h100", "folder of measurements (see docstring)")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4"], "S")
_RESOLUTION = flags.DEFINE_string("resolution", "256x256", "WxH of the latency rows and the FLOP counts")
_OUT = flags.DEFINE_string("out", "reports/distill_prune.md", "markdown report; the PNG goes beside it")
_NOTES = flags.DEFINE_string("notes", "", "markdown file appended to the report (provenance, caveats)")


def main(argv):
  del argv
  models = [tuple(m.split("=", 1)) for m in _MODELS.value]
  if not models or any(len(m) != 2 for m in models):
    raise app.UsageError("--models=label=folder,... (teacher first)")
  notes = ""
  if _NOTES.value:
    with open(_NOTES.value) as f:
      notes = f.read()
  _, md = write(models, _RESULTS.value, _OUT.value, [int(s) for s in _STEPS.value], _RESOLUTION.value, notes)
  print(md)


if __name__ == "__main__":
  app.run(main)
