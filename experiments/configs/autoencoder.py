"""The per-frame autoencoder, trained on input frames and their effect targets.

  python -m experiments.main --config=experiments/configs/autoencoder.py:small --workdir=workdirs/ae_small
  python -m experiments.main --config=experiments/configs/autoencoder.py:smoke --workdir=/tmp/ae_smoke

`small` at 256x256, batch 32: expect reconstruction PSNR above 30 dB on held-out clips after a
few thousand steps on one H100 (see BENCHMARKS.md for what it reached). `smoke` is a tiny model
at 32x32 that runs in seconds on a CPU (tests and CI).
"""

from experiments.configs import defaults


def get_config(arg: str = "small"):
  c = defaults.base("autoencoder")
  c.name = f"autoencoder:{arg}"
  c.train.ema_decay = 0.99
  if arg in ("small", "base", "large"):
    c.model.size = arg
    c.data.global_batch_size = 32
    c.data.num_frames = 2
    c.total_steps = 6000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.data.worker_count = 8
  elif arg == "smoke":
    defaults.smoke(c)
    c.data.num_frames = 2
  else:
    raise ValueError(f"unknown autoencoder config {arg!r}")
  return c
