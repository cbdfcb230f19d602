"""What the kernels need to know of the device, and the once-per-reason fallback log."""

from __future__ import annotations

import functools

import jax
from absl import logging


def is_hopper() -> bool:
  """True when the default device is an NVIDIA Hopper GPU (compute capability 9.x)."""
  dev = jax.devices()[0]
  if dev.platform not in ("gpu", "cuda"):
    return False
  cc = str(getattr(dev, "compute_capability", ""))
  return cc.startswith("9") or any(n in dev.device_kind for n in ("H100", "H200", "H800", "GH200"))


@functools.cache
def warn_fallback_once(op: str, why: str) -> None:
  """Logs, once per (op, reason), that an op runs on XLA instead of its kernel."""
  logging.warning("pallas_kernels: no %s kernel for %r; using XLA", why, op)
