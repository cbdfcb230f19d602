"""Prompts: deterministic sampler, disjoint splits, words -> params, the table, text -> effect."""

import json

import numpy as np
import pytest

from lsd_jax.datasets import effects
from lsd_jax.datasets import prompts
from lsd_jax.models import text_encoder


@pytest.fixture(scope="module")
def encoder():
  return text_encoder.default_encoder()


def test_sampler_deterministic_given_seed():
  draw = lambda seed: [prompts.sample_prompt(np.random.default_rng(seed), "train") for _ in range(1)]
  a = [prompts.sample_prompt(rng, "val") for rng in [np.random.default_rng(5)] for _ in range(30)]
  b = [prompts.sample_prompt(rng, "val") for rng in [np.random.default_rng(5)] for _ in range(30)]
  assert [t for t, _ in a] == [t for t, _ in b]
  for (_, sa), (_, sb) in zip(a, b):
    assert sa.frame_id == sb.frame_id and sa.temporal_id == sb.temporal_id
    np.testing.assert_array_equal(sa.params, sb.params)
  assert draw(1)[0][0] != draw(2)[0][0] or draw(1)[0][0] != draw(3)[0][0]


def test_sampler_specs_are_valid_and_cover_every_effect():
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(600):
    text, spec = prompts.sample_prompt(rng, "train")
    assert isinstance(text, str) and text == " ".join(text.split()) and text
    assert spec.params.shape == (effects.NUM_PARAMS,) and spec.params.dtype == np.float32
    assert np.all((spec.params >= 0) & (spec.params <= 1))
    seen.add(effects.FRAME_EFFECTS[spec.frame_id])
    seen.add(effects.TEMPORAL_EFFECTS[spec.temporal_id])
  assert seen == set(effects.FRAME_EFFECTS) | set(effects.TEMPORAL_EFFECTS) - {"none"} | {"none"}


def test_train_and_val_paraphrases_disjoint():
  vocab = prompts.load_vocabulary()
  for kind in ("frame", "temporal"):
    for name, by_split in vocab.paraphrases[kind].items():
      assert not set(by_split["train"]) & set(by_split["val"]), name
  assert not set(vocab.templates["train"]) & set(vocab.templates["val"])
  assert not set(vocab.connectors["train"]) & set(vocab.connectors["val"])
  table = prompts.load_embedding_table()
  train = {t for t, s in zip(table.texts, table.splits) if s == "train"}
  val = {t for t, s in zip(table.texts, table.splits) if s == "val"}
  assert len(train) == prompts.TABLE_SIZES["train"] and len(val) == prompts.TABLE_SIZES["val"]
  assert not train & val
  # No val effect phrase appears inside any train prompt.
  val_phrases = {p for _, _, p in prompts.effect_phrases("val")}
  assert not any(prompts._has_word(t, p) for p in val_phrases for t in train)


def test_every_effect_has_paraphrases_in_both_splits():
  vocab = prompts.load_vocabulary()
  assert set(vocab.paraphrases["frame"]) == set(effects.FRAME_EFFECTS)
  assert set(vocab.paraphrases["temporal"]) == set(effects.TEMPORAL_EFFECTS[1:])
  for kind in ("frame", "temporal"):
    for by_split in vocab.paraphrases[kind].values():
      assert by_split["train"] and by_split["val"]


def test_modifier_words_disjoint_and_absent_from_phrases():
  mods = prompts.load_vocabulary().modifiers
  words = [w for p in ("strength", "scale", "density", "speed", "size")
           for level in mods[p]["levels"].values() for w in level["words"]]
  assert len(words) == len(set(words))
  for split in prompts.SPLITS:
    for _, _, phrase in prompts.effect_phrases(split):
      assert not any(prompts._has_word(phrase.lower(), w) for w in words), phrase


def test_params_follow_words():
  heavy = prompts.params_from_words("heavy snow", "identity", "snowfall")
  light = prompts.params_from_words("light snow", "identity", "snowfall")
  assert heavy[effects.P_DENSITY] > light[effects.P_DENSITY]
  red = prompts.params_from_words("red tint", "color_tint", "none")
  blue = prompts.params_from_words("blue tint", "color_tint", "none")
  assert red[1] > red[3] and blue[3] > blue[1]
  strong = prompts.params_from_words("strong sepia", "sepia", "none")
  subtle = prompts.params_from_words("subtle sepia", "sepia", "none")
  assert strong[effects.P_STRENGTH] > subtle[effects.P_STRENGTH]
  fast = prompts.params_from_words("cartoon with fast rain", "cartoon", "rain")
  assert fast[effects.P_SPEED] > prompts.params_from_words("cartoon with rain", "cartoon", "rain")[
      effects.P_SPEED]


def test_sampled_specs_are_what_their_words_say():
  rng = np.random.default_rng(3)
  for _ in range(300):
    text, spec = prompts.sample_prompt(rng, "val")
    frame, temporal = effects.FRAME_EFFECTS[spec.frame_id], effects.TEMPORAL_EFFECTS[spec.temporal_id]
    np.testing.assert_allclose(prompts.params_from_words(text, frame, temporal), spec.params,
                               err_msg=text)


def test_table_is_in_sync_with_the_grammar():
  table = prompts.load_embedding_table()
  expected = prompts.build_prompt_set("train") + prompts.build_prompt_set("val")
  assert list(table.texts) == [t for t, _ in expected]
  for i, (_, spec) in enumerate(expected):
    assert table.frame_ids[i] == spec.frame_id and table.temporal_ids[i] == spec.temporal_id
    np.testing.assert_array_equal(table.params[i], spec.params)
  assert table.embeddings.shape == (len(expected), text_encoder.EMBED_DIM)
  assert table.embeddings.dtype == np.float32
  assert 0.0 <= table.pair_margin < 0.5


def test_table_embeddings_match_the_encoder(encoder):
  table = prompts.load_embedding_table()
  rows = np.random.default_rng(0).choice(len(table.texts), 64, replace=False)
  fresh = encoder.encode([table.texts[i] for i in rows])
  stored = table.embeddings[rows]
  # float16 storage: half an ulp of float16 (2^-11 relative) on top of the encoder's 1e-4.
  assert np.all(np.abs(fresh - stored) <= 1e-4 + 2.0 ** -11 * np.abs(stored))


def test_load_split():
  train, val = prompts.load_embedding_table("train"), prompts.load_embedding_table("val")
  assert set(train.splits) == {"train"} and set(val.splits) == {"val"}
  assert "" in train.texts and len(train.phrase_kinds) == len(val.phrase_kinds)
  with pytest.raises(ValueError):
    prompts.load_embedding_table("test")


def test_empty_prompt_is_identity(encoder):
  assert prompts.match("", encoder) == ("identity", 1.0)
  assert prompts.match("   ", encoder)[0] == "identity"
  spec, _ = prompts.spec_from_text("", encoder)
  assert spec.frame_id == 0 and spec.temporal_id == 0
  table = prompts.load_embedding_table("train")
  i = table.texts.index("")
  assert table.frame_ids[i] == 0 and table.temporal_ids[i] == 0 and not table.embeddings[i].any()


def test_match_free_form(encoder):
  assert prompts.match("make it look like a pencil drawing", encoder)[0] == "pencil_sketch"
  assert prompts.match("cartoon with heavy snow", encoder)[0] == "cartoon+snowfall"
  spec, score = prompts.spec_from_text("a subtle red tint", encoder)
  assert effects.FRAME_EFFECTS[spec.frame_id] == "color_tint" and 0 < score <= 1
  assert spec.params[1] > spec.params[3]


def test_val_match_accuracy(encoder):
  """Held-out paraphrases (and connectors, templates) must reach the right effect: 90%."""
  table = prompts.load_embedding_table()
  val = np.flatnonzero(table.splits == "val")
  names, scores = prompts.match_many([table.texts[i] for i in val], encoder, table)
  names_all = table.names()
  truth = [names_all[i] for i in val]
  hit = np.array([a == b for a, b in zip(names, truth)])
  single = np.array(["+" not in t for t in truth])
  print(f"val match accuracy: all {hit.mean():.3f}, single effects {hit[single].mean():.3f} "
        f"({single.sum()}), compositions {hit[~single].mean():.3f} ({(~single).sum()})")
  assert np.all((scores > 0) & (scores <= 1))
  assert hit.mean() >= 0.9
  assert hit[single].mean() >= 0.9


def test_split_prompt():
  assert ("cartoon", "snow") in prompts.split_prompt("cartoon with snow")
  assert ("rain", "sketch") in prompts.split_prompt("rain over a sketch")
  assert prompts.split_prompt("pencil drawing") == []
  names, _ = prompts.match_many(["", "pixel art, and also falling rain"])
  assert names == ["identity", "pixel_art+rain"]


def test_train_twins_share_the_val_prompts_effect_and_parameters():
  """The paraphrase-gap comparison: each twin is a train prompt with the val prompt's exact spec."""
  table = prompts.load_embedding_table()
  val, twins = prompts.pick_val_prompts(table), prompts.pick_train_twins(table)
  singles = [n for n in val if "+" not in n]
  assert len([n for n in singles if n in twins]) >= 18  # 19 of the 20 single effects today
  train_texts = {t for t, s in zip(table.texts, table.splits) if s == "train"}
  for name, (text, emb, spec) in twins.items():
    vtext, vemb, vspec = val[name]
    assert text in train_texts and text != vtext and not np.allclose(emb, vemb)
    assert effects.spec_name(spec) == name
    np.testing.assert_allclose(np.asarray(spec.params), np.asarray(vspec.params))


@pytest.mark.parametrize("target", prompts.ANCHOR_TARGETS)
@pytest.mark.parametrize("method", prompts.ANCHOR_METHODS)
def test_anchor_many_gives_train_prompts_of_the_same_effect_and_strength(encoder, method, target):
  table = prompts.load_embedding_table()
  val = prompts.pick_val_prompts(table)
  min_score = prompts.read_effects(["x"], encoder, table, method)[3]
  # "make it look like van gogh" was the weak example until the train phrases grew (2026-12-01):
  # it now reaches pencil_sketch at 0.52 through "artist's sketch" and "pencil shading".
  texts = [val["thermal"][0], val["mirror"][0], "heavy snow with a cartoon look", "turn me into a cat", ""]
  thermal, mirror, combo, weak, empty = prompts.anchor_many(texts, encoder, table, method=method, target=target)
  emb, names = np.asarray(table.embeddings, np.float32), table.names()
  for a, name in ((thermal, "thermal"), (mirror, "mirror")):
    assert a.name == name and a.score >= min_score and a.text in [table.texts[i] for i in a.rows]
    for i in a.rows:
      assert table.splits[i] == "train" and table.texts[i] != val[name][0] and names[i] == name
      np.testing.assert_allclose(np.asarray(table.params[i]), np.asarray(val[name][2].params))  # same strength
    if target == "paraphrase":
      assert len(a.rows) == 1
    else:  # every train prompt with that effect and those parameters
      same = [i for i in np.flatnonzero(table.splits == "train") if names[i] == name
              and np.allclose(table.params[i], val[name][2].params)]
      assert sorted(a.rows) == same and len(same) > 1
    np.testing.assert_array_equal(a.embedding, emb[list(a.rows)].mean(0))
  assert combo.name == "cartoon+snowfall" and combo.embedding is not None
  heavy = prompts.params_from_words("heavy snow with a cartoon look", "cartoon", "snowfall")
  for i in combo.rows:
    np.testing.assert_allclose(np.asarray(table.params[i]), heavy)  # "heavy" read and kept
  assert weak.embedding is None and weak.score < min_score and weak.text == "" and not weak.rows
  assert empty.embedding is None and empty.name == "identity"


def test_anchor_prompt_set_swaps_in_the_anchor_and_keeps_weak_prompts(encoder):
  table = prompts.load_embedding_table()
  val = prompts.pick_val_prompts(table, ["thermal", "mirror"])
  chosen = {**val, "weak": ("turn me into a cat", np.ones(384, np.float32), val["thermal"][2])}
  out, anchors = prompts.anchor_prompt_set(chosen, encoder, table)
  assert set(out) == set(anchors) == set(chosen)
  for name in ("thermal", "mirror"):
    assert anchors[name].embedding is not None and out[name][0] == chosen[name][0]
    np.testing.assert_array_equal(out[name][1], anchors[name].embedding)
    np.testing.assert_allclose(anchors[name].own, encoder.encode([chosen[name][0]])[0], atol=1e-6)
  assert anchors["weak"].embedding is None
  np.testing.assert_array_equal(out["weak"][1], chosen["weak"][1])  # a weak match keeps what it had
