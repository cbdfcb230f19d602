"""Resume state: a stream's state on disk, so that a long evaluation stream resumes part-way and
gives the same numbers as an uninterrupted run (`runner.run_stream(checkpoint=...)`).

What a stream carries from chunk to chunk is all of its state: the model's latent ring, the
ground truth's EffectState, the metrics' previous frames (device pytrees), the frame index, and
the per-frame scalars gathered so far. The noise needs no saving: every key is folded in from
the seed by the absolute frame index. One `.npz` holds it all, written to a temporary name and
renamed (a kill mid-write leaves the previous checkpoint intact).

A checkpoint also records a fingerprint of what produced it (model parameters, protocol,
schedule, chunk size); resuming under a different fingerprint is refused, since the result
would mix two experiments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class ResumeState:
  done: int  # frames streamed (a multiple of the chunk, or the stream's length)
  carry: Any  # (ring, effect state, metric carry): device or numpy pytrees
  per_frame: dict[str, np.ndarray]  # metric -> [done]
  prompt_index: np.ndarray  # [done]
  chunk_seconds: np.ndarray  # model seconds per chunk so far
  chunk_frames: np.ndarray
  chunk_wall_seconds: np.ndarray  # whole-chunk seconds (frames, model, truth, metrics)
  cold_chunks: np.ndarray  # indices of chunks that compiled (the first of each process)


def params_digest(params) -> str:
  """SHA-1 over the parameter leaves (shapes, dtypes and bytes)."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def save(path: str, p: ResumeState, fingerprint: dict[str, Any]) -> None:
  leaves = jax.tree.leaves(jax.device_get(p.carry))
  arrays = {f"carry_{i}": np.asarray(x) for i, x in enumerate(leaves)}
  arrays.update({f"pf_{k}": v for k, v in p.per_frame.items()})
  meta = {"done": p.done, "fingerprint": fingerprint, "carry_leaves": len(leaves), "metrics": list(p.per_frame)}
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.savez(f, meta=np.asarray(json.dumps(meta)), prompt_index=p.prompt_index, chunk_seconds=p.chunk_seconds,
             chunk_frames=p.chunk_frames, chunk_wall_seconds=p.chunk_wall_seconds, cold_chunks=p.cold_chunks, **arrays)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def load(path: str, carry_template: Any, fingerprint: dict[str, Any]) -> ResumeState | None:
  """The saved state (carry rebuilt on the template's tree structure), or None when there is
  no checkpoint; ValueError when it was made by another model or protocol."""
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    meta = json.loads(str(z["meta"]))
    saved = json.loads(json.dumps(meta["fingerprint"]))
    want = json.loads(json.dumps(fingerprint))  # the same normalisation (tuples -> lists)
    if saved != want:
      diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
      raise ValueError(f"{path} was written by another run (differs in {diff}); use a new output folder "
                       "or delete it to start over")
    treedef = jax.tree.structure(carry_template)
    if treedef.num_leaves != meta["carry_leaves"]:
      raise ValueError(f"{path}: {meta['carry_leaves']} carry arrays, expected {treedef.num_leaves}")
    carry = jax.tree.unflatten(treedef, [z[f"carry_{i}"] for i in range(treedef.num_leaves)])
    return ResumeState(int(meta["done"]), carry, {k: z[f"pf_{k}"] for k in meta["metrics"]}, z["prompt_index"],
                    z["chunk_seconds"], z["chunk_frames"], z["chunk_wall_seconds"], z["cold_chunks"])
