"""What an evaluation streams: an exported model (optionally at another history noise level) and
clips (the library's held-out split, or frames of any video file)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lsd_jax.models import export, lsd


def load_model(model_dir: str, *, tau_inf: float | None = None,
               noise_scale: float | None = None) -> tuple[lsd.LSDConfig, dict, dict[str, Any]]:
  """(config, params, metadata) of an exported model folder; `tau_inf` replaces its history noise
  level at inference and `noise_scale` its initial noise's scale (LSDConfig checks the ranges)."""
  cfg, params, meta = export.load(model_dir)
  if tau_inf is not None:
    cfg = dataclasses.replace(cfg, tau_inf=float(tau_inf))
  if noise_scale is not None:
    cfg = dataclasses.replace(cfg, noise_scale=float(noise_scale))
  return cfg, params, meta


def heldout_clips(manifest: str, n: int, frames: int, height: int, width: int, seed: int = 7) -> list[np.ndarray]:
  """`n` clips of `frames` frames from the library's held-out split (never used in training)."""
  from lsd_jax.datasets import sources

  if n <= 0:
    return []
  src = sources.VideoClipSource.from_manifest(manifest, "heldout", height=height, width=width, num_frames=frames,
                                              seed=seed, strides=(1,))
  return [src[i] for i in range(n)]


def file_clip(path: str, frames: int, height: int, width: int, start: int = 0) -> np.ndarray:
  """`frames` consecutive frames of one video file from `start`, centre-cropped to the output's
  aspect ratio and resized to HxW (uint8 TxHxWx3): a notebook's or a user's own clip."""
  from lsd_jax.datasets import sources, video

  clip = video.read_frames(path, start, frames)
  h, w = clip.shape[1:3]
  ch = min(h, int(round(w * height / width)))
  cw = min(w, int(round(ch * width / height)))
  y0, x0 = (h - ch) // 2, (w - cw) // 2
  return np.stack([sources.resize_to(f[y0:y0 + ch, x0:x0 + cw], height, width) for f in clip])
