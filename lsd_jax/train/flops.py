"""Analytic FLOPs of one LSD train step (`experiments/benchmark_train.py`'s model FLOPs and MFU).

The frozen encoder on the input and target frames (B x (K+1) inputs, R x B x (K+1) targets with R
prompts per clip), the denoiser forward + backward (3 forward-equivalents) on the R x B samples,
the bootstrap teacher's two forwards on bootstrap_frac of them, and the model-history hook's
forward on the K history frames of every sample (computed for the whole batch, then selected).
A library function, so that tests and tools read it without importing a flag-defining script.
"""

from __future__ import annotations

from lsd_jax.models import lsd, sizes


def train_step_flops(config, batch: int) -> dict[str, float]:
  """FLOPs of one step of a training config at `batch` host clips: the parts and their total."""
  m, d = config.model, config.data
  size = lsd.LSDConfig.from_config(config).model_size  # its autoencoder kind and patch
  k = m.history_len
  den = sizes.denoiser_flops(size, d.height, d.width, m.history_mode, k)
  enc = sizes.autoencoder_flops(size, d.height, d.width)["encode"]
  t = config.train
  reps = t.get("prompt_repeats", 1)  # each host clip trains under this many prompts
  n = batch * reps  # denoiser samples; the input clips are encoded once, the targets per prompt
  out = {
      "encoder": (batch + n) * (k + 1) * enc,
      "denoiser_fwd_bwd": 3.0 * n * den,
      "bootstrap_teacher": 2.0 * round(t.bootstrap_frac * n) * den,
      "history_hook": float(n * k * den) if any(a["name"] == "model" for a in t.augment) else 0.0,
  }
  out["total"] = sum(out.values())
  return out
