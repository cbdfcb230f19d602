"""Precomputes data/prompt_embeddings.npz: every train and val prompt, its MiniLM embedding and spec.

Run once on CPU after changing data/prompts/ or the effect tables (well under a minute on 2 cores):

  .venv/bin/python scripts/make_prompt_embeddings.py

Also stores the train effect phrases' embeddings and the pair margin of `prompts.decompose`,
chosen for the best match accuracy on the *train* prompts. Embeddings are stored as float16 (unit
vectors: rounding error below 2.5e-4 per component, far below the cosine gaps `match` relies on)
to keep the file small. Logs the match accuracy on the val prompts, which played no part.
"""

from absl import app
from absl import flags
from absl import logging
import numpy as np

from lsd_jax.datasets import prompts
from lsd_jax.models import text_encoder

_OUT = flags.DEFINE_string("out", str(prompts.EMBEDDINGS_PATH), "Where to write the table.")
MARGINS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15)


def accuracy(encoder, table: prompts.EmbeddingTable, split: str) -> float:
  keep = np.flatnonzero(table.splits == split)
  texts = [table.texts[i] for i in keep]
  query_NxD = encoder.encode([prompts.strip_modifiers(t) or t for t in texts])
  names, _ = prompts.decompose(query_NxD, table)
  truth = table.names()
  return float(np.mean([n == truth[i] for n, i in zip(names, keep)]))


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  encoder = text_encoder.default_encoder()
  texts, specs, splits = [], [], []
  for split in prompts.SPLITS:
    rows = prompts.build_prompt_set(split)
    texts += [t for t, _ in rows]
    specs += [s for _, s in rows]
    splits += [split] * len(rows)
  overlap = {t for t, s in zip(texts, splits) if s == "train"} & {
      t for t, s in zip(texts, splits) if s == "val"}
  if overlap:
    raise ValueError(f"train and val share prompts: {sorted(overlap)[:5]}")
  emb_NxD = encoder.encode(texts)
  phrases = prompts.effect_phrases("train")
  phrase_MxD = encoder.encode([p for _, _, p in phrases])
  scores = {}
  for margin in MARGINS:
    prompts.save_embedding_table(_OUT.value, texts, emb_NxD, specs, splits, phrases, phrase_MxD,
                                 margin)
    prompts._load_npz.cache_clear()  # pylint: disable=protected-access
    scores[margin] = accuracy(encoder, prompts.load_embedding_table(path=_OUT.value), "train")
  margin = max(MARGINS, key=lambda m: (scores[m], -m))
  prompts.save_embedding_table(_OUT.value, texts, emb_NxD, specs, splits, phrases, phrase_MxD,
                               margin)
  prompts._load_npz.cache_clear()  # pylint: disable=protected-access
  val = accuracy(encoder, prompts.load_embedding_table(path=_OUT.value), "val")
  logging.info("wrote %s: %d prompts (%d val), %d phrases; pair margin %.2f (train accuracy %s); "
               "val match accuracy %.3f", _OUT.value, len(texts), splits.count("val"),
               len(phrases), margin, {m: round(a, 3) for m, a in scores.items()}, val)


if __name__ == "__main__":
  app.run(main)
