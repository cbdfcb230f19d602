"""Orbax checkpoints of the train state and the grain iterator, saved together.

A run auto-resumes from the latest step in its workdir and keeps the last N. The data iterator
is restored with the state, so the resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp
from absl import logging


def manager(workdir: str, keep: int = 3, every: int = 1000) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


def save(mgr: ocp.CheckpointManager, step: int, state, data_iter, *, force: bool = False) -> bool:
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter))
  return mgr.save(step, args=args, force=force)


def restore_latest(mgr: ocp.CheckpointManager, abstract_state, data_iter):
  """Returns (state, step) from the latest checkpoint, or (None, 0) when there is none.
  `abstract_state` carries the target shardings (jax.ShapeDtypeStruct with .sharding)."""
  step = mgr.latest_step()
  if step is None:
    return None, 0
  logging.info("resuming from step %d in %s", step, mgr.directory)
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                            data=grain.checkpoint.CheckpointRestore(data_iter))
  restored = mgr.restore(step, args=args)
  return restored["state"], step
