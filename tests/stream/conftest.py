"""Shared fixtures: a tiny random model at 64x64 (compiled once per test session) and a fake,
call-counting text encoder (the real MiniLM is exercised in test_engine's prompt tests)."""

import zlib

import numpy as np
import pytest

from lsd_jax.models import export, lsd, sizes
from lsd_jax.stream import engine

TINY = lsd.LSDConfig(size="tiny", height=64, width=64)


class FakeTextEncoder:
  """A deterministic unit vector per text; counts the texts it was asked to encode."""

  def __init__(self):
    self.calls: list[str] = []

  def encode(self, texts):
    self.calls.extend(texts)
    out = []
    for t in texts:
      v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(sizes.PROMPT_DIM)
      out.append((v / np.linalg.norm(v)).astype(np.float32))
    return np.stack(out)


def tiny_info(name="tiny-test") -> engine.ModelInfo:
  return engine.ModelInfo(name=name, label=f"{name} (random weights)", trained=False,
                          checkpoint=None, size="tiny", resolution="64x64", steps=TINY.steps)


def tiny_model(encoder=None) -> engine.StreamModel:
  return engine.StreamModel(TINY, lsd.random_params(0, TINY), tiny_info(),
                            text_encoder=encoder or FakeTextEncoder())


@pytest.fixture(scope="session")
def model():
  m = tiny_model()
  engine.StreamSession(m).warmup(profile=True)
  return m


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
  """A 64x64 tiny model folder with random weights (export format), labelled so."""
  d = tmp_path_factory.mktemp("tiny_ckpt")
  export.save(str(d), TINY, lsd.random_params(0, TINY), dtype="float32",
              metadata={"name": "tiny-test", "random_weights": True})
  return str(d)
