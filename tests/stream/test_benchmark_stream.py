"""experiments/benchmark_stream.py on the CPU (tiny random weights): one latency row per
--ae_conv x --bake_params variant, the soak on the first, and bad variant lists refused."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "experiments/benchmark_stream.py", "--sizes=tiny", "--resolution=64x64",
                         "--iters=4", "--warmup=1", "--profile_iters=2", "--soak_size=tiny", "--soak_frames=6",
                         "--mem_every=3", f"--out_dir={tmp_path}", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_row_per_variant(tmp_path):
  proc = _run(tmp_path, "--ae_conv=xla,gemm", "--bake_params=false,true")
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.load(open(tmp_path / "stream_bench.json"))
  rows = [(r["ae_conv"], r["bake_params"]) for r in res["latency"]]
  assert rows == [("xla", False), ("xla", True), ("gemm", False), ("gemm", True)]
  assert {r["kernel_impl"] for r in res["latency"]} == {"xla"}  # the model's own
  assert all(r["latency_ms"]["p50"] > 0 and r["compilations"] == 1 for r in res["latency"])
  assert res["soak"]["frames"] == 6
  md = (tmp_path / "stream_bench.md").read_text()
  assert md.count("| arguments |") == 2 and md.count("| baked |") == 2


def test_a_row_per_kernel_implementation(tmp_path):
  """--kernel_impl=xla,megastep: a row each, named by the implementation the model was given (on
  this CPU megastep runs per op, as auto does, and says so once)."""
  proc = _run(tmp_path, "--kernel_impl=xla,megastep", "--soak_size=")
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.load(open(tmp_path / "stream_bench.json"))
  assert [r["kernel_impl"] for r in res["latency"]] == ["xla", "megastep"]
  assert "| megastep |" in (tmp_path / "stream_bench.md").read_text()


def test_bad_variants_are_refused(tmp_path):
  for args, message in ((["--bake_params=maybe"], "--bake_params takes false and/or true"),
                        (["--kernel_impl=cuda"], "--kernel_impl"),
                        (["--ae_conv=cudnn"], "--ae_conv")):
    proc = _run(tmp_path, *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-1000:]
    assert not (tmp_path / "stream_bench.json").exists()
