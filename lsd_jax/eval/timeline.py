"""Launch timelines: where a jitted call's host-to-host wall time goes, read from a `jax.profiler`
trace (`experiments/launch_timeline.py` captures them; this module only reads).

The trace is the Chrome/Perfetto JSON `jax.profiler.stop_trace` writes with
`create_perfetto_trace=True` (`plugins/profile/<run>/perfetto_trace.json.gz`): `traceEvents`, each
with `ph` (`X` a complete event, `M` metadata naming a `pid` / `tid`), `ts` and `dur` in
microseconds, `pid`, `tid`, `name` and `args`. XLA's GPU tracer (CUPTI) writes one process per
XSpace plane: `/host:CPU` (TraceMe annotations, PjRt, the calls' own markers), `/host:CUPTI`
(the CUDA driver API calls, one thread per host thread: `cuLaunchKernel*`, `cuGraphLaunch`,
`cuMemcpy*`, ...; `args.correlation_id` ties each to the device work it started) and
`/device:GPU:<n>` (one thread per stream, `Stream #<id>(Kernel,MemcpyH2D,...)`: kernels by name,
memcpys with `args.memcpy_details` "... size:<bytes> ..."). Those names are read from XLA's
sources, not yet seen in a trace of this jax version on a GPU, so `histogram` keeps every
(process, thread, name) with its count and time whatever the classifiers below make of it.

Each timed call is marked by a host annotation `CALL_PREFIX<i>` around it (the call, its wait
and its copy back), so a call's window is that event; device events are assigned to the window
their start lies in. Per call (`call_summary`): the wall span; the host's time to its first
launch, from that launch to the device's first activity, the device span, busy time (the union
of kernels, memcpys and memsets over every stream), idle gaps between them and the tail after
the device's last activity; kernels and busy time per stream; memcpys by direction; the CUDA API
calls by name and category; which kernels a graph launch started (by correlation id). All times
are microseconds in the data and milliseconds in the tables.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
from typing import Any, Iterable, NamedTuple

CALL_PREFIX = "timeline_call_"
NO_DEVICE = ("no device (GPU) events in this trace: on this platform no kernels are launched "
             "(or the GPU tracer recorded none), so only host times are reported")
# CUDA API calls by category, first match wins (driver `cu*` and runtime `cuda*` names).
API_CATEGORIES = (
    ("graph_launch", re.compile(r"^cu(da)?GraphLaunch")),
    ("kernel_launch", re.compile(r"^cu(da)?Launch")),
    ("memcpy", re.compile(r"^cu(da)?Memcpy")),
    ("memset", re.compile(r"^cu(da)?Memset")),
    ("sync", re.compile(r"Synchronize|^cu(da)?(Stream|Event)Query")),
    ("event", re.compile(r"^cu(da)?Event")),
    ("other", re.compile(r"")),
)
LAUNCHES = ("graph_launch", "kernel_launch")
_API = re.compile(r"^cu(da)?[A-Z]")
_DIRECTIONS = (("h2d", re.compile(r"H2D|HtoD", re.I)), ("d2h", re.compile(r"D2H|DtoH", re.I)),
               ("d2d", re.compile(r"D2D|DtoD|P2P|PtoP", re.I)))
_BYTES = re.compile(r"size:(\d+)")


class TraceError(ValueError):
  """A trace file that is missing, empty or not a trace."""


class Event(NamedTuple):
  process: str
  thread: str
  name: str
  ts: float  # microseconds
  dur: float
  args: dict


# ----------------------------------------------------------------------------- reading


def find_trace(log_dir: str) -> str:
  """The newest `perfetto_trace.json.gz` under a `jax.profiler.trace` log dir (TraceError if none)."""
  found = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
  if not found:
    raise TraceError(f"no plugins/profile/*/perfetto_trace.json.gz under {log_dir} (was the trace "
                     "taken with create_perfetto_trace=True, and did it stop?)")
  return max(found, key=os.path.getmtime)


def load(path: str) -> dict:
  """The trace JSON of `path` (.json or .json.gz), checked to be a trace: TraceError otherwise."""
  if not os.path.isfile(path):
    raise TraceError(f"no trace file at {path}")
  if os.path.getsize(path) == 0:
    raise TraceError(f"the trace file {path} is empty")
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt") as f:
      trace = json.load(f)
  except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise TraceError(f"the trace file {path} is not (gzipped) JSON: {e}") from e
  if isinstance(trace, list):  # the JSON array form of the trace event format
    trace = {"traceEvents": trace}
  if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
    raise TraceError(f"the trace file {path} has no traceEvents list")
  return trace


def _names(raw: list) -> tuple[dict, dict]:
  procs, threads = {}, {}
  for e in raw:
    if isinstance(e, dict) and e.get("ph") == "M":
      name = (e.get("args") or {}).get("name")
      if e.get("name") == "process_name":
        procs[e.get("pid")] = str(name)
      elif e.get("name") == "thread_name":
        threads[(e.get("pid"), e.get("tid"))] = str(name)
  return procs, threads


def events(trace: dict) -> list[Event]:
  """The complete (`ph` X) events, with their process and thread names, sorted by start. Other
  phases (counters, flows, instants) are left to `histogram`; entries that are not events (the
  exporter ends the list with an empty one) are skipped."""
  raw = trace["traceEvents"]
  procs, threads = _names(raw)
  out = []
  for e in raw:
    if not isinstance(e, dict) or e.get("ph") != "X" or "ts" not in e:
      continue
    pid, tid = e.get("pid"), e.get("tid")
    out.append(Event(procs.get(pid, f"pid {pid}"), threads.get((pid, tid), f"tid {tid}"), str(e.get("name", "")),
                     float(e["ts"]), float(e.get("dur", 0.0)), e.get("args") or {}))
  out.sort(key=lambda ev: ev.ts)
  return out


def histogram(trace: dict) -> list[dict]:
  """Every (process, thread, name, phase) in the trace with its count and total duration (us),
  largest total first: what the trace holds, whatever the classifiers make of it."""
  procs, threads = _names(trace["traceEvents"])
  acc: dict[tuple, list] = collections.defaultdict(lambda: [0, 0.0])
  for e in trace["traceEvents"]:
    if not isinstance(e, dict) or e.get("ph") in (None, "M"):
      continue
    pid, tid = e.get("pid"), e.get("tid")
    key = (procs.get(pid, f"pid {pid}"), threads.get((pid, tid), f"tid {tid}"), str(e.get("name", "")), e["ph"])
    acc[key][0] += 1
    acc[key][1] += float(e.get("dur", 0.0) or 0.0)
  rows = [{"process": p, "thread": t, "name": n, "ph": ph, "count": c, "total_us": us}
          for (p, t, n, ph), (c, us) in acc.items()]
  return sorted(rows, key=lambda r: (-r["total_us"], -r["count"], r["process"], r["thread"], r["name"]))


# ----------------------------------------------------------------------------- classifying


def is_device(ev: Event) -> bool:
  """On a GPU's plane (XLA names it /device:GPU:<n>; a CPU platform has none)."""
  return ev.process.startswith("/device:") and not ev.process.startswith("/device:CPU")


def is_stream(ev: Event) -> bool:
  """Device work on a stream line (not a derived line such as "XLA Ops" or "CUPTI overhead")."""
  return is_device(ev) and "stream" in ev.thread.lower()


def device_kind(ev: Event) -> str:
  """kernel, memset, or memcpy_<h2d|d2h|d2d|other>, from the name and the memcpy details."""
  name = ev.name.lower()
  if "memset" in name:
    return "memset"
  if "memcpy" not in name:
    return "kernel"
  text = ev.name + " " + " ".join(str(v) for v in ev.args.values())
  for direction, pattern in _DIRECTIONS:
    if pattern.search(ev.name) or pattern.search(text):
      return f"memcpy_{direction}"
  kinds = re.search(r"kind_src:(\w+).*kind_dst:(\w+)", text)  # CUPTI's memory kinds
  if kinds:
    src, dst = (("d" if k.lower() == "device" else "h") for k in kinds.groups())
    if src != dst or src == "d":
      return f"memcpy_{src}2{dst}"
  return "memcpy_other"


def memcpy_bytes(ev: Event) -> int | None:
  for v in ev.args.values():
    m = _BYTES.search(str(v))
    if m:
      return int(m.group(1))
  return None


def is_api(ev: Event) -> bool:
  """A CUDA API call made by a host thread (named cu*/cuda*, on a host plane)."""
  return not is_device(ev) and bool(_API.match(ev.name))


def api_category(name: str) -> str:
  return next(cat for cat, pattern in API_CATEGORIES if pattern.search(name))


def correlation_id(ev: Event):
  for key in ("correlation_id", "correlationId", "correlation id"):
    if key in ev.args:
      return str(ev.args[key])
  return None


def calls(evs: Iterable[Event], prefix: str = CALL_PREFIX) -> list[Event]:
  """The host markers `prefix<i>` of the timed calls, in order of i."""
  pattern = re.compile(re.escape(prefix) + r"(\d+)$")
  marks = [(int(m.group(1)), ev) for ev in evs if not is_device(ev) for m in [pattern.match(ev.name)] if m]
  return [ev for _, ev in sorted(marks, key=lambda p: p[0])]


# ----------------------------------------------------------------------------- per call


def merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
  """The union of [start, end] intervals, as disjoint sorted intervals."""
  out: list[list[float]] = []
  for start, end in sorted(intervals):
    if out and start <= out[-1][1]:
      out[-1][1] = max(out[-1][1], end)
    else:
      out.append([start, end])
  return [(a, b) for a, b in out]


def gaps(merged: list[tuple[float, float]]) -> list[float]:
  """The idle stretches between consecutive disjoint intervals."""
  return [b[0] - a[1] for a, b in zip(merged, merged[1:])]


def _count_us(evs: list[Event]) -> dict:
  return {"count": len(evs), "us": sum(e.dur for e in evs)}


def call_summary(call: Event, evs: list[Event], top_host: int = 12) -> dict:
  """What happened in one call's window (see the module docstring); device figures are None
  where the window holds no device work."""
  t0, t1 = call.ts, call.ts + call.dur
  inside = [e for e in evs if t0 <= e.ts <= t1 and e is not call]
  device = [e for e in inside if is_stream(e)]
  api = [e for e in inside if is_api(e)]
  kernels = [e for e in device if device_kind(e) == "kernel"]
  out: dict[str, Any] = {"wall_us": call.dur, "device_events": len(device)}
  launches = [e for e in api if api_category(e.name) in LAUNCHES]
  first_launch = (launches or api)[0].ts if api else None
  out["host_to_first_launch_us"] = None if first_launch is None else first_launch - t0
  by_name: dict[str, list[Event]] = collections.defaultdict(list)
  by_cat: dict[str, list[Event]] = collections.defaultdict(list)
  for e in api:
    by_name[e.name].append(e)
    by_cat[api_category(e.name)].append(e)
  out["api"] = {n: _count_us(v) for n, v in sorted(by_name.items())}
  out["api_by_category"] = {c: _count_us(by_cat.get(c, [])) for c, _ in API_CATEGORIES}
  host = collections.defaultdict(list)
  for e in inside:
    if not is_device(e) and not is_api(e):
      host[e.name].append(e)
  ranked = sorted(host.items(), key=lambda kv: -sum(e.dur for e in kv[1]))[:top_host]
  out["host_events"] = {n: _count_us(v) for n, v in ranked}
  if not device:
    out.update(launch_to_device_us=None, device_span_us=None, device_busy_us=None, idle_us=None,
               gaps={"count": 0, "us": 0.0, "max_us": 0.0}, tail_us=None, kernels=_count_us([]),
               streams={}, memcpy={}, memset=_count_us([]), launched_by={})
    return out
  busy = merge((e.ts, e.ts + e.dur) for e in device)
  idle = [g for g in gaps(busy) if g > 0]
  first, last = busy[0][0], busy[-1][1]
  out.update(launch_to_device_us=None if first_launch is None else first - first_launch,
             device_span_us=last - first, device_busy_us=sum(b - a for a, b in busy),
             idle_us=sum(idle), gaps={"count": len(idle), "us": sum(idle), "max_us": max(idle, default=0.0)},
             tail_us=t1 - last, kernels=_count_us(kernels))
  streams = collections.defaultdict(list)
  for e in device:
    streams[e.thread].append(e)
  out["streams"] = {s: {"kernels": sum(device_kind(e) == "kernel" for e in v), "events": len(v),
                        "busy_us": sum(b - a for a, b in merge((e.ts, e.ts + e.dur) for e in v))}
                    for s, v in sorted(streams.items())}
  copies = collections.defaultdict(list)
  for e in device:
    kind = device_kind(e)
    if kind.startswith("memcpy_"):
      copies[kind[len("memcpy_"):]].append(e)
  out["memcpy"] = {d: {**_count_us(v), "bytes": sum(memcpy_bytes(e) or 0 for e in v),
                       "max_us": max(e.dur for e in v)} for d, v in sorted(copies.items())}
  out["memset"] = _count_us([e for e in device if device_kind(e) == "memset"])
  out["launched_by"] = _launched_by(kernels, [e for e in evs if is_api(e)], len(launches))
  return out


def _launched_by(kernels: list[Event], api: list[Event], launch_calls: int) -> dict:
  """Kernels by the category of the API call whose correlation id they carry (a graph launch
  starts all of its kernels under its own id); without correlation ids in the trace, only how
  many kernels had no launch call of their own in the window."""
  owner = {correlation_id(e): api_category(e.name) for e in api if correlation_id(e) is not None}
  counts = collections.Counter()
  for k in kernels:
    cid = correlation_id(k)
    counts["no_correlation_id" if cid is None else owner.get(cid, "unmatched")] += 1
  counts["kernels_minus_kernel_launch_calls"] = len(kernels) - launch_calls
  return dict(counts)


# ----------------------------------------------------------------------------- a whole trace


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
  """Numeric leaves of a nested dict as dotted keys (None kept, to say "not measured")."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
      out[key] = v
  return out


def median_summary(per_call: list[dict]) -> dict[str, float | None]:
  """Each dotted metric's median over the calls (a metric missing from a call counts as 0 there,
  e.g. an API name that call did not use; None where no call measured it)."""
  flat = [flatten(c) for c in per_call]
  keys = sorted({k for f in flat for k in f})
  out = {}
  for k in keys:
    vals = [f.get(k, 0) for f in flat]
    known = [v for v in vals if v is not None]
    out[k] = statistics.median(known) if known else None
  return out


def analyze(trace: dict, prefix: str = CALL_PREFIX, top_host: int = 12) -> dict:
  """The whole report of one trace: per call, medians over calls, device events outside every
  call, notes, and the raw histogram."""
  evs = events(trace)
  marks = calls(evs, prefix)
  notes = []
  if not marks:
    notes.append(f"no call markers ({prefix}<i>) in this trace: nothing to split per call")
  device = [e for e in evs if is_stream(e)]
  if not device:
    notes.append(NO_DEVICE)
  per_call = [call_summary(c, evs, top_host) for c in marks]
  outside = [e for e in device if not any(c.ts <= e.ts <= c.ts + c.dur for c in marks)]
  return {"calls": len(marks), "median": median_summary(per_call), "per_call": per_call,
          "device_events": len(device), "device_events_outside_calls": len(outside),
          "has_device": bool(device), "notes": notes, "histogram": histogram(trace)}


# ----------------------------------------------------------------------------- tables

# (label, dotted key, scale: us -> ms or 1 for counts)
ROWS = (
    ("wall, host to host (ms)", "wall_us", 1e-3),
    ("host: call -> first launch (ms)", "host_to_first_launch_us", 1e-3),
    ("first launch -> first device work (ms)", "launch_to_device_us", 1e-3),
    ("device span, first work -> last (ms)", "device_span_us", 1e-3),
    ("device busy (ms)", "device_busy_us", 1e-3),
    ("device idle in the span (ms)", "idle_us", 1e-3),
    ("idle gaps (count)", "gaps.count", 1),
    ("largest gap (ms)", "gaps.max_us", 1e-3),
    ("tail: last device work -> call end (ms)", "tail_us", 1e-3),
    ("kernels (count)", "kernels.count", 1),
    ("kernel time (ms)", "kernels.us", 1e-3),
    ("kernels started by a graph launch", "launched_by.graph_launch", 1),
    ("kernels started by their own launch", "launched_by.kernel_launch", 1),
    ("kernels without a matched launch", "launched_by.unmatched", 1),
    ("kernels - kernel launch calls", "launched_by.kernels_minus_kernel_launch_calls", 1),
    ("graph launches (count)", "api_by_category.graph_launch.count", 1),
    ("graph launch API time (ms)", "api_by_category.graph_launch.us", 1e-3),
    ("kernel launches (count)", "api_by_category.kernel_launch.count", 1),
    ("kernel launch API time (ms)", "api_by_category.kernel_launch.us", 1e-3),
    ("memcpy API calls (count)", "api_by_category.memcpy.count", 1),
    ("memcpy API time (ms)", "api_by_category.memcpy.us", 1e-3),
    ("sync API calls (count)", "api_by_category.sync.count", 1),
    ("sync API time (ms)", "api_by_category.sync.us", 1e-3),
    ("event API calls (count)", "api_by_category.event.count", 1),
    ("other API calls (count)", "api_by_category.other.count", 1),
    ("H2D copies (count)", "memcpy.h2d.count", 1),
    ("H2D copy time (ms)", "memcpy.h2d.us", 1e-3),
    ("H2D bytes", "memcpy.h2d.bytes", 1),
    ("D2H copies (count)", "memcpy.d2h.count", 1),
    ("D2H copy time (ms)", "memcpy.d2h.us", 1e-3),
    ("D2H bytes", "memcpy.d2h.bytes", 1),
    ("D2D copies (count)", "memcpy.d2d.count", 1),
    ("memsets (count)", "memset.count", 1),
)


def _fmt(v, scale) -> str:
  if v is None:
    return "-"
  v = v * scale
  return f"{v:.3f}" if scale != 1 else (f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}")


def comparison_markdown(title: str, columns: list[tuple[str, dict]]) -> str:
  """One table: a row per metric (medians over calls), a column per implementation, and each
  later column's ratio to the first (e.g. mosaic / xla)."""
  names = [n for n, _ in columns]
  head = ["metric"] + names + [f"{n} / {names[0]}" for n in names[1:]]
  lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  meds = [r["median"] for _, r in columns]
  for label, key, scale in ROWS:
    vals = [m.get(key) for m in meds]
    if all(v is None or v == 0 for v in vals) and key not in ("wall_us", "kernels.count"):
      continue
    ratios = ["-" if not vals[0] or v is None else f"{v / vals[0]:.2f}" for v in vals[1:]]
    lines.append("| " + " | ".join([label] + [_fmt(v, scale) for v in vals] + ratios) + " |")
  for name, r in columns:
    for note in r["notes"]:
      lines.append(f"\n{name}: {note}.")
    if r.get("device_events_outside_calls"):
      lines.append(f"\n{name}: {r['device_events_outside_calls']} device events lie outside every call "
                   "window (the compile, or a clock offset between host and device).")
  return "\n".join(lines) + "\n"


def api_markdown(name: str, report: dict, top: int = 12) -> str:
  """The CUDA API calls of one variant by name: median count and time per call."""
  med = report["median"]
  rows = sorted(((k[len("api."):-len(".count")], med[k], med.get(k[:-len("count")] + "us"))
                 for k in med if k.startswith("api.") and k.endswith(".count")), key=lambda r: -(r[2] or 0))
  if not rows:
    return f"{name}: no CUDA API calls in the trace.\n"
  lines = [f"{name}, CUDA API calls per call (median):", "", "| API | count | ms |", "|---|---|---|"]
  lines += [f"| {n} | {_fmt(c, 1)} | {_fmt(us, 1e-3)} |" for n, c, us in rows[:top]]
  return "\n".join(lines) + "\n"


def histogram_markdown(name: str, report: dict, top: int = 25) -> str:
  """The raw histogram's largest entries (all of them are in timeline.json)."""
  hist = report["histogram"]
  lines = [f"{name}: the trace's {len(hist)} (process, thread, name) entries, the {min(top, len(hist))} "
           "with the most time (all in timeline.json):", "",
           "| process | thread | name | ph | count | total ms |", "|---|---|---|---|---|---|"]
  cut = lambda s: s if len(s) <= 70 else s[:67] + "..."  # noqa: E731  kernel names run long
  lines += [f"| {r['process']} | {cut(r['thread'])} | {cut(r['name']).replace('|', '/')} | {r['ph']} | "
            f"{r['count']} | {r['total_us'] * 1e-3:.3f} |" for r in hist[:top]]
  return "\n".join(lines) + "\n"
