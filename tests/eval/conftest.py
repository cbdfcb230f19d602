"""Shared fixtures: one tiny 32x32 model for the evaluation tests, initialised and exported once
per test process."""

import jax
import pytest

from lsd_jax.models import export, lsd

# tau_inf 0.1, not the default 0.5: test_evaluate's tau_inf tests compare the model's own level
# with --tau_inf=0.5.
CFG = lsd.LSDConfig(size="tiny", height=32, width=32, steps=1, tau_inf=0.1)


@pytest.fixture(scope="session")
def tiny32(tmp_path_factory):
  """(exported model folder, params) of a fresh-init tiny model at 32x32, S = 1."""
  d = str(tmp_path_factory.mktemp("tiny32"))
  params = lsd.init_params(jax.random.key(0), CFG)
  export.save(d, CFG, params, dtype="float32", metadata={"note": "random tiny for tests"})
  return d, params
