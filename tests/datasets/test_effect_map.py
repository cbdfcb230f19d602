"""The learned effect map: the committed file is a refit of the train prompts, it reads the train
prompts right, an unsure read keeps the prompt's own embedding, and bad inputs fail clearly."""

import dataclasses

import numpy as np
import pytest

from lsd_jax.datasets import effect_map
from lsd_jax.datasets import effects
from lsd_jax.datasets import prompts
from lsd_jax.models import text_encoder


@pytest.fixture(scope="module")
def encoder():
  return text_encoder.default_encoder()


@pytest.fixture(scope="module")
def table():
  return prompts.load_embedding_table()


@pytest.fixture(scope="module")
def committed(table):
  return effect_map.load(table=table)


def test_committed_map_equals_a_refit(table, committed):
  refit = effect_map.fit(table, l2=committed.l2, temperature=committed.temperature,
                         split_min_prob=committed.split_min_prob,
                         anchor_min_prob=committed.anchor_min_prob)
  assert refit.table_digest == committed.table_digest == effect_map.train_digest(table)
  # Both fits stop at a gradient of at most FIT_GTOL per component, so each lies within
  # |g|_2 / l2 of the unique optimum (the loss is l2-strongly convex); float32 storage on top.
  n_params = committed.weights_DxC.size + committed.bias_C.size
  bound = 2 * np.sqrt(n_params) * effect_map.FIT_GTOL / committed.l2
  scale = float(np.abs(committed.weights_DxC).max())
  np.testing.assert_allclose(refit.weights_DxC, committed.weights_DxC, rtol=0, atol=bound + 2.0 ** -23 * scale)
  np.testing.assert_allclose(refit.bias_C, committed.bias_C, rtol=0, atol=bound + 2.0 ** -23 * scale)


def test_the_map_reads_every_single_effect_train_prompt_right(table, committed):
  rows, labels = effect_map.single_rows(table)
  assert len(set(labels.tolist())) == len(effect_map.SINGLE_EFFECTS) == 20
  probs = committed.probs(table.embeddings[rows])
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
  assert np.array_equal(probs.argmax(1), labels)
  assert np.all(probs.max(1) >= committed.anchor_min_prob)  # and sure enough to anchor each


def test_the_map_reads_train_compositions_through_their_parts(encoder, table, committed):
  truth = table.names()
  train = [i for i in np.flatnonzero(table.splits == "train") if "+" in truth[i]][:60]
  names, probs, _ = prompts.map_many([table.texts[i] for i in train], encoder, table, committed)
  hit = np.mean([n == truth[i] for n, i in zip(names, train)])
  assert hit >= 0.9, hit  # 91% on held-out train paraphrases in the map's cross-validation
  assert np.all((probs > 0) & (probs <= 1))


def test_remove_all_colour_reads_as_grayscale(encoder, table, committed):
  """The val phrase that the nearest-phrase match reads as colour tint (0.49); the map, fitted on
  the train prompts alone, reads it as grayscale. (Not within the val template of the fidelity
  protocol, "transform the stream with remove all colour": colour tint, 0.71.)"""
  (name,), (prob,), _ = prompts.map_many(["remove all colour"], encoder, table, committed)
  assert name == "grayscale" and prob >= committed.anchor_min_prob


def test_an_unsure_read_keeps_the_prompts_own_embedding(encoder, table, committed):
  text = "turn me into a cat"
  (anchor,) = prompts.anchor_many([text], encoder, table, method="map", effect_map=committed)
  assert anchor.embedding is None and anchor.text == "" and anchor.score < committed.anchor_min_prob
  np.testing.assert_allclose(anchor.own, encoder.encode([text])[0], atol=1e-6)
  # The same map made sure of everything anchors it: the threshold is what keeps it.
  sure = dataclasses.replace(committed, anchor_min_prob=0.0)
  (forced,) = prompts.anchor_many([text], encoder, table, method="map", effect_map=sure)
  assert forced.embedding is not None and forced.name == anchor.name


def test_empty_prompt_is_identity_and_a_bad_map_fails_clearly(encoder, table, committed, tmp_path):
  names, probs, own = prompts.map_many(["", "   "], encoder, table, committed)
  assert names == ["identity", "identity"] and probs.tolist() == [1.0, 1.0] and own == [None, None]
  assert prompts.map_many([], encoder, table, committed)[0] == []
  with pytest.raises(FileNotFoundError, match="make_effect_map"):
    effect_map.load(tmp_path / "missing.npz")
  other = tmp_path / "other.npz"
  effect_map.save(other, committed)
  with np.load(other) as f:
    data = dict(f)
  data["classes"] = data["classes"][::-1]
  np.savez(other, **data)
  with pytest.raises(ValueError, match="other effect tables"):
    effect_map.load(other)
  with pytest.raises(ValueError, match="l2"):
    effect_map.fit_logistic(np.eye(3), np.arange(3), 3, 0.0)


def test_anchor_many_keeps_the_empty_prompt_and_rejects_unknown_options(encoder, table, committed):
  for a in prompts.anchor_many(["", "  "], encoder, table, method="map", effect_map=committed):
    assert a.embedding is None and a.name == "identity" and a.own is None
  assert prompts.anchor_many([], encoder, table) == []
  with pytest.raises(ValueError, match="method"):
    prompts.anchor_many(["sepia"], encoder, table, method="nearest")
  with pytest.raises(ValueError, match="target"):
    prompts.anchor_many(["sepia"], encoder, table, target="median")


def test_anchor_many_methods_share_the_parameters_and_the_train_paraphrase_rule(encoder, table, committed):
  text = "heavy snow with a cartoon look"
  heavy = prompts.params_from_words(text, "cartoon", "snowfall")
  for method in prompts.ANCHOR_METHODS:
    (a,) = prompts.anchor_many([text], encoder, table, method=method, effect_map=committed)
    assert a.name == "cartoon+snowfall" and a.embedding is not None, method
    i = table.texts.index(a.text)
    assert table.splits[i] == "train" and effects.spec_name(table.spec(i)) == "cartoon+snowfall"
    np.testing.assert_allclose(np.asarray(table.params[i]), heavy)


def test_val_map_accuracy(encoder, table, committed):
  """Held-out paraphrases (and connectors, templates) must reach the right effect: the bar of
  test_prompts.test_val_match_accuracy, 90%."""
  val = np.flatnonzero(table.splits == "val")
  names, probs, _ = prompts.map_many([table.texts[i] for i in val], encoder, table, committed)
  names_all = table.names()
  truth = [names_all[i] for i in val]
  hit = np.array([a == b for a, b in zip(names, truth)])
  single = np.array(["+" not in t for t in truth])
  assert np.all((probs > 0) & (probs <= 1))
  assert hit.mean() >= 0.9 and hit[single].mean() >= 0.9
