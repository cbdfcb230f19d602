"""The per-frame autoencoder, trained on input frames and their effect targets.

  python -m experiments.main --config=experiments/configs/autoencoder.py:small --workdir=workdirs/ae_small
  python -m experiments.main --config=experiments/configs/autoencoder.py:smoke --workdir=/tmp/ae_smoke

`small` at 256x256, batch 32: expect reconstruction PSNR above 30 dB on held-out clips after a
few thousand steps on one H100 (see BENCHMARKS.md for what it reached). `smoke` is a tiny model
at 32x32 that runs in seconds on a CPU (tests and CI). A `_light` suffix (`small_light`,
`smoke_light`) trains the light kind (space-to-depth stem, no full-resolution convolution: 3.6
instead of 25 GFLOPs a 256x256 frame at the small size); with
`--config.teacher_autoencoder=checkpoints/ae_small_conv` (the conv autoencoder of models v1 and
v2) it learns that latent space, so v2's denoiser (and any trained on those latents, the shipped
v3 among them) runs on it unchanged:

  python -m experiments.main --config=experiments/configs/autoencoder.py:small_light \
      --config.teacher_autoencoder=checkpoints/ae_small_conv --workdir=workdirs/ae_small_light
"""

from experiments.configs import defaults


def get_config(arg: str = "small"):
  c = defaults.base("autoencoder")
  c.name = f"autoencoder:{arg}"
  c.train.ema_decay = 0.99
  c.train.latent_match = 1.0
  # An autoencoder (run workdir or exported model) whose latent space this one learns.
  c.teacher_autoencoder = ""
  if arg.endswith("_light"):  # the light kind (sizes.AutoencoderSize), e.g. small_light
    arg = arg[: -len("_light")]
    c.model.autoencoder = "light"
  if arg == "smoke":
    defaults.smoke(c)
    c.data.num_frames = 2
  elif arg in ("small", "base", "large"):
    c.model.size = arg
    c.data.global_batch_size = 32
    c.data.num_frames = 2
    c.total_steps = 6000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.data.worker_count = 8
  else:
    raise ValueError(f"unknown autoencoder config {arg!r}")
  return c
