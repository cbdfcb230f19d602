"""Prompts for the effects: a small grammar from data/prompts/, a sampler, and text -> effect.

A prompt is a per-frame effect phrase, a temporal effect phrase, or both joined by a connector
("cartoon with heavy snow"), wrapped in a template ("make it {x}"). Modifier words set the
parameters ("subtle", "heavy", "fast", "red", ...; data/prompts/modifiers.json). The "train" and
"val" splits use disjoint effect paraphrases, templates and connectors, so the val prompts test
whether free-form text that was never trained on still reaches the right effect.

`match(text)` splits the text at joining words into a frame and a temporal part, or failing that
decomposes the whole text, over the MiniLM embeddings of the train effect phrases, and returns
the effect's name; `spec_from_text(text)` adds the parameters read from the text's modifier words.
`map_many(texts)` reads the effect with a learned map instead (datasets/effect_map.py: logistic
regression over the train prompts' embeddings, data/effect_map.npz), splitting compositions the same way.
The empty prompt is the identity effect (its embedding is the zero vector, see text_encoder).
The embeddings of every train and val prompt are precomputed by scripts/make_prompt_embeddings.py
into data/prompt_embeddings.npz (`load_embedding_table`), so training needs no text encoder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import re
from typing import NamedTuple, Sequence

from absl import logging
import numpy as np

from lsd_jax.datasets import effects

DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "data"
PROMPTS_DIR = DATA_DIR / "prompts"
EMBEDDINGS_PATH = DATA_DIR / "prompt_embeddings.npz"
SPLITS = ("train", "val")
# How many distinct prompt texts the table holds per split, and the seed that draws them.
TABLE_SIZES = {"train": 3000, "val": 400}
TABLE_SEEDS = {"train": 0, "val": 1}
# What a sampled prompt is made of, with probabilities.
KIND_PROBS = {"identity": 0.05, "frame": 0.40, "temporal": 0.20, "compose": 0.35}
MODIFIER_PROB = 0.4  # chance of each modifier (strength, scale, density, speed, size) being said


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """The grammar's word lists (data/prompts/*.json)."""
  paraphrases: dict  # {"frame"|"temporal": {effect: {split: [phrase]}}}
  templates: dict  # {split: ["... {x} ..."]}
  connectors: dict  # {split: ["{f} ... {t}"]}
  modifiers: dict  # {param: {"default": v, "levels": {level: {"value": v, "words": [...]}}}}
  digest: str  # sha256 of the three files, to notice a stale embedding table


@functools.cache
def load_vocabulary(directory: str | pathlib.Path = PROMPTS_DIR) -> Vocabulary:
  directory = pathlib.Path(directory)
  raw = {name: (directory / f"{name}.json").read_bytes()
         for name in ("paraphrases", "templates", "modifiers")}
  data = {name: json.loads(blob) for name, blob in raw.items()}
  digest = hashlib.sha256(b"".join(raw[k] for k in sorted(raw))).hexdigest()
  return Vocabulary(paraphrases={k: data["paraphrases"][k] for k in ("frame", "temporal")},
                    templates=data["templates"]["templates"],
                    connectors=data["templates"]["connectors"],
                    modifiers={k: v for k, v in data["modifiers"].items() if not k.startswith("_")},
                    digest=digest)


# ----------------------------------------------------------------------------- sampling


def _choice(rng: np.random.Generator, items):
  return items[int(rng.integers(len(items)))]


def _maybe_level(rng: np.random.Generator, modifier: dict) -> tuple[str, float]:
  """A modifier word and its value, or ("", default) when the prompt does not say it."""
  if rng.uniform() >= MODIFIER_PROB:
    return "", float(modifier["default"])
  level = modifier["levels"][_choice(rng, sorted(modifier["levels"]))]
  return _choice(rng, level["words"]), float(level["value"])


def _frame_part(rng: np.random.Generator, vocab: Vocabulary, split: str) -> tuple[str, str, dict]:
  mods = vocab.modifiers
  name = _choice(rng, [n for n in effects.FRAME_EFFECTS if n != "identity"])
  phrase = _choice(rng, vocab.paraphrases["frame"][name][split])
  values: dict = {}
  if "{color}" in phrase:
    color = _choice(rng, sorted(mods["colors"]))
    phrase, values["color"] = phrase.replace("{color}", color), tuple(mods["colors"][color])
  strength_word, values["strength"] = _maybe_level(rng, mods["strength"])
  scale_word, values["scale"] = "", float(mods["scale"]["default"])
  if name in mods["scale"]["applies_to"]:
    scale_word, values["scale"] = _maybe_level(rng, mods["scale"])
  return name, " ".join(w for w in (strength_word, scale_word, phrase) if w), values


def _temporal_part(rng: np.random.Generator, vocab: Vocabulary,
                   split: str) -> tuple[str, str, dict]:
  mods = vocab.modifiers
  name = _choice(rng, effects.TEMPORAL_EFFECTS[1:])
  phrase = _choice(rng, vocab.paraphrases["temporal"][name][split])
  values: dict = {}
  words = []
  for param in ("density", "speed", "size"):
    word, values[param] = "", float(mods[param]["default"])
    if param == "density" or name in mods[param]["applies_to"]:
      word, values[param] = _maybe_level(rng, mods[param])
    words.append(word)
  return name, " ".join(w for w in (*words, phrase) if w), values


def sample_prompt(rng: np.random.Generator,
                  split: str = "train") -> tuple[str, effects.EffectSpec]:
  """A random prompt of `split` and its effect spec (numpy). Deterministic given rng's state."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  vocab = load_vocabulary()
  kinds = list(KIND_PROBS)
  kind = kinds[int(rng.choice(len(kinds), p=list(KIND_PROBS.values())))]
  if kind == "identity":
    return (_choice(rng, vocab.paraphrases["frame"]["identity"][split]),
            effects.make_spec(strength=vocab.modifiers["strength"]["default"],
                              **_default_temporal_values(vocab)))
  frame, temporal, values = "identity", "none", {}
  parts = {}
  if kind in ("frame", "compose"):
    frame, parts["f"], frame_values = _frame_part(rng, vocab, split)
    values.update(frame_values)
  else:
    values.update(strength=vocab.modifiers["strength"]["default"],
                  scale=vocab.modifiers["scale"]["default"])
  if kind in ("temporal", "compose"):
    temporal, parts["t"], temporal_values = _temporal_part(rng, vocab, split)
    values.update(temporal_values)
  else:
    values.update(_default_temporal_values(vocab))
  x = _choice(rng, vocab.connectors[split]).format(**parts) if len(parts) == 2 else next(
      iter(parts.values()))
  text = " ".join(_choice(rng, vocab.templates[split]).format(x=x).split())
  return text, effects.make_spec(frame, temporal, **values)


def _default_temporal_values(vocab: Vocabulary) -> dict:
  return {p: float(vocab.modifiers[p]["default"]) for p in ("density", "speed", "size")}


def build_prompt_set(split: str, n: int | None = None,
                     seed: int | None = None) -> list[tuple[str, effects.EffectSpec]]:
  """The first n distinct prompts the sampler draws for `split` (the embedding table's rows).

  The train set also holds the empty prompt, which means identity.
  """
  n = TABLE_SIZES[split] if n is None else n
  rng = np.random.default_rng(TABLE_SEEDS[split] if seed is None else seed)
  vocab = load_vocabulary()
  rows: dict[str, effects.EffectSpec] = {}
  if split == "train":
    rows[""] = effects.make_spec(strength=vocab.modifiers["strength"]["default"],
                                 **_default_temporal_values(vocab))
  for _ in range(200 * n):
    if len(rows) >= n:
      break
    text, spec = sample_prompt(rng, split)
    rows.setdefault(text, spec)
  if len(rows) < n:
    raise ValueError(f"the {split} grammar yields only {len(rows)} distinct prompts, wanted {n}")
  return list(rows.items())


# ----------------------------------------------------------------------------- words -> params


def _has_word(text: str, word: str) -> bool:
  return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def params_from_words(text: str, frame: str, temporal: str) -> np.ndarray:
  """The parameter vector that the modifier words of `text` ask for, for the given effects."""
  vocab = load_vocabulary()
  mods = vocab.modifiers
  text = text.lower()
  values = {p: float(mods[p]["default"]) for p in ("strength", "scale", "density", "speed", "size")}
  for param in values:
    applies = mods[param].get("applies_to")
    if param in ("density", "speed", "size") and temporal == "none":
      continue
    if applies is not None and frame not in applies and temporal not in applies:
      continue
    for level in mods[param]["levels"].values():
      if any(_has_word(text, w) for w in level["words"]):
        values[param] = float(level["value"])
  color = None
  if frame in mods["color_effects"]:
    color = tuple(mods["colors"][mods["color_effects"][frame]])
    for name, rgb in mods["colors"].items():
      if _has_word(text, name):
        color = tuple(rgb)
  return effects.make_spec(frame, temporal, color=color, **values).params


# ----------------------------------------------------------------------------- embedding table


class EmbeddingTable(NamedTuple):
  """Prompt texts with their MiniLM embeddings and effect specs (row i is one prompt)."""
  texts: tuple[str, ...]
  embeddings: np.ndarray  # N x 384 float32 (stored as float16)
  frame_ids: np.ndarray  # N int32
  temporal_ids: np.ndarray  # N int32
  params: np.ndarray  # N x NUM_PARAMS float32
  splits: np.ndarray  # N str, "train" or "val"
  # The train effect phrases that `match` decomposes a prompt into (see `decompose`).
  phrase_kinds: np.ndarray  # M str, "frame" or "temporal"
  phrase_effects: np.ndarray  # M str, effect name
  phrase_embeddings: np.ndarray  # M x 384 float32
  pair_margin: float

  def spec(self, i: int) -> effects.EffectSpec:
    return effects.EffectSpec(self.frame_ids[i], self.temporal_ids[i], self.params[i])

  def names(self) -> list[str]:
    return [effects.spec_name(self.spec(i)) for i in range(len(self.texts))]


def save_embedding_table(path: str | pathlib.Path, texts: list[str], embeddings: np.ndarray,
                         specs: list[effects.EffectSpec], splits: list[str],
                         phrases: list[tuple[str, str, str]], phrase_embeddings: np.ndarray,
                         pair_margin: float) -> None:
  batch = effects.stack_specs(specs)
  np.savez_compressed(path, texts=np.array(texts, dtype=np.str_),
                      phrase_kinds=np.array([k for k, _, _ in phrases], dtype=np.str_),
                      phrase_effects=np.array([e for _, e, _ in phrases], dtype=np.str_),
                      phrase_embeddings=np.asarray(phrase_embeddings, np.float16),
                      pair_margin=np.float32(pair_margin),
                      embeddings=np.asarray(embeddings, np.float16), frame_ids=batch.frame_id,
                      temporal_ids=batch.temporal_id, params=batch.params,
                      splits=np.array(splits, dtype=np.str_),
                      vocabulary_digest=np.array(load_vocabulary().digest),
                      frame_effects=np.array(effects.FRAME_EFFECTS),
                      temporal_effects=np.array(effects.TEMPORAL_EFFECTS))


@functools.cache
def _load_npz(path: str) -> EmbeddingTable:
  with np.load(path) as f:
    if (tuple(f["frame_effects"]) != effects.FRAME_EFFECTS
        or tuple(f["temporal_effects"]) != effects.TEMPORAL_EFFECTS):
      raise ValueError(f"{path} was made for other effect tables; rerun "
                       "scripts/make_prompt_embeddings.py")
    if str(f["vocabulary_digest"]) != load_vocabulary().digest:
      logging.warning("%s is stale: data/prompts/ changed since it was made; rerun "
                      "scripts/make_prompt_embeddings.py", path)
    return EmbeddingTable(tuple(str(t) for t in f["texts"]), f["embeddings"].astype(np.float32),
                          f["frame_ids"].astype(np.int32), f["temporal_ids"].astype(np.int32),
                          f["params"].astype(np.float32), f["splits"].astype(str),
                          f["phrase_kinds"].astype(str), f["phrase_effects"].astype(str),
                          f["phrase_embeddings"].astype(np.float32), float(f["pair_margin"]))


def load_embedding_table(split: str | None = None,
                         path: str | pathlib.Path = EMBEDDINGS_PATH) -> EmbeddingTable:
  """The precomputed prompt table: one split ("train", "val") or both (None)."""
  table = _load_npz(str(path))
  if split is None:
    return table
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
  keep = np.flatnonzero(table.splits == split)
  return table._replace(texts=tuple(table.texts[i] for i in keep),
                        embeddings=table.embeddings[keep], frame_ids=table.frame_ids[keep],
                        temporal_ids=table.temporal_ids[keep], params=table.params[keep],
                        splits=table.splits[keep])


# ----------------------------------------------------------------------------- text -> effect


def strip_modifiers(text: str) -> str:
  """The text without its parameter words (they say how much, not which effect)."""
  mods = load_vocabulary().modifiers
  words = [w for p in ("strength", "scale", "density", "speed", "size")
           for level in mods[p]["levels"].values() for w in level["words"]]
  text = text.lower()
  for w in sorted(words, key=len, reverse=True):
    text = re.sub(rf"(?<![\w-]){re.escape(w)}(?![\w-])", " ", text)
  return " ".join(text.split())


def effect_phrases(split: str = "train") -> list[tuple[str, str, str]]:
  """(kind, effect, phrase) for every paraphrase of `split`, colour slots filled with each colour."""
  vocab = load_vocabulary()
  out = []
  for kind in ("frame", "temporal"):
    for name, by_split in vocab.paraphrases[kind].items():
      for phrase in by_split[split]:
        colors = sorted(vocab.modifiers["colors"]) if "{color}" in phrase else [None]
        out += [(kind, name, phrase.replace("{color}", c) if c else phrase) for c in colors]
  return out


def decompose(query_NxD: np.ndarray, table: EmbeddingTable) -> tuple[list[str], np.ndarray]:
  """Effect names of query embeddings as one effect or a frame + temporal composition.

  Each query is projected onto the span of one train effect phrase (cosine) or of a pair (frame
  phrase, temporal phrase) with positive weights. A pair wins when its squared projection beats
  the best single phrase by more than table.pair_margin, chosen on the train prompts. The score
  is the cosine between the query and its projection.
  """
  kinds, effect_names, phrase_NxD = table.phrase_kinds, table.phrase_effects, table.phrase_embeddings
  f_idx, t_idx = np.flatnonzero(kinds == "frame"), np.flatnonzero(kinds == "temporal")
  q_NxD = np.asarray(query_NxD, np.float32)
  x_NxF, y_NxT = q_NxD @ phrase_NxD[f_idx].T, q_NxD @ phrase_NxD[t_idx].T
  g_FxT = phrase_NxD[f_idx] @ phrase_NxD[t_idx].T
  x, y, g = x_NxF[:, :, None], y_NxT[:, None, :], g_FxT[None]
  den = np.maximum(1.0 - g * g, 1e-6)
  positive = ((x - g * y) / den > 0) & ((y - g * x) / den > 0)
  pair2_NxFxT = np.where(positive, (x * x + y * y - 2 * g * x * y) / den, 0.0)
  names, scores = [], []
  for i in range(len(q_NxD)):
    fi, ti = int(x_NxF[i].argmax()), int(y_NxT[i].argmax())
    fs, ts = max(float(x_NxF[i, fi]), 0.0) ** 2, max(float(y_NxT[i, ti]), 0.0) ** 2
    single_name, single2 = ((effect_names[f_idx[fi]], "none"), fs) if fs >= ts else (
        ("identity", effect_names[t_idx[ti]]), ts)
    best = int(pair2_NxFxT[i].argmax())
    pf, pt = divmod(best, len(t_idx))
    pair2 = float(pair2_NxFxT[i].reshape(-1)[best])
    if pair2 > single2 + table.pair_margin:
      frame, temporal = effect_names[f_idx[pf]], effect_names[t_idx[pt]]
      score2 = pair2
    else:
      (frame, temporal), score2 = single_name, single2
    names.append(effects.spec_name(effects.make_spec(frame, temporal)))
    scores.append(np.sqrt(min(score2, 1.0)))  # float16 phrases can overshoot 1 by ~1e-5
  return names, np.array(scores, np.float32)


# Words that may join two effect phrases ("cartoon with snow", "rain over a sketch"): generic
# English conjunctions, prepositions and punctuation, not a copy of any split's connectors.
# `split_prompt` cuts a prompt at each run of them; articles and pronouns are trimmed from the
# parts.
JOIN_WORDS = frozenset("""with and plus while whilst under in over on of by as then also along
together through across behind beneath below above atop onto into within during amid amidst among
against featuring including having adding but or & + , ; / - alongside where at from to top beside
near upon inside throughout besides""".split())
TRIM_WORDS = frozenset("the a an some its it this that these those my me".split())
# A split composes when both parts reach their effect phrases with at least this cosine. Chosen on
# the train prompts with each prompt's own phrases left out of the table (so train mimics unseen
# paraphrases): 0.40 gave the best train accuracy; the val prompts played no part.
SPLIT_MIN_COS = 0.40


def split_prompt(text: str) -> list[tuple[str, str]]:
  """(left, right) parts of modifier-free text, cut at each run of JOIN_WORDS."""
  w = text.lower().replace(",", " , ").replace(";", " ; ").split()
  out = set()
  for i in range(1, len(w)):
    if w[i] not in JOIN_WORDS or w[i - 1] in JOIN_WORDS:
      continue
    j = i
    while j < len(w) and w[j] in JOIN_WORDS:
      j += 1
    left, right = w[:i], w[j:]
    while left and left[0] in TRIM_WORDS:
      left = left[1:]
    while right and right[0] in TRIM_WORDS:
      right = right[1:]
    if left and right:
      out.add((" ".join(left), " ".join(right)))
  return sorted(out)


def match_many(texts: list[str], encoder=None,
               table: EmbeddingTable | None = None) -> tuple[list[str], np.ndarray]:
  """`match` for many texts at once (one encoder call for all texts and their parts).

  Each text without its modifier words is cut by `split_prompt`; a part that matches a
  (non-identity) frame phrase and the other part a temporal phrase, both with cosine >
  SPLIT_MIN_COS, make a composition (the best such split by its weaker cosine, which is the
  score). Otherwise the whole text goes through `decompose`.
  """
  if encoder is None:
    from lsd_jax.models import text_encoder  # pylint: disable=import-outside-toplevel
    encoder = text_encoder.default_encoder()
  table = load_embedding_table() if table is None else table
  stripped = [strip_modifiers(t) or t for t in texts]
  splits = [split_prompt(s) for s in stripped]
  parts = sorted({p for sp in splits for pair in sp for p in pair})
  keep = [i for i, t in enumerate(texts) if t.strip()]
  emb = encoder.encode([stripped[i] for i in keep] + parts) if keep or parts else None
  names, scores = ["identity"] * len(texts), np.ones(len(texts), np.float32)
  if not keep:
    return names, scores
  whole_names, whole_scores = decompose(emb[:len(keep)], table)
  for i, n, s in zip(keep, whole_names, whole_scores):
    names[i], scores[i] = n, s
  if not parts:
    return names, scores
  kinds, effect_names = table.phrase_kinds, table.phrase_effects
  f_idx = np.flatnonzero((kinds == "frame") & (effect_names != "identity"))
  t_idx = np.flatnonzero(kinds == "temporal")
  part_emb = emb[len(keep):]
  cos_f = part_emb @ table.phrase_embeddings[f_idx].T
  cos_t = part_emb @ table.phrase_embeddings[t_idx].T
  best_f, arg_f = cos_f.max(1), cos_f.argmax(1)
  best_t, arg_t = cos_t.max(1), cos_t.argmax(1)
  row = {p: k for k, p in enumerate(parts)}
  for i in keep:
    best = (SPLIT_MIN_COS, None)
    for left, right in splits[i]:
      for a, b in ((row[left], row[right]), (row[right], row[left])):  # a frame, b temporal
        c = min(float(best_f[a]), float(best_t[b]))
        if c > best[0]:
          best = (c, (effect_names[f_idx[arg_f[a]]],
                      effect_names[t_idx[arg_t[b]]]))
    if best[1] is not None:
      names[i] = effects.spec_name(effects.make_spec(*best[1]))
      scores[i] = min(best[0], 1.0)
  return names, scores


def match(text: str, encoder=None, table: EmbeddingTable | None = None) -> tuple[str, float]:
  """The known effect nearest to free-form text, e.g. ("cartoon+snowfall", 0.83).

  Splits the text (without its modifier words) at joining words into a frame part and a temporal
  part when both match well, else uses `decompose` on the whole text (see `match_many`). The empty
  prompt is ("identity", 1.0). `encoder` defaults to the shared MiniLM encoder.
  """
  if not text.strip():
    return "identity", 1.0
  names, scores = match_many([text], encoder, table)
  return names[0], float(scores[0])


def map_many(texts: list[str], encoder=None, table: EmbeddingTable | None = None,
             effect_map=None) -> tuple[list[str], np.ndarray, list[np.ndarray | None]]:
  """The learned counterpart of `match_many` (datasets/effect_map.py): effect names, the map's
  probabilities, and each text's own embedding (None for the empty prompt), in one encoder call.

  The map reads the whole prompt's own embedding (modifier words and all, as it was fitted).
  A composition is found as `match_many` finds it: the text without its modifier words is cut by
  `split_prompt`; where one part maps to a per-frame effect and the other to a temporal one, each
  with probability > effect_map.split_min_prob, the best such split (by its less sure part) is
  the composition and its probability that part's. The empty prompt is ("identity", 1.0).
  """
  from lsd_jax.datasets import effect_map as effect_map_lib  # pylint: disable=import-outside-toplevel

  if encoder is None:
    from lsd_jax.models import text_encoder  # pylint: disable=import-outside-toplevel
    encoder = text_encoder.default_encoder()
  table = load_embedding_table() if table is None else table
  m = effect_map_lib.load(table=table) if effect_map is None else effect_map
  keep = [i for i, t in enumerate(texts) if t.strip()]
  stripped = {i: strip_modifiers(texts[i]) or texts[i] for i in keep}
  splits = {i: split_prompt(stripped[i]) for i in keep}
  parts = sorted({p for sp in splits.values() for pair in sp for p in pair})
  names, probs = ["identity"] * len(texts), np.ones(len(texts), np.float32)
  own: list[np.ndarray | None] = [None] * len(texts)
  if not keep:
    return names, probs, own
  emb = np.asarray(encoder.encode([texts[i] for i in keep] + parts), np.float32)
  p_NxC = m.probs(emb[:len(keep)])
  for k, i in enumerate(keep):
    c = int(p_NxC[k].argmax())
    names[i], probs[i], own[i] = effect_map_lib.SINGLE_EFFECTS[c], p_NxC[k, c], emb[k]
  if not parts:
    return names, probs, own
  q_PxC = m.probs(emb[len(keep):])
  q_frame = np.where(effect_map_lib.IS_FRAME_C[None], q_PxC, -1.0)
  q_temporal = np.where(effect_map_lib.IS_TEMPORAL_C[None], q_PxC, -1.0)
  row = {p: k for k, p in enumerate(parts)}
  for i in keep:
    best = (m.split_min_prob, None)
    for left, right in splits[i]:
      for a, b in ((row[left], row[right]), (row[right], row[left])):  # a frame, b temporal
        c = min(float(q_frame[a].max()), float(q_temporal[b].max()))
        if c > best[0]:
          best = (c, (effect_map_lib.SINGLE_EFFECTS[int(q_frame[a].argmax())],
                      effect_map_lib.SINGLE_EFFECTS[int(q_temporal[b].argmax())]))
    if best[1] is not None:
      names[i] = effects.spec_name(effects.make_spec(*best[1]))
      probs[i] = best[0]
  return names, probs, own


def spec_from_text(text: str, encoder=None) -> tuple[effects.EffectSpec, float]:
  """The effect of free-form text: ids from `match`, parameters from its modifier words."""
  name, score = match(text, encoder)
  frame, temporal = parse_name(name)
  return effects.EffectSpec(np.int32(effects.FRAME_EFFECTS.index(frame)),
                            np.int32(effects.TEMPORAL_EFFECTS.index(temporal)),
                            params_from_words(text, frame, temporal)), score


def parse_name(name: str) -> tuple[str, str]:
  """Inverse of effects.spec_name: 'cartoon+snowfall' -> ('cartoon', 'snowfall')."""
  if "+" in name:
    frame, temporal = name.split("+")
    return frame, temporal
  if name in effects.TEMPORAL_EFFECTS:
    return "identity", name
  return name, "none"


def pick_val_prompts(table: EmbeddingTable, names: Sequence[str] | None = None) -> dict[str, tuple[str, np.ndarray, effects.EffectSpec]]:
  """One val prompt per effect name ("sepia", "identity+snowfall"...): text, embedding, spec; the
  first of each effect in table order, as every evaluation (eval_fidelity, evaluate, the
  training probe) picks them."""
  out = {}
  for i, text in enumerate(table.texts):
    if table.splits[i] != "val" or not text:
      continue
    spec = table.spec(i)
    name = effects.spec_name(spec)
    if (names is None or name in names) and name not in out:
      out[name] = (text, table.embeddings[i], spec)
  return out


def pick_train_twins(table: EmbeddingTable, names: Sequence[str] | None = None) -> dict[str, tuple[str, np.ndarray, effects.EffectSpec]]:
  """For each of `pick_val_prompts`' prompts, the first train paraphrase with the same effect and
  the same parameters (strength included), so that a val-against-train comparison differs in the
  wording alone. An effect whose parameters no train prompt shares is left out."""
  out = {}
  for name, (_, _, vspec) in pick_val_prompts(table, names).items():
    for i, text in enumerate(table.texts):
      if table.splits[i] != "train" or not text:
        continue
      spec = table.spec(i)
      if (effects.spec_name(spec) == name and int(spec.frame_id) == int(vspec.frame_id)
          and int(spec.temporal_id) == int(vspec.temporal_id)
          and np.allclose(np.asarray(spec.params), np.asarray(vspec.params))):
        out[name] = (text, table.embeddings[i], spec)
        break
  return out


# ----------------------------------------------------------------------------- prompt anchoring

ANCHOR_MIN_SCORE = 0.5  # `match` scores below this are weak: such a prompt keeps its own embedding
# How anchor_many reads a prompt's effect: "match", the nearest train phrase (with
# ANCHOR_MIN_SCORE), or "map", the learned effect map (datasets/effect_map.py, with its own
# threshold effect_map.anchor_min_prob). The map reads more prompts right (val: 98.3% against
# 92.0%, 5 wrong anchors of 400 against 19), but one of its 7 misreads is the fidelity protocol's
# grayscale prompt, which it anchors to colour tint where match keeps its own embedding: 14.7 dB
# against 26.6, and the protocol's mean falls (reports/fidelity/v3.2_learned_map_cpu_2026-12-02/).
# So match stays the default until the map measures better.
ANCHOR_METHODS = ("match", "map")
ANCHOR_METHOD = "match"


# What anchor_many gives an anchored prompt: "centroid", the mean embedding of every train prompt
# with its effect and parameters (the default: chosen on train clips, where it scores 0.08 dB above
# the mean of single such prompts and above it for 19 of 20 effects, experiments/anchor_choice.py;
# on held-out clips thermal +1.6 dB, colour tint +0.5), or "paraphrase", the one such train prompt
# most similar to the prompt (the rule before 2026-12-02).
ANCHOR_TARGETS = ("centroid", "paraphrase")
ANCHOR_TARGET = "centroid"


class Anchor(NamedTuple):
  """What `anchor_many` made of one prompt."""
  embedding: np.ndarray | None  # float32 [384]: the anchor's; None: keep the prompt's own
  name: str  # the effect read from the prompt ("sepia", "cartoon+snowfall")
  score: float  # how sure: `match`'s score or the map's probability (method "map")
  text: str  # the train paraphrase anchored to, for a centroid the one nearest it ("" where none)
  own: np.ndarray | None = None  # float32 [384]: the prompt's own embedding (None: the empty prompt)
  rows: tuple[int, ...] = ()  # the table rows whose embeddings the anchor is the mean of


def read_effects(texts: list[str], encoder, table: EmbeddingTable, method: str = ANCHOR_METHOD,
                 effect_map=None) -> tuple[list[str], np.ndarray, list[np.ndarray | None], float]:
  """(effect names, scores, own embeddings, the score a prompt needs to be anchored) of `texts`
  as `method` reads them (ANCHOR_METHODS)."""
  if method == "map":
    from lsd_jax.datasets import effect_map as effect_map_lib  # pylint: disable=import-outside-toplevel

    m = effect_map_lib.load(table=table) if effect_map is None else effect_map
    names, probs, own = map_many(texts, encoder, table, m)
    return names, probs, own, m.anchor_min_prob
  if method == "match":
    names, scores = match_many(texts, encoder, table)
    need = sorted({t for t in texts if t.strip()})
    encoded = dict(zip(need, np.asarray(encoder.encode(need), np.float32))) if need else {}
    return names, scores, [encoded.get(t) for t in texts], ANCHOR_MIN_SCORE
  raise ValueError(f"method must be one of {ANCHOR_METHODS}, got {method!r}")


def anchor_many(texts: list[str], encoder=None, table: EmbeddingTable | None = None, *,
                method: str = ANCHOR_METHOD, target: str = ANCHOR_TARGET,
                effect_map=None) -> list[Anchor]:
  """Each prompt anchored to the train prompts that ask for the same thing: the effect read from
  its words (`method`: `match`, or the learned effect map), with the parameters its modifier
  words set (`params_from_words`).

  The denoiser learned its prompts from the train paraphrases' embeddings, and it follows their
  wording far better than other words for the same effect (model v3.2 on held-out clips: 28.9 dB
  with each effect's train twin against 26.0 with the val wording,
  `reports/model_v3/stretch7/fidelity_run_v3d/`). So a prompt whose effect is read with
  enough confidence (the map's probability >= effect_map.anchor_min_prob, or match's score >=
  ANCHOR_MIN_SCORE) is given an embedding of the train prompts with that effect and exactly
  those parameters, or, where none has them, of those nearest to them (L1 over the parameter
  vector): their mean (target "centroid"; the model trained on mixes of same-effect train
  embeddings, train.prompt_mix) or the one most similar to the prompt (target "paraphrase"). An
  unsure read, the empty prompt and an effect no train paraphrase names keep their own embedding
  (embedding None)."""
  if method not in ANCHOR_METHODS:
    raise ValueError(f"method must be one of {ANCHOR_METHODS}, got {method!r}")
  if target not in ANCHOR_TARGETS:
    raise ValueError(f"target must be one of {ANCHOR_TARGETS}, got {target!r}")
  if encoder is None:
    from lsd_jax.models import text_encoder  # pylint: disable=import-outside-toplevel
    encoder = text_encoder.default_encoder()
  table = load_embedding_table() if table is None else table
  texts = list(texts)
  names, scores, own, min_score = read_effects(texts, encoder, table, method, effect_map)
  # The empty prompt is no wording (its zero embedding is "no effect" by convention): not an anchor.
  train = np.array([i for i in np.flatnonzero(np.asarray(table.splits) == "train") if table.texts[i]])
  train_names = np.asarray([effects.spec_name(table.spec(int(i))) for i in train])
  out = []
  for text, name, score, mine in zip(texts, names, scores, own):
    rows = train[train_names == name]
    if not text.strip() or float(score) < min_score or rows.size == 0:
      out.append(Anchor(None, str(name), float(score), "", mine))
      continue
    frame, temporal = parse_name(name)
    want = params_from_words(text, frame, temporal)
    dist = np.abs(np.asarray(table.params)[rows] - want[None]).sum(1)
    near = rows[dist <= dist.min() + 1e-6]
    e = np.asarray(table.embeddings, np.float32)[near]
    if target == "centroid":
      emb = e.mean(0)
      i, used = int(near[int(np.argmax(e @ emb))]), tuple(int(j) for j in near)
    else:  # the most similar wording among the equally near
      i = int(near[int(np.argmax(e @ mine))]) if near.size > 1 else int(near[0])
      emb, used = np.asarray(table.embeddings[i], np.float32), (i,)
    out.append(Anchor(np.asarray(emb, np.float32), str(name), float(score), table.texts[i], mine, used))
  return out


def anchor_prompt_set(chosen: dict, encoder=None, table: EmbeddingTable | None = None, *,
                      method: str = ANCHOR_METHOD, target: str = ANCHOR_TARGET,
                      effect_map=None) -> tuple[dict, dict]:
  """A prompt set {name: (text, embedding, spec)} (as `pick_val_prompts` gives it) with each
  text's anchor embedding where `anchor_many` finds one, and the anchors by name."""
  names = list(chosen)
  anchors = dict(zip(names, anchor_many([chosen[n][0] for n in names], encoder, table,
                                        method=method, target=target, effect_map=effect_map)))
  out = {n: (t, anchors[n].embedding, spec) if anchors[n].embedding is not None else (t, e, spec)
         for n, (t, e, spec) in chosen.items()}
  return out, anchors
