"""Shared fixtures: Mosaic GPU interpret mode on CPU, and the Hopper check for GPU tests."""

import jax
import jax.experimental.pallas.mosaic_gpu as plgpu
import pytest

from pallas_kernels import api


def pytest_configure(config):
  config.addinivalue_line("markers", "gpu: needs a Hopper (sm_90) GPU; skipped otherwise")
  config.addinivalue_line("markers", "slow: slower than a few seconds on a 2-core CPU")


@pytest.fixture
def interpret():
  """Runs Mosaic GPU kernels in interpret mode. Unwritten output elements read as NaN
  (the interpreter's default `uninitialized_memory="nan"`) and out-of-bounds reads raise, so
  every check below also checks that the kernel wrote its whole output."""
  with plgpu.force_gpu_interpret_mode(plgpu.InterpretGPUParams()):
    yield


@pytest.fixture
def hopper():
  if not api.is_hopper():
    dev = jax.devices()[0]
    pytest.skip(f"needs a Hopper GPU, have {dev.device_kind} ({dev.platform})")
