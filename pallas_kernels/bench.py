"""Shared helpers for the kernels' benchmark `main()`s and tests: error norm, timing, kernel profiles."""

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


# Kernel-name patterns -> category, first match wins (lower-cased names). Collectives first (NCCL's
# kernel names hold "reduce" and "copy"). Convolutions before GEMMs: cuDNN's implicit-GEMM
# convolutions have "gemm" in their names; not bare "conv", which XLA's dtype-convert fusions
# (`loop_convert_fusion`) also contain.
COMMUNICATION = "communication"  # collectives between devices (NCCL): tensor parallelism's all-reduces
_CATEGORIES = (
    (COMMUNICATION, ("nccl", "allreduce", "all_reduce", "allgather", "all_gather", "reducescatter",
                     "reduce_scatter", "sendrecv")),
    ("attention kernel", ("attention", "flash", "fmha", "sdpa")),
    ("mega kernel", ("megastep", "megablock")),
    ("convolution", ("convolution", "conv2d", "fprop", "dgrad", "wgrad", "implicit", "cudnn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "_dot", "dot_", "matmul")),
    ("other pallas kernel", ("_mgpu", "_triton")),
    ("reduction", ("reduce", "reduction")),
    ("copy / layout", ("copy", "transpose", "memcpy", "memset", "concatenate", "slice", "pad")),
    ("elementwise fusion", ("fusion", "loop_", "input_", "wrapped_", "triton")),
)


def kernel_category(name: str) -> str:
  """A coarse class of a GPU kernel from its name (XLA fusions, cuBLAS / cuDNN kernels, ours)."""
  low = name.lower()
  for category, patterns in _CATEGORIES:
    if any(p in low for p in patterns):
      return category
  return "other"


def summarize_launches(per_call: list[list[tuple[str, float]]]) -> list[dict]:
  """CUPTI launches of several calls of one function -> one entry per kernel name: launches per
  call, ms per call (its launches summed; median over the calls), category. Largest first."""
  names = list(dict.fromkeys(n for launches in per_call for n, _ in launches))
  out = []
  for name in names:
    ms = [sum(t for n, t in launches if n == name) for launches in per_call]
    count = [sum(1 for n, _ in launches if n == name) for launches in per_call]
    out.append({"name": name, "launches": int(np.median(count)), "ms": float(np.median(ms)),
                "category": kernel_category(name)})
  return sorted(out, key=lambda k: -k["ms"])


def by_category(profile: list[dict]) -> dict[str, float]:
  """ms per call per category, largest first."""
  cats: dict[str, float] = {}
  for k in profile:
    cats[k["category"]] = cats.get(k["category"], 0.0) + k["ms"]
  return dict(sorted(cats.items(), key=lambda kv: -kv[1]))


def kernel_profile(fn, *args, calls: int = 5) -> list[dict] | None:
  """Every GPU kernel one call of `fn` launches (CUPTI, via Mosaic GPU's profiler), summarised by
  `summarize_launches` over `calls` calls. None off-GPU or if the profiler is unavailable."""
  if jax.devices()[0].platform not in ("gpu", "cuda"):
    return None
  try:
    from jax.experimental.mosaic.gpu import profiler

    jax.block_until_ready(fn(*args))
    per_call = [profiler.measure(fn, aggregate=False)(*args)[1] for _ in range(calls)]
  except Exception:  # noqa: BLE001  (profiler support varies by jaxlib build)
    return None
  if not all(per_call):
    return None
  return summarize_launches(per_call)
