"""Which embedding prompt anchoring should give the model, and what a wrong anchor costs, measured on
TRAIN clips of the library only (the held-out clips and the val prompts play no part).

  .venv/bin/python -m experiments.anchor_choice --model=checkpoints/lsd_small \
      --clips=3 --frames=24 --out=reports/fidelity/v3.2_learned_map_cpu_2026-12-02

For each of the 20 single effects at its default parameters (what a prompt without modifier words
asks for), PSNR against the effect's ground truth at the model's S for these embeddings:

  paraphrase_k  the k-th train prompt (table order) with exactly that effect and those parameters:
                the current rule anchors to one of them (the one most similar to the prompt), so
                their spread is what the choice among them can cost or gain;
  centroid      the mean of the embeddings of all those train prompts, and centroid_unit the
                same renormalised (the model trained with prompt mixing, recipe v3c/v3d, so convex
                combinations of same-effect train embeddings are in its training distribution);
  novel         the own embedding of a wording in neither split (NOVEL, written for this
                measurement): what keeping an unsure prompt's own embedding gives;
  wrong         paraphrase_0 of the effect that the effect map (data/effect_map.npz) finds next
                most likely for this effect's train prompts: what a wrong anchor gives.

gain = mean over paraphrases - novel and cost = novel - wrong give the cost ratio of a wrong anchor
(scripts/make_effect_map.py COST_RATIO = mean cost / mean gain), which sets the map's threshold.
"""

import json
import os

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder")
_MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest")
_CLIPS = flags.DEFINE_integer("clips", 3, "train clips per candidate")
_FRAMES = flags.DEFINE_integer("frames", 24, "frames per clip")
_PARAPHRASES = flags.DEFINE_integer("paraphrases", 4, "train paraphrases per effect")
_EFFECT_MAP = flags.DEFINE_string("effect_map", None, "effect map (default: data/effect_map.npz)")
_OUT = flags.DEFINE_string("out", "reports/fidelity", "output folder")

# One wording per effect in neither split and without modifier words (checked in main).
NOVEL = {
    "identity": "the camera image with nothing done to it",
    "pencil_sketch": "a pencil doodle of this",
    "thermal": "like the screen of a heat detector",
    "cartoon": "like a children's animated show",
    "pixel_art": "made of square blocks like an early console game",
    "night_vision": "a soldier's low-light scope view",
    "sepia": "like a photograph from the 1890s",
    "neon_outlines": "cyan laser lines around every shape",
    "negative": "swap the dark and bright tones",
    "color_tint": "a red gel over the lens",
    "mirror": "the left side copied onto the right",
    "grayscale": "only greys, no hues",
    "emboss": "pressed into metal like a coin",
    "posterize": "a handful of flat paint colours",
    "soft_glow": "a luminous misty aura",
    "echo": "stroboscopic copies trailing every movement",
    "snowfall": "snow drifting down from the sky",
    "rain": "wet weather with drops coming down",
    "fireflies": "luminous insects at dusk",
    "bubbles": "a stream of soapy orbs",
}


def candidates(table, m, encoder, num_paraphrases: int) -> dict:
  """{effect: {candidate: (text, embedding, spec)}} as described in the module docstring."""
  import numpy as np

  from lsd_jax.datasets import effect_map, effects, prompts

  rows, labels = effect_map.single_rows(table)
  emb = np.asarray(table.embeddings, np.float32)
  params = np.asarray(table.params)
  novel = dict(zip(NOVEL, encoder.encode(list(NOVEL.values()))))
  probs = m.probs(emb[rows])
  first = {}  # effect -> (text, embedding) of its paraphrase_0
  out = {}
  for c, name in enumerate(effect_map.SINGLE_EFFECTS):
    frame, temporal = prompts.parse_name(name)
    want = prompts.params_from_words("", frame, temporal)
    spec = effects.EffectSpec(np.int32(effects.FRAME_EFFECTS.index(frame)),
                              np.int32(effects.TEMPORAL_EFFECTS.index(temporal)), want)
    same = [int(i) for i in rows[labels == c] if np.allclose(params[i], want)]
    if not same:
      raise ValueError(f"no train prompt of {name} at its default parameters")
    cands = {f"paraphrase_{k}": (table.texts[i], emb[i], spec) for k, i in enumerate(same[:num_paraphrases])}
    mean = emb[same].mean(0)
    cands["centroid"] = (f"mean of {len(same)}", mean, spec)
    cands["centroid_unit"] = (f"mean of {len(same)}, unit", mean / np.linalg.norm(mean), spec)
    cands["novel"] = (NOVEL[name], np.asarray(novel[name], np.float32), spec)
    out[name] = cands
    first[name] = cands["paraphrase_0"][:2]
  for c, name in enumerate(effect_map.SINGLE_EFFECTS):
    mean_p = probs[labels == c].mean(0)
    mean_p[c] = -1.0
    other = effect_map.SINGLE_EFFECTS[int(mean_p.argmax())]
    text, e = first[other]
    out[name]["wrong"] = (f"{other}: {text}", e, out[name]["novel"][2])
  return out


def main(argv):
  del argv
  import numpy as np

  from lsd_jax.datasets import effect_map, prompts, sources
  from lsd_jax.eval import fidelity
  from lsd_jax.models import export, text_encoder

  table = prompts.load_embedding_table()
  vocab_phrases = {p.lower() for s in prompts.SPLITS for _, _, p in prompts.effect_phrases(s)}
  for name, text in NOVEL.items():
    if prompts.strip_modifiers(text) != " ".join(text.lower().split()) or text.lower() in vocab_phrases:
      raise ValueError(f"NOVEL[{name!r}] holds a modifier word or a paraphrase of the grammar: {text!r}")
  m = effect_map.load(_EFFECT_MAP.value or effect_map.MAP_PATH, table)
  cfg, params, _ = export.load(_MODEL.value)
  src = sources.VideoClipSource.from_manifest(_MANIFEST.value, "train", height=cfg.height, width=cfg.width,
                                              num_frames=_FRAMES.value, seed=7, strides=(1,))
  clips = [src[i] for i in range(_CLIPS.value)]
  cands = candidates(table, m, text_encoder.default_encoder(), _PARAPHRASES.value)
  flat = {f"{name}/{c}": v for name, by in cands.items() for c, v in by.items()}
  results = fidelity.evaluate(cfg, params, clips, flat, steps_list=(cfg.steps,))
  per = {}
  for key, r in results.items():
    name, c = key.split("/")
    per.setdefault(name, {})[c] = {"text": flat[key][0], "psnr": r["psnr"][cfg.steps]}
  rows, gains, costs = [], [], []
  for name, by in per.items():
    para = [v["psnr"] for c, v in by.items() if c.startswith("paraphrase_")]
    gain, cost = np.mean(para) - by["novel"]["psnr"], by["novel"]["psnr"] - by["wrong"]["psnr"]
    gains.append(gain)
    costs.append(cost)
    rows.append(f"| {name} | {len(para)} | {np.mean(para):.2f} | {min(para):.2f} | {max(para):.2f} | "
                f"{by['centroid']['psnr']:.2f} | {by['centroid_unit']['psnr']:.2f} | {by['novel']['psnr']:.2f} | "
                f"{by['wrong']['psnr']:.2f} ({by['wrong']['text'].split(':')[0]}) | {gain:+.2f} | {cost:+.2f} |")
  means = {c: float(np.mean([by[c]["psnr"] for by in per.values()])) for c in ("centroid", "centroid_unit", "novel", "wrong")}
  means["paraphrase_mean"] = float(np.mean([np.mean([v["psnr"] for c, v in by.items() if c.startswith("paraphrase_")])
                                            for by in per.values()]))
  summary = {"gain": float(np.mean(gains)), "cost": float(np.mean(costs)),
             "cost_ratio": float(np.mean(costs) / np.mean(gains)), "means": means}
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, "anchor_choice_train_clips.json"), "w") as f:
    json.dump({"model": _MODEL.value, "clips": _CLIPS.value, "frames": _FRAMES.value, "steps": cfg.steps,
               "split": "train", "summary": summary, "results": per}, f, indent=2)
  md = "\n".join([
      f"PSNR (dB) on {_CLIPS.value} train clips x {_FRAMES.value} frames at S = {cfg.steps}, default parameters.",
      "", "| effect | paraphrases | their mean | min | max | centroid | centroid, unit | novel wording | wrong anchor | gain | cost |",
      "|---|---|---|---|---|---|---|---|---|---|---|", *rows,
      f"| **mean** | | **{means['paraphrase_mean']:.2f}** | | | **{means['centroid']:.2f}** | **{means['centroid_unit']:.2f}** | "
      f"**{means['novel']:.2f}** | **{means['wrong']:.2f}** | **{summary['gain']:+.2f}** | **{summary['cost']:+.2f}** |",
      "", f"cost ratio (mean cost / mean gain): {summary['cost_ratio']:.2f}"])
  with open(os.path.join(_OUT.value, "anchor_choice_train_clips.md"), "w") as f:
    f.write(md + "\n")
  logging.info("\n%s", md)


if __name__ == "__main__":
  app.run(main)
