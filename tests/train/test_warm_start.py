"""Warm starts: an exported model's autoencoder and denoiser as the start of a new run."""

import jax
import numpy as np
import pytest

from lsd_jax.models import export, lsd
from lsd_jax.train import tasks
from lsd_jax.train import state as state_lib
from tests.conftest import randomize


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """An exported tiny model (the tests only read it)."""
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, latent_scale=1.7)
  params = randomize(lsd.init_params(jax.random.key(0), cfg), jax.random.key(1), 0.05)
  return export.save(str(tmp_path_factory.mktemp("exported") / "model"), cfg, params, metadata={"steps": 7}), cfg


def test_autoencoder_from_an_exported_model(exported):
  directory, cfg = exported
  _, params, _ = export.load(directory)
  ae, meta = tasks.load_autoencoder(directory)
  assert meta["size"] == "tiny" and meta["latent_scale"] == pytest.approx(1.7)
  jax.tree.map(np.testing.assert_array_equal, ae, params["autoencoder"])


def test_load_autoencoder_rejects_other_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither"):
    tasks.load_autoencoder(str(tmp_path))


def test_warm_start_copies_the_denoiser_into_params_and_ema(exported):
  directory, cfg = exported
  _, params, _ = export.load(directory)
  fresh = lsd.init_params(jax.random.key(5), cfg)["denoiser"]
  tx = state_lib.make_optimizer(1e-3, 10, 2)
  state = tasks.warm_start_denoiser(state_lib.create(fresh, tx), directory)
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, state.params, params["denoiser"])
  jax.tree.map(np.testing.assert_array_equal, state.ema_params, params["denoiser"])


def test_warm_start_rejects_another_architecture(exported):
  directory, _ = exported
  other = lsd.LSDConfig(size="tiny", height=32, width=32, history_len=2)
  fresh = lsd.init_params(jax.random.key(5), other)["denoiser"]
  state = state_lib.create(fresh, state_lib.make_optimizer(1e-3, 10, 2))
  with pytest.raises(ValueError, match="init_from"):
    tasks.warm_start_denoiser(state, directory)
