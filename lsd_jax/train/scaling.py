"""Training throughput across device counts: which runs a scaling benchmark times, and each
run's scaling efficiency (`experiments/benchmark_train.py --device_counts`).

Weak scaling keeps the batch per device fixed (`per_device_batch`), so a perfect N-device mesh
does N times the samples per second of one device. Efficiency = a run's samples/s per device
over a one-device run's at the same batch per device (1.0: perfect).
"""

from __future__ import annotations

from typing import Iterable, Sequence


def runs(batch_sizes: Sequence[int | str], device_counts: Sequence[int | str], per_device_batch: int,
         n_devices: int) -> list[tuple[int, int]]:
  """(global batch, devices) of every run, in order: each batch size on all `n_devices`, or on
  each of `device_counts`; with `per_device_batch` > 0 the batch is that times the devices."""
  counts = [int(n) for n in device_counts] or [n_devices]
  for n in counts:
    if not 1 <= n <= n_devices:
      raise ValueError(f"--device_counts: {n} devices asked for, this machine has {n_devices}")
  if per_device_batch:
    return [(per_device_batch * n, n) for n in counts]
  return [(int(b), n) for n in counts for b in batch_sizes]


def add_efficiency(timed: list[dict], baseline: Iterable[dict] = ()) -> None:
  """Sets each run's `scaling_efficiency` (and `scaling_reference`): its samples/s per device over
  a one-device run's at the same batch per device, from `baseline` (another invocation's runs,
  e.g. on a one-GPU machine) first, else from `timed`; left out where there is none. Runs are
  dicts with "batch", "devices" and "samples_per_s_per_device"."""
  per_device = lambda r: r["batch"] / r["devices"]  # noqa: E731
  ref = {per_device(r): (r, "this run") for r in timed if r["devices"] == 1}
  ref.update({per_device(r): (r, "baseline") for r in baseline if r["devices"] == 1})
  for r in timed:
    base, source = ref.get(per_device(r), (None, None))
    if base is not None:
      r["scaling_efficiency"] = r["samples_per_s_per_device"] / base["samples_per_s_per_device"]
      r["scaling_reference"] = {"from": source, "batch": base["batch"],
                                "samples_per_s_per_device": base["samples_per_s_per_device"]}


def loop_rate(metrics_jsonl: str, devices: int, batch: int, skip: int = 1) -> dict:
  """A training loop's throughput from its train_metrics.jsonl: the median of its logged
  steps/s after the first `skip` logs (compilation and warm-up), with samples/s in all and per
  device, for `devices` devices at global batch `batch` (the input pipeline included: what the
  loop, not the step alone, sustains)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  from lsd_jax.train import writers  # pylint: disable=import-outside-toplevel

  rates = [r for r in writers.read_jsonl(metrics_jsonl).get("steps_per_sec", []) if r is not None][skip:]
  rates = [r for r in rates if np.isfinite(r)]
  if not rates:
    raise ValueError(f"{metrics_jsonl}: no steps/s logged after the first {skip} logs")
  steps_s = float(np.median(rates))
  return {"devices": devices, "batch": batch, "steps_per_s": steps_s, "logs": len(rates),
          "samples_per_s": batch * steps_s, "samples_per_s_per_device": batch * steps_s / devices}
