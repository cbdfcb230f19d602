"""Training that scales: which runs the scaling benchmark times and their efficiency; the
benchmark over 1 and 2 of 8 fake CPU devices; the base config's train step partitioned data
parallel x FSDP over 8 fake devices (compiled, not run: its 8 devices' shards need about 21 GB
of host memory at batch 8, more than a CPU test box may have; the smoke config's sharded step
runs and matches one device in test_loop.py)."""

import json
import os
import subprocess
import sys

import pytest

from lsd_jax.train import scaling
from tests.conftest import fake_devices_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EIGHT = {**os.environ, "XLA_FLAGS": fake_devices_flags(8), "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": ROOT}


def test_runs_weak_and_fixed_batch():
  assert scaling.runs(["32"], [], 0, 8) == [(32, 8)]  # as before: every batch on all devices
  assert scaling.runs(["32", "64"], ["1", "4"], 0, 8) == [(32, 1), (64, 1), (32, 4), (64, 4)]
  assert scaling.runs(["32"], ["1", "4", "8"], 8, 8) == [(8, 1), (32, 4), (64, 8)]  # weak scaling
  with pytest.raises(ValueError, match="8 devices asked for, this machine has 4"):
    scaling.runs(["32"], ["8"], 8, 4)


def test_efficiency_against_one_device_at_the_same_batch_per_device():
  runs = [{"batch": 8, "devices": 1, "samples_per_s_per_device": 100.0},
          {"batch": 32, "devices": 4, "samples_per_s_per_device": 90.0},
          {"batch": 16, "devices": 4, "samples_per_s_per_device": 80.0}]  # 4 per device: no reference
  scaling.add_efficiency(runs)
  assert runs[0]["scaling_efficiency"] == 1.0 and runs[1]["scaling_efficiency"] == pytest.approx(0.9)
  assert "scaling_efficiency" not in runs[2]
  other = [{"batch": 8, "devices": 1, "samples_per_s_per_device": 120.0}]  # a one-GPU machine's run
  scaling.add_efficiency(runs, other)
  assert runs[1]["scaling_efficiency"] == pytest.approx(0.75) and runs[1]["scaling_reference"]["from"] == "baseline"


def test_benchmark_reports_per_device_throughput_and_efficiency(tmp_path):
  subprocess.run([sys.executable, "experiments/benchmark_train.py", "--config=experiments/configs/lsd.py:smoke",
                  "--device_counts=1,2", "--per_device_batch=2", "--iters=2", "--repeats=1", f"--out_dir={tmp_path}"],
                 cwd=ROOT, env=EIGHT, check=True, capture_output=True, timeout=600)
  one, two = json.load(open(tmp_path / "train_mfu_lsd_smoke.json"))["runs"]
  assert (one["batch"], one["devices"], two["batch"], two["devices"]) == (2, 1, 4, 2)
  assert two["mesh"] == {"data": 2, "fsdp": 1}
  assert two["samples_per_s_per_device"] == pytest.approx(two["batch"] * two["steps_per_s"] / 2)
  assert two["scaling_efficiency"] == pytest.approx(two["samples_per_s_per_device"] / one["samples_per_s_per_device"])
  assert "| 4 | 2 | data:2,fsdp:1 |" in (tmp_path / "train_mfu_lsd_smoke.md").read_text()


BASE_ON_EIGHT = r"""
import json, tempfile
import flax.linen as nn
import jax
from experiments import benchmark_train
from experiments.configs import lsd as lsd_config
from lsd_jax.datasets import pipeline
from lsd_jax.train import loop, sharding, tasks

config = lsd_config.get_config("base")
config.data.height = config.data.width = 32
config.data.global_batch_size = 8
config.data.sources.library.weight = 0.0
config.data.worker_count = 0
config.mesh.fsdp = 4  # data: -1 -> 2
with tempfile.TemporaryDirectory() as tmp:
  benchmark_train._random_autoencoder(config, tmp)
  config.autoencoder_dir = tmp
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = [(r[0], tuple(r[1]) if isinstance(r[1], (list, tuple)) else r[1]) for r in config.rules]
  table = loop.prompt_table(config.data.prompt_split)
  task = tasks.build(config, table)
  shardings = sharding.state_shardings(jax.eval_shape(task.init), mesh, rules)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       jax.eval_shape(lambda: nn.meta.unbox(task.init())), shardings)
  batch_sh = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
           for k, v in next(pipeline.make_iterator(config.data, table)).items()}
  repl = sharding.replicated(mesh)
  extras = jax.device_put(task.frozen, repl)
  jitted = jax.jit(lambda s, b, k, ex: task.step(s, b, k, **ex), in_shardings=(shardings, batch_sh, repl, repl),
                   out_shardings=(shardings, repl), donate_argnums=0)
  with sharding.activate(mesh, rules):
    compiled = jitted.lower(state, batch, jax.random.key(1), extras).compile()
  fc1 = state.params["block_0"]["fc1_kernel"]
  print(json.dumps({"mesh": dict(mesh.shape), "fc1": [list(fc1.shape), list(fc1.sharding.shard_shape(fc1.shape))],
                    "all_gathers": compiled.as_text().count(" all-gather("),
                    "argument_mb": compiled.memory_analysis().argument_size_in_bytes / 2**20}))
"""


def test_base_config_partitions_data_parallel_and_fsdp_over_8_devices():
  out = subprocess.run([sys.executable, "-c", BASE_ON_EIGHT], cwd=ROOT, env=EIGHT, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["mesh"] == {"data": 2, "fsdp": 4}
  assert res["fc1"] == [[768, 3072], [192, 3072]]  # FSDP: each device a quarter of the embed rows
  assert res["all_gathers"] > 0  # the weights gathered per use
  assert res["argument_mb"] < 0.6 * 4 * 4 * 134e6 / 2**20  # well under the whole f32 state (params, EMA, Adam)


def test_loop_rate_skips_the_compiling_logs(tmp_path):
  path = tmp_path / "train_metrics.jsonl"
  path.write_text("\n".join(json.dumps({"step": s, "loss": 1.0, "steps_per_sec": r})
                            for s, r in ((10, 0.5), (20, 4.0), (30, 5.0), (40, 6.0))) + "\n")
  r = scaling.loop_rate(str(path), devices=4, batch=64)
  assert r["steps_per_s"] == 5.0 and r["logs"] == 3 and r["samples_per_s_per_device"] == 80.0
  runs = [{**scaling.loop_rate(str(path), devices=1, batch=16)}, r]
  scaling.add_efficiency(runs)
  assert runs[1]["scaling_efficiency"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="no steps/s"):
    scaling.loop_rate(str(path), devices=1, batch=16, skip=4)
