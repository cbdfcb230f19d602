import time

import numpy as np
import pytest

from lsd_jax.datasets import effects, pipeline


def small_prompt_table(n: int = 6) -> pipeline.PromptTable:
  """A few effects with random unit embeddings: the loop's tests need no text encoder."""
  rng = np.random.default_rng(0)
  specs = [effects.make_spec("sepia"), effects.make_spec("negative"), effects.make_spec("pencil_sketch"),
           effects.make_spec("identity", "echo"), effects.make_spec("thermal", "snowfall"),
           effects.make_spec("mirror")][:n]
  emb = rng.normal(size=(len(specs), 384)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  return pipeline.PromptTable(tuple(f"prompt {i}" for i in range(len(specs))), emb,
                              np.array([s.frame_id for s in specs]), np.array([s.temporal_id for s in specs]),
                              np.stack([s.params for s in specs]))


@pytest.fixture
def prompt_table():
  return small_prompt_table()


def _train_autoencoder(tmp_path_factory, config: str):
  from experiments.configs import autoencoder as ae_config
  from lsd_jax.train import loop

  workdir = str(tmp_path_factory.mktemp(config))
  start = time.time()
  summary = loop.train(ae_config.get_config(config), workdir, small_prompt_table())
  return workdir, summary, time.time() - start


@pytest.fixture(scope="session")
def smoke_ae(tmp_path_factory):
  """(workdir, summary, seconds) of the conv autoencoder's smoke run, trained once per test
  process for every test that needs an autoencoder to train on (they only read it)."""
  return _train_autoencoder(tmp_path_factory, "smoke")


@pytest.fixture(scope="session")
def smoke_light_ae(tmp_path_factory):
  """The same for the light kind (`autoencoder.py:smoke_light`)."""
  return _train_autoencoder(tmp_path_factory, "smoke_light")
