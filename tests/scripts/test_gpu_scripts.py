"""The device-call scripts: valid bash, no Python of their own (what they compute is in
experiments/device_tools.py, where tests reach it), unknown stages refused, and a model brought
back in parts of PART_MB MiB (the caller's transfer limit, not the scripts') that rejoin to the
same bytes."""

import filecmp
import glob
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "scripts", "*.sh"))) + [os.path.join(ROOT, "pallas_kernels", "gpu_session.sh")]


def _env(tmp_path, **extra):
  return dict(os.environ, LSD_WHEELS="skip", OUT=str(tmp_path / "out"), **extra)


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
  proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "gpu_" in os.path.basename(s)], ids=os.path.basename)
def test_scripts_hold_no_python(script):
  text = open(script).read()
  assert "python3 -c" not in text and "python3 - <<" not in text and "python -c" not in text


@pytest.mark.parametrize("script", ["scripts/gpu_distill.sh", "scripts/gpu_eval.sh", "scripts/gpu_train.sh",
                                    "scripts/gpu_ablation.sh"])
def test_unknown_stage_is_refused(script, tmp_path):
  proc = subprocess.run(["bash", script, "no_such_stage"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 2 and "unknown stage no_such_stage" in proc.stdout


def test_export_brings_a_model_back_in_parts(tmp_path):
  model = tmp_path / "student"
  model.mkdir()
  (model / "config.json").write_text('{"lsd_config": {}}')
  (model / "params.safetensors").write_bytes(np.random.default_rng(0).bytes(33 * 2**20))  # 33 MiB
  proc = subprocess.run(["bash", "scripts/gpu_distill.sh", "export"], cwd=ROOT,
                        env=_env(tmp_path, STUDENT=str(model), PART_MB="10"), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  back = tmp_path / "out" / "student"
  parts = sorted(back.glob("params.part_*"))
  assert len(parts) == 4 and all(p.stat().st_size <= 10 * 2**20 for p in parts)
  (tmp_path / "joined").write_bytes(b"".join(p.read_bytes() for p in parts))
  assert filecmp.cmp(tmp_path / "joined", model / "params.safetensors", shallow=False)
  assert (back / "config.json").read_text() == '{"lsd_config": {}}'
  missing = subprocess.run(["bash", "scripts/gpu_distill.sh", "export"], cwd=ROOT,
                           env=_env(tmp_path, STUDENT=str(tmp_path / "nowhere")), capture_output=True, text=True, timeout=60)
  assert missing.returncode == 0 and "no student model at" in missing.stdout


def test_stages_find_the_model_in_the_tree_or_staged(tmp_path):
  show = 'source scripts/gpu_wheels.sh; echo "$SHIPPED $LIBRARY"'
  here = subprocess.run(["bash", "-c", show], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
  assert here.returncode == 0 and here.stdout.split()[0] == "checkpoints/lsd_small"
  # A tree whose model was moved out for a device call (a dangling link) uses the staged copy.
  tree = tmp_path / "tree"
  (tree / "scripts").mkdir(parents=True)
  (tree / "scripts" / "gpu_wheels.sh").write_text(open(os.path.join(ROOT, "scripts", "gpu_wheels.sh")).read())
  (tree / "checkpoints" / "lsd_small").mkdir(parents=True)
  os.symlink(tmp_path / "moved_away.safetensors", tree / "checkpoints" / "lsd_small" / "params.safetensors")
  (tree / ".carry" / "library").mkdir(parents=True)
  (tree / ".carry" / "library" / "manifest.json").write_text("{}")
  moved = subprocess.run(["bash", "-c", show], cwd=tree, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
  assert moved.stdout.split() == ["/tmp/teacher", ".carry/library/manifest.json"], moved.stdout + moved.stderr


def test_device_tools(tmp_path):
  from experiments import device_tools

  assert device_tools.main([]) == 2 and device_tools.main(["no_such"]) == 2
  report = {"stream": {"complete": False, "frames": 10, "planned_frames": 20, "latency": {},
                       "drift": {"psnr_ratio": 0.99, "per_effect": {"sepia": {"psnr_ratio": 1.0, "psnr_curve": [20.0]}}}}}
  path = tmp_path / "eval.json"
  path.write_text(__import__("json").dumps(report))
  proc = subprocess.run([os.sys.executable, "-m", "experiments.device_tools", "drift_summary", str(path)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0 and "PARTIAL 10 of 20" in proc.stdout and "sepia" in proc.stdout, proc.stderr
  arms = subprocess.run([os.sys.executable, "-m", "experiments.device_tools", "arms", "history_augmentation"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert arms.returncode == 0 and "none" in arms.stdout.split("\n")
  mins = subprocess.run([os.sys.executable, "-m", "experiments.device_tools", "minutes", "12"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  assert float(mins.stdout) == 0.5
