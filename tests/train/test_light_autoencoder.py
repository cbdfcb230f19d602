"""The light autoencoder through the loop: trained alone, distilled into a teacher's latent
space, and used by an LSD run whose export then records the light kind."""

import json
import os

import numpy as np
import pytest

from experiments.configs import autoencoder as ae_config
from experiments.configs import lsd as lsd_config
from lsd_jax.models import export
from lsd_jax.train import loop, tasks, writers
from tests.train.conftest import small_prompt_table


@pytest.fixture(scope="module")
def distilled_light(smoke_ae, tmp_path_factory):
  """(light autoencoder's workdir, its conv teacher's): the light kind trained into the latent
  space of the conv smoke autoencoder."""
  conv_teacher = smoke_ae[0]
  cfg = ae_config.get_config("smoke_light")
  cfg.teacher_autoencoder = conv_teacher
  cfg.total_steps = 30
  work = str(tmp_path_factory.mktemp("light"))
  loop.train(cfg, work, small_prompt_table())
  return work, conv_teacher


def test_light_autoencoder_learns_the_teachers_latent_space(distilled_light):
  work, conv_teacher = distilled_light
  with open(os.path.join(work, tasks.AE_META)) as f:
    meta = json.load(f)
  with open(os.path.join(conv_teacher, tasks.AE_META)) as f:
    teacher = json.load(f)
  assert meta["kind"] == "light" and teacher["kind"] == "conv"
  assert meta["latent_scale"] == teacher["latent_scale"] and meta["teacher"]["dir"] == conv_teacher
  hist = writers.read_jsonl(os.path.join(work, "train_metrics.jsonl"))
  assert hist["latent_match"][-1] < hist["latent_match"][0]


def test_lsd_trains_on_the_distilled_light_autoencoder(distilled_light, tmp_path):
  """An LSD run on it (slow: tests/conftest.py; an LSD run on a light autoencoder, its export
  and latent scale, stays in the fast suite: test_heldout.py::test_v3_recipe_trains_end_to_end)."""
  work, conv_teacher = distilled_light
  with open(os.path.join(conv_teacher, tasks.AE_META)) as f:
    teacher = json.load(f)
  lsd = lsd_config.get_config("smoke")
  lsd.autoencoder_dir = work
  summary = loop.train(lsd, str(tmp_path / "lsd"), small_prompt_table())
  model_cfg, params, _ = export.load(summary["export"])
  assert model_cfg.autoencoder == "light" and model_cfg.latent_scale == teacher["latent_scale"]
  assert "encoder" in params["autoencoder"] and np.isfinite(
      np.asarray(params["autoencoder"]["encoder"]["Conv_0"]["kernel"], np.float32)).all()


def test_light_autoencoder_alone_measures_its_latent_scale(smoke_light_ae):
  work, _, _ = smoke_light_ae
  with open(os.path.join(work, tasks.AE_META)) as f:
    meta = json.load(f)
  assert meta["kind"] == "light" and meta["latent_scale"] > 0 and "teacher" not in meta


def test_teacher_must_share_latent_channels(tmp_path):
  cfg = ae_config.get_config("small_light")
  cfg.teacher_autoencoder = "checkpoints/lsd_small"
  cfg.model.size = "tiny"  # 4 latent channels; the shipped model has 8
  with pytest.raises(ValueError, match="latent channels"):
    loop.train(cfg, str(tmp_path), small_prompt_table())
