"""Prune an exported model, then fine-tune it by distillation through the training loop."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import distill as distill_config
from lsd_jax.models import export, lsd
from lsd_jax.train import loop, pruning, tasks, writers
from tests.conftest import randomize
from tests.train.conftest import small_prompt_table


TEACHER = lsd.LSDConfig(size="tiny", height=32, width=32, latent_scale=1.3)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  params = jax.jit(lambda k: randomize(lsd.init_params(k, TEACHER), jax.random.key(1), 0.1))(jax.random.key(0))
  return export.save(str(tmp_path_factory.mktemp("teacher")), TEACHER, params, metadata={"steps": 5})


def _config_only_export(directory, cfg, **kw):
  """An export with zero weights in the model's shapes (traced, nothing compiled), for checks
  that read only its config."""
  shapes = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), cfg))
  return export.save(directory, cfg, jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes), **kw)


def test_prune_then_distill_end_to_end(teacher, tmp_path):
  cfg = distill_config.get_config("smoke")
  cfg.distill.teacher = teacher
  cfg.prune.keep_heads, cfg.prune.keep_mlp = 0.5, 0.5
  pruned = str(tmp_path / "pruned")
  summary = pruning.calibrate_and_prune(cfg, teacher, pruned, small_prompt_table())
  assert summary["block_heads"] == [1, 1] and summary["block_mlp"] == [128, 128]
  assert summary["after"]["params_denoiser"] < summary["before"]["params_denoiser"]
  assert all(np.isfinite(s["heads"]).all() and max(s["mlp"]) > 0 for s in summary["scores"])
  p_cfg, p_params, meta = export.load(pruned)
  assert p_cfg.block_heads == (1, 1) and meta["pruned_from"] == teacher
  assert os.path.isfile(os.path.join(pruned, pruning.REPORT_FILE))

  cfg.init_from = pruned
  cfg.total_steps, cfg.log_every, cfg.checkpoint_every = 8, 1, 8
  work = str(tmp_path / "distill")
  out = loop.train(cfg, work, small_prompt_table())
  s_cfg, s_params, s_meta = export.load(out["export"])
  assert s_cfg == p_cfg and s_meta["teacher"] == teacher and s_meta["steps"] == 8
  hist = writers.read_jsonl(os.path.join(work, "train_metrics.jsonl"))
  assert all(np.isfinite(hist["loss"])) and all(np.isfinite(hist["teacher_flow_err"]))
  changed = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), s_params["denoiser"], p_params["denoiser"])
  assert max(jax.tree.leaves(changed)) > 0
  with open(os.path.join(work, "config.json")) as f:
    assert json.load(f)["task"] == "distill"


def test_student_must_share_the_teachers_latent_space(tmp_path):
  teacher = _config_only_export(str(tmp_path / "teacher"), TEACHER, metadata={"steps": 5})
  other = lsd.LSDConfig(size="tiny", height=32, width=32, history_len=2)
  folder = _config_only_export(str(tmp_path / "other"), other)
  cfg = distill_config.get_config("smoke")
  cfg.distill.teacher, cfg.init_from = teacher, folder
  with pytest.raises(ValueError, match="history_len"):
    tasks.student_config(cfg, export.load_config(teacher))


def test_distillation_refuses_a_scaled_flow_noise(tmp_path):
  """train.noise_scale is the lsd task's: the distillation loss follows the teacher from the
  standard draw, so a run that asks for another scale stops before it trains on the wrong one."""
  teacher = _config_only_export(str(tmp_path / "teacher"), TEACHER, metadata={"steps": 5})
  cfg = distill_config.get_config("smoke")
  cfg.distill.teacher = teacher
  cfg.train.noise_scale = 0.25
  with pytest.raises(ValueError, match="noise_scale"):
    tasks.distill_task(cfg, small_prompt_table())
