"""Architecture-aware structured pruning of the denoiser: whole attention heads and MLP hidden
channels, to widths that are multiples of the GPU's matrix tile, as a real smaller model.

Importance: first-order Taylor, per structure (Molchanov et al. 2019, "Importance estimation for
neural network pruning", group variant). Removing head h of a block is exactly zeroing the rows
of `out_kernel` that read it (the head reaches the residual stream only through them); removing
MLP channel j is exactly zeroing row j of `fc2_kernel`. To first order the loss then changes by
-sum(W * dL/dW) over those rows, so a unit's score is that sum squared, averaged over
calibration batches. This is loss-aware (unlike weight norms) and needs one backward pass per
batch (unlike removing units one at a time). The loss is the caller's: the training objective
on calibration batches (`lsd_jax.train.pruning`).

Widths: a block keeps k heads with k * head_dim a multiple of the tile and an MLP width that is
a multiple of the tile, at least one tile of each (or its full width, which is always allowed).
`allocation="uniform"` keeps the same widths in every block (ranked within each block);
`"global"` ranks tile-sized chunks of units across blocks by their summed scores (each block's
chunks in its own order), so blocks that matter more keep more. Kept units stay in their
original order: pruning nothing returns the same parameters.

Pruned parameters go with an `LSDConfig` carrying `block_heads` / `block_mlp`, so
`export.save` / `export.load` rebuild the smaller architecture.

Hopper 2:4 sparsity is not used: in jax 0.11.2 the only sparse tensor-core MMA is Pallas Mosaic
GPU's `tcgen05_mma(a_sparse_metadata=...)` (Blackwell, sm_100); Hopper's `wgmma` has no sparse
form, XLA's dot has no 2:4 path on GPU and `jax.experimental.sparse` lowers to cuSPARSE
(unstructured BCOO/BCSR), not cuSPARSELt.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.models.lsd import LSDConfig

ALLOCATIONS = ("uniform", "global")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  keep_heads: float = 1.0  # fraction of attention heads kept (rounded to whole tiles)
  keep_mlp: float = 1.0  # fraction of MLP hidden channels kept (rounded to whole tiles)
  tile: int = 128  # widths are multiples of this (the GPU matmul tile: 64 or 128)
  allocation: str = "uniform"

  def __post_init__(self):
    for name in ("keep_heads", "keep_mlp"):
      if not 0.0 < getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
    if self.tile < 1:
      raise ValueError(f"tile must be >= 1, got {self.tile}")
    if self.allocation not in ALLOCATIONS:
      raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")


@dataclasses.dataclass(frozen=True)
class Keep:
  """Kept unit indices per block (ascending)."""
  heads: tuple[np.ndarray, ...]
  mlp: tuple[np.ndarray, ...]


# ----------------------------------------------------------------------------- importance


def _units(den_params, cfg: LSDConfig):
  """Per block: the out_kernel rows grouped by head (N x hd x D) and fc2 rows (F x D)."""
  s = cfg.model_size.denoiser
  out = []
  for i in range(s.depth):
    blk = den_params[f"block_{i}"]
    out.append((blk["out_kernel"].reshape(s.heads_of(i), s.head_dim, -1), blk["fc2_kernel"]))
  return out


def taylor_step(den_params, grads, cfg: LSDConfig) -> list[dict[str, jax.Array]]:
  """One batch's scores: (sum over a unit's rows of W * dL/dW)^2 per head and per MLP channel."""
  scores = []
  for (w_h, w_f), (g_h, g_f) in zip(_units(den_params, cfg), _units(grads, cfg)):
    scores.append({"heads": jnp.square(jnp.sum(w_h * g_h, axis=(1, 2))),
                   "mlp": jnp.square(jnp.sum(w_f * g_f, axis=1))})
  return scores


def taylor_importance(loss_fn: Callable[[Any, Any], jax.Array], den_params, batches: Iterable[Any],
                      cfg: LSDConfig) -> list[dict[str, np.ndarray]]:
  """Mean Taylor scores over `batches`; `loss_fn(den_params, batch) -> scalar`.
  Returns one {"heads": (N,), "mlp": (F,)} per block."""
  step = jax.jit(lambda p, b: taylor_step(p, jax.grad(loss_fn)(p, b), cfg))
  total, n = None, 0
  for batch in batches:
    s = step(den_params, batch)
    total = s if total is None else jax.tree.map(jnp.add, total, s)
    n += 1
  if n == 0:
    raise ValueError("taylor_importance needs at least one calibration batch")
  return jax.tree.map(lambda x: np.asarray(x / n, np.float64), total)


# ----------------------------------------------------------------------------- selection


def head_granularity(head_dim: int, tile: int) -> int:
  """Heads per tile step: the smallest k with k * head_dim a multiple of the tile."""
  return math.lcm(head_dim, tile) // head_dim


def _target(full: int, keep: float, step: int) -> int:
  """Units kept: keep * full rounded to a multiple of `step`, at least one step (or `full`)."""
  if keep >= 1.0 or full <= step:
    return full
  return int(min(full, max(step, step * round(keep * full / step))))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k highest scores, in ascending index order (stable for ties)."""
  order = np.argsort(-scores, kind="stable")
  return np.sort(order[:k])


def _global(scores: Sequence[np.ndarray], keep: float, step: int) -> list[np.ndarray]:
  """Chunks of `step` units ranked across blocks; each block keeps its first chunk."""
  full = [len(s) for s in scores]
  if keep >= 1.0:
    return [np.arange(f) for f in full]
  chunks = []  # (value, block, chunk index)
  for i, s in enumerate(scores):
    ranked = np.sort(s)[::-1]
    for j in range(1, math.ceil(len(s) / step)):
      chunks.append((float(ranked[j * step:(j + 1) * step].sum()), i, j))
  budget = _target(sum(full), keep, step) // step - len(scores)  # chunks beyond each block's first
  counts = [1] * len(scores)
  for _, i, _ in sorted(chunks, key=lambda c: (-c[0], c[1], c[2]))[:max(0, budget)]:
    counts[i] += 1  # a block's chunks are sorted by value, so it always grows from its top
  return [_top(s, min(len(s), c * step)) for s, c in zip(scores, counts)]


def select(scores: Sequence[dict[str, np.ndarray]], cfg: LSDConfig, pc: PruneConfig) -> Keep:
  """Which heads and MLP channels each block keeps, from per-unit importance scores."""
  s = cfg.model_size.denoiser
  g_heads = head_granularity(s.head_dim, pc.tile)
  heads = [np.asarray(b["heads"]) for b in scores]
  mlp = [np.asarray(b["mlp"]) for b in scores]
  if len(heads) != s.depth:
    raise ValueError(f"scores for {len(heads)} blocks, model has {s.depth}")
  if pc.allocation == "uniform":
    keep_h = [_top(h, _target(len(h), pc.keep_heads, g_heads)) for h in heads]
    keep_f = [_top(f, _target(len(f), pc.keep_mlp, pc.tile)) for f in mlp]
  else:
    keep_h, keep_f = _global(heads, pc.keep_heads, g_heads), _global(mlp, pc.keep_mlp, pc.tile)
  return Keep(tuple(keep_h), tuple(keep_f))


# ----------------------------------------------------------------------------- surgery


def _slice_block(blk: dict[str, Any], heads: np.ndarray, n_heads: int, hd: int, mlp: np.ndarray) -> dict[str, Any]:
  """A block's parameters restricted to the kept heads (q, k and v columns, out rows) and MLP
  channels (fc1 columns, fc2 rows). The qkv columns are laid out (3, heads, head_dim)."""
  cols = (np.arange(3)[:, None, None] * n_heads * hd + heads[None, :, None] * hd
          + np.arange(hd)[None, None, :]).reshape(-1)
  rows = (heads[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
  out = dict(blk)
  out["qkv_kernel"] = np.asarray(blk["qkv_kernel"])[:, cols]
  out["qkv_bias"] = np.asarray(blk["qkv_bias"])[cols]
  out["out_kernel"] = np.asarray(blk["out_kernel"])[rows]
  out["fc1_kernel"] = np.asarray(blk["fc1_kernel"])[:, mlp]
  out["fc1_bias"] = np.asarray(blk["fc1_bias"])[mlp]
  out["fc2_kernel"] = np.asarray(blk["fc2_kernel"])[mlp]
  return out


def apply(cfg: LSDConfig, den_params, keep: Keep) -> tuple[LSDConfig, dict[str, Any]]:
  """The pruned architecture and its denoiser parameters (a real smaller model, not masks)."""
  s = cfg.model_size.denoiser
  new = dict(den_params)
  for i in range(s.depth):
    h, f = np.asarray(keep.heads[i]), np.asarray(keep.mlp[i])
    if len(np.unique(h)) != len(h) or len(np.unique(f)) != len(f) or not len(h) or not len(f):
      raise ValueError(f"block {i}: kept units must be distinct and non-empty")
    new[f"block_{i}"] = _slice_block(den_params[f"block_{i}"], h, s.heads_of(i), s.head_dim, f)
  full_h = all(len(h) == s.heads for h in keep.heads)
  full_f = all(len(f) == s.width * s.mlp_ratio for f in keep.mlp)
  pruned = dataclasses.replace(
      cfg, block_heads=() if full_h and full_f else tuple(len(h) for h in keep.heads),
      block_mlp=() if full_h and full_f else tuple(len(f) for f in keep.mlp))
  return pruned, new


def prune(cfg: LSDConfig, params: dict[str, Any], scores: Sequence[dict[str, np.ndarray]],
          pc: PruneConfig) -> tuple[LSDConfig, dict[str, Any], Keep]:
  """Whole-model params {"autoencoder", "denoiser"} -> (pruned config, params, what was kept)."""
  keep = select(scores, cfg, pc)
  new_cfg, den = apply(cfg, params["denoiser"], keep)
  return new_cfg, {**params, "denoiser": den}, keep


def check_tiles(cfg: LSDConfig, tile: int) -> None:
  """Raises unless every pruned block's attention and MLP widths are multiples of `tile`."""
  s = cfg.model_size.denoiser
  for i in range(s.depth):
    a, f = s.heads_of(i) * s.head_dim, s.mlp_of(i)
    if (a % tile and s.heads_of(i) != s.heads) or (f % tile and f != s.width * s.mlp_ratio):
      raise ValueError(f"block {i}: attention width {a} / MLP width {f} not multiples of tile {tile}")
