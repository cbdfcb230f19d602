"""Shared fixtures: tests run on the CPU, in float32 matmul precision, fast by default."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402


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
