"""The fidelity bar of the model-v3 issue, checked on `fidelity.evaluate`'s results.

The parts that a fidelity run measures (the particle statistics and the 100,000-frame drift and
hold ratios have their own tool, `experiments/evaluate.py`; `particles` checks the first on its
results):

- the mean over the 16 deterministic single effects (the 14 per-frame ones, echo, identity) at
  the model's S is at least `MEAN_DB`;
- every deterministic effect reaches min(input as output + `OVER_INPUT_DB`, ceiling -
  `UNDER_CEILING_DB`);
- the identity prompt is within `IDENTITY_DB` of its autoencoder ceiling;
- S = 1 is within `S_GAP_DB` of S = 4 (means over all the effects evaluated);
- with `train_results` (`eval_fidelity.py --prompts=both`: each val prompt's train twin, the
  same effect and parameters in other words), the val prompts score within `PARAPHRASE_DB` of
  the train ones (means over the effects both have).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lsd_jax.datasets import effects

DETERMINISTIC: tuple[str, ...] = effects.FRAME_EFFECTS + ("echo",)  # identity is a frame effect
PARTICLE_TOLERANCE = 0.15  # density and velocity within 15% of the spec
MEAN_DB = 30.0
OVER_INPUT_DB = 2.0
UNDER_CEILING_DB = 5.0
IDENTITY_DB = 1.5
S_GAP_DB = 1.0
PARAPHRASE_DB = 1.0


def _psnr(row: dict[str, Any], s: int) -> float:
  psnr = row["psnr"]  # keys are ints in memory and strings once read back from JSON
  return float(psnr[s] if s in psnr else psnr[str(s)])


def check(results: dict[str, Any], steps: int = 2, train_results: dict[str, Any] | None = None) -> dict[str, Any]:
  """Each part of the bar: the measured value, what it needs and whether it holds. `met` holds
  only when every part does and every deterministic effect was evaluated (the paraphrase gap
  counts only when `train_results` are given)."""
  missing = [e for e in DETERMINISTIC if e not in results]
  per_effect = {}
  for name in DETERMINISTIC:
    if name in missing:
      continue
    r = results[name]
    need = min(r["input_psnr"] + OVER_INPUT_DB, r["ae_psnr"] - UNDER_CEILING_DB)
    got = _psnr(r, steps)
    per_effect[name] = {"psnr": got, "need": float(need), "ok": bool(got >= need)}
  mean = float(np.mean([v["psnr"] for v in per_effect.values()])) if per_effect else float("nan")
  out: dict[str, Any] = {
      "steps": steps, "missing": missing,
      "mean_deterministic": {"psnr": mean, "need": MEAN_DB, "ok": bool(mean >= MEAN_DB)},
      "per_effect": per_effect,
      "effects_below": sorted(n for n, v in per_effect.items() if not v["ok"]),
  }
  if "identity" in results:
    r = results["identity"]
    got = _psnr(r, steps)
    out["identity"] = {"psnr": got, "ceiling": r["ae_psnr"], "ok": bool(got >= r["ae_psnr"] - IDENTITY_DB)}
  try:
    s1 = float(np.mean([_psnr(r, 1) for r in results.values()]))
    s4 = float(np.mean([_psnr(r, 4) for r in results.values()]))
    out["s1_vs_s4"] = {"s1": s1, "s4": s4, "gap": s4 - s1, "ok": bool(abs(s4 - s1) <= S_GAP_DB)}
  except KeyError:  # S = 1 or 4 not evaluated
    out["s1_vs_s4"] = None
  out["paraphrase"] = None
  if train_results is not None:
    both = sorted(set(results) & set(train_results))
    val = float(np.mean([_psnr(results[n], steps) for n in both]))
    train = float(np.mean([_psnr(train_results[n], steps) for n in both]))
    out["paraphrase"] = {"effects": len(both), "val": val, "train": train, "gap": train - val,
                         "ok": bool(val >= train - PARAPHRASE_DB)}
  parts = [out["mean_deterministic"]["ok"], not out["effects_below"], not missing,
           out.get("identity", {"ok": False})["ok"], bool(out["s1_vs_s4"] and out["s1_vs_s4"]["ok"])]
  if out["paraphrase"] is not None:
    parts.append(out["paraphrase"]["ok"])
  out["met"] = all(parts)
  return out


def markdown(bar: dict[str, Any]) -> str:
  """The bar as a short table: part, measured, needed, held."""
  yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
  m = bar["mean_deterministic"]
  lines = ["| part of the bar | measured | needed | holds |", "|---|---|---|---|",
           f"| mean of the {len(bar['per_effect'])} deterministic effects, S = {bar['steps']} | "
           f"{m['psnr']:.2f} dB | >= {m['need']:.0f} dB | {yes(m['ok'])} |"]
  n_ok = sum(v["ok"] for v in bar["per_effect"].values())
  below = ", ".join(f"{n} {bar['per_effect'][n]['psnr']:.1f} < {bar['per_effect'][n]['need']:.1f}"
                    for n in bar["effects_below"])
  lines.append(f"| each deterministic effect >= min(input + {OVER_INPUT_DB:.0f}, ceiling - {UNDER_CEILING_DB:.0f}) | "
               f"{n_ok} of {len(bar['per_effect'])}" + (f" (below: {below})" if below else "")
               + f" | all | {yes(not bar['effects_below'])} |")
  if "identity" in bar:
    i = bar["identity"]
    lines.append(f"| identity within {IDENTITY_DB} dB of its ceiling | {i['psnr']:.2f} dB (ceiling {i['ceiling']:.2f}) | "
                 f">= {i['ceiling'] - IDENTITY_DB:.2f} dB | {yes(i['ok'])} |")
  if bar["s1_vs_s4"]:
    s = bar["s1_vs_s4"]
    lines.append(f"| S = 1 within {S_GAP_DB} dB of S = 4 | {s['s1']:.2f} vs {s['s4']:.2f} dB | gap <= {S_GAP_DB} | "
                 f"{yes(s['ok'])} |")
  if bar.get("paraphrase"):
    p = bar["paraphrase"]
    lines.append(f"| val paraphrases within {PARAPHRASE_DB} dB of the train ones ({p['effects']} effects) | "
                 f"{p['val']:.2f} vs {p['train']:.2f} dB | gap <= {PARAPHRASE_DB} | {yes(p['ok'])} |")
  if bar["missing"]:
    lines.append(f"| deterministic effects not evaluated | {', '.join(bar['missing'])} | none | **no** |")
  lines.append(f"| **bar (these parts)** | | | {yes(bar['met'])} |")
  return "\n".join(lines)


def particles(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The particle part of the bar on `experiments/evaluate.py`'s rows per effect (held-out clips
  or stream): density within PARTICLE_TOLERANCE of the truth's (the spec rendered on the same
  frames) and velocity within it of the spec's (`velocity_error_out`: the mean velocity's miss
  over the nominal speed; for fireflies, which have no direction, the speed's). Effects without
  particles are skipped."""
  out: dict[str, Any] = {"per_effect": {}}
  for name, r in rows.items():
    q = r.get("particles")
    if not q:
      continue
    dens, miss = q["density_ratio"], q["velocity_error_out"]
    within = lambda x: bool(np.isfinite(x) and x <= PARTICLE_TOLERANCE)  # noqa: E731
    out["per_effect"][name] = {"density_ratio": dens, "velocity_error": miss, "density_ok": within(abs(dens - 1.0)),
                               "velocity_ok": within(miss), "velocity_error_gt": q.get("velocity_error_gt")}
  out["met"] = bool(out["per_effect"]) and all(v["density_ok"] and v["velocity_ok"]
                                               for v in out["per_effect"].values())
  return out
