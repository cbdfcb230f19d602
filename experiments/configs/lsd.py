"""The LSD denoiser on prompted effects: diffusion forcing, history augmentation, shortcut.

  python -m experiments.main --config=experiments/configs/lsd.py:small \
      --config.autoencoder_dir=workdirs/ae_small --workdir=workdirs/lsd_small
  python -m experiments.main --config=experiments/configs/lsd.py:smoke \
      --config.autoencoder_dir=/tmp/ae_smoke --workdir=/tmp/lsd_smoke

`small` (the shipped default) and `base` at 256x256 with K = 3 history frames in `concat` mode,
residual (the denoiser diffuses target minus input latent; the first shipped model did not);
each clip has 2 warm-up frames (for temporal effects) before its K + 1 trained frames. Ablation
arms are overrides of these fields (see experiments/sweep.py). `smoke` trains a tiny model at
32x32 end to end in well under two minutes on a CPU.
"""

from experiments.configs import defaults

WARMUP_FRAMES = 2


def get_config(arg: str = "small"):
  c = defaults.base("lsd")
  c.name = f"lsd:{arg}"
  c.data.num_frames = WARMUP_FRAMES + c.model.history_len + 1
  c.model.residual = True  # diffuse target - input latent (lsd_jax/diffusion/forcing.py)
  if arg in ("small", "base"):
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
