"""Evaluation results to files: a JSON, a markdown report, PNG plots and the per-frame series."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from lsd_jax.eval import bar
from lsd_jax.eval.runner import StreamResult


def _fmt(x, spec: str = ".2f") -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "-"
  return format(x, spec)


def _noise_note(results: dict[str, Any]) -> str:
  """", noise scale X" where the run's initial noise scale is recorded and is not 1 (the default);
  with a per-prompt scale, ", noise scale X (particle prompts Y)"."""
  scale = results.get("noise_scale")
  particle = results.get("model", {}).get("particle_noise_scale")
  if particle is not None and (scale is None or float(particle) != float(scale)):
    return f", noise scale {float(1.0 if scale is None else scale):g} (particle prompts {float(particle):g})"
  return "" if scale is None or float(scale) == 1.0 else f", noise scale {float(scale):g}"


def markdown(results: dict[str, Any], title: str = "Evaluation") -> str:
  p, s = results["protocol"], results["stream"]
  lines = [f"# {title}", "",
           f"Model `{results.get('model_dir', '?')}` ({results['model']['size']}, {results['model']['history_mode']}, "
           f"K={results['model']['history_len']}, tau_inf={results['model']['tau_inf']}"
           f"{_noise_note(results)}) at S={p['steps']}, "
           f"lossless streams; {results['model']['height']}x{results['model']['width']}.", ""]
  if results["heldout"]:
    lines += [f"## Held-out clips ({p['clips']} clips x {p['clip_frames']} frames, first K+1 frames excluded)", "",
              "| effect | val prompt | PSNR | SSIM | flicker | particle density out / truth | speed out / truth (spec; out/spec) px/frame |",
              "|---|---|---|---|---|---|---|"]
    for e, r in results["heldout"].items():
      lines.append(f"| {e} | {r['prompt']} | {_fmt(r['psnr'])} | {_fmt(r['ssim'], '.3f')} | {_fmt(r['flicker'], '.4f')} | "
                   + _particle_cells(r) + " |")
    lines += ["", "Particle speed: particles tracked from frame to frame; the magnitude of their mean velocity "
              "(fireflies, which have no direction: their mean speed). The velocity error compares the mean "
              "velocity vector with the spec's (fireflies: the speed), over the spec's speed.", ""]
    pb = bar.particles(results["heldout"])
    if pb["per_effect"]:
      cells = "; ".join(f"{n} density {_fmt(v['density_ratio'])}{'' if v['density_ok'] else ' (no)'}, velocity "
                        f"error {_fmt(v['velocity_error'])}{'' if v['velocity_ok'] else ' (no)'} (truth "
                        f"{_fmt(v['velocity_error_gt'])})" for n, v in pb["per_effect"].items())
      lines += [f"Particle bar (density out/truth within {bar.PARTICLE_TOLERANCE:.0%}, velocity error out "
                f"against the spec at most {bar.PARTICLE_TOLERANCE:.0%} of its speed): "
                f"**{'met' if pb['met'] else 'not met'}** -- {cells}.", ""]
  partial = ("" if s.get("complete", True) else
             f"; **partial: {s['frames']} of {s['planned_frames']} frames** -- run again with the same output folder "
             "to continue")
  lines += [f"## Procedural stream ({s['frames']} frames, prompt switch every {p['switch_every']} frames{partial})", "",
            "| effect | frames | PSNR | SSIM | flicker | switch response (median frames to 90%) | particle density out / truth | speed out / truth (spec; out/spec) |",
            "|---|---|---|---|---|---|---|---|"]
  for e, r in s["per_effect"].items():
    sw = s["switch_response"][e]
    resp = f"{_fmt(sw['median_frames'], '.1f')} ({sw['switches']} switches, {sw['never_reached']} never)"
    lines.append(f"| {e} | {r['frames']} | {_fmt(r['psnr'])} | {_fmt(r['ssim'], '.3f')} | {_fmt(r['flicker'], '.4f')} "
                 f"| {resp} | " + _particle_cells(r) + " |")
  d, lat = s["drift"], s["latency"]
  lines += ["", f"## Drift (segments of {d['segment']} frames)", "",
            f"PSNR drift ratio (last segment / first): **{_fmt(d['psnr_ratio'], '.4f')}** over "
            f"{len(d['psnr_curve'])} segments; SSIM ratio {_fmt(d['ssim_ratio'], '.4f')}.", "",
            "| effect | first segment PSNR | last segment PSNR | ratio |", "|---|---|---|---|"]
  for e, r in d["per_effect"].items():
    c = r["psnr_curve"]
    lines.append(f"| {e} | {_fmt(c[0] if c else None)} | {_fmt(c[-1] if c else None)} | {_fmt(r['psnr_ratio'], '.4f')} |")
  if s.get("hold"):
    h = s["hold"]
    lines += ["", "## Held prompts (drift while one prompt stays on)", "",
              f"Late over early PSNR of each whole prompt interval (early: its second quarter, late: its last "
              f"quarter): **{_fmt(h['psnr_ratio'], '.4f')}** over all intervals (1.0: no decay while a prompt is held).",
              "", "| effect | intervals | early PSNR | late PSNR | ratio |", "|---|---|---|---|---|"]
    for e, r in h["per_effect"].items():
      lines.append(f"| {e} | {r['holds']} | {_fmt(r['early'])} | {_fmt(r['late'])} | {_fmt(r['ratio'], '.4f')} |")
  lines += ["", "## Latency (model only, block_until_ready per chunk)", "",
            f"{_fmt(lat['ms_per_frame_median'])} ms/frame median, p90 {_fmt(lat['ms_per_frame_p90'])}, "
            f"p99 {_fmt(lat['ms_per_frame_p99'])} over {lat['chunks'] - 1 if lat['chunks'] > 1 else 1} chunks of "
            f"{p['chunk']} frames (first chunk, with compilation: {_fmt(lat['first_chunk_ms_per_frame'])} ms/frame); "
            f"device {results.get('device', '?')}. Whole pipeline (frames, model, ground truth, metrics): "
            f"{_fmt(lat.get('pipeline_frames_per_s'), '.1f')} frames/s.", ""]
  return "\n".join(lines)


def _particle_cells(r: dict[str, Any]) -> str:
  q = r.get("particles")
  if not q:
    return "- | -"
  return (f"{_fmt(q['density_out'], '.3f')} / {_fmt(q['density_gt'], '.3f')} | "
          f"{_fmt(q['speed_out'])} / {_fmt(q['speed_gt'])} (spec {_fmt(q['spec']['nominal_speed'])}; "
          f"{_fmt(q.get('speed_ratio'))})")


def plot_drift(ax, drift: dict[str, Any], label: str | None = None, per_effect: bool = True):
  seg = drift["segment"]
  c = np.asarray(drift["psnr_curve"])
  x = (np.arange(len(c)) + 0.5) * seg
  ax.plot(x, c, "o-", lw=2, label=label or "all effects")
  if per_effect:
    for e, r in drift["per_effect"].items():
      ce = np.asarray(r["psnr_curve"])
      ax.plot((np.arange(len(ce)) + 0.5) * seg, ce, "--", lw=1, alpha=0.7, label=e)
  ax.set_xlabel("frame")
  ax.set_ylabel("PSNR per segment (dB)")
  ax.grid(alpha=0.3)


def write_plots(results: dict[str, Any], out_dir: str) -> list[str]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  s = results["stream"]
  paths = []
  fig, ax = plt.subplots(figsize=(7, 4))
  plot_drift(ax, s["drift"])
  ax.set_title(f"drift: ratio {s['drift']['psnr_ratio']:.3f}")
  ax.legend(fontsize=7)
  paths.append(_save(fig, out_dir, "drift.png"))
  held = {e: r["profile"] for e, r in (s.get("hold") or {}).get("per_effect", {}).items() if r.get("profile")}
  if held:
    fig, ax = plt.subplots(figsize=(7, 4))
    for e, prof in held.items():
      ax.plot((np.arange(len(prof)) + 0.5) / len(prof), prof, "o-", lw=1.5, label=e)
    ax.set_xlabel("fraction of the prompt's interval (0: the switch)")
    ax.set_ylabel("PSNR (dB), mean over intervals")
    ax.set_title(f"while a prompt is held: hold ratio {s['hold']['psnr_ratio']:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir, "hold.png"))
  rows = results["heldout"] or s["per_effect"]
  names = list(rows)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
  for ax, key in zip(axes, ("psnr", "ssim", "flicker")):
    ax.bar(np.arange(len(names)), [rows[n][key] for n in names], color="tab:blue")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_title(f"{key} per effect ({'held-out clips' if results['heldout'] else 'procedural stream'})")
  paths.append(_save(fig, out_dir, "per_effect.png"))
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ms = np.asarray(s["latency"]["ms_per_frame_chunks"])
  warm = np.ones(ms.size, bool)
  warm[[c for c in s["latency"].get("cold_chunks", [0]) if c < ms.size]] = False
  ax.hist(ms[warm] if warm.any() else ms, bins=30, color="tab:green")
  ax.set_xlabel("model ms per frame (per chunk)")
  ax.set_ylabel("chunks")
  ax.set_title(f"latency, median {s['latency']['ms_per_frame_median']:.2f} ms/frame")
  paths.append(_save(fig, out_dir, "latency.png"))
  return paths


def _save(fig, out_dir: str, name: str) -> str:
  import matplotlib.pyplot as plt

  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write(results: dict[str, Any], res: StreamResult | None, out_dir: str,
          title: str = "Evaluation") -> dict[str, str]:
  """eval.json, eval.md, the PNG plots and (with `res`) per_frame.npz into `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  files = {"json": os.path.join(out_dir, "eval.json"), "markdown": os.path.join(out_dir, "eval.md")}
  with open(files["json"], "w") as f:
    json.dump(results, f, indent=2, default=_jsonable)
  with open(files["markdown"], "w") as f:
    f.write(markdown(results, title) + "\n")
  for p in write_plots(results, out_dir):
    files[os.path.basename(p)[:-4]] = p
  if res is not None:
    files["per_frame"] = os.path.join(out_dir, "per_frame.npz")
    np.savez_compressed(files["per_frame"], prompt_index=res.prompt_index, names=np.asarray(res.schedule.names),
                        starts=np.asarray(res.schedule.starts), **res.per_frame)
  return files


def _jsonable(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def strip(frames_TxHxWx3, count: int = 8) -> np.ndarray:
  """`count` evenly spaced frames side by side (uint8 or [0, 1] floats -> [0, 1] floats)."""
  f = np.asarray(frames_TxHxWx3)
  f = f.astype(np.float32) / 255.0 if f.dtype == np.uint8 else f.astype(np.float32)
  idx = np.linspace(0, len(f) - 1, min(count, len(f))).round().astype(int)
  return np.concatenate(list(f[idx]), axis=1)


def per_frame_plot(ax_psnr, ax_flicker, res: StreamResult) -> None:
  """Per-frame PSNR, SSIM and flicker of a stream, prompt switches as vertical lines."""
  pf = res.per_frame
  t = np.arange(len(pf["psnr"]))
  ax_psnr.plot(t, pf["psnr"], label="PSNR (dB)")
  ax2 = ax_psnr.twinx()
  ax2.plot(t, pf["ssim"], color="tab:orange", label="SSIM")
  ax2.set_ylabel("SSIM")
  ax_flicker.plot(t, pf["flicker"], color="tab:red")
  ax_flicker.set_ylabel("flicker")
  for ax in (ax_psnr, ax_flicker):
    for s in res.schedule.starts[1:]:
      ax.axvline(s, color="k", ls=":", lw=1)
    ax.set_xlabel("frame")
  ax_psnr.set_ylabel("PSNR (dB)")


def effect_means(per_effect: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
  """The mean over effects of each of `keys` in a stream's per-effect rows."""
  return {k: float(np.mean([r[k] for r in per_effect.values()])) for k in keys}


def stream_summary(results: dict[str, Any]) -> dict[str, Any]:
  """One row for a procedural-stream evaluation (an eval.json): the mean over effects of PSNR,
  SSIM, flicker and the median prompt-switch response, the drift ratio, frames streamed."""
  s = results.get("stream")
  if not s or not s.get("per_effect"):
    raise ValueError("these results hold no procedural stream (evaluate.py --stream_frames=0?)")
  switch = [r["median_frames"] for r in (s.get("switch_response") or {}).values()
            if r.get("median_frames") is not None and not math.isnan(r["median_frames"])]
  return {"steps": results.get("protocol", {}).get("steps"), "tau_inf": results.get("tau_inf"),
          "device": results.get("device", ""), "frames": s["frames"], "complete": s["complete"],
          **effect_means(s["per_effect"], ("psnr", "ssim", "flicker")),
          "switch_frames": float(np.mean(switch)) if switch else float("nan"),
          "drift_ratio": s["drift"]["psnr_ratio"], "segment": s["drift"]["segment"],
          "hold_ratio": (s.get("hold") or {}).get("psnr_ratio", float("nan"))}


def compare_streams(runs: list[tuple[str, str]], out: str, title: str = "Procedural streams compared") -> str:
  """Side-by-side table and overlaid drift curves of several evaluate.py runs.

  `runs` is [(label, folder holding eval.json)]; writes `out`.md and `out`.png and returns the
  markdown. A folder without a readable eval.json is an error that names it."""
  import matplotlib.pyplot as plt

  loaded = []
  for label, folder in runs:
    path = os.path.join(folder, "eval.json")
    try:
      with open(path) as f:
        results = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{label}: cannot read {path}: {e}") from e
    loaded.append((label, folder, results, stream_summary(results)))
  lines = [f"# {title}", "",
           "Means over effects; switch response is the mean over effects of the median frames to 90% of "
           "steady-state PSNR; drift ratio is the last segment's PSNR over the first's; hold ratio is the late "
           "over the early PSNR of each prompt interval (drift while a prompt is held).", "",
           "| run | S | tau_inf | frames | PSNR dB | SSIM | flicker | switch frames | drift ratio | hold ratio | segment "
           "| device |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for label, folder, _, r in loaded:
    frames = f"{r['frames']:,}" + ("" if r["complete"] else " (partial)")
    lines.append(f"| [{label}]({os.path.relpath(folder, os.path.dirname(out) or '.')}) | {r['steps']} | "
                 f"{_fmt(r['tau_inf'])} | {frames} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['flicker']:.4f} | "
                 f"{_fmt(r['switch_frames'], '.1f')} | {r['drift_ratio']:.4f} | {_fmt(r['hold_ratio'], '.4f')} | "
                 f"{r['segment']:,} | {r['device']} |")
  md = "\n".join(lines) + f"\n\n![drift curves]({os.path.basename(out)}.png)\n"
  fig, ax = plt.subplots(figsize=(8, 4))
  for label, _, results, _ in loaded:
    plot_drift(ax, results["stream"]["drift"], label=label, per_effect=False)
  ax.legend()
  ax.set_title(title)
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  _save(fig, os.path.dirname(out) or ".", os.path.basename(out) + ".png")
  with open(out + ".md", "w") as f:
    f.write(md)
  return md
