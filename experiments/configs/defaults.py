"""The fields every training config shares; experiment configs copy and override them."""

import ml_collections

from lsd_jax.datasets import pipeline
from lsd_jax.models import sharding

# History augmentation used by the LSD configs ("full" in the ablations).
FULL_AUGMENT = (
    {"name": "blur", "max": 1.0, "p": 0.3},
    {"name": "color", "max": 1.0, "p": 0.3},
    {"name": "jitter", "max": 1.0, "p": 0.3},
    {"name": "quantize", "max": 0.6, "p": 0.2},
    {"name": "drop_repeat", "max": 0.3, "p": 0.3},
    {"name": "model", "max": 1.0, "p": 0.1},
)


def base(task: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = task
  c.task = task
  c.seed = 0
  c.total_steps = 10_000
  c.stop_at = 0  # > 0: stop early at this step (the run resumes later)
  c.max_minutes = 0.0  # > 0: stop (checkpointed) after this much wall time
  c.export_on_stop = True
  c.log_every = 50
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  c.mesh = {"data": -1, "fsdp": 1}
  c.rules = [list(r) for r in sharding.DEFAULT_RULES]
  c.data = pipeline.default_data_config()
  c.model = ml_collections.ConfigDict({"size": "small", "history_mode": "concat", "history_len": 3,
                                       "tau_inf": 0.5, "steps": 2, "kernel_impl": "xla",
                                       "residual": False, "autoencoder": "conv",
                                       "patch": 0,  # 0: the size's own (LSDConfig.patch)
                                       # inference only: the export's and the probe's initial noise
                                       # scale; particle prompts at particle_noise_scale (< 0: None,
                                       # the same; LSDConfig.particle_noise_scale)
                                       "noise_scale": 1.0, "particle_noise_scale": -1.0})
  c.optim = ml_collections.ConfigDict({"lr": 3e-4, "warmup_steps": 500, "weight_decay": 0.01, "clip_norm": 1.0})
  c.train = ml_collections.ConfigDict({
      "ema_decay": 0.999, "latent_penalty": 1e-4,
      "tau_kind": "uniform", "tau_max": 0.5, "p_stream_start": 0.1, "p_no_history": 0.0,
      "p_history_swap": 0.0, "prompt_mix": 0.0, "prompt_centroid": 0.0,
      "prompt_noise": 0.0, "prompt_noise_scale": 1.0,
      # The flow's noise scale (steps.LSDStepConfig.noise_scale); particle samples at
      # particle_noise_scale, < 0: the same. Set them to the model's own (model.noise_scale,
      # model.particle_noise_scale) to train the draw the model samples from.
      "noise_scale": 1.0, "particle_noise_scale": -1.0,
      "augment": [dict(a) for a in FULL_AUGMENT],
      "bootstrap_frac": 0.25, "max_log2": 7, "level_kind": "logit_normal", "level_mean": 0.0,
      "p_no_prompt": 0.05, "prompt_repeats": 1, "loss_weight": "velocity",
  })
  # Held-out fidelity per effect while training (lsd_jax/train/heldout.py); every = 0: off.
  c.heldout = ml_collections.ConfigDict({"every": 0, "clips": 2, "frames": 8})
  c.autoencoder_dir = ""  # an autoencoder run's workdir or an exported model folder
  c.init_from = ""  # an exported model folder: warm-start the denoiser from it (fresh optimizer)
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a tiny model at 32x32 that trains in seconds on a CPU (tests, CI)."""
  c.model.size = "tiny"
  c.data.height = c.data.width = 32
  c.data.global_batch_size = 8
  c.data.sources.library.weight = 0.0  # needs no clip library
  c.total_steps = 20
  c.log_every = 5
  c.checkpoint_every = 10
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 2
  return c
