"""A gallery picture: for every single effect, input | model output | ground truth on one frame
of a held-out clip, the last of `--frames` streamed from the clip's first frame, each effect
prompted by its first val paraphrase (as eval_fidelity picks them); PSNR of that frame above it.

  python experiments/gallery.py --model=checkpoints/lsd_small --out=docs/gallery.png [--anchor_prompts]
"""

import os

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder")
_MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest")
_CLIP = flags.DEFINE_integer("clip", 0, "which held-out clip draw")
_FRAMES = flags.DEFINE_integer("frames", 12, "frames streamed; the last one is shown")
_OUT = flags.DEFINE_string("out", "docs/gallery.png", "PNG written here")
_ANCHOR = flags.DEFINE_bool("anchor_prompts", False, "each val prompt anchored to its train paraphrase "
                            "(prompts.anchor_many), as lsd-stream and lsd-serve do for a trained model")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from lsd_jax.datasets import effects, sources
  from lsd_jax.eval import fidelity
  from lsd_jax.models import export
  from lsd_jax.train import heldout

  cfg, params, meta = export.load(_MODEL.value)
  src = sources.VideoClipSource.from_manifest(_MANIFEST.value, "heldout", height=cfg.height, width=cfg.width,
                                              num_frames=_FRAMES.value, seed=7, strides=(1,))
  clip = np.asarray(src[_CLIP.value])
  chosen = heldout.single_effect_prompts()
  if _ANCHOR.value:
    from lsd_jax.datasets import prompts

    chosen, _ = prompts.anchor_prompt_set(chosen)
  roll = fidelity.rollout_fn(cfg, cfg.steps)
  noise = fidelity.prompt_noise_scales(cfg, {n: v[0] for n, v in chosen.items()})  # per prompt, as streamed
  render = jax.jit(effects.render_clip)
  per_row = 4  # effects per row, each as input | output | ground truth
  rows = -(-len(chosen) // per_row)
  fig, axes = plt.subplots(rows, 3 * per_row, figsize=(2.0 * 3 * per_row / 1.6, 2.3 * rows / 1.6), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for i, (name, (text, emb, spec)) in enumerate(chosen.items()):
    target = np.asarray(render(effects.EffectSpec(*(jnp.asarray(x) for x in spec)), clip.astype(np.float32) / 255.0,
                               jax.random.key(1000)))
    out = np.asarray(roll(params, clip, jnp.asarray(emb), jax.random.key(0),
                          *(() if noise is None else (jnp.float32(noise[name]),))))
    psnr = 10 * np.log10(1 / max(float(np.mean(np.square(out[-1] - target[-1]))), 1e-12))
    cells = axes[i // per_row, 3 * (i % per_row):3 * (i % per_row) + 3]
    for ax, img, title in zip(cells, (clip[-1] / 255.0, out[-1], target[-1]),
                              (f"{name}: input", f"output {psnr:.1f} dB", "ground truth")):
      ax.imshow(np.clip(img, 0, 1))
      ax.set_title(title, fontsize=6)
    logging.info("%s (%s): %.2f dB", name, text, psnr)
  steps = meta.get("steps", "?")
  fig.suptitle(f"{os.path.basename(os.path.normpath(_MODEL.value))} ({steps} steps), S = {cfg.steps}, "
               f"tau_inf {cfg.tau_inf}{'' if cfg.noise_scale == 1.0 else f', noise scale {cfg.noise_scale:g}'}"
               f"{f' (particle prompts {cfg.particle_noise_scale:g})' if cfg.per_prompt_noise else ''}"
               f"{', prompts anchored' if _ANCHOR.value else ''}: held-out frame {_FRAMES.value}",
               fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  fig.savefig(_OUT.value, dpi=80)
  print(_OUT.value)


if __name__ == "__main__":
  app.run(main)
