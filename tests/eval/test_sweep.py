"""The ablation sweep: overrides and run sharing (fast), and the smoke sweep end to end (slow)."""

import json
import math
import os
import subprocess
import sys

import pytest

from experiments.configs import ablations as ablation_configs
from experiments.configs import lsd as lsd_config
from lsd_jax.eval import ablation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_overrides_apply_to_a_copy():
  base = lsd_config.get_config("smoke")
  c = ablation.apply_overrides(base, {"model.history_len": 1, "train.augment": [], "data.num_frames": 4})
  assert (c.model.history_len, len(c.train.augment), c.data.num_frames) == (1, 0, 4)
  assert base.model.history_len == 3 and len(base.train.augment) > 0
  with pytest.raises(KeyError):
    ablation.apply_overrides(base, {"model.no_such_field": 1})


def test_inference_only_arms_share_the_base_model():
  abl = ablation_configs.get_config("all")
  base = lsd_config.get_config("smoke")
  runs = ablation.training_runs(abl, base)
  # base (full augment, K=3, concat), augment none, noise only, K=1, K=2, attention
  assert len(runs) == 6 and runs["base"] == {}
  same = abl["steps"] + abl["tau_inf"] + [abl["history_len"][2], abl["history_mode"][0], abl["history_augmentation"][2]]
  assert {ablation.arm_run(base, a) for a in same} == {"base"}
  assert ablation.arm_run(base, abl["history_len"][0]) != "base"
  assert len(ablation.training_runs(abl)) == 8  # without a base, restated values count as changes
  assert [a["eval"]["steps"] for a in abl["steps"]] == [1, 2, 4]


def _sweep(drifts, protocol=None):
  arms = [{"label": l, "summary": {"drift_ratio": d, "stream_psnr": 10.0 + d}} for l, d in drifts.items()]
  return {"meta": {"protocol": protocol or {"steps": 2}}, "ablations": {"history_augmentation": arms}}


def test_across_seeds_mean_and_sd():
  sweeps = {"0": _sweep({"none": 0.98, "full": 0.97}), "1": _sweep({"none": 0.96, "full": 0.99}),
            "2": _sweep({"none": 0.97, "full": 0.98})}
  t = ablation.across_seeds(sweeps, "history_augmentation", keys=("drift_ratio", "stream_psnr"))
  assert t["none"]["drift_ratio"]["mean"] == pytest.approx(0.97)
  assert t["none"]["drift_ratio"]["std"] == pytest.approx(0.01)  # sample sd of 0.98, 0.96, 0.97
  assert t["full"]["drift_ratio"]["by_seed"] == {"0": 0.97, "1": 0.99, "2": 0.98}
  md = ablation.seeds_markdown(t, "history_augmentation")
  assert "| none | 0.9700 +- 0.0100 (n=3)" in md and "0.9800, 0.9600, 0.9700" in md
  with pytest.raises(ValueError, match="protocol"):
    ablation.across_seeds({"0": sweeps["0"], "1": _sweep({"none": 1, "full": 1}, {"steps": 4})}, "history_augmentation")
  with pytest.raises(ValueError, match="other arms"):
    ablation.across_seeds({"0": sweeps["0"], "1": _sweep({"full": 1, "none": 1})}, "history_augmentation")


@pytest.mark.slow
def test_sweep_smoke_end_to_end(tmp_path):
  report = tmp_path / "ablations.md"
  cmd = [sys.executable, "-m", "experiments.sweep", "--config=experiments/configs/lsd.py:smoke",
         "--config.total_steps=2", "--ablations=steps", f"--workdir={tmp_path / 'sweep'}", "--clips=0",
         "--stream_frames=8", "--switch_every=4", "--chunk=8", "--effects=sepia,snowfall", f"--report={report}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads((tmp_path / "ablations.json").read_text())
  arms = doc["ablations"]["steps"]
  assert [a["label"] for a in arms] == ["S=1", "S=2", "S=4"] and {a["run"] for a in arms} == {"base"}
  assert all(math.isfinite(a["summary"]["drift_ratio"]) for a in arms)
  assert (tmp_path / "ablations" / "steps_drift.png").stat().st_size > 0
  assert "| S=4 | base |" in report.read_text()


def test_select_arms_and_train_only_those(tmp_path):
  abl = ablation_configs.get_config("history_augmentation,steps")
  picked = ablation.select_arms(abl, ["none", "noise only"])
  assert list(picked) == ["history_augmentation"]  # `steps` has neither arm: dropped
  assert [a["label"] for a in picked["history_augmentation"]] == ["none", "noise only"]
  with pytest.raises(ValueError, match="no arm is labelled \\['nonee'\\]"):
    ablation.select_arms(abl, ["none", "nonee"])
  base = lsd_config.get_config("smoke")
  trained = []

  def fake_train(cfg, workdir):  # what loop.train leaves behind: an export
    trained.append((os.path.basename(workdir), len(cfg.train.augment), cfg.train.tau_max))
    os.makedirs(os.path.join(workdir, "export"))
    open(os.path.join(workdir, "export", "config.json"), "w").write("{}")

  exports = ablation.train_runs(base, picked, str(tmp_path), train_fn=fake_train)
  assert len(exports) == 2 and "base" not in exports
  assert sorted(t[1:] for t in trained) == sorted([(0, 0.0), (0, base.train.tau_max)])
  ablation.train_runs(base, ablation.select_arms(abl, ["none"]), str(tmp_path), train_fn=fake_train)
  assert len(trained) == 2  # a second process finds the export and trains nothing
