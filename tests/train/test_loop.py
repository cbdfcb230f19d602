"""The training loop: smoke runs end to end, resumes exactly, and stops on a non-finite loss."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.configs import lsd as lsd_config
from lsd_jax.train import loop, tasks, writers
from tests.conftest import fake_devices_flags
from tests.train.conftest import small_prompt_table


def _losses(workdir):
  return writers.read_jsonl(os.path.join(workdir, "train_metrics.jsonl"))


@pytest.fixture(scope="module")
def trained_ae(smoke_ae):
  return smoke_ae  # (workdir, summary, seconds): tests/train/conftest.py


def test_autoencoder_smoke(trained_ae):
  workdir, summary, _ = trained_ae
  assert summary["end_step"] == 20 and summary["latent_scale"] > 0
  hist = _losses(workdir)
  assert hist["loss"][-1] < hist["loss"][0]
  assert os.path.isfile(os.path.join(workdir, tasks.AE_FILE))
  assert os.path.isfile(os.path.join(workdir, "train_curves.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "train")))


def test_lsd_smoke_trains_end_to_end_under_two_minutes(trained_ae, tmp_path):
  ae_dir, _, ae_seconds = trained_ae
  cfg = lsd_config.get_config("smoke")
  cfg.autoencoder_dir = ae_dir
  start = time.time()
  summary = loop.train(cfg, str(tmp_path), small_prompt_table())
  seconds = time.time() - start
  assert summary["end_step"] == 20
  assert ae_seconds + seconds < 120, f"smoke configs took {ae_seconds:.0f} s + {seconds:.0f} s"
  from lsd_jax.models import export
  model_cfg, params, meta = export.load(summary["export"])
  assert model_cfg.size == "tiny" and meta["steps"] == 20


def test_killed_run_resumes_with_the_same_losses(trained_ae, tmp_path):
  ae_dir, _, _ = trained_ae
  cfg = lsd_config.get_config("smoke")
  cfg.autoencoder_dir = ae_dir
  cfg.total_steps, cfg.checkpoint_every, cfg.log_every = 12, 4, 1
  straight = str(tmp_path / "straight")
  loop.train(cfg, straight, small_prompt_table())
  resumed = str(tmp_path / "resumed")
  cfg.stop_at = 6  # "killed" at step 6, last periodic checkpoint at 4... and the forced one at 6
  cfg.export_on_stop = False
  loop.train(cfg, resumed, small_prompt_table())
  # Simulate a kill between checkpoints: drop the final checkpoint, keep the one at step 4.
  import shutil
  ckpts = os.path.join(resumed, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())[-1] == 6
  shutil.rmtree(os.path.join(ckpts, "6"))
  cfg.stop_at = 0
  summary = loop.train(cfg, resumed, small_prompt_table())
  assert summary["start_step"] == 4 and summary["end_step"] == 12
  a, b = _losses(straight), _losses(resumed)
  assert a["step"] == b["step"] == list(range(1, 13))
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)


def test_nan_loss_stops_with_step(trained_ae, tmp_path):
  ae_dir, _, _ = trained_ae
  cfg = lsd_config.get_config("smoke")
  cfg.autoencoder_dir = ae_dir
  cfg.optim.lr = 1e30  # diverges within a few steps
  cfg.optim.clip_norm = 1e30
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    loop.train(cfg, str(tmp_path), small_prompt_table())


def test_sharded_step_matches_one_device(trained_ae, tmp_path):
  """8 fake CPU devices (data x fsdp) give the same losses as one device."""
  ae_dir, _, _ = trained_ae
  script = f"""
import json, sys
sys.path.insert(0, {os.getcwd()!r})
from experiments.configs import lsd as lsd_config
from lsd_jax.train import loop, tasks, writers
from tests.train.conftest import small_prompt_table
import jax
mesh = json.loads(sys.argv[1])
cfg = lsd_config.get_config("smoke")
cfg.autoencoder_dir = {ae_dir!r}
cfg.total_steps, cfg.log_every, cfg.mesh = 4, 1, mesh
cfg.export_on_stop = False
loop.train(cfg, sys.argv[2], small_prompt_table())
print(json.dumps({{"devices": jax.device_count(), "loss": writers.read_jsonl(sys.argv[2] + "/train_metrics.jsonl")["loss"]}}))
"""
  results = {}
  for name, ndev, mesh in [("one", 1, {"data": 1, "fsdp": 1}), ("eight", 8, {"data": 2, "fsdp": 4})]:
    env = dict(os.environ, XLA_FLAGS=fake_devices_flags(ndev), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(mesh), str(tmp_path / name)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results[name] = json.loads(out.stdout.strip().splitlines()[-1])
  assert results["eight"]["devices"] == 8
  np.testing.assert_allclose(results["eight"]["loss"], results["one"]["loss"], rtol=2e-3)
