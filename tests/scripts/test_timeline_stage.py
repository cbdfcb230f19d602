"""`pallas_kernels/gpu_session.sh timeline`: the launch-timeline runs it makes (small with the
shipped model's frame, then large per implementation) and how it packs them into at most two
files under $OUT, each under the limit. `python3` is a stub that records its arguments and writes
what the experiment would (a report, a trace folder with an XSpace of a chosen size), so nothing
is traced; experiments/launch_timeline.py itself runs end to end in tests/eval/test_timeline.py."""

import os
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUB = r"""#!/bin/sh
echo "XLA_FLAGS=[$XLA_FLAGS] $@" >> "$STUB_LOG"
for a in "$@"; do case $a in --out_dir=*) d=${a#--out_dir=};; --impls=*) i=${a#--impls=};; --sizes=*) s=${a#--sizes=};;
  --resolutions=*) r=${a#--resolutions=};; esac; done
run="$d/traces/step_${s}_${r}_$i/plugins/profile/2026_12_03"
mkdir -p "$run"
head -c "$XPLANE_BYTES" /dev/urandom > "$run/vm.xplane.pb"
head -c 2000 /dev/urandom | gzip > "$run/perfetto_trace.json.gz"
cp "$run/perfetto_trace.json.gz" "$run/vm.trace.json.gz"
echo "| /host:CPU | python | x | X | 1 | 0.1 |" >> "$d/timeline.md"
echo "| wall, host to host (ms) | $s $i |" >> "$d/timeline.md"
echo '{"variants": {}}' > "$d/timeline.json"
"""


def _stage(tmp_path, xplane_bytes, **knobs):
  stub = tmp_path / "bin"
  stub.mkdir(exist_ok=True)
  (stub / "python3").write_text(STUB)
  (stub / "python3").chmod(0o755)
  out = tmp_path / "out"
  env = dict(os.environ, OUT=str(out), TL_DIR=str(tmp_path / "tl"), STUB_LOG=str(tmp_path / "calls.log"),
             XPLANE_BYTES=str(xplane_bytes), PATH=f"{stub}{os.pathsep}{os.environ['PATH']}",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), XLA_FLAGS="", **knobs)
  proc = subprocess.run(["bash", "pallas_kernels/gpu_session.sh", "timeline"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  calls = (tmp_path / "calls.log").read_text().splitlines()
  return proc.stdout, calls, out


def _members(path):
  with tarfile.open(path) as t:
    return sorted(m.name.lstrip("./") for m in t.getmembers() if m.isfile())


def test_timeline_stage_runs_small_then_large_and_packs_two_files(tmp_path):
  stdout, calls, out = _stage(tmp_path, 1000)
  assert len(calls) == 5
  small, baked, large_xla, large_mosaic, op_by_op = calls
  graphs = "XLA_FLAGS=[ --xla_enable_command_buffers_during_profiling=true]"
  assert small.startswith(f"{graphs} -m experiments.launch_timeline --impls=xla,mosaic --sizes=small "
                          "--resolutions=256x256 --what=step,stream --checkpoint=checkpoints/lsd_small "
                          "--ae_conv=xla,gemm --iters=20")
  assert baked.startswith(f"{graphs} -m experiments.launch_timeline --impls=xla --sizes=small "
                           "--resolutions=256x256 --what=stream --checkpoint=checkpoints/lsd_small") \
      and "--bake_params" in baked
  assert large_xla.startswith(f"{graphs} -m experiments.launch_timeline --impls=xla --sizes=large "
                              "--resolutions=832x480 --what=step")
  assert large_mosaic.startswith(graphs) and "--impls=mosaic --sizes=large" in large_mosaic
  assert op_by_op.startswith("XLA_FLAGS=[] ") and "--sizes=small --resolutions=256x256 --what=step " in op_by_op
  assert sorted(os.listdir(out)) == ["timeline_report.tgz", "timeline_traces.tgz"]
  traces = _members(out / "timeline_traces.tgz")
  assert len(traces) == 8 and not any(t.endswith("vm.trace.json.gz") for t in traces)  # the duplicate stays
  report = _members(out / "timeline_report.tgz")
  assert report == ["large_mosaic.log", "large_xla.log", "small.log", "small_baked.log", "small_op_by_op.log",
                    "timeline.json", "timeline.md", "traces_left_out.txt"]
  assert "packed at level all; 0 trace files left out" in stdout
  assert "| wall, host to host (ms) | large mosaic |" in stdout and "| /host:CPU" not in stdout  # histograms cut


def test_timeline_stage_drops_xspaces_over_the_limit(tmp_path):
  """Two 0.6 MiB XSpaces (incompressible; the op-by-op run of tiny:64x64 writes into the small
  run's folder here) over a 1 MiB limit: the traces' file keeps the perfetto traces only, and the
  report names what it left out."""
  stdout, calls, out = _stage(tmp_path, 600_000, TL_MAX_MB="1", TL_CHECKPOINT="", TL_IMPLS="xla",
                              TL_SMALL="tiny:64x64", TL_LARGE="tiny:128x128")
  assert len(calls) == 4 and "--checkpoint= " in calls[0] and "--bake_params" in calls[1] and "--sizes=tiny --resolutions=128x128" in calls[2]
  assert all(os.path.getsize(out / f) <= 2**20 for f in os.listdir(out)) and len(os.listdir(out)) == 2
  traces = _members(out / "timeline_traces.tgz")
  assert len(traces) == 2 and all(t.endswith("perfetto_trace.json.gz") for t in traces)
  with tarfile.open(out / "timeline_report.tgz") as t:
    left = t.extractfile("./traces_left_out.txt").read().decode().split()
  assert len(left) == 2 and all(f.endswith("vm.xplane.pb") for f in left)
  assert "packed at level no_xplane; 2 trace files left out" in stdout


def test_timeline_stage_leaves_the_traces_out_when_nothing_fits(tmp_path):
  stdout, calls, out = _stage(tmp_path, 1000, TL_MAX_MB="0", TL_IMPLS="xla", TL_BAKE="0")
  assert len(calls) == 3 and not any("--bake_params" in c for c in calls)  # TL_BAKE=0: no baked run
  assert os.listdir(out) == ["timeline_report.tgz"]
  with tarfile.open(out / "timeline_report.tgz") as t:
    left = t.extractfile("./traces_left_out.txt").read().decode().split()
  assert len(left) == 4 and "packed at level small_perfetto; 4 trace files left out" in stdout  # 2 runs' traces


GRID_STUB = r"""#!/bin/sh
echo "$@" >> "$STUB_LOG"
for a in "$@"; do case $a in --out_dir=*) d=${a#--out_dir=};; esac; done
if [ -f "$d/latency_grid.json" ]; then echo "resumed $(cat "$d/latency_grid.json")" >> "$STUB_LOG"; fi
echo '{"rows": ["new"]}' > "$d/latency_grid.json"; echo "| grid |" > "$d/latency_grid.md"
"""


def test_grid_stage_resumes_its_own_folder_seeded_from_a_carried_file(tmp_path):
  """`gpu_session.sh grid` measures into GRID_DIR (not reports/latency/grid/, whose finished H100
  table a resumed run would only render again), seeds it once from GRID_FROM, and brings both
  files back; a second call on the warm machine resumes the folder, not the seed."""
  stub = tmp_path / "bin"
  stub.mkdir()
  (stub / "python3").write_text(GRID_STUB)
  (stub / "python3").chmod(0o755)
  seed = tmp_path / "carried.json"
  seed.write_text('{"rows": ["h200 partial"]}')
  grid, out, log = tmp_path / "grid", tmp_path / "out", tmp_path / "calls.log"
  env = dict(os.environ, OUT=str(out), GRID_DIR=str(grid), GRID_FROM=str(seed), STUB_LOG=str(log),
             PATH=f"{stub}{os.pathsep}{os.environ['PATH']}", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
  for _ in range(2):
    out.mkdir(exist_ok=True)
    proc = subprocess.run(["bash", "pallas_kernels/gpu_session.sh", "grid"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
  calls = log.read_text().splitlines()
  assert f"--out_dir={grid}" in calls[0] and "--resume" in calls[0] and "reports/latency/grid" not in calls[0]
  assert calls[1] == 'resumed {"rows": ["h200 partial"]}'  # the first call resumed the carried seed
  assert calls[3] == 'resumed {"rows": ["new"]}'  # the second, its own folder (the seed copied once)
  assert sorted(p.name for p in out.iterdir()) == ["latency_grid.json", "latency_grid.md"]
