"""Prompt mixing: each embedding mixed only with a train prompt of exactly the same spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.train import loop, steps, tasks


@pytest.fixture(scope="module")
def table():
  return loop.prompt_table("train")


def _spec(table, i):
  return int(table.frame_ids[i]), int(table.temporal_ids[i]), tuple(np.asarray(table.params[i]).tolist())


def test_twin_rows_ask_for_the_same_effect_and_parameters(table):
  twins = tasks.twin_rows(table)
  assert twins.shape == (len(table.texts), tasks.TWINS_PER_ROW)
  sizes = {}
  for i in range(len(table.texts)):
    sizes[_spec(table, i)] = sizes.get(_spec(table, i), 0) + 1
  alone = 0
  for i in range(len(table.texts)):
    assert all(_spec(table, int(j)) == _spec(table, i) for j in twins[i]), table.texts[i]
    if sizes[_spec(table, i)] > 1:
      assert i not in twins[i]  # a row with company is never its own twin
    else:
      alone += 1
      assert (twins[i] == i).all()
  assert alone < len(table.texts) // 2  # most rows have twins to mix with


def test_repeat_prompts_extends_the_prompt_ids(table):
  bank = {k: jnp.asarray(v) for k, v in tasks.prompt_bank(table).items()}
  ids = np.array([3, 10, 20], np.int32)
  batch = {"clip": jnp.zeros((3, 2, 4, 4, 3), jnp.uint8), "prompt_id": jnp.asarray(ids),
           **{f: bank[f][ids] for f in steps.PROMPT_FIELDS}}
  out = steps.repeat_prompts(batch, jax.random.key(0), bank, 4)
  assert out["prompt_id"].shape == (12,)
  np.testing.assert_array_equal(np.asarray(out["prompt_emb"]), np.asarray(bank["prompt_emb"][out["prompt_id"]]))


def test_mix_prompts_stays_between_a_prompt_and_one_of_its_twins(table):
  bank = {k: jnp.asarray(v) for k, v in tasks.prompt_bank(table).items()}
  emb = np.asarray(table.embeddings, np.float32)
  empty = int(np.flatnonzero(np.linalg.norm(emb, axis=1) < 1e-6)[0])  # "" means no effect
  ids = np.array([empty] + list(range(0, 2000, 40)), np.int32)
  batch = {"prompt_id": jnp.asarray(ids), "prompt_emb": jnp.asarray(emb[ids])}
  assert steps.mix_prompts(batch, jax.random.key(0), bank, 0.0) is batch
  out = np.asarray(steps.mix_prompts(batch, jax.random.key(1), bank, 1.0)["prompt_emb"])
  np.testing.assert_array_equal(out[0], emb[empty])
  twins = tasks.twin_rows(table)
  moved = 0
  for row, i in zip(out[1:], ids[1:]):
    own = emb[i]
    assert np.linalg.norm(row) == pytest.approx(np.linalg.norm(own), abs=1e-4)
    if np.allclose(row, own, atol=1e-5):
      continue
    moved += 1
    # In the span of the own embedding and one twin's, with positive weights.
    fits = []
    for j in twins[i]:
      basis = np.stack([own, emb[j]], 1)
      w, *_ = np.linalg.lstsq(basis, row, rcond=None)
      fits.append(np.linalg.norm(basis @ w - row) < 1e-3 and (w > -1e-4).all())
    assert any(fits), table.texts[i]
  assert moved > len(ids) // 2
  with pytest.raises(ValueError, match="twin_rows"):
    steps.mix_prompts(batch, jax.random.key(1), {"prompt_emb": bank["prompt_emb"]}, 0.5)


def test_spec_centroids_are_what_anchoring_gives_each_spec(table):
  """Each row's centroid is the mean of the worded train prompts with exactly its effect and
  parameters, computed as prompts.anchor_many computes a centroid anchor (from the embedding
  table's train rows, the empty prompt left out); the empty prompt's stays zero."""
  from lsd_jax.datasets import effects, prompts

  cent = tasks.spec_centroids(table)
  emb = np.asarray(table.embeddings, np.float32)
  assert cent.shape == emb.shape and cent.dtype == np.float32
  empty = np.flatnonzero(np.linalg.norm(emb, axis=1) < 1e-6)
  assert empty.size and not cent[empty].any()
  full = prompts.load_embedding_table("train")
  worded = np.array([i for i in range(len(full.texts)) if full.texts[i]])
  names = np.asarray([effects.spec_name(full.spec(int(i))) for i in worded])
  params = np.asarray(full.params)[worded]
  checked = 0
  for i in range(0, len(table.texts), 37):
    if i in empty:
      continue
    name = effects.spec_name(effects.EffectSpec(table.frame_ids[i], table.temporal_ids[i], table.params[i]))
    rows = worded[(names == name) & (np.abs(params - np.asarray(table.params[i])[None]).sum(1) < 1e-6)]
    np.testing.assert_allclose(cent[i], np.asarray(full.embeddings, np.float32)[rows].mean(0), atol=1e-6)
    checked += 1
  assert checked > 50
  # identity's mean is over its phrases only: the empty prompt shares its spec
  ident = [i for i in range(len(table.texts)) if table.texts[i] and _spec(table, i) == _spec(table, int(empty[0]))]
  np.testing.assert_allclose(cent[ident[0]], emb[ident].mean(0), atol=1e-6)


def test_centroid_prompts_give_the_spec_mean(table):
  bank = {k: jnp.asarray(v) for k, v in tasks.prompt_bank(table).items()}
  emb = np.asarray(table.embeddings, np.float32)
  cent = tasks.spec_centroids(table)
  empty = int(np.flatnonzero(np.linalg.norm(emb, axis=1) < 1e-6)[0])
  ids = np.array([empty] + list(range(1, 2000, 20)), np.int32)
  batch = {"prompt_id": jnp.asarray(ids), "prompt_emb": jnp.asarray(emb[ids])}
  assert steps.centroid_prompts(batch, jax.random.key(0), bank, 0.0) is batch
  out = np.asarray(steps.centroid_prompts(batch, jax.random.key(1), bank, 1.0)["prompt_emb"])
  np.testing.assert_allclose(out, cent[ids], atol=1e-6)
  assert not out[0].any()  # the empty prompt stays "no effect"
  assert not np.allclose(out[1:], emb[ids[1:]], atol=1e-3)  # and the worded ones moved
  half = np.asarray(steps.centroid_prompts(batch, jax.random.key(2), bank, 0.5)["prompt_emb"])
  took = [np.allclose(h, c, atol=1e-6) and not np.allclose(h, e, atol=1e-6)
          for h, c, e in zip(half[1:], cent[ids[1:]], emb[ids[1:]])]
  kept = [np.allclose(h, e, atol=1e-6) for h, e in zip(half[1:], emb[ids[1:]])]
  assert all(t or k for t, k in zip(took, kept)) and 0 < sum(took) < len(took)
  with pytest.raises(ValueError, match="centroid_emb"):
    steps.centroid_prompts(batch, jax.random.key(1), {"prompt_emb": bank["prompt_emb"]}, 0.5)


def test_v3f_recipe_prompts_by_the_spec_mean():
  from experiments.configs import lsd as lsd_config

  cfg = lsd_config.get_config("v3f")
  assert cfg.train.prompt_centroid == 0.3 and cfg.data.effect_weights == ""
  assert cfg.train.temporal_history_scale == 0.2 and cfg.train.prompt_mix == 0.5  # v3d's
  assert tasks.step_config(cfg).prompt_centroid == 0.3
  assert lsd_config.get_config("v3f_smoke").train.prompt_centroid == 0.3


@pytest.mark.parametrize("field,value,match", [("prompt_centroid", 30.0, "prompt_centroid is a chance"),
                                               ("prompt_mix", -0.1, "prompt_mix is a chance"),
                                               ("prompt_repeats", 0, "prompt_repeats must be at least 1")])
def test_a_chance_outside_0_1_is_refused_before_training(field, value, match):
  from experiments.configs import lsd as lsd_config

  cfg = lsd_config.get_config("v3f_smoke")
  cfg.train[field] = value
  with pytest.raises(ValueError, match=match):
    tasks.step_config(cfg)
  cfg.train[field] = lsd_config.get_config("v3f_smoke").train[field]
  tasks.step_config(cfg)  # the recipe's own values pass


def test_noise_prompts_move_worded_prompts_to_the_asked_cosine(table):
  emb = np.asarray(table.embeddings, np.float32)
  empty = int(np.flatnonzero(np.linalg.norm(emb, axis=1) < 1e-6)[0])
  ids = np.array([empty] + list(range(1, 2000, 5)), np.int32)
  batch = {"prompt_emb": jnp.asarray(emb[ids]).astype(jnp.bfloat16)}
  assert steps.noise_prompts(batch, jax.random.key(0), 0.0, 1.0) is batch
  assert steps.noise_prompts(batch, jax.random.key(0), 0.5, 0.0) is batch
  own = np.asarray(batch["prompt_emb"], np.float32)
  for scale in (0.5, 1.0):
    out = steps.noise_prompts(batch, jax.random.key(1), 1.0, scale)["prompt_emb"]
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert not out[0].any()  # the empty prompt stays "no effect"
    norms = np.linalg.norm(out[1:], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(own[1:], axis=1), rtol=2e-2)
    cos = (out[1:] * own[1:]).sum(1) / (norms * np.linalg.norm(own[1:], axis=1))
    assert cos.mean() == pytest.approx(1 / np.sqrt(1 + scale ** 2), abs=0.02)
    assert cos.max() < 0.99  # every worded prompt moved
  half = np.asarray(steps.noise_prompts(batch, jax.random.key(2), 0.5, 1.0)["prompt_emb"], np.float32)
  kept = np.all(half[1:] == own[1:], axis=1)
  assert 0.35 < kept.mean() < 0.65
  other = np.asarray(steps.noise_prompts(batch, jax.random.key(3), 0.5, 1.0)["prompt_emb"], np.float32)
  assert not np.array_equal(other, half)  # the key draws the directions


def test_v3g_recipe_noises_half_the_prompts():
  from experiments.configs import lsd as lsd_config

  cfg = lsd_config.get_config("v3g")
  assert cfg.train.prompt_noise == 0.5 and cfg.train.prompt_noise_scale == 1.0 and cfg.train.prompt_centroid == 0.0
  assert cfg.train.temporal_history_scale == 0.2 and cfg.train.prompt_mix == 0.5  # v3d's
  sc = tasks.step_config(cfg)
  assert (sc.prompt_noise, sc.prompt_noise_scale) == (0.5, 1.0)
  assert lsd_config.get_config("v3g_smoke").train.prompt_noise == 0.5
  with pytest.raises(ValueError, match="prompt_noise is a chance"):
    steps.LSDStepConfig(prompt_noise=1.5)
  with pytest.raises(ValueError, match="prompt_noise_scale must be >= 0"):
    steps.LSDStepConfig(prompt_noise_scale=-1.0)
