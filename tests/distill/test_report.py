"""The distillation/pruning report reads the benchmark and evaluation outputs and marks the frontier."""

import json
import os

import jax
import pytest

from lsd_jax.eval import frontier as report
from lsd_jax.models import export, lsd


@pytest.fixture
def folders(tmp_path):
  out = {}
  for label, extra in (("teacher", {}), ("pruned", {"block_heads": (1, 1), "block_mlp": (128, 128)})):
    cfg = lsd.LSDConfig(size="tiny", height=32, width=32, **extra)
    params = jax.eval_shape(lambda c=cfg: lsd.init_params(jax.random.key(0), c))
    params = jax.tree.map(lambda a: jax.numpy.zeros(a.shape), params)
    out[label] = export.save(str(tmp_path / label), cfg, params)
  return out


def _results(root, lat, psnr, drift):
  os.makedirs(root / "latency", exist_ok=True)
  for label in lat:
    rows = [{"label": label, "size": "tiny", "resolution": "32x32", "impl": impl, "what": "frame", "steps": s,
             "p50_ms": lat[label][s] * f} for s in (1, 2, 4) for impl, f in (("xla", 1.0), ("mosaic", 1.5))]
    rows += [{**r, "p50_ms": r["p50_ms"] / 3, "mesh": "model:4", "devices": 4, "tp": 4} for r in rows[:6]]  # not one GPU's
    json.dump({"device": "NVIDIA H100 80GB HBM3", "rows": rows}, open(root / "latency" / f"latency_{label}.json", "w"))
  for label in psnr:
    os.makedirs(root / label / "fidelity", exist_ok=True)
    res = {e: {"psnr": {str(s): psnr[label][s] + off for s in (1, 2, 4)}} for e, off in (("sepia", 1.0), ("rain", -1.0))}
    json.dump({"results": res}, open(root / label / "fidelity" / "fidelity.json", "w"))
    for s in (1, 2, 4):
      os.makedirs(root / label / f"eval_s{s}", exist_ok=True)
      json.dump({"stream": {"drift": {"psnr_ratio": drift}}}, open(root / label / f"eval_s{s}" / "eval.json", "w"))


def test_report_tables_and_frontier(folders, tmp_path):
  root = tmp_path / "results"
  _results(root, {"teacher": {1: 4.0, 2: 6.0, 4: 10.0}, "pruned": {1: 3.0, 2: 4.0, 4: 6.0}},
           {"teacher": {1: 30.0, 2: 31.0, 4: 32.0}, "pruned": {1: 29.0, 2: 31.5, 4: 31.0}}, 0.98)
  out = str(tmp_path / "reports" / "distill_prune.md")
  rows, md = report.write([("teacher", folders["teacher"]), ("pruned", folders["pruned"])], str(root), out,
                          resolution="32x32")
  by = {(r["label"], r["steps"]): r for r in rows}
  assert by[("teacher", 2)]["latency_ms"] == 6.0  # the fastest implementation's p50
  assert by[("pruned", 2)]["psnr"] == pytest.approx(31.5)  # mean over effects
  assert by[("pruned", 1)]["params_denoiser"] < by[("teacher", 1)]["params_denoiser"]
  assert by[("pruned", 1)]["gflops_frame"] < by[("teacher", 1)]["gflops_frame"]
  # pruned S=2 (4 ms, 31.5) dominates teacher S=2 (6 ms, 31.0) and S=4 (10 ms, 32.0) stays on the front.
  front = {k for k, r in by.items() if r["frontier"]}
  assert front == {("pruned", 1), ("pruned", 2), ("teacher", 4)}, front
  assert "S=2: pruned is faster than teacher and +0.50 dB PSNR: it dominates" in md
  assert "| pruned | 2 | 1 x2 | 128 x2 |" in md and "0.980" in md
  assert os.path.isfile(str(tmp_path / "reports" / "distill_prune_frontier.png"))


def test_missing_measurements_are_not_invented(folders, tmp_path):
  rows, md = report.write([("teacher", folders["teacher"])], str(tmp_path / "none"), str(tmp_path / "r.md"),
                          resolution="32x32", notes="## Notes\n\nwhere the numbers come from")
  assert all(r["frontier"] is False for r in rows)
  assert "n/a" in md and "No fidelity measured yet" in md
  assert md.rstrip().endswith("where the numbers come from") and open(tmp_path / "r.md").read() == md


def test_recorded_means_stand_in_for_lost_per_effect_results(folders, tmp_path):
  root = tmp_path / "results"
  os.makedirs(root / "pruned" / "fidelity")
  doc = {"means": {"1": 20.5, "2": 21.0}}
  json.dump(doc, open(root / "pruned" / "fidelity" / "fidelity.json", "w"))
  with pytest.raises(ValueError, match="source"):
    report.fidelity_psnr(str(root), "pruned", 1)
  doc["source"] = "the mean row eval_fidelity.py printed"
  json.dump(doc, open(root / "pruned" / "fidelity" / "fidelity.json", "w"))
  assert report.fidelity_psnr(str(root), "pruned", 2) == 21.0
  assert report.fidelity_psnr(str(root), "pruned", 4) != report.fidelity_psnr(str(root), "pruned", 4)  # NaN


def test_same_architecture_better_student_dominates_and_stream_columns(folders, tmp_path):
  root = tmp_path / "results"
  lat = {1: 4.0, 2: 6.0, 4: 10.0}
  _results(root, {"teacher": lat, "student": lat}, {"teacher": {1: 30.0, 2: 31.0, 4: 32.0},
                                                    "student": {1: 30.5, 2: 30.0, 4: 32.0}}, 1.01)
  per_effect = {"sepia": {"psnr": 20.0, "flicker": 0.02}, "rain": {"psnr": 22.0, "flicker": 0.04}}
  json.dump({"stream": {"drift": {"psnr_ratio": 1.01}, "per_effect": per_effect}},
            open(root / "student" / "eval_s1" / "eval.json", "w"))
  rows, md = report.write([("teacher", folders["teacher"]), ("student", folders["teacher"])], str(root),
                          str(tmp_path / "r.md"), resolution="32x32")
  assert "S=1: student is as fast as teacher and +0.50 dB PSNR: it dominates" in md
  assert "S=2: student is as fast as teacher and -1.00 dB PSNR: no dominance" in md
  assert "S=4: student is as fast as teacher and +0.00 dB PSNR: no dominance" in md  # equal is not better
  by = {(r["label"], r["steps"]): r for r in rows}
  assert by[("student", 1)]["stream_psnr"] == pytest.approx(21.0) and by[("student", 1)]["flicker"] == pytest.approx(0.03)
  assert by[("student", 2)]["stream_psnr"] != by[("student", 2)]["stream_psnr"]  # no per-effect stream: NaN
  assert "| 21.00 | 0.0300 | 1.010 |" in md
  assert not by[("teacher", 1)]["frontier"] and by[("student", 1)]["frontier"]
