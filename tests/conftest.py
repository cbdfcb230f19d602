"""Shared fixtures: tests run on the CPU, in float32 matmul precision, fast by default.

Compilations are shared through JAX's persistent compilation cache in a folder made fresh for
each test run (the controller's, inherited by the xdist workers and the subprocesses tests
start), so a step that several tests (or processes) compile at the same shapes compiles once
per run; nothing carries over from one run to the next.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# On the CPU the tests compile at LLVM's optimisation level 0: their models are tiny, so compiling
# is most of the suite's time (about 60% of its CPU seconds at XLA's default level), and level 0
# halves that. XLA's optimised HLO (fusions, layouts, collectives) is the same at either level;
# results differ only in rounding (LLVM's instruction choices, e.g. fused multiply-adds). Set in
# the environment, so the xdist workers and the subprocesses tests start (CLIs, notebooks, probes)
# compile the same way (`fake_devices_flags` keeps it where a test sets XLA_FLAGS). A level given
# in XLA_FLAGS wins, e.g. `XLA_FLAGS=--xla_backend_optimization_level=3 pytest` for XLA's default.
if os.environ["JAX_PLATFORMS"] == "cpu" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR = tempfile.mkdtemp(prefix="lsd-test-jax-cache-")
  # Every compilation goes into the cache, the quick ones too: the two workers and the tests'
  # subprocesses compile many of the same small programs, and at a 0.5 s threshold each compiled
  # its own. Measured on 2 cores, alternating runs of one clone (2026-12-02): 505.4 s and 917
  # user CPU-s at 0.5 s, 442.8 / 786 and 428.5 / 772 at 0.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
else:
  _CACHE_DIR = None  # a worker of this run, or a cache the caller chose: not ours to remove

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


def fake_devices_flags(n: int) -> str:
  """XLA_FLAGS for a subprocess on `n` fake CPU devices, keeping this run's other flags."""
  return (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()


def randomize(params, key, scale: float = 0.2):
  """Replaces every parameter by noise: zero-initialised layers would hide dependencies."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.fixture
def rng():
  return jax.random.key(0)


@pytest.fixture
def interpret():
  """Runs Mosaic GPU kernels in interpret mode. Unwritten output elements read as NaN
  (the interpreter's default `uninitialized_memory="nan"`) and out-of-bounds reads raise, so
  every check also checks that the kernel wrote its whole output."""
  import jax.experimental.pallas.mosaic_gpu as plgpu

  with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
    yield


@pytest.fixture
def hopper():
  from pallas_kernels import api

  if not api.is_hopper():
    dev = jax.devices()[0]
    pytest.skip(f"needs a Hopper GPU, have {dev.device_kind} ({dev.platform})")


def pytest_addoption(parser, pluginmanager):
  """setup.cfg runs the suite on two workers (`-n 2`, pytest-xdist, the dev extra). Where xdist is
  not installed (a bare interpreter, e.g. a GPU machine running `-m gpu` tests) or is disabled
  (`-p no:xdist`), `-n` is accepted and ignored: the tests run in one process."""
  if not pluginmanager.hasplugin("xdist"):  # _addoption: pytest reserves lowercase short options for plugins
    parser.getgroup("xdist")._addoption("-n", "--numprocesses", dest="numprocesses", default=None,  # noqa: SLF001
                                        help="ignored without pytest-xdist: the tests run in one process")


@pytest.hookimpl(tryfirst=True)  # before xdist's own (registered earlier, so called later)
def pytest_cmdline_main(config):
  """On a GPU (JAX_PLATFORMS=cuda, as the device stages run `-m gpu`) the tests run in one
  process: two workers would each claim the device's memory."""
  if os.environ["JAX_PLATFORMS"] not in ("", "cpu") and getattr(config.option, "numprocesses", None):
    config.option.numprocesses = 0


def pytest_unconfigure(config):
  if _CACHE_DIR is not None and not hasattr(config, "workerinput"):  # the run's own cache, at its end
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


# End-to-end runs kept out of the fast suite (README "Tests" lists them): each trains, benchmarks
# or drives a command line in fresh processes, a minute or more of the 2-core CI machine. Listed
# here rather than decorated in their files, so that a renamed test falls back into the fast
# suite instead of out of every run. Run them in one process, as the timed one needs:
# `.venv/bin/python -m pytest -q -m slow -n 0`.
SLOW_END_TO_END = {
    # its bound (both smoke configs train in under two minutes) is wall time, which two workers
    # on two cores share: it holds for a run of its own, not beside another worker
    "tests/train/test_loop.py::test_lsd_smoke_trains_end_to_end_under_two_minutes",
    "tests/train/test_loop.py::test_killed_run_resumes_with_the_same_losses",  # three smoke trainings
    "tests/train/test_loop.py::test_sharded_step_matches_one_device",  # two trainings on 1 and 8 fake devices
    "tests/train/test_benchmark_train.py::test_smoke_step_is_timed_and_flops_agree_with_xla",  # the script
    "tests/train/test_scaling.py::test_benchmark_reports_per_device_throughput_and_efficiency",  # the script, twice
    "tests/train/test_scaling.py::test_base_config_partitions_data_parallel_and_fsdp_over_8_devices",  # a 70 s compile
    "tests/distill/test_pipeline.py::test_prune_then_distill_end_to_end",  # prune, distill, export
    # evaluate.py three times; the same stop and resume is checked in the library by
    # test_resume.py::test_stopped_and_resumed_stream_equals_uninterrupted (fast)
    "tests/eval/test_resume.py::test_evaluate_cli_stops_and_resumes_exactly",
    # added 2026-12-01 (issue 18: the fast suite in 8 minutes on 2 cores); each names what covers it
    # the smoke recipe's held-out logging: the same assertions run on the v3 recipe's training,
    # test_heldout.py::test_v3_recipe_trains_end_to_end (fast)
    "tests/train/test_heldout.py::test_training_logs_heldout_psnr_and_per_effect_losses",
    # an LSD training on the distilled light autoencoder; the distillation itself stays fast
    # (test_light_autoencoder_learns_the_teachers_latent_space), and an LSD run on a light
    # autoencoder with its export's kind and latent scale is test_v3_recipe_trains_end_to_end's
    "tests/train/test_light_autoencoder.py::test_lsd_trains_on_the_distilled_light_autoencoder",
    # added 2026-12-02 (issue 18: a clean clone on a quiet machine ran the fast suite in 489 s,
    # over the 480 s bar); the research CLIs end to end, each run three times in a subprocess:
    # evaluate.py (32 s): its chunked stream is test_evaluate.py::test_chunked_stream_equals_one_scan,
    # its stop and resume test_resume.py::test_stopped_and_resumed_stream_equals_uninterrupted,
    # its --tau_inf override test_engine.py::test_tau_inf_override (all fast)
    "tests/eval/test_evaluate.py::test_evaluate_cli_end_to_end",
    # eval_fidelity.py (19 s): its rollout is test_heldout.py::test_batched_probe_rollout_matches_the_fidelity_eval,
    # its bar (paraphrase gap included) test_bar.py (fast)
    "tests/eval/test_evaluate.py::test_eval_fidelity_cli_tau_inf",
    # the latency benchmark's --tp rows on 8 fake devices (13 s): the split model's equality is
    # test_parallel.py::test_split_over_2_4_8_devices_equals_one_device, the several-devices
    # table test_benchmark_latency.py::test_several_devices_table_renders (fast)
    "tests/scripts/test_benchmark_latency.py::test_tensor_parallel_rows_on_fake_devices",
}


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.split("[")[0] in SLOW_END_TO_END:
      item.add_marker(pytest.mark.slow)


# Test files whose tests share an expensive module- or session-scoped fixture, kept on one xdist
# worker: scheduled test by test (xdist's `load`), a module's tests land on both workers, and each
# worker then builds the fixture (the parallel probe, a 40 s subprocess, ran twice). xdist's own
# `--dist loadgroup` does not group with pytest 9.2 (it rewrites a node id pytest no longer
# reads), so the default `load` gets this scheduler instead: these files are one work unit each,
# handed out first (largest first), then every other test on its own, in collection order.
SHARED_FIXTURE_FILES = {
    "tests/models/test_parallel.py": "parallel probe",  # its `probe`: 8 fake devices in a subprocess
    # the smoke autoencoders trained once per process (tests/train/conftest.py)
    "tests/train/test_loop.py": "smoke autoencoders",
    "tests/train/test_light_autoencoder.py": "smoke autoencoders",
    "tests/train/test_heldout.py": "smoke autoencoders",
    # module fixtures (and the eager draws and compiles behind them) that each worker would build
    "tests/diffusion/test_sampler.py": "random denoisers",  # `model`, one per history mode
    "tests/models/test_prune.py": "small denoiser",  # `model`, a randomised small denoiser
    "tests/train/test_warm_start.py": "exported model",  # `exported`
}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without xdist
def pytest_xdist_make_scheduler(config, log):
  if config.getvalue("dist") != "load":
    return None  # another --dist asked for: xdist's own
  from xdist.scheduler import LoadScopeScheduling

  class SharedFixtureScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid):
      return SHARED_FIXTURE_FILES.get(nodeid.split("::")[0], nodeid)

  return SharedFixtureScheduling(config, log)
