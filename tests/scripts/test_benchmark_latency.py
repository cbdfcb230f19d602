"""experiments/benchmark_latency.py end to end on the CPU (small, one resolution, two calls):
the second call with --resume keeps the first call's rows and adds only what is missing."""

import json
import os
import subprocess
import sys

import pytest

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
