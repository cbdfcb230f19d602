"""An evaluation stream's numbers, from its per-frame scalars (`runner.StreamResult`): fidelity,
flicker and particle statistics per effect (particle estimates beside the spec's own visible
count and nominal velocity), drift curves and ratios, prompt-switch responses, hold drift and
latency."""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from lsd_jax.datasets import effects
from lsd_jax.eval import metrics
from lsd_jax.eval.runner import Prompt, StreamResult


def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def particle_summary(pf: dict[str, np.ndarray], mask: np.ndarray, directed: bool = True) -> dict[str, float]:
  """Estimated density, mean velocity and speed of output and truth over the masked frames.

  `speed_out` / `speed_gt` are what compares with the spec's nominal speed: the magnitude of the
  mean tracked velocity for a style with a direction (snow, rain, bubbles: sway averages out),
  the particles' mean tracked speed for one without (fireflies: their mean velocity is 0)."""
  out = {k: _nanmean(pf[k][mask]) for k in ("density_out", "density_gt", "vel_out_y", "vel_out_x",
                                              "vel_gt_y", "vel_gt_x", "speed_out", "speed_gt",
                                              "tracked_out", "tracked_gt")}
  out["density_ratio"] = out["density_out"] / out["density_gt"] if out["density_gt"] > 0 else float("nan")
  out["particle_speed_out"], out["particle_speed_gt"] = out.pop("speed_out"), out.pop("speed_gt")
  for who in ("out", "gt"):
    out[f"speed_{who}"] = (float(np.hypot(out[f"vel_{who}_y"], out[f"vel_{who}_x"])) if directed
                           else out[f"particle_speed_{who}"])
  return out


def summarize_frames(pf: dict[str, np.ndarray], mask: np.ndarray, spec: effects.EffectSpec | None,
                     height: int, width: int) -> dict[str, Any]:
  row = {"psnr": _nanmean(pf["psnr"][mask]), "ssim": _nanmean(pf["ssim"][mask]),
         "flicker": _nanmean(pf["flicker"][mask]), "frames": int(mask.sum())}
  stats = metrics.spec_particle_stats(spec, height, width) if spec is not None else None
  if stats is not None:
    q = particle_summary(pf, mask, stats["directed"])
    nominal = stats["nominal_speed"]
    q["speed_ratio"] = q["speed_out"] / nominal if nominal > 0 else float("nan")
    q["speed_gt_ratio"] = q["speed_gt"] / nominal if nominal > 0 else float("nan")  # the estimator's own error
    # The bar's velocity error, relative to the nominal speed: of the mean velocity vector for a
    # style with a direction (snow drifting sideways at the right speed is wrong), of the speed
    # for one without.
    for who in ("out", "gt"):
      q[f"velocity_error_{who}"] = metrics.velocity_error(q[f"vel_{who}_y"], q[f"vel_{who}_x"], q[f"speed_{who}"], stats)
    q["tracked_ratio"] = q["tracked_out"] / q["tracked_gt"] if q["tracked_gt"] > 0 else float("nan")
    row["particles"] = {**q, "spec": stats}
  return row


def summarize_stream(res: StreamResult, prompts: dict[str, Prompt], *, segment: int, warm: int,
                     height: int, width: int) -> dict[str, Any]:
  """Fidelity, flicker and particles per effect; drift curves (overall and per effect); switch
  responses per target effect (PSNR as the fidelity, each switch over its own interval)."""
  pf, sched = res.per_frame, res.schedule
  names = np.asarray(sched.names)[res.prompt_index]
  n = len(names)
  warm_mask = np.arange(n) >= warm
  per_effect = {e: summarize_frames(pf, (names == e) & warm_mask, prompts[e][2], height, width)
                for e in dict.fromkeys(sched.names)}
  curve = metrics.drift_curve(pf["psnr"], segment)
  if curve.size < 2:
    logging.warning("a %d-frame stream holds %d drift segment(s) of %d frames: no drift ratio (NaN); "
                    "make the stream at least two schedule cycles long", n, curve.size, segment)
  drift = {"segment": segment, "psnr_curve": curve.tolist(), "psnr_ratio": metrics.drift_ratio(curve),
           "ssim_curve": metrics.drift_curve(pf["ssim"], segment).tolist()}
  drift["ssim_ratio"] = metrics.drift_ratio(drift["ssim_curve"])
  seg_of = np.arange(n) // segment
  full = seg_of < max(1, n // segment)
  drift["per_effect"] = {}
  for e in per_effect:
    m = (names == e) & full
    c = [float(pf["psnr"][m & (seg_of == s)].mean()) for s in range(int(seg_of[full].max()) + 1)
         if (m & (seg_of == s)).any()]
    drift["per_effect"][e] = {"psnr_curve": c, "psnr_ratio": metrics.drift_ratio(c) if c else float("nan")}
  responses: dict[str, list] = {e: [] for e in per_effect}
  holds: dict[str, list] = {e: [] for e in per_effect}
  profiles: dict[str, list] = {e: [] for e in per_effect}
  bounds = [s for s in sched.starts if s < n] + [n]
  for j in range(len(bounds) - 1):
    lo, hi = bounds[j], bounds[j + 1]
    if j > 0:
      responses[sched.names[j]].append(metrics.switch_response(pf["psnr"][lo:hi], 0))
    planned_end = sched.starts[j + 1] if j + 1 < len(sched.starts) else max(res.num_frames, n)
    if planned_end <= n:  # whole intervals only (a stream stopped part-way cuts its last one short)
      h = metrics.hold_drift(pf["psnr"][lo:hi])
      if h is not None:
        holds[sched.names[j]].append(h)
        profiles[sched.names[j]].append(metrics.hold_profile(pf["psnr"][lo:hi]))
  switch = {}
  for e, rs in responses.items():
    got = [r for r in rs if r is not None]
    switch[e] = {"switches": len(rs), "never_reached": len(rs) - len(got),
                 "median_frames": float(np.median(got)) if got else None,
                 "mean_frames": float(np.mean(got)) if got else None}
  return {"frames": n, "per_effect": per_effect, "drift": drift, "switch_response": switch,
          "hold": hold_summary(holds, profiles), "latency": latency_summary(res)}


def hold_summary(holds: dict[str, list[tuple[float, float]]],
                 profiles: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
  """Per effect and overall: mean early and late PSNR over the held intervals (metrics.hold_drift)
  and their ratio, late / early (1.0: no drift while a prompt is held); with `profiles`
  (metrics.hold_profile of each interval) their mean per effect, PSNR across the interval."""
  per_effect, early_all, late_all = {}, [], []
  for e, hs in holds.items():
    if not hs:
      per_effect[e] = {"holds": 0, "early": None, "late": None, "ratio": float("nan")}
      continue
    early, late = (float(np.mean([h[i] for h in hs])) for i in (0, 1))
    per_effect[e] = {"holds": len(hs), "early": early, "late": late, "ratio": late / early}
    if profiles and profiles.get(e):
      per_effect[e]["profile"] = np.mean(np.stack(profiles[e]), axis=0).tolist()
    early_all += [h[0] for h in hs]
    late_all += [h[1] for h in hs]
  ratio = float(np.mean(late_all) / np.mean(early_all)) if early_all else float("nan")
  return {"psnr_ratio": ratio, "per_effect": per_effect}


def latency_summary(res: StreamResult) -> dict[str, Any]:
  """Model-only ms per frame of each chunk, and the whole pipeline's frames per second (frames,
  model, ground truth, metrics); chunks that compiled (the first of each run) are left out of
  the steady numbers and reported apart."""
  ms = 1e3 * res.chunk_seconds / res.chunk_frames
  warm = np.ones(ms.size, bool)
  warm[[c for c in res.cold_chunks if c < ms.size]] = False
  if not warm.any():
    warm[:] = True
  steady = ms[warm]
  out = {"first_chunk_ms_per_frame": float(ms[0]), "ms_per_frame_median": float(np.median(steady)),
         "ms_per_frame_p90": float(np.percentile(steady, 90)), "ms_per_frame_p99": float(np.percentile(steady, 99)),
         "chunks": int(ms.size), "cold_chunks": [int(c) for c in res.cold_chunks], "ms_per_frame_chunks": ms.tolist()}
  if res.chunk_wall_seconds is not None and res.chunk_wall_seconds.size == ms.size:
    out["pipeline_frames_per_s"] = float(res.chunk_frames[warm].sum() / res.chunk_wall_seconds[warm].sum())
  return out
