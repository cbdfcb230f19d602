"""Per-frame metrics against exact ground truth (frames as floats in [0, 1])."""

from __future__ import annotations

import numpy as np


def psnr(x, y, axis=None, peak: float = 1.0):
  """Peak signal-to-noise ratio in dB over `axis` (all axes when None)."""
  mse = np.mean(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64)), axis=axis)
  return 10.0 * np.log10(peak ** 2 / np.maximum(mse, 1e-12))
