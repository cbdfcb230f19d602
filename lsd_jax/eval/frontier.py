"""The distillation and pruning report's logic: collect measured rows, mark the latency-quality
frontier, write markdown, JSON and a frontier PNG. The absl entry point is
experiments/distill_prune_report.py (which documents the results layout).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

NA = float("nan")


def _read(path: str) -> Any:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def latency_ms(results: str, label: str, steps: int, resolution: str) -> tuple[float, str]:
  """Fastest p50 of a whole frame at S = steps over the timed implementations, and its device;
  one stream on one device (rows of a tensor-parallel or many-streams run are left out)."""
  doc = _read(os.path.join(results, "latency", f"latency_{label}.json"))
  if not doc:
    return NA, ""
  rows = [r for r in doc["rows"] if r["label"] == label and r["what"] == "frame" and r["steps"] == steps
          and r["resolution"] == resolution and r.get("devices", 1) == 1 and r.get("streams", 1) == 1]
  return (min(r["p50_ms"] for r in rows), doc.get("device", "")) if rows else (NA, doc.get("device", ""))


def fidelity_psnr(results: str, label: str, steps: int) -> float:
  """Mean over effects of eval_fidelity.py's per-effect PSNR; where only its printed mean row
  survived (a fidelity.json holding `means` {S: dB} and a `source` saying where they come from),
  that mean."""
  doc = _read(os.path.join(results, label, "fidelity", "fidelity.json"))
  if not doc:
    return NA
  if "results" not in doc and "means" in doc:
    if not doc.get("source"):
      raise ValueError(f"{label}: a fidelity.json with `means` only must say where they come from (`source`)")
    v = doc["means"].get(str(steps))
    return NA if v is None else float(v)
  vals = [r["psnr"].get(str(steps), r["psnr"].get(steps)) for r in doc["results"].values()]
  vals = [v for v in vals if v is not None]
  return float(sum(vals) / len(vals)) if vals else NA


def drift_ratio(results: str, label: str, steps: int) -> float:
  doc = _read(os.path.join(results, label, f"eval_s{steps}", "eval.json"))
  try:
    return float(doc["stream"]["drift"]["psnr_ratio"])
  except (TypeError, KeyError):
    return NA


def stream_metrics(results: str, label: str, steps: int) -> tuple[float, float]:
  """Mean over effects of the procedural stream's PSNR and flicker (evaluate.py's eval.json; the
  same run as the drift ratio), NaN where not measured."""
  from lsd_jax.eval import report

  doc = _read(os.path.join(results, label, f"eval_s{steps}", "eval.json"))
  per_effect = ((doc or {}).get("stream") or {}).get("per_effect")
  if not per_effect:
    return NA, NA
  m = report.effect_means(per_effect, ("psnr", "flicker"))
  return m["psnr"], m["flicker"]


def collect(models: list[tuple[str, str]], results: str, steps: list[int], resolution: str) -> list[dict]:
  """One row per (model, S)."""
  from lsd_jax.models import export, sizes

  width, height = (int(v) for v in resolution.split("x"))
  rows = []
  for label, folder in models:
    cfg = export.load_config(folder)
    s = cfg.model_size.denoiser
    for st in steps:
      rep = sizes.report(cfg.model_size, height, width, st, cfg.history_mode, cfg.history_len)
      lat, device = latency_ms(results, label, st, resolution)
      rows.append({"label": label, "folder": folder, "steps": st, "params_denoiser": rep["params_denoiser"],
                   "params_total": rep["params_total"], "gflops_frame": rep["flops_frame"] / 1e9,
                   "heads": list(s.block_heads) or [s.heads] * s.depth,
                   "mlp": list(s.block_mlp) or [s.width * s.mlp_ratio] * s.depth,
                   "latency_ms": lat, "device": device, "psnr": fidelity_psnr(results, label, st),
                   "drift_ratio": drift_ratio(results, label, st)})
      rows[-1]["stream_psnr"], rows[-1]["flicker"] = stream_metrics(results, label, st)
  mark_frontier(rows)
  return rows


def cost_key(rows: list[dict]) -> str:
  """Latency when every row has one, else analytic FLOPs."""
  return "latency_ms" if all(not math.isnan(r["latency_ms"]) for r in rows) else "gflops_frame"


def mark_frontier(rows: list[dict]) -> None:
  """`frontier`: no other row is at least as cheap (`cost_key`) and at least as good in PSNR, and
  strictly better in one. Rows without a PSNR are never on it."""
  key = cost_key(rows)
  scored = [r for r in rows if not math.isnan(r["psnr"])]

  def dominates(o, r):
    return o[key] <= r[key] and o["psnr"] >= r["psnr"] and (o[key] < r[key] or o["psnr"] > r["psnr"])

  for r in rows:
    r["frontier"] = any(r is x for x in scored) and not any(dominates(o, r) for o in scored if o is not r)


def _f(x: float, fmt: str) -> str:
  return "n/a" if isinstance(x, float) and math.isnan(x) else fmt.format(x)


def verdict(rows: list[dict], teacher: str) -> str:
  """Which students dominate the teacher at the same S (faster or cheaper, and no worse in PSNR)."""
  lines = []
  for st in sorted({r["steps"] for r in rows}):
    ref = next((r for r in rows if r["label"] == teacher and r["steps"] == st), None)
    if ref is None or math.isnan(ref["psnr"]):
      continue
    for r in rows:
      if r["label"] == teacher or r["steps"] != st or math.isnan(r["psnr"]):
        continue
      key = "latency_ms" if not math.isnan(r["latency_ms"] + ref["latency_ms"]) else "gflops_frame"
      speed = "faster than" if r[key] < ref[key] else "as fast as" if r[key] == ref[key] else "slower than"
      dpsnr = r["psnr"] - ref["psnr"]
      dominates = r[key] <= ref[key] and dpsnr >= 0 and (r[key] < ref[key] or dpsnr > 0)
      lines.append(f"- S={st}: {r['label']} is {speed} {teacher} and {dpsnr:+.2f} dB PSNR: "
                   f"{'it dominates' if dominates else 'no dominance'}.")
  return "\n".join(lines) or "- No fidelity measured yet: no verdict."


def markdown(rows: list[dict], teacher: str, results: str) -> str:
  device = next((r["device"] for r in rows if r["device"]), "not measured")
  head = ["# Distillation and pruning: latency vs quality", "",
          f"Measurements from `{results}`; latency device: {device}; latency is the whole frame (encode, S "
          "denoiser steps, decode) p50 from experiments/benchmark_latency.py --model; PSNR is the held-out "
          "fidelity (experiments/eval_fidelity.py, mean over effects); drift ratio from experiments/evaluate.py "
          "(late-segment over early-segment PSNR, 1.0 = no drift). Parameters and FLOPs are analytic "
          "(lsd_jax/models/sizes.py). Frontier: no other (model, S) is both at least as fast and at least as good "
          "in held-out PSNR. Stream PSNR and flicker come from the drift run (procedural stream, mean over effects).",
          "", "| model | S | heads per block | MLP per block | denoiser params | GFLOPs/frame | p50 ms/frame | "
          "PSNR dB | stream PSNR dB | flicker | drift ratio | frontier |", "|" + "---|" * 12]
  for r in rows:
    hs = ",".join(map(str, r["heads"])) if len(set(r["heads"])) > 1 else f"{r['heads'][0]} x{len(r['heads'])}"
    ms = ",".join(map(str, r["mlp"])) if len(set(r["mlp"])) > 1 else f"{r['mlp'][0]} x{len(r['mlp'])}"
    head.append(f"| {r['label']} | {r['steps']} | {hs} | {ms} | {r['params_denoiser'] / 1e6:.2f}M | "
                f"{r['gflops_frame']:.2f} | {_f(r['latency_ms'], '{:.2f}')} | {_f(r['psnr'], '{:.2f}')} | "
                f"{_f(r['stream_psnr'], '{:.2f}')} | {_f(r['flicker'], '{:.4f}')} | {_f(r['drift_ratio'], '{:.3f}')} | "
                f"{'yes' if r['frontier'] else ''} |")
  head += ["", "## Verdict", "", verdict(rows, teacher), "",
           "Hopper 2:4 structured sparsity is not used: jax 0.11.2 exposes sparse tensor-core MMA only through "
           "Pallas Mosaic GPU's `tcgen05_mma` (Blackwell); Hopper's `wgmma`, XLA's dot and "
           "`jax.experimental.sparse` (cuSPARSE, unstructured) have no 2:4 path.", ""]
  return "\n".join(head)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  xkey = cost_key(rows)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for label in dict.fromkeys(r["label"] for r in rows):
    pts = [r for r in rows if r["label"] == label and not math.isnan(r["psnr"])]
    if not pts:
      continue
    ax.plot([r[xkey] for r in pts], [r["psnr"] for r in pts], "o-", label=label)
    for r in pts:
      ax.annotate(f"S={r['steps']}", (r[xkey], r["psnr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
  front = sorted((r for r in rows if r["frontier"]), key=lambda r: r[xkey])
  if front:
    ax.plot([r[xkey] for r in front], [r["psnr"] for r in front], "k--", lw=1, label="frontier")
  else:
    ax.text(0.5, 0.5, "no fidelity measured yet", transform=ax.transAxes, ha="center")
  ax.set_xlabel("p50 ms per frame" if xkey == "latency_ms" else "GFLOPs per frame (no latency measured)")
  ax.set_ylabel("held-out PSNR (dB)")
  ax.set_title("Latency vs fidelity: teacher, pruned, distilled")
  if ax.get_legend_handles_labels()[0]:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(models: list[tuple[str, str]], results: str, out: str, steps=(1, 2, 4), resolution: str = "256x256",
          notes: str = ""):
  """Report, JSON and frontier PNG; `notes` (markdown: provenance, caveats) goes after the tables."""
  rows = collect(models, results, list(steps), resolution)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  png = os.path.splitext(out)[0] + "_frontier.png"
  md = markdown(rows, models[0][0], results) + f"\n![frontier]({os.path.basename(png)})\n"
  if notes:
    md += "\n" + notes.strip() + "\n"
  with open(out, "w") as f:
    f.write(md)
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(rows, f, indent=1)
  plot(rows, png)
  return rows, md
