r"""Compares procedural-stream evaluations (experiments/evaluate.py's eval.json) side by side: one
markdown table (mean over effects of PSNR, SSIM, flicker and prompt-switch response, the drift
ratio, frames) and one plot of the drift curves (PSNR per segment, all effects).

  D=reports/drift_100k_h100_2026-11-27
  python experiments/compare_streams.py --runs="tau_inf 0.1 (shipped)=$D/tau0.1,tau_inf 0.5=$D/tau0.5" \
      --out=$D/compare --title="100,000 frames of the shipped model at S = 1, one H100"

Each run is `label=folder` (the folder holding eval.json). Writes --out.md and --out.png.
"""

from __future__ import annotations

from absl import app, flags

from lsd_jax.eval import report

_RUNS = flags.DEFINE_list("runs", [], "label=folder with eval.json, ...")
_OUT = flags.DEFINE_string("out", "", "output path without extension (.md and .png are written)")
_TITLE = flags.DEFINE_string("title", "Procedural streams compared", "heading of the markdown")


def main(argv):
  del argv
  runs = [tuple(r.split("=", 1)) for r in _RUNS.value]
  if not runs or any(len(r) != 2 or not r[0] or not r[1] for r in runs):
    raise app.UsageError("--runs=label=folder,... (each folder holds an eval.json)")
  if not _OUT.value:
    raise app.UsageError("--out is required")
  md = report.compare_streams(runs, _OUT.value, _TITLE.value)
  print(md)


if __name__ == "__main__":
  app.run(main)
