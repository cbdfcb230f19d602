"""Metric writers people look at: TensorBoard event files, a JSONL log and PNG curves.

TensorBoard events are written with tensorboard's own event writer, so TensorFlow is not needed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import numpy as np


class MetricWriter:
  def __init__(self, workdir: str, name: str = "train"):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    self.dir = os.path.join(workdir, name)
    os.makedirs(self.dir, exist_ok=True)
    self._events = EventFileWriter(self.dir)
    self._jsonl = open(os.path.join(workdir, f"{name}_metrics.jsonl"), "a")
    self._history: dict[str, list[tuple[int, float]]] = {}
    self.workdir, self.name = workdir, name

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    vals = {k: float(v) for k, v in metrics.items()}
    summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in vals.items()])
    self._events.add_event(Event(step=int(step), wall_time=time.time(), summary=summary))
    self._jsonl.write(json.dumps({"step": int(step), **vals}) + "\n")
    self._jsonl.flush()
    for k, v in vals.items():
      self._history.setdefault(k, []).append((int(step), v))

  def plot(self, keys: tuple[str, ...] = ()) -> str:
    """PNG training curves of `keys` (all when empty), read back from the JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = read_jsonl(os.path.join(self.workdir, f"{self.name}_metrics.jsonl"))
    keys = keys or tuple(k for k in hist if k != "step")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
      steps, vals = np.asarray(hist["step"]), np.asarray(hist[k], float)
      ok = np.isfinite(vals)
      ax.plot(steps[ok], vals[ok], lw=1)
      ax.set_title(k)
      ax.set_xlabel("step")
      if k.startswith("loss") and np.all(vals[ok] > 0):
        ax.set_yscale("log")
    fig.tight_layout()
    path = os.path.join(self.workdir, f"{self.name}_curves.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

  def close(self) -> None:
    self._events.close()
    self._jsonl.close()


def read_jsonl(path: str) -> dict[str, list]:
  """Columns of a metrics JSONL file; a step logged twice (after a resume) keeps its last row."""
  rows: dict[int, dict] = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        rows[r["step"]] = r
  cols: dict[str, list] = {}
  for step in sorted(rows):
    for k, v in rows[step].items():
      cols.setdefault(k, []).append(v)
  return cols
