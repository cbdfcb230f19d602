"""Ablation sweeps: train each distinct arm with the same budget, evaluate every arm with the
same protocol (`protocol.evaluate`), and report one table and one drift plot per ablation.

An ablation is a list of arms {"label", "train": {dotted.field: value}, "eval": {"steps"?,
"tau_inf"?}} (experiments/configs/ablations.py). Arms whose training overrides are equal share
one trained model, so inference-only arms (S, tau_inf) cost no training.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from absl import logging

from lsd_jax.eval import protocol, report


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields set ("model.history_len": 2)."""
  c = copy.deepcopy(config)
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config has no field {path!r}")
    with c.unlocked() if hasattr(c, "unlocked") else _nullcontext():
      node[leaf] = copy.deepcopy(value)
  return c


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def run_id(train_overrides: dict[str, Any]) -> str:
  """A stable folder name for a training configuration ("base" for no overrides)."""
  if not train_overrides:
    return "base"
  text = json.dumps(train_overrides, sort_keys=True, default=str)
  return "run_" + hashlib.sha1(text.encode()).hexdigest()[:10]


def effective_overrides(base: ml_collections.ConfigDict | None, overrides: dict[str, Any]) -> dict[str, Any]:
  """The overrides that change `base` (an arm that restates the base value trains no new model)."""
  if base is None:
    return dict(overrides)
  out = {}
  for path, value in overrides.items():
    node = base
    for p in path.split("."):
      node = node[p]
    current = node.to_dict() if hasattr(node, "to_dict") else node
    if json.dumps(current, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
      out[path] = value
  return out


def arm_run(base: ml_collections.ConfigDict | None, arm: dict[str, Any]) -> str:
  return run_id(effective_overrides(base, arm["train"]))


def select_arms(ablations: dict[str, list[dict]], labels: Sequence[str]) -> dict[str, list[dict]]:
  """Only the arms labelled in `labels` (ablations left without an arm are dropped), e.g. to train
  a sweep's arms in parallel processes that share one workdir. A label no arm has is an error."""
  wanted = set(labels)
  known = {a["label"] for arms in ablations.values() for a in arms}
  if wanted - known:
    raise ValueError(f"no arm is labelled {sorted(wanted - known)}; the arms are {sorted(known)}")
  picked = {n: [a for a in arms if a["label"] in wanted] for n, arms in ablations.items()}
  return {n: arms for n, arms in picked.items() if arms}


def training_runs(ablations: dict[str, list[dict]],
                  base: ml_collections.ConfigDict | None = None) -> dict[str, dict[str, Any]]:
  """Distinct training configurations of all arms (relative to `base`): run id -> overrides."""
  runs = {}
  for arms in ablations.values():
    for arm in arms:
      eff = effective_overrides(base, arm["train"])
      runs.setdefault(run_id(eff), eff)
  return runs


def train_runs(base: ml_collections.ConfigDict, ablations: dict[str, list[dict]], workdir: str,
               train_fn: Callable | None = None) -> dict[str, str]:
  """Trains each distinct arm (same budget: the base config's total_steps / max_minutes);
  a run whose export already exists is reused. Returns run id -> export folder."""
  if train_fn is None:
    from lsd_jax.train import loop

    train_fn = loop.train
  exports = {}
  for rid, overrides in training_runs(ablations, base).items():
    wd = os.path.join(workdir, rid)
    export_dir = os.path.join(wd, "export")
    if not os.path.isfile(os.path.join(export_dir, "config.json")):
      logging.info("training %s with %s", rid, overrides)
      cfg = apply_overrides(base, overrides)
      cfg.export_on_stop = True
      train_fn(cfg, wd)
      with open(os.path.join(wd, "overrides.json"), "w") as f:
        json.dump(overrides, f, indent=2, default=str)
    exports[rid] = export_dir
  return exports


def evaluate_arms(ablations: dict[str, list[dict]], exports: dict[str, str], ec: protocol.EvalConfig,
                  clips: list[np.ndarray] | None = None, out_dir: str | None = None,
                  base: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Every arm through protocol.evaluate with the same protocol (its eval overrides applied)."""
  from lsd_jax.models import export

  results: dict[str, Any] = {}
  for name, arms in ablations.items():
    results[name] = []
    for arm in arms:
      rid = arm_run(base, arm)
      cfg, params, meta = export.load(exports[rid])
      ev = dict(arm.get("eval", {}))
      if "tau_inf" in ev:
        cfg = dataclasses.replace(cfg, tau_inf=float(ev["tau_inf"]))
      arm_ec = dataclasses.replace(ec, steps=int(ev.get("steps", ec.steps)))
      logging.info("evaluating %s / %s", name, arm["label"])
      r, res = protocol.evaluate(cfg, params, clips or [], arm_ec)
      r.update(model_dir=exports[rid], metadata=meta)
      if out_dir:
        report.write(r, res, os.path.join(out_dir, name, _slug(arm["label"])), f"{name}: {arm['label']}")
      results[name].append({"label": arm["label"], "train": arm["train"], "eval": ev,
                            "run": rid, "summary": arm_summary(r), "stream": r["stream"],
                            "heldout": r["heldout"]})
  return results


def _slug(label: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)


def arm_summary(r: dict[str, Any]) -> dict[str, float]:
  """The headline numbers of one evaluated arm (means over effects)."""
  s = r["stream"]
  rows = list(s["per_effect"].values())
  held = list(r["heldout"].values())
  resp = [v["median_frames"] for v in s["switch_response"].values() if v["median_frames"] is not None]
  dens = [q["particles"]["density_ratio"] for q in rows if "particles" in q]
  return {"stream_psnr": float(np.nanmean([q["psnr"] for q in rows])),
          "stream_ssim": float(np.nanmean([q["ssim"] for q in rows])),
          "flicker": float(np.nanmean([q["flicker"] for q in rows])),
          "heldout_psnr": float(np.nanmean([q["psnr"] for q in held])) if held else float("nan"),
          "heldout_ssim": float(np.nanmean([q["ssim"] for q in held])) if held else float("nan"),
          "drift_ratio": s["drift"]["psnr_ratio"],
          "hold_ratio": (s.get("hold") or {}).get("psnr_ratio", float("nan")),
          "switch_frames": float(np.mean(resp)) if resp else float("nan"),
          "particle_density_ratio": float(np.nanmean(dens)) if dens else float("nan"),
          "ms_per_frame": s["latency"]["ms_per_frame_median"]}


COLUMNS = (("heldout_psnr", "held-out PSNR", ".2f"), ("heldout_ssim", "held-out SSIM", ".3f"),
           ("stream_psnr", "stream PSNR", ".2f"), ("stream_ssim", "stream SSIM", ".3f"),
           ("flicker", "flicker", ".4f"), ("drift_ratio", "drift ratio", ".4f"), ("hold_ratio", "hold ratio", ".4f"),
           ("switch_frames", "switch response (frames)", ".1f"),
           ("particle_density_ratio", "particle density out/truth", ".2f"), ("ms_per_frame", "ms/frame", ".1f"))


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
  lines = ["# Ablations", "",
           f"Base config `{meta.get('config', '?')}`, same training budget per arm "
           f"(total_steps {meta.get('total_steps')}, max_minutes {meta.get('max_minutes')}); every arm evaluated "
           f"with the same protocol: {json.dumps(meta.get('protocol', {}), default=str)}.", ""]
  for name, arms in results.items():
    lines += [f"## {name}", "", f"![drift]({meta.get('plot_prefix', '')}{name}_drift.png)", "",
              "| arm | trained run | " + " | ".join(c[1] for c in COLUMNS) + " |",
              "|---|---|" + "---|" * len(COLUMNS)]
    for a in arms:
      lines.append(f"| {a['label']} | {a['run']} | "
                   + " | ".join(report._fmt(a["summary"].get(k, float("nan")), f) for k, _, f in COLUMNS) + " |")  # noqa: SLF001
    lines.append("")
  return "\n".join(lines)


def plot_drift(results: dict[str, Any], out_dir: str) -> list[str]:
  """One drift plot per ablation: each arm's PSNR-per-segment curve."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  paths = []
  for name, arms in results.items():
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for a in arms:
      report.plot_drift(ax, a["stream"]["drift"], label=f"{a['label']} (ratio {a['summary']['drift_ratio']:.3f})",
                        per_effect=False)
    ax.set_title(f"drift: {name}")
    ax.legend(fontsize=7)
    path = os.path.join(out_dir, f"{name}_drift.png")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
  return paths


def write(results: dict[str, Any], meta: dict[str, Any], report_path: str, json_path: str) -> None:
  """The sweep report (tables, drift plots beside it) and the sweep JSON."""
  out_dir = os.path.dirname(os.path.abspath(report_path))
  plot_dir = os.path.join(out_dir, "ablations")
  os.makedirs(plot_dir, exist_ok=True)
  plot_drift(results, plot_dir)
  meta = {**meta, "plot_prefix": os.path.relpath(plot_dir, out_dir) + "/"}
  with open(report_path, "w") as f:
    f.write(markdown(results, meta) + "\n")
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  with open(json_path, "w") as f:
    json.dump({"meta": meta, "ablations": results}, f, indent=2, default=report._jsonable)  # noqa: SLF001


def load(json_path: str) -> dict[str, Any]:
  """A sweep JSON as written by `write` (the ablations notebook reads it)."""
  with open(json_path) as f:
    return json.load(f)


def table(results: dict[str, Any], name: str, key: str) -> tuple[list[str], list[float]]:
  """(arm labels, values of one summary column) of one ablation: what the notebook plots."""
  arms = results["ablations"][name]
  return [a["label"] for a in arms], [a["summary"][key] for a in arms]


def across_seeds(sweeps: dict[str, dict[str, Any]], name: str,
                 keys: tuple[str, ...] = ("drift_ratio", "stream_psnr", "heldout_psnr", "flicker")) -> dict[str, Any]:
  """One ablation run with several training seeds (one sweep JSON per seed, same protocol):
  per arm and column, the values by seed, their mean and sample standard deviation.

  `sweeps` maps a seed label to a loaded sweep JSON. Raises if the sweeps disagree on the
  protocol or on the arms, since then the seeds are not repeats of one experiment.
  """
  if not sweeps:
    raise ValueError("no sweeps given")
  labels = list(sweeps)
  first = sweeps[labels[0]]
  for s in labels[1:]:
    if sweeps[s]["meta"].get("protocol") != first["meta"].get("protocol"):
      raise ValueError(f"seed {s!r} was evaluated with another protocol than {labels[0]!r}")
    if [a["label"] for a in sweeps[s]["ablations"][name]] != [a["label"] for a in first["ablations"][name]]:
      raise ValueError(f"seed {s!r} has other arms in {name!r} than {labels[0]!r}")
  out = {}
  for i, arm in enumerate(first["ablations"][name]):
    row = {}
    for k in keys:
      vals = [float(sweeps[s]["ablations"][name][i]["summary"][k]) for s in labels]
      row[k] = {"by_seed": dict(zip(labels, vals)), "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")}
    out[arm["label"]] = row
  return out


def seeds_markdown(table_: dict[str, Any], name: str) -> str:
  """`across_seeds` as a markdown table: mean +- sd (n seeds) and the per-seed values."""
  keys = list(next(iter(table_.values())))
  head = dict((k, t) for k, t, _ in COLUMNS)
  lines = [f"| {name} arm | " + " | ".join(f"{head.get(k, k)} mean +- sd" for k in keys) + " | "
           + " | ".join(f"{head.get(k, k)} by seed" for k in keys) + " |",
           "|---|" + "---|" * (2 * len(keys))]
  for arm, row in table_.items():
    n = len(row[keys[0]]["by_seed"])
    cells = [f"{row[k]['mean']:.4f} +- {row[k]['std']:.4f} (n={n})" for k in keys]
    cells += [", ".join(f"{v:.4f}" for v in row[k]["by_seed"].values()) for k in keys]
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
