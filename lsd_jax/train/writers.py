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
    return plot_jsonl(os.path.join(self.workdir, f"{self.name}_metrics.jsonl"),
                      os.path.join(self.workdir, f"{self.name}_curves.png"), keys)

  def close(self) -> None:
    self._events.close()
    self._jsonl.close()


def plot_jsonl(jsonl_path: str, png_path: str, keys: tuple[str, ...] = ()) -> str:
  """PNG curves of a metrics JSONL log (e.g. one brought back from a killed run)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  hist = read_jsonl(jsonl_path)
  keys = keys or tuple(k for k in hist if k != "step")
  panels = _panels(keys)
  cols = min(len(panels), 4)
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  steps = np.asarray(hist["step"])
  for ax, (title, members) in zip(axes.ravel(), panels):
    for k in members:
      vals = np.asarray([np.nan if v is None else v for v in hist[k]], float)
      ok = np.isfinite(vals)
      style = _STYLE.get(k, {"lw": 0.8})
      ax.plot(steps[ok], vals[ok], label=k.split("/")[-1] if len(members) > 1 else None, **style)
    ax.set_title(title)
    ax.set_xlabel("step")
    if len(members) > 1:
      ax.legend(fontsize=5, ncol=2)
    finite = [v for k in members for v in hist[k] if v is not None and np.isfinite(v)]
    if title.startswith("loss") and finite and min(finite) > 0:
      ax.set_yscale("log")
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(png_path, dpi=80)
  plt.close(fig)
  return png_path


# The held-out panel draws its mean bold and both references dashed.
_STYLE = {"heldout_psnr_mean": {"lw": 2.0, "color": "k"},
          "heldout_input_psnr_mean": {"lw": 1.2, "ls": "--", "color": "tab:red"},
          "heldout_ae_psnr_mean": {"lw": 1.2, "ls": "--", "color": "tab:green"},
          "heldout_psnr_mean_raw": {"lw": 1.2, "ls": ":", "color": "k"}}


def _panels(keys) -> list[tuple[str, list[str]]]:
  """One panel per plain key; keys `group/member` share a panel named after the group, and the
  held-out means and references join the per-effect held-out panel."""
  panels: dict[str, list[str]] = {}
  for k in keys:
    group = k.split("/")[0] if "/" in k else ("heldout_psnr" if k.startswith("heldout_") else k)
    panels.setdefault(group, []).append(k)
  return list(panels.items())


def read_jsonl(path: str) -> dict[str, list]:
  """Columns of a metrics JSONL file; rows of one step are merged (a later value wins: a step
  logged twice, after a resume, keeps its last values)."""
  rows: dict[int, dict] = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        rows.setdefault(r["step"], {}).update(r)  # a held-out row joins its step's train row
  # Rows need not share keys (held-out rows, per-effect losses): every column has one entry per
  # step, None where that step did not log it.
  keys = list(dict.fromkeys(k for r in rows.values() for k in r))
  return {k: [rows[step].get(k) for step in sorted(rows)] for k in keys}
