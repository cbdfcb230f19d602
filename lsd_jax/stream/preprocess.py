"""Host-side frame preparation: any image-like array -> uint8 `frame_HxWx3` at the model's size.

Accepts any size (1x1 to 4000x3000 and beyond), grayscale (HxW or HxWx1), RGB, RGBA (alpha
dropped), uint8, other integer types (uint16 scaled, others clipped to [0, 255]), bool, and float
frames in [0, 1] or, where a value exceeds FLOAT_255_ABOVE, in [0, 255] (with a warning, once per
process: a float frame is ambiguous, and clipping a [0, 255] one to [0, 1] makes it near white).
The frame is centre-cropped to the model's aspect ratio, then resized with
cv2.INTER_AREA. NaN or inf values raise ValueError: a silently black frame would hide a broken
camera or decoder upstream.
"""

from __future__ import annotations

import threading

from absl import logging
import cv2
import numpy as np

# A float frame whose largest value exceeds this is read as [0, 255]. Not 1.0: a [0, 1] frame
# resampled with a cubic filter overshoots 1.0 by a few percent, while a [0, 255] frame whose
# brightest pixel is below 1.5 is black either way.
FLOAT_255_ABOVE = 1.5
_warned = threading.Event()


def _to_uint8(x: np.ndarray) -> np.ndarray:
  if x.dtype == np.uint8:
    return x
  if x.dtype == np.bool_:
    return x.astype(np.uint8) * 255
  if np.issubdtype(x.dtype, np.floating):
    if not np.all(np.isfinite(x)):
      raise ValueError("frame holds NaN or inf values")
    x = x.astype(np.float32)
    top = float(x.max(initial=0.0))
    if top > FLOAT_255_ABOVE:
      if not _warned.is_set():
        _warned.set()
        logging.warning("a float frame holds values up to %.1f: reading float frames like it as "
                        "[0, 255] (pass uint8, or floats in [0, 1], to silence this)", top)
      return (np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  if x.dtype == np.uint16:
    return (x // 257).astype(np.uint8)
  if np.issubdtype(x.dtype, np.integer):
    return np.clip(x, 0, 255).astype(np.uint8)
  raise TypeError(f"unsupported frame dtype {x.dtype}")


def _to_rgb(x_HxWxC: np.ndarray) -> np.ndarray:
  c = x_HxWxC.shape[2]
  if c == 3:
    return x_HxWxC
  if c == 1:
    return np.repeat(x_HxWxC, 3, axis=2)
  if c == 4:
    return x_HxWxC[:, :, :3]
  raise ValueError(f"frame has {c} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")


def crop_box(in_h: int, in_w: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
  """(top, left, height, width) of the largest centred crop with the output's aspect ratio."""
  if in_w * out_h > in_h * out_w:  # too wide
    h, w = in_h, max(1, round(in_h * out_w / out_h))
  else:  # too tall (or exact)
    h, w = max(1, round(in_w * out_h / out_w)), in_w
  return (in_h - h) // 2, (in_w - w) // 2, h, w


def prepare_frame(frame, height: int, width: int) -> np.ndarray:
  """Any supported image array -> C-contiguous uint8 `frame_HxWx3` of exactly height x width."""
  x = np.asarray(frame)
  if x.ndim == 2:
    x = x[:, :, None]
  if x.ndim != 3:
    raise ValueError(f"frame must be HxW or HxWxC, got shape {x.shape}")
  if x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f"empty frame of shape {x.shape}")
  x = _to_rgb(_to_uint8(x))
  top, left, h, w = crop_box(x.shape[0], x.shape[1], height, width)
  x = x[top:top + h, left:left + w]
  if (h, w) != (height, width):
    x = cv2.resize(np.ascontiguousarray(x), (width, height), interpolation=cv2.INTER_AREA)
  return np.ascontiguousarray(x)


def side_by_side(left_HxWx3: np.ndarray, right_HxWx3: np.ndarray) -> np.ndarray:
  """Input | output composite; the left frame is resized to the right one's size if needed."""
  if left_HxWx3.shape != right_HxWx3.shape:
    left_HxWx3 = prepare_frame(left_HxWx3, right_HxWx3.shape[0], right_HxWx3.shape[1])
  return np.concatenate([left_HxWx3, right_HxWx3], axis=1)
