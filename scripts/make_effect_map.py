"""Fits data/effect_map.npz, the learned text -> effect map of prompt anchoring, on train prompts only.

  .venv/bin/python scripts/make_effect_map.py                  # about a minute on 2 CPU cores
  .venv/bin/python scripts/make_effect_map.py --report=reports/fidelity/v3.2_learned_map_cpu_2026-12-02/effect_map_cv.json

Every choice is made by cross-validation over the *train* paraphrases, so that train mimics the
unseen wording of a user (the val split plays no part): each effect's train paraphrases are dealt
into FOLDS groups (SEEDS deals); for each group the map is fitted on the train prompts that use
none of the group's paraphrases and judged on the prompts that use only them. In order:

  1. the L2 weight: the best held-out accuracy on single-effect prompts (ties: the larger weight);
  2. the softmax temperature: the lowest held-out negative log-likelihood (calibration);
  3. split_min_prob: the best held-out accuracy over all prompts, compositions included;
  4. anchor_min_prob: the most held-out utility, where anchoring a prompt to the right effect
     gains 1 and to a wrong one loses --cost_ratio (COST_RATIO, measured on train clips by
     experiments/anchor_choice.py); keeping a prompt's own embedding scores 0.

The old nearest-phrase matcher (`prompts.match_many`, with the held-out phrases taken out of its
phrase table) is scored on the same folds for comparison. The map itself is then fitted on all
the train prompts (`effect_map.fit`); a refit with the chosen hyperparameters is deterministic
(tests/datasets/test_effect_map.py).
"""

import json
import re

from absl import app
from absl import flags
from absl import logging
import numpy as np

from lsd_jax.datasets import effect_map
from lsd_jax.datasets import effects
from lsd_jax.datasets import prompts
from lsd_jax.models import text_encoder

FOLDS = 3
SEEDS = (0, 1)
L2S = (3e-4, 1e-4, 3e-5, 1e-5)
TEMPERATURES = tuple(np.round(np.arange(0.3, 1.51, 0.05), 2))
SPLIT_MIN_PROBS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
ANCHOR_MIN_PROBS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
# What anchoring a prompt to a wrong effect costs, in units of what anchoring it to the right
# one gains over its own embedding: experiments/anchor_choice.py on 3 train clips, model v3.2
# (a right anchor 4.38 dB above an unseen wording's own embedding, a wrong one 8.05 dB under it;
# reports/fidelity/v3.2_learned_map_cpu_2026-12-02/anchor_choice_train_clips.md).
COST_RATIO = 1.84

_OUT = flags.DEFINE_string("out", str(effect_map.MAP_PATH), "where to write the map")
_REPORT = flags.DEFINE_string("report", None, "also write the cross-validation results here (json)")
_COST = flags.DEFINE_float("cost_ratio", COST_RATIO, "a wrong anchor's cost over a right anchor's gain")


class CachedEncoder:
  """The text encoder, each distinct text encoded once (the folds share most texts)."""

  def __init__(self, encoder):
    self.encoder, self.cache = encoder, {}

  def encode(self, texts):
    new = sorted({t for t in texts if t not in self.cache})
    if new:
      self.cache.update(zip(new, np.asarray(self.encoder.encode(new), np.float32)))
    return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


def _phrase_pattern(phrase: str) -> re.Pattern:
  return re.compile(r"(?<![\w-])" + re.escape(phrase).replace(re.escape("{color}"), r"[a-z]+")
                    + r"(?![\w-])")


def row_phrases(table, i: int) -> list[tuple[str, str, int]]:
  """(kind, effect, index among its train paraphrases) of each effect phrase that prompt i uses
  (the longest of its effect's phrases found in it: "cartoon style" holds "cartoon" too)."""
  vocab = prompts.load_vocabulary()
  frame, temporal = prompts.parse_name(effects.spec_name(table.spec(i)))
  wanted = [("temporal", temporal)] if temporal != "none" else []
  if frame != "identity" or temporal == "none":
    wanted.insert(0, ("frame", frame))
  out = []
  for kind, name in wanted:
    found = [(len(m.group(0)), j) for j, p in enumerate(vocab.paraphrases[kind][name]["train"])
             for m in [_phrase_pattern(p).search(table.texts[i])] if m]
    if not found:
      raise ValueError(f"no train phrase of {name} in train prompt {table.texts[i]!r}")
    out.append((kind, name, max(found)[1]))
  return out


def deal(seed: int) -> dict[tuple[str, str, int], int]:
  """The fold of each train paraphrase: each effect's phrases dealt round-robin in a random order."""
  rng = np.random.default_rng(seed)
  vocab = prompts.load_vocabulary()
  out = {}
  for kind in ("frame", "temporal"):
    for name, by_split in vocab.paraphrases[kind].items():
      for r, j in enumerate(rng.permutation(len(by_split["train"]))):
        out[(kind, name, int(j))] = r % FOLDS
  return out


def table_phrase_groups() -> list[tuple[str, str, int]]:
  """(kind, effect, paraphrase index) of each row of the table's phrase arrays (effect_phrases)."""
  vocab = prompts.load_vocabulary()
  out = []
  for kind in ("frame", "temporal"):
    for name, by_split in vocab.paraphrases[kind].items():
      for j, phrase in enumerate(by_split["train"]):
        out += [(kind, name, j)] * (len(vocab.modifiers["colors"]) if "{color}" in phrase else 1)
  return out


def folds(table):
  """(held-out prompt rows, single-effect fit rows, phrase-table keep mask) for each seed and fold."""
  train = [int(i) for i in np.flatnonzero(table.splits == "train") if table.texts[i].strip()]
  used = {i: row_phrases(table, i) for i in train}
  singles, _ = effect_map.single_rows(table)
  groups = table_phrase_groups()
  for seed in SEEDS:
    fold_of = deal(seed)
    for k in range(FOLDS):
      test = [i for i in train if all(fold_of[p] == k for p in used[i])]
      fit_rows = np.array([i for i in singles if all(fold_of[p] != k for p in used[int(i)])])
      keep = np.array([fold_of[g] != k for g in groups])
      yield test, fit_rows, keep


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  table = prompts.load_embedding_table()
  encoder = CachedEncoder(text_encoder.default_encoder())
  names = table.names()
  emb = np.asarray(table.embeddings, np.float32)
  label = {n: c for c, n in enumerate(effect_map.SINGLE_EFFECTS)}
  cv = list(folds(table))
  logging.info("%d folds: %s held-out prompts, %s fit rows", len(cv), [len(t) for t, _, _ in cv],
               [len(f) for _, f, _ in cv])

  def fold_fit(fit_rows, l2):
    return effect_map.fit_logistic(emb[fit_rows], np.array([label[names[i]] for i in fit_rows]),
                                   len(effect_map.SINGLE_EFFECTS), l2)

  # 1. L2 weight, by the accuracy on held-out single-effect prompts.
  weights, acc_l2 = {}, {}
  for l2 in L2S:
    weights[l2] = [fold_fit(f, l2) for _, f, _ in cv]
    hits = [label[names[i]] == int(np.argmax(emb[i] @ w + b))
            for (test, _, _), (w, b) in zip(cv, weights[l2]) for i in test if "+" not in names[i]]
    acc_l2[l2] = float(np.mean(hits))
    logging.info("l2 %g: held-out single-effect accuracy %.4f", l2, acc_l2[l2])
  l2 = max(L2S, key=lambda v: (acc_l2[v], v))

  # 2. Temperature, by the held-out negative log-likelihood of single-effect prompts.
  z, y = [], []
  for (test, _, _), (w, b) in zip(cv, weights[l2]):
    singles = [i for i in test if "+" not in names[i]]
    z.append(emb[singles] @ w + b)
    y += [label[names[i]] for i in singles]
  z_NxC, y_N = np.concatenate(z).astype(np.float64), np.array(y)
  nll = {}
  for t in TEMPERATURES:
    s = z_NxC / t
    s -= s.max(1, keepdims=True)
    nll[float(t)] = float(np.mean(np.log(np.exp(s).sum(1)) - s[np.arange(len(y_N)), y_N]))
  temperature = min(nll, key=nll.get)
  logging.info("temperature %.2f (held-out NLL %s)", temperature, {t: round(v, 4) for t, v in nll.items()})

  # 3. split_min_prob, by the accuracy over all held-out prompts (compositions through splits).
  def run(split_min_prob):
    out = []
    for (test, _, _), (w, b) in zip(cv, weights[l2]):
      m = effect_map.EffectMap(w, b, l2, temperature, split_min_prob, 0.0, "")
      got, probs, _ = prompts.map_many([table.texts[i] for i in test], encoder, table, m)
      out += [(names[i], g, float(p)) for i, g, p in zip(test, got, probs)]
    return out

  runs = {s: run(s) for s in SPLIT_MIN_PROBS}
  acc_split = {s: float(np.mean([a == b for a, b, _ in r])) for s, r in runs.items()}
  logging.info("split_min_prob: held-out accuracy %s", acc_split)
  split_min_prob = max(SPLIT_MIN_PROBS, key=lambda s: (acc_split[s], -s))
  held = runs[split_min_prob]

  # 4. anchor_min_prob, by the held-out utility of anchoring.
  hit = np.array([a == b for a, b, _ in held])
  prob = np.array([p for _, _, p in held])
  utility = {float(t): float(np.sum(hit & (prob >= t)) - _COST.value * np.sum(~hit & (prob >= t)))
             for t in ANCHOR_MIN_PROBS}
  anchor_min_prob = max(utility, key=lambda t: (utility[t], t))
  logging.info("anchor_min_prob %.2f (cost ratio %.2f; held-out utility %s)", anchor_min_prob,
               _COST.value, utility)

  # The old matcher on the same folds, its held-out phrases out of its phrase table.
  old = []
  for test, _, keep in cv:
    fold_table = table._replace(phrase_kinds=table.phrase_kinds[keep],
                                phrase_effects=table.phrase_effects[keep],
                                phrase_embeddings=table.phrase_embeddings[keep])
    got, scores = prompts.match_many([table.texts[i] for i in test], encoder, fold_table)
    old += [(names[i], g, float(s)) for i, g, s in zip(test, got, scores)]

  def summary(rows, threshold):
    h = np.array([a == b for a, b, _ in rows])
    single = np.array(["+" not in a for a, _, _ in rows])
    anchored = np.array([p >= threshold for _, _, p in rows])
    return {"accuracy": float(h.mean()), "single": float(h[single].mean()),
            "composition": float(h[~single].mean()), "prompts": int(len(h)),
            "anchored": float(anchored.mean()), "anchored_right": int(np.sum(h & anchored)),
            "anchored_wrong": int(np.sum(~h & anchored))}

  result = {"folds": FOLDS, "seeds": list(SEEDS), "cost_ratio": _COST.value,
            "l2": l2, "accuracy_by_l2": acc_l2, "temperature": temperature, "nll_by_temperature": nll,
            "split_min_prob": split_min_prob, "accuracy_by_split_min_prob": acc_split,
            "anchor_min_prob": anchor_min_prob, "utility_by_anchor_min_prob": utility,
            "map": summary(held, anchor_min_prob),
            "match": summary(old, prompts.ANCHOR_MIN_SCORE)}
  logging.info("held-out (cross-validated) train paraphrases: map %s; match %s", result["map"],
               result["match"])
  m = effect_map.fit(table, l2=l2, temperature=temperature, split_min_prob=split_min_prob,
                     anchor_min_prob=anchor_min_prob)
  effect_map.save(_OUT.value, m)
  logging.info("wrote %s", _OUT.value)
  if _REPORT.value:
    with open(_REPORT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
