"""Why a model misses effects: PSNR streamed, with ground-truth history and with no history, on
held-out and on training clips (lsd_jax/eval/diagnose.py says how to read it).

  python experiments/diagnose.py --model=checkpoints/lsd_small --effects=thermal,grayscale,identity \
      --clips=2 --frames=8 --out=reports/model_v3/diagnose_v2
"""

import dataclasses
import json
import os

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder")
_MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest")
_EFFECTS = flags.DEFINE_list("effects", ["thermal", "grayscale", "negative", "identity", "cartoon", "pencil_sketch"],
                             "single effects to diagnose")
_CLIPS = flags.DEFINE_integer("clips", 2, "clips per split")
_FRAMES = flags.DEFINE_integer("frames", 8, "frames per clip (scored after the first K + 1)")
_STEPS = flags.DEFINE_integer("steps", None, "shortcut steps S (default: the model's)")
_OUT = flags.DEFINE_string("out", None, "folder for diagnose.json / diagnose.md")


def main(argv):
  del argv
  import numpy as np

  from lsd_jax.datasets import sources
  from lsd_jax.eval import diagnose
  from lsd_jax.models import export
  from lsd_jax.train import heldout

  cfg, params, meta = export.load(_MODEL.value)
  if _STEPS.value:
    cfg = dataclasses.replace(cfg, steps=_STEPS.value)
  clips = {}
  for split in ("heldout", "train"):
    src = sources.VideoClipSource.from_manifest(_MANIFEST.value, split, height=cfg.height, width=cfg.width,
                                                num_frames=_FRAMES.value, seed=7, strides=(1,))
    clips[split] = [np.asarray(src[i]) for i in range(_CLIPS.value)]
  chosen = heldout.single_effect_prompts(_EFFECTS.value)
  missing = sorted(set(_EFFECTS.value) - set(chosen))
  if missing:
    raise app.UsageError(f"no val prompt for {missing}")
  results = diagnose.diagnose(cfg, params, clips, chosen)
  md = diagnose.markdown(results)
  print(md)
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "diagnose.json"), "w") as f:
      json.dump({"model": _MODEL.value, "metadata": meta, "steps": cfg.steps, "tau_inf": cfg.tau_inf,
                 "clips": _CLIPS.value, "frames": _FRAMES.value, "results": results}, f, indent=2)
    with open(os.path.join(_OUT.value, "diagnose.md"), "w") as f:
      f.write(md + "\n")
  logging.info("\n%s", md)


if __name__ == "__main__":
  app.run(main)
