"""report.stream_summary / compare_streams: the side-by-side table of evaluate.py runs."""

import json
import os

import pytest

from lsd_jax.eval import report


def _results(psnr, flicker, switch, ratio, tau=0.1, frames=4000, complete=True):
  per_effect = {e: {"psnr": p, "ssim": 0.5 + i / 10, "flicker": f, "frames": frames // 2}
                for i, (e, p, f) in enumerate(zip(("sepia", "rain"), psnr, flicker))}
  return {"protocol": {"steps": 2}, "tau_inf": tau, "device": "cpu",
          "stream": {"frames": frames, "complete": complete, "per_effect": per_effect,
                     "switch_response": {"sepia": {"median_frames": switch[0]}, "rain": {"median_frames": switch[1]}},
                     "drift": {"segment": 2000, "psnr_curve": [10.0, 10.0 * ratio], "psnr_ratio": ratio}}}


def _write(tmp_path, name, results):
  d = tmp_path / name
  d.mkdir()
  (d / "eval.json").write_text(json.dumps(results))
  return str(d)


def test_summary_means_over_effects():
  r = report.stream_summary(_results(psnr=(10.0, 20.0), flicker=(0.01, 0.03), switch=(4.0, float("nan")), ratio=0.99))
  assert r["psnr"] == pytest.approx(15.0)
  assert r["ssim"] == pytest.approx(0.55)
  assert r["flicker"] == pytest.approx(0.02)
  assert r["switch_frames"] == pytest.approx(4.0)  # effects that never settle are left out
  assert (r["steps"], r["tau_inf"], r["drift_ratio"], r["frames"]) == (2, 0.1, 0.99, 4000)


def test_summary_refuses_results_without_a_stream():
  with pytest.raises(ValueError, match="no procedural stream"):
    report.stream_summary({"stream": {}})


def test_compare_writes_table_and_plot(tmp_path):
  a = _write(tmp_path, "a", _results(psnr=(10.0, 20.0), flicker=(0.01, 0.03), switch=(4.0, 6.0), ratio=0.99))
  b = _write(tmp_path, "b", _results(psnr=(12.0, 22.0), flicker=(0.02, 0.04), switch=(1.0, 3.0), ratio=1.01,
                                     tau=0.5, complete=False))
  out = str(tmp_path / "cmp" / "compare")
  md = report.compare_streams([("low", a), ("high", b)], out, "two runs")
  rows = [l for l in md.splitlines() if l.startswith("| [")]
  assert len(rows) == 2
  assert "| 15.00 | 0.5500 | 0.0200 | 5.0 | 0.9900 |" in rows[0]
  assert "| 17.00 |" in rows[1] and "(partial)" in rows[1] and "| 0.50 |" in rows[1]
  assert "[low](../a)" in rows[0]
  assert os.path.getsize(out + ".png") > 0
  assert open(out + ".md").read() == md


def test_compare_names_the_unreadable_run(tmp_path):
  good = _write(tmp_path, "good", _results(psnr=(10.0, 20.0), flicker=(0.01, 0.03), switch=(4.0, 6.0), ratio=1.0))
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "eval.json").write_text("{not json")
  with pytest.raises(ValueError, match="broken: cannot read"):
    report.compare_streams([("good", good), ("broken", str(broken))], str(tmp_path / "x"))
  with pytest.raises(ValueError, match="missing: cannot read"):
    report.compare_streams([("missing", str(tmp_path / "nowhere"))], str(tmp_path / "y"))
