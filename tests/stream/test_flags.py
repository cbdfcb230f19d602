"""Both front ends speak one flag vocabulary; --help shows the tool's own flags; no TPU noise."""

import os
import subprocess
import sys

import pytest

from lsd_jax.models import gemm_conv
from lsd_jax.stream import engine, model_flags
from pallas_kernels import api

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TOOLS = {"lsd-stream": "lsd_jax.stream.cli", "lsd-serve": "lsd_jax.stream.serve_cli"}


def test_spelt_out_constants_agree_with_their_sources():
  assert model_flags.MAX_STEPS == engine.MAX_STEPS
  assert tuple(model_flags.KERNEL_IMPLS) == tuple(api.IMPLEMENTATIONS)
  assert tuple(model_flags.AE_CONVS) == tuple(gemm_conv.CONV_CHOICES)


def _as_console_script(tool, *args):
  """Runs the tool as its console script does (sys.argv[0] is the script, not the module)."""
  code = (f"import sys; sys.argv = ['/venv/bin/{tool}', *sys.argv[1:]]; "
          f"from {TOOLS[tool]} import main; main()")
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        timeout=120, cwd=REPO, env=ENV)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_lists_the_tools_own_flags(tool):
  r = _as_console_script(tool, "--help")
  assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr[-2000:]  # absl: 1
  own = {"lsd-stream": ["--source", "--output", "--stats", "--osc_port"],
         "lsd-serve": ["--port", "--token", "--idle_timeout", "--vcam"]}[tool]
  for flag in own + ["--model_dir", "--steps", "--tau_inf", "--kernel_impl", "--seed", "--mesh"]:
    assert flag in r.stdout, (flag, r.stdout[:3000])
  assert "--helpfull" not in r.stdout.splitlines()[0]  # the docstring comes first, not a bare usage
  assert "--jax_" not in r.stdout  # jax's own flags stay under --helpfull


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_model_flags_and_old_spellings_are_the_same_flags(tool):
  for args, says in ((["--tau_inf=1.5"], "--tau_inf must be in [0, 1)"),
                     (["--tau-inf=1.5"], "--tau_inf must be in [0, 1)"),
                     (["--kernel_impl=cuda"], "kernel_impl"), (["--kernel-impl=cuda"], "kernel"),
                     (["--steps=17"], "--steps must be in 1..16"),
                     (["--noise_scale=3"], "--noise_scale must be in [0, 2]"),
                     (["--particle_noise_scale=-1"], "--particle_noise_scale must be in [0, 2]"),
                     (["--mesh=gpu:2"], "--mesh must be model:M")):
    r = _as_console_script(tool, *args)
    assert r.returncode == 1 and says in r.stderr, (tool, args, r.stderr[-1000:])
    assert "Traceback" not in r.stderr


def test_checkpoint_is_an_alias_of_model_dir(tmp_path):
  missing = tmp_path / "nope"
  for flag in ("--model_dir", "--checkpoint"):
    r = subprocess.run([sys.executable, "-m", "lsd_jax.stream.cli", "--source=procedural",
                        f"{flag}={missing}", "--frames=1"], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=ENV)
    assert r.returncode == 1 and f"{missing}" in r.stderr and "not a model folder" in r.stderr


def test_a_mesh_larger_than_the_machine_stops_before_the_model_loads(tmp_path):
  r = subprocess.run([sys.executable, "-m", "lsd_jax.stream.cli", "--source=procedural", "--frames=1",
                      f"--model_dir={tmp_path / 'nope'}", "--mesh=model:64"], capture_output=True, text=True,
                     timeout=120, cwd=REPO, env=ENV)
  assert r.returncode == 1 and "--mesh=model:64" in r.stderr and "needs 64 devices" in r.stderr, r.stderr[-2000:]
  assert "not a model folder" not in r.stderr  # checked before the model folder is even looked at


def test_bake_params_reaches_the_options_and_refuses_a_mesh(tmp_path):
  """--bake_params goes from the CLI's flags into StreamOptions, and with a mesh of several devices
  it stops before the model loads (baked weights live on one device); model:1 is one device."""
  from lsd_jax.stream import model_flags, runner

  assert "bake_params" in model_flags.NAMES and runner.StreamOptions(source="procedural").bake_params is False
  env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  r = subprocess.run([sys.executable, "-m", "lsd_jax.stream.cli", "--source=procedural", "--frames=1",
                      f"--model_dir={tmp_path / 'nope'}", "--mesh=model:2", "--bake_params"], capture_output=True,
                     text=True, timeout=120, cwd=REPO, env=env)
  assert r.returncode == 1 and "--bake_params needs one device" in r.stderr, r.stderr[-2000:]
  assert "not a model folder" not in r.stderr  # checked before the model folder is looked at
  runner.check_options(runner.StreamOptions(source="procedural", bake_params=True, mesh="model:1"))


def test_no_tpu_probe_noise(tiny_checkpoint):
  r = subprocess.run([sys.executable, "-m", "lsd_jax.stream.cli", "--source=procedural",
                      "--frames=1", "--noprogress", f"--model_dir={tiny_checkpoint}"],
                     capture_output=True, text=True, timeout=300, cwd=REPO,
                     env={k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"})
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Unable to initialize backend" not in r.stderr and "libtpu" not in r.stderr
