"""Constant-memory latency statistics for streams that run indefinitely.

`Histogram` keeps counts in log-spaced bins (each 1% wide, 1 us to 10^4 s), plus the exact count,
sum, min and max: percentiles are the geometric centre of their bin, within 0.5% of the exact
sample percentile, and memory does not grow with the number of frames (a list of samples would:
about 30 bytes a frame and stage, 25 MB over a 100,000-frame soak).
`Window` keeps the last N samples, for live displays (the web page's p50/p99).
"""

from __future__ import annotations

import collections
import math

import numpy as np

_LO_S, _HI_S, _RATIO = 1e-6, 1e4, 1.01
_NBINS = int(math.ceil(math.log(_HI_S / _LO_S) / math.log(_RATIO))) + 2


class Histogram:
  """Seconds in, milliseconds out."""

  def __init__(self):
    self.counts = np.zeros(_NBINS, np.int64)
    self.count = 0
    self.total = 0.0
    self.min = math.inf
    self.max = 0.0

  def add(self, seconds: float) -> None:
    s = float(seconds)
    if s <= _LO_S:
      b = 0
    else:
      b = min(_NBINS - 1, 1 + int(math.log(s / _LO_S) / math.log(_RATIO)))
    self.counts[b] += 1
    self.count += 1
    self.total += s
    self.min = min(self.min, s)
    self.max = max(self.max, s)

  def percentile_s(self, q: float) -> float:
    if not self.count:
      return math.nan
    rank = max(1, int(math.ceil(q / 100.0 * self.count)))
    b = int(np.searchsorted(np.cumsum(self.counts), rank))
    if b == 0:
      return self.min
    centre = _LO_S * _RATIO ** (b - 0.5)
    return min(max(centre, self.min), self.max)

  def summary_ms(self) -> dict[str, float] | None:
    if not self.count:
      return None
    return {"p50": self.percentile_s(50) * 1e3, "p95": self.percentile_s(95) * 1e3,
            "p99": self.percentile_s(99) * 1e3, "max": self.max * 1e3,
            "mean": self.total / self.count * 1e3, "count": self.count}


class Window:
  """The last `size` samples (seconds), for live p50 / p99."""

  def __init__(self, size: int = 300):
    self._d: collections.deque[float] = collections.deque(maxlen=size)

  def add(self, seconds: float) -> None:
    self._d.append(float(seconds))

  def percentile_ms(self, q: float) -> float:
    return float(np.percentile(np.asarray(self._d), q) * 1e3) if self._d else math.nan

  def __len__(self) -> int:
    return len(self._d)
