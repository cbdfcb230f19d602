"""experiments/benchmark_train.py end to end on the smoke config: its analytic model FLOPs agree
with XLA's own count of the compiled step (on the CPU, where no custom calls hide FLOPs)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_smoke_step_is_timed_and_flops_agree_with_xla(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "experiments/benchmark_train.py", "--config=experiments/configs/lsd.py:smoke",
                  "--batch_sizes=4", "--iters=2", "--repeats=2", f"--out_dir={tmp_path}"],
                 cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
  res = json.load(open(tmp_path / "train_mfu_lsd_smoke.json"))
  (run,) = res["runs"]
  assert run["batch"] == 4 and run["steps_per_s"] > 0 and len(run["steps_per_s_all"]) == 2
  parts = run["model_flops_parts"]
  assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
  # The analytic count covers the matmuls and convolutions; XLA also counts elementwise work.
  ratio = run["model_tflop_per_step"] / run["xla_tflop_per_step"]
  assert 0.75 < ratio <= 1.0, ratio
  assert (tmp_path / "train_mfu_lsd_smoke.md").read_text().count("| 4 | 1 |") == 1


def test_model_patch_reaches_the_model_and_the_flop_count():
  """`--config.model.patch=1` builds the patch-1 model and benchmark_train's FLOPs
  (`flops.train_step_flops`) count it. Read from the library, not the script: importing the script
  here defined its flags in the test process beside another script's (`--iters` twice)."""
  sys.path.insert(0, ROOT)
  from experiments.configs import lsd as lsd_configs
  from lsd_jax.models import lsd
  from lsd_jax.train import flops
  config = lsd_configs.get_config("smoke")
  base = flops.train_step_flops(config, 4)["denoiser_fwd_bwd"]
  config.model.patch = 1
  config.model.noise_scale = 0.5  # inference only: the export and the probe sample at it
  assert lsd.LSDConfig.from_config(config).patch == 1 and lsd.LSDConfig.from_config(config).noise_scale == 0.5
  assert flops.train_step_flops(config, 4)["denoiser_fwd_bwd"] > 3.5 * base
