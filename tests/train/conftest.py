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
