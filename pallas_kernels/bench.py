"""Shared helpers for the kernels' benchmark `main()`s and tests: error norm and timing."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def rel_err(out, ref) -> float:
  """||out - ref|| / ||ref|| in f64 on the host; NaN anywhere gives inf."""
  out = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  ref = np.asarray(jnp.asarray(ref, jnp.float32), np.float64)
  if not np.all(np.isfinite(out)):
    return float("inf")
  return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def time_fn(fn, *args, warmup: int = 5, iters: int = 100) -> dict[str, float]:
  """Per-call latency (host clock around a synchronised call): p50/p99/mean in ms."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  t = np.asarray(times) * 1e3
  return {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
          "mean_ms": float(t.mean())}


def kernel_time_ms(fn, *args) -> float | None:
  """Sum of the GPU kernels' own times in one call (CUPTI, via Mosaic GPU's profiler): launch
  gaps and host dispatch excluded. None off-GPU or if the profiler is unavailable."""
  if jax.devices()[0].platform not in ("gpu", "cuda"):
    return None
  try:
    from jax.experimental.mosaic.gpu import profiler

    jax.block_until_ready(fn(*args))
    ms = [profiler.measure(fn)(*args)[1] for _ in range(5)]
    return float(np.median(ms))
  except Exception:  # noqa: BLE001  (profiler support varies by jaxlib build)
    return None


def device_time_fn(fn, *args, iters: int = 100) -> float:
  """Median device time (ms) of `iters` back-to-back calls, launch gaps included, no host sync."""
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  out = None
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) * 1e3 / iters
