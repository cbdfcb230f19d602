"""scripts/gpu_ablation.sh end to end at smoke scale on the CPU (slow: ~5 minutes on 2 cores): a tiny
base model, then every history-augmentation arm warm-started from it in parallel processes, then one
evaluation of all arms with the hold ratio in the table."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_fine_tune_ablation_smoke(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  base = subprocess.run([sys.executable, "experiments/sweep.py", "--config=experiments/configs/lsd.py:smoke",
                         "--config.total_steps=2", "--ablations=steps", "--arms=S=1", "--train_only",
                         f"--workdir={tmp_path / 'base'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert base.returncode == 0, base.stderr[-3000:]
  bin_dir = os.path.dirname(sys.executable)  # the scripts call python3: this interpreter's
  env.update(LSD_WHEELS="skip", OUT=str(tmp_path / "out"), MODEL=str(tmp_path / "base" / "base" / "export"),
             FT_CONFIG="smoke", FT_STEPS="3", FT_BATCH="4", FT_WORKERS="0", LIB=str(tmp_path / "no_library.json"),
             WORKDIR=str(tmp_path / "ft"), FT_CLIPS="0", FT_FRAMES="2000", EFFECTS="sepia,snowfall",
             PATH=bin_dir + os.pathsep + env["PATH"])
  proc = subprocess.run(["bash", "scripts/gpu_ablation.sh", "train", "eval"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "trained 3 arms of history_augmentation" in proc.stdout
  for arm in ("none", "noise_only", "full"):
    assert "warm start: denoiser weights from" in (tmp_path / "out" / f"train_{arm}.log").read_text()
  md = (tmp_path / "out" / "ablations" / "ablations.md").read_text()
  assert "hold ratio" in md and all(f"| {a} |" in md for a in ("none", "noise only", "full"))
