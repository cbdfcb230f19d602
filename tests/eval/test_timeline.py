"""eval/timeline.py on synthetic GPU traces (kernels with known gaps on two streams, a graph launch
that starts three kernels, a kernel with its own launch, memcpys both ways, a derived device line
that must not count), broken trace files, and experiments/launch_timeline.py end to end on the
CPU (no device kernels there: the report says so).

Expected figures are computed from the synthetic events themselves, by a second method: busy time
and gaps from a boolean array of whole microseconds, not from interval arithmetic."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lsd_jax.eval import timeline, timeline_capture

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST, CUPTI, GPU = 1, 2, 3
PY, API_T, S7, S8, DERIVED = 10, 20, 7, 8, 99


def _meta():
  def m(ph_name, pid, name, tid=None):
    return {"ph": "M", "pid": pid, "name": ph_name, "args": {"name": name}, **({} if tid is None else {"tid": tid})}

  return [m("process_name", HOST, "/host:CPU"), m("process_name", CUPTI, "/host:CUPTI"),
          m("process_name", GPU, "/device:GPU:0"), m("thread_name", HOST, "python", PY),
          m("thread_name", CUPTI, "Host Threads/20", API_T),
          m("thread_name", GPU, "Stream #7(Kernel,MemcpyH2D,MemcpyD2H)", S7),
          m("thread_name", GPU, "Stream #8(Kernel)", S8), m("thread_name", GPU, "XLA Ops", DERIVED)]


def _x(pid, tid, name, ts, dur, **args):
  return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, **({"args": args} if args else {})}


def _call(t0, graph=True):
  """One call at t0 (us): H2D copy, kernels (by one graph launch, or each by its own launch), a
  kernel by its own launch, D2H copy. Returns (events, device events, api events)."""
  api = [_x(CUPTI, API_T, "cuMemcpyHtoDAsync_v2", t0 + 10, 5, correlation_id=t0 + 1)]
  dev = [_x(GPU, S7, "MemcpyH2D", t0 + 30, 3, correlation_id=t0 + 1,
            memcpy_details="kind_src:pageable kind_dst:device size:4096 dest:0 async:1")]
  graph_kernels = [(S7, "fusion_1", 40, 20), (S7, "fusion_2", 65, 30), (S8, "mosaic_gpu_attention", 70, 10)]
  if graph:
    api.append(_x(CUPTI, API_T, "cuGraphLaunch", t0 + 20, 12, correlation_id=t0 + 2))
  for i, (tid, name, ts, dur) in enumerate(graph_kernels):
    cid = t0 + 2 if graph else t0 + 10 + i
    if not graph:
      api.append(_x(CUPTI, API_T, "cuLaunchKernelEx", t0 + 20 + 5 * i, 4, correlation_id=cid))
    dev.append(_x(GPU, tid, name, t0 + ts, dur, correlation_id=cid))
  api += [_x(CUPTI, API_T, "cuLaunchKernel", t0 + 40, 4, correlation_id=t0 + 3),
          _x(CUPTI, API_T, "cuMemcpyDtoHAsync_v2", t0 + 50, 6, correlation_id=t0 + 4),
          _x(CUPTI, API_T, "cuStreamSynchronize", t0 + 60, 400)]
  dev += [_x(GPU, S7, "gemm_kernel", t0 + 110, 50, correlation_id=t0 + 3),
          _x(GPU, S7, "MemcpyD2H", t0 + 200, 8, correlation_id=t0 + 4,
             memcpy_details="kind_src:device kind_dst:pinned size:1024 dest:0 async:1")]
  host = [_x(HOST, PY, f"{timeline.CALL_PREFIX}{t0 // 1000 - 1}", t0, 500),
          _x(HOST, PY, "PjitFunction(step)", t0 + 2, 40),
          _x(GPU, DERIVED, "fusion_1", t0 + 40, 200)]  # derived line: not device work
  return host + api + dev, dev, api


def _trace(graph=True, calls=2):
  events, per_call = _meta(), []
  for i in range(calls):
    evs, dev, api = _call(1000 * (i + 1), graph)
    events += evs
    per_call.append((1000 * (i + 1), dev, api))
  events.append(_x(GPU, S7, "compile_probe", 50, 5))  # before every call: outside the windows
  events.append({})  # the exporter ends the list with an empty object
  return {"displayTimeUnit": "ns", "traceEvents": events}, per_call


def _busy_and_gaps(dev):
  """Busy microseconds and idle gaps from a boolean timeline (the events' times are integers)."""
  lo = min(e["ts"] for e in dev)
  hi = max(e["ts"] + e["dur"] for e in dev)
  busy = np.zeros(hi - lo, bool)
  for e in dev:
    busy[e["ts"] - lo:e["ts"] + e["dur"] - lo] = True
  edges = np.flatnonzero(np.diff(busy.astype(int)))  # ends and starts of idle stretches
  idle_runs = [int(b - a) for a, b in zip(edges[::2], edges[1::2])]
  return int(busy.sum()), idle_runs, lo, hi


def test_call_summary_on_a_graph_launch_trace():
  trace, per_call = _trace(graph=True)
  report = timeline.analyze(trace)
  assert report["calls"] == 2 and report["has_device"] and report["notes"] == []
  assert report["device_events_outside_calls"] == 1  # compile_probe
  for got, (t0, dev, api) in zip(report["per_call"], per_call):
    busy, idle, first, last = _busy_and_gaps(dev)
    kernels = [e for e in dev if "Memcpy" not in e["name"]]
    assert got["wall_us"] == 500
    assert got["device_busy_us"] == pytest.approx(busy)
    assert got["device_span_us"] == pytest.approx(last - first)
    assert got["gaps"]["count"] == len(idle) and got["gaps"]["us"] == pytest.approx(sum(idle))
    assert got["gaps"]["max_us"] == pytest.approx(max(idle)) and got["idle_us"] == pytest.approx(sum(idle))
    assert got["tail_us"] == pytest.approx(t0 + 500 - last)
    launches = [e for e in api if "Launch" in e["name"]]
    assert got["host_to_first_launch_us"] == pytest.approx(launches[0]["ts"] - t0)
    assert got["launch_to_device_us"] == pytest.approx(first - launches[0]["ts"])
    assert got["kernels"] == {"count": len(kernels), "us": pytest.approx(sum(e["dur"] for e in kernels))}
    assert got["launched_by"]["graph_launch"] == 3 and got["launched_by"]["kernel_launch"] == 1
    assert got["launched_by"]["kernels_minus_kernel_launch_calls"] == len(kernels) - len(launches)
    assert got["api_by_category"]["graph_launch"] == {"count": 1, "us": 12}
    assert got["api_by_category"]["sync"] == {"count": 1, "us": 400}
    assert got["api"]["cuMemcpyHtoDAsync_v2"] == {"count": 1, "us": 5}
    assert got["memcpy"]["h2d"] == {"count": 1, "us": 3, "bytes": 4096, "max_us": 3}
    assert got["memcpy"]["d2h"] == {"count": 1, "us": 8, "bytes": 1024, "max_us": 8}
    s8 = [e for e in dev if e["tid"] == S8]
    assert got["streams"]["Stream #8(Kernel)"] == {"kernels": len(s8), "events": len(s8),
                                                  "busy_us": sum(e["dur"] for e in s8)}
    assert "XLA Ops" not in "".join(got["streams"])  # the derived line is not a stream
  med = report["median"]
  assert med["wall_us"] == 500 and med["launched_by.graph_launch"] == 3


def test_kernels_each_launched_and_the_comparison_table():
  xla = timeline.analyze(_trace(graph=True)[0])
  kern = timeline.analyze(_trace(graph=False)[0])
  got = kern["per_call"][0]
  assert got["launched_by"] == {"kernel_launch": 4, "kernels_minus_kernel_launch_calls": 0}
  assert got["api_by_category"]["kernel_launch"]["count"] == 4 and got["api_by_category"]["graph_launch"]["count"] == 0
  md = timeline.comparison_markdown("step small 256x256", [("xla", xla), ("mosaic", kern)])
  row = lambda label: next(ln for ln in md.splitlines() if ln.startswith(f"| {label} |"))  # noqa: E731
  a, b = xla["median"]["api_by_category.kernel_launch.count"], kern["median"]["api_by_category.kernel_launch.count"]
  assert row("kernel launches (count)") == f"| kernel launches (count) | {a:.0f} | {b:.0f} | {b / a:.2f} |"
  assert row("kernels started by a graph launch").endswith("| 3 | - | - |")
  assert "| metric | xla | mosaic | mosaic / xla |" in md


def test_correlation_ids_missing_and_no_markers():
  trace, _ = _trace()
  for e in trace["traceEvents"]:
    (e.get("args") or {}).pop("correlation_id", None)
  got = timeline.analyze(trace)["per_call"][0]
  assert got["launched_by"] == {"no_correlation_id": 4, "kernels_minus_kernel_launch_calls": 4 - 2}
  bare = {"traceEvents": [e for e in trace["traceEvents"] if timeline.CALL_PREFIX not in str(e.get("name"))]}
  report = timeline.analyze(bare)
  assert report["calls"] == 0 and "no call markers" in report["notes"][0]


def test_histogram_keeps_every_event_name():
  trace, per_call = _trace()
  hist = timeline.histogram(trace)
  by_key = {(r["process"], r["thread"], r["name"]): r for r in hist}
  n = len(per_call)
  assert by_key[("/host:CUPTI", "Host Threads/20", "cuGraphLaunch")]["count"] == n
  assert by_key[("/host:CUPTI", "Host Threads/20", "cuStreamSynchronize")]["total_us"] == 400 * n
  assert by_key[("/device:GPU:0", "XLA Ops", "fusion_1")]["count"] == n  # kept here, though not device work
  assert sum(r["count"] for r in hist) == sum(1 for e in trace["traceEvents"] if e.get("ph") == "X")


def test_cpu_trace_reports_no_device():
  trace = {"traceEvents": _meta()[:1] + [_x(HOST, PY, f"{timeline.CALL_PREFIX}0", 0, 100),
                                          _x(HOST, PY, "ThunkExecutor::Execute", 5, 80)]}
  report = timeline.analyze(trace)
  assert not report["has_device"] and report["notes"] == [timeline.NO_DEVICE]
  assert report["per_call"][0]["device_busy_us"] is None and report["median"]["device_busy_us"] is None
  md = timeline.comparison_markdown("step tiny", [("xla", report)])
  assert "| wall, host to host (ms) | 0.100 |" in md and timeline.NO_DEVICE in md


# mtime=0: gzip stamps the current time into its header, and pytest-xdist needs every worker to
# collect the same test ids.
@pytest.mark.parametrize("content,message", [(None, "no trace file"), (b"", "is empty"),
                                             (b"not gzip at all", "not (gzipped) JSON"),
                                             (gzip.compress(b'{"traceEvents": 3}', mtime=0), "no traceEvents"),
                                             (gzip.compress(b'{"traceEv', mtime=0), "not (gzipped) JSON")],
                         ids=["missing", "empty", "not-gzip", "no-traceEvents", "truncated-json"])
def test_broken_trace_files_fail_clearly(tmp_path, content, message):
  path = tmp_path / "perfetto_trace.json.gz"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(timeline.TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
    timeline.load(str(path))


def test_find_trace(tmp_path):
  with pytest.raises(timeline.TraceError, match="create_perfetto_trace"):
    timeline.find_trace(str(tmp_path))
  run = tmp_path / "plugins" / "profile" / "2026_12_03"
  run.mkdir(parents=True)
  (run / "perfetto_trace.json.gz").write_bytes(gzip.compress(json.dumps(_trace()[0]).encode()))
  found = timeline.find_trace(str(tmp_path))
  assert timeline.analyze(timeline.load(found))["calls"] == 2


@pytest.mark.parametrize("flags,mode", [
    ("", "command buffers off in the trace (XLA's default)"),
    ("--xla_backend_optimization_level=0 --xla_enable_command_buffers_during_profiling=true",
     "command buffers on in the trace"),
    ("--xla_enable_command_buffers_during_profiling=false", "command buffers off in the trace (XLA's default)"),
    ("--xla_gpu_enable_command_buffer= --xla_enable_command_buffers_during_profiling=true", "command buffers off")])
def test_profiling_mode(flags, mode):
  assert timeline_capture.profiling_mode(flags) == mode


def test_experiment_on_the_cpu(tmp_path):
  """The tiny step and stream frame, XLA, traced on the CPU with command buffers kept on in the
  trace; then the step in XLA's default mode and a mosaic step (tiny's head_dim 32 is refused by
  the kernel) into the same folder: each mode its own table, the failure recorded beside them."""
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  graphs = {**env, "XLA_FLAGS": env.get("XLA_FLAGS", "") + " --xla_enable_command_buffers_during_profiling=true"}
  base = [sys.executable, "-m", "experiments.launch_timeline", "--sizes=tiny", "--resolutions=64x64",
          "--iters=2", "--warmup=0", f"--out_dir={tmp_path}"]
  first = subprocess.run(base + ["--impls=xla", "--what=step,stream"], cwd=ROOT, env=graphs, capture_output=True,
                         text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  second = subprocess.run(base + ["--impls=xla,mosaic", "--what=step"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  baked = subprocess.run(base + ["--impls=xla", "--what=stream", "--bake_params"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert baked.returncode == 0, baked.stderr[-3000:]
  result = json.loads((tmp_path / "timeline.json").read_text())
  on, off = "command buffers on in the trace", "command buffers off in the trace (XLA's default)"
  assert sorted(result["variants"]) == sorted([f"step tiny 64x64 xla, {on}", f"stream random-tiny S=2 64x64 xla, {on}",
                                               f"step tiny 64x64 xla, {off}", f"step tiny 64x64 mosaic, {off}",
                                               f"stream random-tiny S=2 64x64 xla baked, {off}"])
  assert result["variants"][f"stream random-tiny S=2 64x64 xla baked, {off}"]["bake_params"] is True
  for key in (f"step tiny 64x64 xla, {on}", f"stream random-tiny S=2 64x64 xla, {on}", f"step tiny 64x64 xla, {off}"):
    r = result["variants"][key]
    assert r["calls"] == 2 and not r["has_device"] and r["notes"] == [timeline.NO_DEVICE]
    assert os.path.isfile(tmp_path / r["trace"]) and r["histogram"]
    assert r["median"]["wall_us"] > 0 and r["untraced_p50_ms"] > 0 and r["profiling_mode"] in key
  assert "head_dim" in result["variants"][f"step tiny 64x64 mosaic, {off}"]["error"]
  md = (tmp_path / "timeline.md").read_text()
  assert f"### step tiny 64x64, {on}" in md and f"### step tiny 64x64, {off}" in md
  assert f"### stream random-tiny S=2 64x64, {on}" in md
  assert timeline.NO_DEVICE in md and f"**step tiny 64x64 mosaic, {off} failed**" in md
  assert md == timeline_capture.markdown(result)
