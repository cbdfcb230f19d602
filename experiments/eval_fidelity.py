"""Held-out fidelity per effect at S = 1, 2, 4 for an exported model (lossless streams).

  python experiments/eval_fidelity.py --model=checkpoints/lsd_small \
      --manifest=data/library/manifest.json --clips=4 --frames=24 --out=reports/fidelity
"""

import dataclasses
import json
import os

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder")
_MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest")
_CLIPS = flags.DEFINE_integer("clips", 4, "held-out clips per effect")
_SPLIT = flags.DEFINE_enum("split", "heldout", ["heldout", "train"],
                           "which clips of the library: heldout (the protocol) or train, to choose an inference "
                           "setting (--tau_inf, --noise_scale) without looking at the held-out clips; a train-split "
                           "run's files say so and its bar is not the model's")
_FRAMES = flags.DEFINE_integer("frames", 24, "frames per clip")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4"], "step counts S")
_COMPOSITIONS = flags.DEFINE_bool("compositions", False, "also composed effects (per-frame + temporal)")
_OUT = flags.DEFINE_string("out", "reports/fidelity", "output folder")
_PROMPTS = flags.DEFINE_enum("prompts", "val", ["val", "both"],
                             "val: each effect's first val paraphrase (the protocol); both: also the first train "
                             "paraphrase with the same effect and parameters (fidelity_train.*), and the "
                             "paraphrase gap in the bar")
_ANCHOR = flags.DEFINE_bool("anchor_prompts", False,
                            "give each val prompt the embedding of its anchor, made of the train prompts with the "
                            "same effect and parameters (prompts.anchor_many, what lsd-stream and lsd-serve do), "
                            "instead of its own; the protocol's number is without")
_ANCHOR_METHOD = flags.DEFINE_enum("anchor_method", None, ["map", "match"],
                                   "with --anchor_prompts: how the effect is read (prompts.ANCHOR_METHODS; "
                                   "default prompts.ANCHOR_METHOD)")
_ANCHOR_TARGET = flags.DEFINE_enum("anchor_target", None, ["centroid", "paraphrase"],
                                   "with --anchor_prompts: which train embedding is given (prompts.ANCHOR_TARGETS; "
                                   "default prompts.ANCHOR_TARGET)")
_SAVE_TEXT = flags.DEFINE_string("save_text_embeddings", None,
                                  "write every text the evaluation embeds (a per-prompt noise scale's reading of "
                                  "the prompts; with --anchor_prompts the anchoring's too), with its MiniLM "
                                  "embedding, to this .npz and stop before evaluating (for --text_embeddings)")
_TEXT = flags.DEFINE_string("text_embeddings", None,
                            "read the texts' embeddings from this .npz "
                            "(--save_text_embeddings) instead of running the text encoder, on a machine "
                            "without the MiniLM package")
_TAU_INF = flags.DEFINE_float("tau_inf", None, "history noise level at inference (default: the model's own)")
_NOISE = flags.DEFINE_float("noise_scale", None, "initial noise scale at inference, a sampling temperature in "
                            "[0, 2] (default: the model's own, 1 unless its config says otherwise)")
flags.register_validator("tau_inf", lambda v: v is None or 0.0 <= v < 1.0, message="--tau_inf must be in [0, 1)")


def main(argv):
  del argv
  if _SAVE_TEXT.value and _TEXT.value:
    raise app.UsageError("give --save_text_embeddings (record) or --text_embeddings (replay), not both")
  from lsd_jax.datasets import prompts, sources
  from lsd_jax.eval import bar, fidelity
  from lsd_jax.models import export, text_encoder

  table = prompts.load_embedding_table()
  anchor_method = _ANCHOR_METHOD.value or prompts.ANCHOR_METHOD
  anchor_target = _ANCHOR_TARGET.value or prompts.ANCHOR_TARGET
  if _SAVE_TEXT.value:  # record only: no model, no clips
    encoder = text_encoder.RecordingEncoder(text_encoder.default_encoder())
    sets = [prompts.pick_val_prompts(table)] + ([prompts.pick_train_twins(table)] if _PROMPTS.value == "both" else [])
    for chosen in sets:
      if not _COMPOSITIONS.value:
        chosen = {k: v for k, v in chosen.items() if "+" not in k}
      # what a per-prompt noise scale reads (fidelity.prompt_noise_scales: the texts and their
      # parts), of the raw wording and, with --anchor_prompts, of the anchored prompts
      prompts.match_many([v[0] for v in chosen.values()], encoder, table)
      if _ANCHOR.value:
        anchored, _ = prompts.anchor_prompt_set(chosen, encoder, table=table, method=anchor_method,
                                                target=anchor_target)
        prompts.match_many([v[0] for v in anchored.values()], encoder, table)
    encoder.save(_SAVE_TEXT.value)
    print(f"{len(encoder.seen)} texts and their embeddings written to {_SAVE_TEXT.value}")
    return
  # prompts' default (None) is the MiniLM encoder; --text_embeddings replays a recorded one
  encoder = text_encoder.LookupEncoder(_TEXT.value) if _TEXT.value else None

  cfg, params, meta = export.load(_MODEL.value)
  if _TAU_INF.value is not None:
    cfg = dataclasses.replace(cfg, tau_inf=_TAU_INF.value)
  if _NOISE.value is not None:
    cfg = dataclasses.replace(cfg, noise_scale=_NOISE.value)
  try:
    src = sources.VideoClipSource.from_manifest(_MANIFEST.value, _SPLIT.value, height=cfg.height, width=cfg.width,
                                                num_frames=_FRAMES.value, seed=7, strides=(1,))
  except sources.NoReadableClipError as e:
    raise app.UsageError(str(e)) from e
  clips = [src[i] for i in range(_CLIPS.value)]
  steps = tuple(int(s) for s in _STEPS.value)
  bar_steps = cfg.steps if cfg.steps in steps else steps[0]
  os.makedirs(_OUT.value, exist_ok=True)

  def run(chosen, suffix):
    if not _COMPOSITIONS.value:
      chosen = {k: v for k, v in chosen.items() if "+" not in k}
    anchors = {}
    if _ANCHOR.value:
      chosen, anchors = prompts.anchor_prompt_set(chosen, encoder, table=table, method=anchor_method,
                                                  target=anchor_target)
    # a per-prompt noise scale (LSDConfig.per_prompt_noise): each prompt's, read as the engine reads it
    noise = fidelity.prompt_noise_scales(cfg, {n: v[0] for n, v in chosen.items()}, encoder)
    results = fidelity.evaluate(cfg, params, clips, chosen, steps_list=steps, noise_scales=noise)
    for name, a in anchors.items():
      results[name]["anchor"] = {"matched": a.name, "score": a.score, "anchor": a.text, "rows": len(a.rows)}
    with open(os.path.join(_OUT.value, f"fidelity{suffix}.json"), "w") as f:
      json.dump({"model": _MODEL.value, "metadata": meta, "prompts": suffix.strip("_") or "val",
                 "anchor_prompts": _ANCHOR.value, "tau_inf": cfg.tau_inf, "noise_scale": cfg.noise_scale,
                 **({"particle_noise_scale": cfg.particle_noise_scale} if cfg.per_prompt_noise else {}),
                 **({"anchor_method": anchor_method, "anchor_target": anchor_target} if _ANCHOR.value else {}),
                 "split": _SPLIT.value, "clips": _CLIPS.value, "frames": _FRAMES.value, "results": results},
                f, indent=2)
    md = fidelity.markdown(results, steps)
    with open(os.path.join(_OUT.value, f"fidelity{suffix}.md"), "w") as f:
      f.write(md + "\n")
    logging.info("\n%s", md)
    print(md)
    return results

  results = run(prompts.pick_val_prompts(table), "")
  train = run(prompts.pick_train_twins(table), "_train") if _PROMPTS.value == "both" else None
  # The model issue's bar, on the model's own S (its other parts have their own tools).
  checked = bar.check(results, steps=bar_steps, train_results=train)
  md = bar.markdown(checked)
  if _SPLIT.value != "heldout":  # a selection run on train clips: not the protocol's bar
    checked["split"] = _SPLIT.value
    md = (f"**On the {_SPLIT.value} split's clips, for choosing a setting: not the model's bar (the "
          "protocol is on the held-out clips).**\n\n" + md)
  with open(os.path.join(_OUT.value, "bar.json"), "w") as f:
    json.dump(checked, f, indent=2)
  with open(os.path.join(_OUT.value, "bar.md"), "w") as f:
    f.write(md + "\n")
  print(md)


if __name__ == "__main__":
  app.run(main)
