"""Effect accuracy of the two ways prompt anchoring reads a prompt (prompts.ANCHOR_METHODS: the
learned effect map and the nearest-phrase match) on the val prompts of the table, which neither
was fitted or tuned on: all 400, and the one per effect that eval_fidelity picks.

  .venv/bin/python -m experiments.effect_map_accuracy \
      --out=reports/fidelity/v3.2_learned_map_cpu_2026-12-02
"""

import json
import os

from absl import app, flags, logging

_OUT = flags.DEFINE_string("out", "reports/fidelity", "output folder")


def main(argv):
  del argv
  import numpy as np

  from lsd_jax.datasets import prompts
  from lsd_jax.models import text_encoder

  table = prompts.load_embedding_table()
  encoder = text_encoder.default_encoder()
  val = [int(i) for i in np.flatnonzero(table.splits == "val")]
  texts = [table.texts[i] for i in val]
  truth = [table.names()[i] for i in val]
  picked = prompts.pick_val_prompts(table)
  single = np.array(["+" not in t for t in truth])
  result = {"all": {}, "picked": {}}
  for method in prompts.ANCHOR_METHODS:
    names, scores, _, min_score = prompts.read_effects(texts, encoder, table, method)
    hit = np.array([a == b for a, b in zip(names, truth)])
    sure = np.asarray(scores) >= min_score
    result["all"][method] = {
        "accuracy": float(hit.mean()), "single": float(hit[single].mean()),
        "composition": float(hit[~single].mean()), "prompts": len(hit), "singles": int(single.sum()),
        "anchored": float(sure.mean()), "anchored_right": int(np.sum(hit & sure)),
        "anchored_wrong": int(np.sum(~hit & sure)), "min_score": float(min_score),
        "errors": [{"prompt": t, "truth": a, "read": b, "score": float(s)}
                   for t, a, b, s, h in zip(texts, truth, names, scores, hit) if not h]}
    p_names, p_scores, _, _ = prompts.read_effects([v[0] for v in picked.values()], encoder, table, method)
    result["picked"][method] = {n: {"prompt": v[0], "read": r, "score": float(s), "anchored": bool(s >= min_score)}
                                for (n, v), r, s in zip(picked.items(), p_names, p_scores)}
  lines = ["| val prompts | method | accuracy | single effects | compositions | anchored (right / wrong) |",
           "|---|---|---|---|---|---|"]
  for method, r in result["all"].items():
    lines.append(f"| all {r['prompts']} ({r['singles']} single) | {method} | {r['accuracy']:.3f} | {r['single']:.3f} | "
                 f"{r['composition']:.3f} | {r['anchored']:.3f} ({r['anchored_right']} / {r['anchored_wrong']}) |")
  for method, by in result["picked"].items():
    singles = {n: v for n, v in by.items() if "+" not in n}
    comps = {n: v for n, v in by.items() if "+" in n}
    acc = lambda d: np.mean([v["read"] == n for n, v in d.items()])
    right = sum(v["read"] == n and v["anchored"] for n, v in by.items())
    wrong = sum(v["read"] != n and v["anchored"] for n, v in by.items())
    lines.append(f"| picked {len(by)} ({len(singles)} single) | {method} | {acc(by):.3f} | {acc(singles):.3f} | "
                 f"{acc(comps):.3f} | {np.mean([v['anchored'] for v in by.values()]):.3f} ({right} / {wrong}) |")
  lines += ["", "| picked effect | val prompt | " + " | ".join(f"{m} (score)" for m in prompts.ANCHOR_METHODS) + " |",
            "|---|---|" + "---|" * len(prompts.ANCHOR_METHODS)]
  for n, v in picked.items():
    cells = []
    for method in prompts.ANCHOR_METHODS:
      r = result["picked"][method][n]
      mark = "" if r["read"] == n else " **wrong**"
      cells.append(f"{r['read']}{mark} ({r['score']:.2f}{'' if r['anchored'] else ', unsure'})")
    lines.append(f"| {n} | {v[0]} | " + " | ".join(cells) + " |")
  md = "\n".join(lines)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "effect_accuracy_val.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(_OUT.value, "effect_accuracy_val.md"), "w") as f:
    f.write(md + "\n")
  logging.info("\n%s", md)


if __name__ == "__main__":
  app.run(main)
