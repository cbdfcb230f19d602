"""A learned map from a prompt's MiniLM embedding to the single effect it asks for.

Multinomial logistic regression over the 20 single effects (identity, the 14 per-frame effects,
the 5 temporal ones), fitted on the *train* prompts of the embedding table only: the prompts that
ask for one effect, embedded with their modifier words (the table's own embeddings, so the map is
refitted from data/prompt_embeddings.npz alone, with no text encoder). Compositions are read by
`prompts.map_many`, which splits a prompt at joining words and maps each part.

Why a learned map and not the nearest train phrase (`prompts.match`): the nearest phrase is one
paraphrase's opinion, and an unseen wording often lies nearer a phrase of another effect
("remove all colour" is nearer colour tint's phrases than grayscale's). The map weighs every
train prompt of every effect, so it learns which directions of the embedding tell the effects
apart. Its hyperparameters (the L2 weight, the softmax temperature, the two probability
thresholds) were chosen by scripts/make_effect_map.py by cross-validation over the train
paraphrases with each fold's paraphrases held out, so that train mimics unseen wording; the val
prompts play no part. The fitted map is data/effect_map.npz; `tests/datasets/test_effect_map.py`
checks that it equals a refit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib

from absl import logging
import numpy as np

from lsd_jax.datasets import effects

MAP_PATH = pathlib.Path(__file__).resolve().parents[2] / "data" / "effect_map.npz"
# The classes: identity, the per-frame effects, the temporal effects (a composition is two of them).
SINGLE_EFFECTS = ("identity", *effects.FRAME_EFFECTS[1:], *effects.TEMPORAL_EFFECTS[1:])
IS_FRAME_C = np.array([n in effects.FRAME_EFFECTS[1:] for n in SINGLE_EFFECTS])
IS_TEMPORAL_C = np.array([n in effects.TEMPORAL_EFFECTS[1:] for n in SINGLE_EFFECTS])
# The optimiser stops when the largest gradient component is below this; a refit then differs
# from the committed weights by at most ||g|| / l2 (the loss is l2-strongly convex).
FIT_GTOL = 1e-9


@dataclasses.dataclass(frozen=True)
class EffectMap:
  """A fitted map and the thresholds that `prompts.map_many` and `anchor_many` apply to it."""
  weights_DxC: np.ndarray  # float32 [384, 20]
  bias_C: np.ndarray  # float32 [20]
  l2: float  # L2 weight of the fit (the weights, not the bias)
  temperature: float  # logits / temperature -> calibrated probabilities (chosen by held-out NLL)
  split_min_prob: float  # both parts of a split this sure (frame part, temporal part): a composition
  anchor_min_prob: float  # the map this sure of its effect: anchor the prompt; less: keep its own
  table_digest: str  # `train_digest` of the table it was fitted on, to notice a stale map

  def probs(self, x_NxD: np.ndarray) -> np.ndarray:
    """Calibrated class probabilities [N, 20] of embeddings [N, 384]."""
    z_NxC = (np.asarray(x_NxD, np.float64) @ self.weights_DxC + self.bias_C) / self.temperature
    z_NxC -= z_NxC.max(1, keepdims=True)
    p_NxC = np.exp(z_NxC)
    return p_NxC / p_NxC.sum(1, keepdims=True)


def single_rows(table) -> tuple[np.ndarray, np.ndarray]:
  """Row indices of the table's train prompts that ask for one effect (not the empty prompt:
  it is identity by definition, and its zero embedding is no wording), and their class ids."""
  rows, labels = [], []
  for i in np.flatnonzero(np.asarray(table.splits) == "train"):
    name = effects.spec_name(table.spec(int(i)))
    if table.texts[i].strip() and name in SINGLE_EFFECTS:
      rows.append(int(i))
      labels.append(SINGLE_EFFECTS.index(name))
  return np.array(rows, np.int64), np.array(labels, np.int64)


def train_digest(table) -> str:
  """sha256 of what a fit reads: the single-effect train rows' texts, embeddings and labels."""
  rows, labels = single_rows(table)
  h = hashlib.sha256()
  h.update("\n".join(table.texts[i] for i in rows).encode())
  h.update(np.ascontiguousarray(np.asarray(table.embeddings, np.float32)[rows]).tobytes())
  h.update(labels.astype(np.int64).tobytes())
  return h.hexdigest()


def fit_logistic(x_NxD: np.ndarray, labels_N: np.ndarray, num_classes: int,
                 l2: float) -> tuple[np.ndarray, np.ndarray]:
  """Weights [D, C] and bias [C] minimising the mean cross-entropy + l2 / 2 |W|^2 (L-BFGS, from
  zero, float64: deterministic, and the optimum is unique since the loss is strongly convex)."""
  from scipy import optimize  # pylint: disable=import-outside-toplevel  # only fitting needs it

  x_NxD = np.asarray(x_NxD, np.float64)
  n, d = x_NxD.shape
  if l2 <= 0:
    raise ValueError(f"l2 must be > 0 (the fit is unique only then), got {l2}")
  y_NxC = np.eye(num_classes)[labels_N]

  def loss_and_grad(theta):
    w_DxC, b_C = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
    z_NxC = x_NxD @ w_DxC + b_C
    z_NxC -= z_NxC.max(1, keepdims=True)
    lse_N = np.log(np.exp(z_NxC).sum(1))
    loss = np.mean(lse_N - (z_NxC * y_NxC).sum(1)) + 0.5 * l2 * np.sum(w_DxC * w_DxC)
    g_NxC = (np.exp(z_NxC - lse_N[:, None]) - y_NxC) / n
    return loss, np.concatenate([(x_NxD.T @ g_NxC + l2 * w_DxC).ravel(), g_NxC.sum(0)])

  res = optimize.minimize(loss_and_grad, np.zeros(d * num_classes + num_classes), jac=True,
                          method="L-BFGS-B",
                          options={"maxiter": 20000, "gtol": FIT_GTOL, "ftol": 0.0})
  grad_max = float(np.abs(res.jac).max())
  if grad_max > 10 * FIT_GTOL:
    raise RuntimeError(f"the effect map's fit did not converge ({res.message}; gradient {grad_max:.2e})")
  return (res.x[:d * num_classes].reshape(d, num_classes).astype(np.float32),
          res.x[d * num_classes:].astype(np.float32))


def fit(table, *, l2: float, temperature: float, split_min_prob: float,
        anchor_min_prob: float) -> EffectMap:
  """The map fitted on `table`'s single-effect train prompts, with the given hyperparameters."""
  rows, labels = single_rows(table)
  w_DxC, b_C = fit_logistic(np.asarray(table.embeddings, np.float32)[rows], labels,
                            len(SINGLE_EFFECTS), l2)
  return EffectMap(w_DxC, b_C, float(l2), float(temperature), float(split_min_prob),
                   float(anchor_min_prob), train_digest(table))


def save(path: str | pathlib.Path, m: EffectMap) -> None:
  np.savez_compressed(path, weights_DxC=m.weights_DxC.astype(np.float32),
                      bias_C=m.bias_C.astype(np.float32), classes=np.array(SINGLE_EFFECTS),
                      l2=np.float64(m.l2), temperature=np.float64(m.temperature),
                      split_min_prob=np.float64(m.split_min_prob),
                      anchor_min_prob=np.float64(m.anchor_min_prob),
                      table_digest=np.array(m.table_digest))


@functools.cache
def _load(path: str) -> EffectMap:
  with np.load(path) as f:
    if tuple(str(c) for c in f["classes"]) != SINGLE_EFFECTS:
      raise ValueError(f"{path} was fitted for other effect tables; rerun scripts/make_effect_map.py")
    return EffectMap(f["weights_DxC"].astype(np.float32), f["bias_C"].astype(np.float32),
                     float(f["l2"]), float(f["temperature"]), float(f["split_min_prob"]),
                     float(f["anchor_min_prob"]), str(f["table_digest"]))


def load(path: str | pathlib.Path = MAP_PATH, table=None) -> EffectMap:
  """The committed map (data/effect_map.npz); with `table`, a warning when it was fitted on
  other train rows than the table's (rerun scripts/make_effect_map.py)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no effect map at {path}; fit it with scripts/make_effect_map.py")
  m = _load(str(path))
  if table is not None and m.table_digest != _digest_cached(table):
    logging.warning("%s is stale: it was fitted on other train prompts than the embedding table's; "
                    "rerun scripts/make_effect_map.py", path)
  return m


_DIGESTS: dict[int, tuple[object, str]] = {}


def _digest_cached(table) -> str:
  """train_digest, once per table object (the loaded table is cached, so once per process)."""
  key = id(table)
  if key not in _DIGESTS or _DIGESTS[key][0] is not table:
    _DIGESTS[key] = (table, train_digest(table))
  return _DIGESTS[key][1]
