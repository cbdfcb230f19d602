"""Meshes from the config and shardings of the train state by logical axis rules.

The same code runs on one GPU, eight GPUs, eight fake CPU devices in tests, and many hosts
(after `jax.distributed.initialize()`): the config names mesh axes (`data`, `fsdp`) and the
rules map the model's logical axes onto them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axes: dict[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over all devices (or `devices`, e.g. the first N of them to time scaling); one axis
  size may be -1 (the rest of the devices)."""
  names, sizes = list(axes), list(axes.values())
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1: {axes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"{n} devices do not divide into mesh {axes}")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, have {n}")
  return Mesh(np.asarray(devices).reshape(sizes), names)


def state_shardings(abstract_boxed_state, mesh: Mesh, rules: Sequence[tuple[str, Any]]):
  """NamedShardings for every leaf of a state built from logically boxed parameters."""
  specs = nn.get_partition_spec(abstract_boxed_state)
  return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, batch_axes: tuple[str, ...] = ("data", "fsdp")) -> NamedSharding:
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  return NamedSharding(mesh, P(axes))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """The mesh and logical axis rules under which steps are traced, so that the model's activation
  constraints (`lsd_jax.models.sharding.constrain`) take effect.

  `jax.set_mesh`, not the legacy `with mesh:`: Flax's `with_logical_constraint` looks for the
  abstract mesh, which `with mesh:` does not set in jax 0.11, so under it every constraint was
  silently dropped (tests/train/test_mesh_context.py).
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    yield


def sharded_init(init_fn: Callable[[], Any], mesh: Mesh, rules) -> tuple[Any, Any]:
  """Runs `init_fn` (which returns a boxed state) directly into its shardings; returns
  (unboxed state, shardings)."""
  abstract = jax.eval_shape(init_fn)
  shardings = state_shardings(abstract, mesh, rules)
  with activate(mesh, rules):
    state = jax.jit(lambda: nn.meta.unbox(init_fn()), out_shardings=shardings)()
  return state, shardings
