"""experiments/benchmark_latency.py end to end on the CPU (small, one resolution, two calls):
the second call with --resume keeps the first call's rows and adds only what is missing."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import fake_devices_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(out_dir, impls, *extra):
  cmd = [sys.executable, "experiments/benchmark_latency.py", "--sizes=small", "--resolutions=256x256",
         "--steps=1", f"--impls={impls}", "--iters=2", "--warmup=1", f"--out_dir={out_dir}",
         "--label=t", *extra]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
  with open(os.path.join(out_dir, "latency_t.json")) as f:
    return json.load(f)["rows"]


@pytest.mark.slow
def test_resume_fills_in(tmp_path):
  first = _run(tmp_path, "xla")
  assert [(r["impl"], r["what"]) for r in first] == [("xla", "step"), ("xla", "frame")]
  second = _run(tmp_path, "xla,megastep", "--resume")
  assert second[:2] == first  # kept, not re-measured
  mega = [r for r in second[2:]]
  assert [(r["impl_requested"], r["what"]) for r in mega] == [("megastep", "step"), ("megastep", "frame")]
  assert mega[0]["impl"] == "megastep->xla"  # on the CPU the mega kernel falls back, and says so
  assert mega[0]["rel_err_vs_xla"] == 0.0  # against the XLA step recomputed in the second run
  assert (tmp_path / "latency_t.md").exists() and (tmp_path / "latency_t.png").exists()


def _measured_elsewhere(out_dir):
  """A finished one-cell run as an H100 wrote it (rows as benchmark_latency records them)."""
  floors = {"tokens": 256, "params_denoiser": 1, "step_flop_floor_ms": 0.01,
            "step_byte_floor_ms": 0.02, "frame_flop_floor_ms": 0.1, "frame_byte_floor_ms": 0.05}
  rows = [{"label": "t", "size": "small", "resolution": "256x256", "impl": "xla", "what": what,
           "steps": 1, "p50_ms": p50, "p99_ms": 2 * p50, "impl_requested": "xla",
           "random_weights": True, **floors} for what, p50 in (("step", 0.5), ("frame", 1.5))]
  run = {"device": "NVIDIA H100 80GB HBM3", "platform": "gpu", "jax": "0.11.2", "xla_flags": "",
         "kernel_ops": ["attention"], "iters": 100, "rows": rows}
  with open(os.path.join(out_dir, "latency_t.json"), "w") as f:
    json.dump(run, f)
  return run


def test_resume_rerenders_with_the_measuring_run_header(tmp_path):
  """Nothing left to run: the table is written again, headed by the device that measured it."""
  run = _measured_elsewhere(tmp_path)
  assert _run(tmp_path, "xla", "--resume") == run["rows"]
  md = (tmp_path / "latency_t.md").read_text()
  assert md.startswith("Device: NVIDIA H100 80GB HBM3 (gpu)") and "100 timed calls" in md
  assert "| 0.500 | 1.000 | 0.010 | 0.020 | 25.0 |" in md  # p50 over the larger floor


def test_resume_refuses_to_mix_devices(tmp_path):
  """Work left and another device (this CPU): one table would mix two machines' numbers."""
  _measured_elsewhere(tmp_path)
  with pytest.raises(subprocess.CalledProcessError) as err:
    _run(tmp_path, "xla,megastep", "--resume")
  assert "was measured with" in err.value.stderr.decode() and "H100" in err.value.stderr.decode()


@pytest.mark.parametrize("flag,says", [
    ("--resolutions=abc", "WIDTHxHEIGHT"), ("--resolutions=100x90", "not divisible"),
    ("--sizes=huge", "unknown model size"), ("--steps=0", ">= 1"), ("--impls=fast", "implementation"),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, flag, says):
  with pytest.raises(subprocess.CalledProcessError) as err:
    _run(tmp_path, "xla", flag)
  assert says in err.value.stderr.decode()
  assert not (tmp_path / "latency_t.json").exists()


def test_kernel_profiles_render(tmp_path):
  """Rows that carry a kernel profile (--profile on a GPU) get latency_<label>_kernels.md."""
  run = _measured_elsewhere(tmp_path)
  run["rows"][0].update(kernel_sum_ms=0.3, kernel_ms_by_category={"gemm": 0.2, "reduction": 0.1},
                        kernels=[{"name": "nvjet_hsh_128x256", "launches": 24, "ms": 0.2,
                                  "category": "gemm"},
                                 {"name": "input_reduce_fusion", "launches": 12, "ms": 0.1,
                                  "category": "reduction"}])
  with open(tmp_path / "latency_t.json", "w") as f:
    json.dump(run, f)
  _run(tmp_path, "xla", "--resume")
  md = (tmp_path / "latency_t_kernels.md").read_text()
  assert "### small 256x256 step, xla: kernels 0.300 ms of 0.500 ms host p50" in md
  assert "| gemm | 0.200 | 67% |" in md
  assert "| `nvjet_hsh_128x256` | 24 | 0.200 | gemm |" in md


def test_tensor_parallel_rows_on_fake_devices(tmp_path):
  """--tp on 8 fake CPU devices: rows per mesh, per-device floors, the speed-up column."""
  cmd = [sys.executable, "experiments/benchmark_latency.py", "--sizes=tiny", "--resolutions=64x64", "--steps=1",
         "--impls=xla", "--tp=1,2", "--iters=2", "--warmup=1", f"--out_dir={tmp_path}", "--label=t"]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": fake_devices_flags(8)}
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
  rows = json.load(open(tmp_path / "latency_t.json"))["rows"]
  assert [(r["mesh"], r["what"]) for r in rows] == [("1", "step"), ("1", "frame"), ("model:2", "step"),
                                                    ("model:2", "frame")]
  one, two = rows[0], rows[2]
  assert two["devices"] == 2 and two["tp_reduce"] == "bfloat16" and "tp_speedup_p50" in two
  assert two["step_flop_floor_ms"] == pytest.approx(one["step_flop_floor_ms"] / 2)  # the denoiser split in two
  assert one["step_byte_floor_ms"] / 2 < two["step_byte_floor_ms"] < one["step_byte_floor_ms"]  # conditioning replicated
  md = (tmp_path / "latency_t.md").read_text()
  assert "| tiny | 64x64 | 16 | frame | 1 | xla | model:2 |" in md and "Several devices" in md


def test_several_devices_table_renders(tmp_path):
  """Rows measured on GPUs elsewhere (a profiled TP row, a throughput row): the table of several
  devices with speed-up, NCCL share, the exposed-communication bound and frames/s."""
  run = _measured_elsewhere(tmp_path)
  base = run["rows"][1]
  tp = {**base, "mesh": "model:2", "tp": 2, "devices": 2, "streams": 1, "p50_ms": 0.5, "p99_ms": 0.6,
        "impl_requested": "xla", "kernel_sum_ms": 1.6, "comm_ms": 0.4, "comm_share": 0.25,
        "compute_ms_per_device": 0.3, "exposed_comm_ms_bound": 0.2}
  many = {**base, "mesh": "data:8", "tp": 1, "devices": 8, "streams": 8, "p50_ms": 2.0, "p99_ms": 2.5,
          "frames_per_s": 4000.0, "frames_per_s_pipelined": 5000.0}
  run["rows"] += [{**run["rows"][0], "mesh": "model:2", "tp": 2, "devices": 2}, tp,
                  {**run["rows"][0], "mesh": "data:8", "streams": 8, "devices": 8}, many]
  with open(tmp_path / "latency_t.json", "w") as f:
    json.dump(run, f)
  _run(tmp_path, "xla", "--resume")  # nothing left on one device: only re-rendered
  md = (tmp_path / "latency_t.md").read_text()
  assert "| small | 256x256 | frame | 1 | xla | model:2 | 1 | 0.500 | 0.600 | 3.00 | 25% | 0.200 |  |  |" in md
  assert "| small | 256x256 | frame | 1 | xla | data:8 | 8 | 2.000 | 2.500 |  |  |  | 4000 | 5000 |" in md
