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
