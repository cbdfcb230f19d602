"""The LSD denoiser on prompted effects: diffusion forcing, history augmentation, shortcut.

  python -m experiments.main --config=experiments/configs/lsd.py:small \
      --config.autoencoder_dir=workdirs/ae_small --workdir=workdirs/lsd_small
  python -m experiments.main --config=experiments/configs/lsd.py:smoke \
      --config.autoencoder_dir=/tmp/ae_smoke --workdir=/tmp/lsd_smoke

`v3` is model v3's first recipe (`V3_TRAIN`, on a light autoencoder: pass one trained with
`autoencoder.py:small_light`), `v3b` models v3's and v3.1's, `v3c` v3b with prompt mixing,
`v3d` v3c with the history kept for temporal effects (model v3.2's), `v3e` v3d with the effects
under their floor drawn more often (model v3.3's; v3.4 and the shipped v3.5 are v3e with
`--config.data.effect_weights=`, which an A/B found no worse without them), `v3f` v3d with
30% of the prompts replaced by their spec's mean train embedding (what anchoring gives);
`<name>_smoke` is the same at the tiny size on a CPU.
`small` (model v2) and `base` at 256x256 with K = 3 history frames in `concat` mode,
residual (the denoiser diffuses target minus input latent; the first shipped model did not);
each clip has 2 warm-up frames (for temporal effects) before its K + 1 trained frames. Ablation
arms are overrides of these fields (see experiments/sweep.py). `smoke` trains a tiny model at
32x32 end to end in well under two minutes on a CPU.
"""

from experiments.configs import defaults

WARMUP_FRAMES = 2


# Model v3's recipe (reports/model_v3/): the history is noisier and more often missing, so the
# model must read the input frame and the prompt instead of copying its history; levels sit
# nearer the noise end, where a 1-2 step sampler starts; the shortcut's step sizes stop at 1/16
# (a 1-2 step model never takes smaller ones); every clip trains under 4 prompts at once; flow
# frames are weighted by t^2 (the clean frame's error, not the velocity's: shortcut.level_weight).
V3_TRAIN = {"tau_max": 0.9, "p_stream_start": 0.25, "level_mean": 0.5, "max_log2": 4, "prompt_repeats": 4,
            "loss_weight": "x0"}


# v3b: v3 plus what the first diagnostics found (reports/model_v3/): v2 and v3 make an effect
# well only when their history already shows it (ground-truth history 28.3 / 24.9 dB, no
# history 19.5 / 17.6, streamed 21.6 / 19.5 over six effects), so the history must stop telling
# the model which effect to make: a third of the samples have no history at all, a third see the
# same clip under another prompt as history.
V3B_TRAIN = {**V3_TRAIN, "p_no_history": 0.33, "p_history_swap": 0.33}


# v3c: v3b plus what model v3.1 found (reports/model_v3/, stretch 4): the val wording scores 2.7 dB
# under the train wording, so half the samples see their prompt's embedding mixed with that of
# another train prompt asking for the same effect and parameters (steps.mix_prompts). Not yet
# trained on a GPU.
V3C_TRAIN = {**V3B_TRAIN, "prompt_mix": 0.5}


# v3d: v3c plus what the particle tracker found on model v3.1 (reports/model_v3/, 2026-12-01): no
# particle effect moves at its velocity (rain 1.8 px/frame against 11.2, bubbles 0.4 against 1.5)
# and only 9-36% of the truth's particles are there to track. v3b drops or swaps the history of
# two thirds of the samples, and a temporal effect's state (where each particle is, the echo's
# trail) lives only in the history: those samples teach a blur of where particles might be. Here
# samples with a temporal effect keep their history 5x more often (0.33 -> 0.066 each); the
# per-frame effects keep v3b's rates. Not yet trained on a GPU.
V3D_TRAIN = {**V3C_TRAIN, "temporal_history_scale": 0.2}


# v3e: v3d with the effects that stay under their floor even with their train twin (model v3.2,
# reports/model_v3/ stretch 7: pixel art 22.2 dB against 23.9, posterize 23.2 against 23.2,
# identity 35.6 against 36.3) and the one furthest under its ceiling (neon outlines) drawn more
# often (data.effect_weights repeats their prompt rows).
V3E_EFFECT_WEIGHTS = "pixel_art:3,posterize:2,identity:2,neon_outlines:2"


# v3f: v3d (v3e without its effect weights, the recipe of models v3.4 and v3.5) with 30% of the
# samples prompted by their spec's mean train embedding (steps.centroid_prompts): what prompt
# anchoring feeds the model at inference, and no train prompt has. Model v3.5 scores 30.1 dB
# anchored over the 16 deterministic effects and 27.2 with the raw val wording (over 19 effects:
# 26.9 raw, 29.5 with the train twins; reports/model_v3/, stretch 10). Not yet trained on a GPU.
V3F_TRAIN = {**V3D_TRAIN, "prompt_centroid": 0.3}


# v3g: v3d with half the samples' prompt embeddings moved along a random direction to a cosine of
# about 0.71 (steps.noise_prompts): a val paraphrase sits at 0.69 from its nearest train twin and
# 0.64 from the nearest train prompt of another effect (reports/model_v3/README.md, stretch 12),
# and neither prompt mixing between train twins (v3c) nor the spec means (v3f) moved the raw
# val wording: the denoiser must stop keying on the train phrasings' exact embeddings.
# On an H200 (stretch 13, 6,000 steps from v3.5): raw val wording 26.83 dB (v3.5 26.00), the train
# twins 28.93 (29.47); annealed 2,500 steps with v3d at lr 5e-5 it is model v3.6 (27.02 raw, 28.69
# anchored, v3.5 28.68).
V3G_TRAIN = {**V3D_TRAIN, "prompt_noise": 0.5, "prompt_noise_scale": 1.0}


# v3h: v3d trained at the draw the shipped model samples from: the flow's noise at scale 0.25,
# particle samples at 1 (steps.flow_noise_scales), and the model (its probe and export) sampling
# at the same scales. Model v3.6, trained at 1 and sampled at 0.25, gains 1.1 dB held-out on the
# per-frame effects against sampling at 1, and the particles need the full draw
# (reports/model_v3/README.md, stretches 15-16).
V3H_NOISE = {"noise_scale": 0.25, "particle_noise_scale": 1.0}
V3H_TRAIN = {**V3D_TRAIN, **V3H_NOISE}
# On an H200 (stretch 17, 10,000 steps from v3.6 at lr 1e-4): the train wording up 0.14 dB
# (identity +0.35, negative +1.1, soft glow +2.2), but the raw val wording down 0.96 (echo 35.5 ->
# 24.9, grayscale 31.9 -> 27.5, rain 28.1 -> 25.2): without v3g's noised prompts the paraphrase
# robustness v3.6 learned wears off. Not shipped (reports/model_v3/README.md, stretch 17).

# v3i: v3h on v3g's noised prompts (the recipe of model v3.6's first segment): the matched draw
# without losing the val wording. Not yet trained on a GPU.
V3I_TRAIN = {**V3G_TRAIN, **V3H_NOISE}


def get_config(arg: str = "small"):
  c = defaults.base("lsd")
  c.name = f"lsd:{arg}"
  c.data.num_frames = WARMUP_FRAMES + c.model.history_len + 1
  c.model.residual = True  # diffuse target - input latent (lsd_jax/diffusion/forcing.py)
  if arg in ("v3", "v3_smoke", "v3b", "v3b_smoke", "v3c", "v3c_smoke", "v3d", "v3d_smoke", "v3e", "v3e_smoke",
             "v3f", "v3f_smoke", "v3g", "v3g_smoke", "v3h", "v3h_smoke", "v3i", "v3i_smoke"):
    recipe = arg.split("_")[0]
    c.train.update({"v3b": V3B_TRAIN, "v3c": V3C_TRAIN, "v3d": V3D_TRAIN, "v3e": V3D_TRAIN, "v3f": V3F_TRAIN,
                    "v3g": V3G_TRAIN, "v3h": V3H_TRAIN, "v3i": V3I_TRAIN}.get(recipe, V3_TRAIN))
    if recipe in ("v3h", "v3i"):
      c.model.update(V3H_NOISE)
    if recipe == "v3e":
      c.data.effect_weights = V3E_EFFECT_WEIGHTS
    # Without the model-made history hook: it runs the denoiser on every history frame of every
    # sample to use 10% of them (as much compute as the step's own forward and backward).
    c.train.augment = [dict(a) for a in defaults.FULL_AUGMENT if a["name"] != "model"]
    c.model.autoencoder = "light"
    c.model.tau_inf = 0.5
    c.heldout.every = 250
    if arg.endswith("_smoke"):
      defaults.smoke(c)
      c.heldout.every, c.heldout.clips, c.heldout.frames = 10, 1, 6
      return c
    c.model.size = "small"
    c.data.global_batch_size = 32  # host clips; x prompt_repeats = 128 samples a step
    c.total_steps = 4500
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 300
    c.data.worker_count = 12
  elif arg in ("small", "base"):
    c.model.size = arg
    c.data.global_batch_size = 32
    c.total_steps = 20_000
    c.optim.lr = 3e-4 if arg == "small" else 2e-4
    c.data.worker_count = 12
  elif arg == "smoke":
    defaults.smoke(c)
  else:
    raise ValueError(f"unknown lsd config {arg!r}")
  return c
