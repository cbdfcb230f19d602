"""The model on several devices for streaming: tensor parallelism and many streams at once.

A mesh has up to two axes, named by `sharding.TENSOR_RULES`:

- `model`: Megatron-style tensor parallelism of the denoiser. Every DiT block's attention heads
  (q/k/v columns, out-projection rows) and MLP columns (fc1 columns, fc2 rows) are split over the
  devices; each sub-block runs under `shard_map` on its slice and ends in one all-reduce
  (`layers.DiTBlock`). The autoencoder, the patch embedding, the conditioning (t, d, tau, prompt,
  adaLN modulation) and the final layer are replicated.
- `data`: independent streams of a batch (the many-streams throughput mode), split over devices.

A mesh is written `model:4`, `data:2,model:4` or just `4` (= `model:4`); one of a single device
(`1`, `model:1`, or none) is no mesh at all, so the one-device path stays exactly as it is. The
same frame function (`frame.frame_fns(cfg, mesh)`) runs on 1, 2, 4 or 8 devices:

  mesh = parallel.make_mesh("model:4")
  params = frame.prepare_params(cfg, params, mesh)    # tensor layout, placed per the rules
  f = jax.jit(frame.frame_fns(cfg, mesh).frame)       # traced under the mesh and its rules

Each device's q/k/v columns must be an ordinary q/k/v kernel of its own heads, so `prepare`
reorders the columns from (q, k, v) x heads to devices x (q, k, v) x its heads
(`to_tensor_layout`; `from_tensor_layout` is its inverse). A model whose heads do not divide
over the mesh (the large model's 12 over 8) is refused, or with `TensorParallel(pad_heads=True)`
given zero heads up to the next multiple (exact: they add zeros). Numerics: the reductions sum partial
products in another order than one device does (and, with `reduce_dtype="bfloat16"`, round them
to bf16 first), so outputs agree within bf16 tolerance, not bit for bit
(tests/models/test_parallel.py).

Several hosts: after `jax.distributed.initialize()` (one process per host) `jax.devices()` lists
every host's devices, and a mesh over them works the same way; keep `model` within a host
(NVLink), `data` across hosts.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lsd_jax.models import layers, lsd
from lsd_jax.models import sharding as sh
from pallas_kernels import api

AXES = (sh.DATA_AXIS, sh.MODEL_AXIS)  # mesh axes, outer to inner
_SPEC = re.compile(r"\s*([a-z]+)\s*:\s*([0-9]+)\s*")


def parse_mesh(spec: str | Mapping[str, int] | None) -> dict[str, int]:
  """{"data": D, "model": M} from `model:4`, `data:2,model:4`, `4` (= model:4), a mapping, or
  None / "" (one device). ValueError names what is wrong."""
  if spec is None or (isinstance(spec, str) and not spec.strip()):
    return {sh.DATA_AXIS: 1, sh.MODEL_AXIS: 1}
  if isinstance(spec, Mapping):
    axes = dict(spec)
  elif spec.strip().isdigit():
    axes = {sh.MODEL_AXIS: int(spec)}
  else:
    axes = {}
    for part in spec.split(","):
      m = _SPEC.fullmatch(part)
      if m is None:
        raise ValueError(f"a mesh is AXIS:SIZE[,AXIS:SIZE] over {AXES} (e.g. model:4 or data:2,model:4) "
                         f"or a tensor-parallel size, got {spec!r}")
      if m.group(1) in axes:
        raise ValueError(f"mesh axis {m.group(1)!r} given twice in {spec!r}")
      axes[m.group(1)] = int(m.group(2))
  unknown = set(axes) - set(AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)} in {spec!r}; the axes are {AXES}")
  for name, size in axes.items():
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"mesh axis {name!r} needs a size >= 1, got {size!r}")
  return {name: int(axes.get(name, 1)) for name in AXES}


def make_mesh(spec: str | Mapping[str, int] | None, devices: Sequence[Any] | None = None) -> Mesh | None:
  """A `data` x `model` mesh over the first D * M of `devices` (default: all of jax's, every
  host's after `jax.distributed.initialize()`); None for a single device."""
  axes = parse_mesh(spec)
  n = axes[sh.DATA_AXIS] * axes[sh.MODEL_AXIS]
  if n == 1:
    return None
  devices = list(jax.devices() if devices is None else devices)
  if n > len(devices):
    raise ValueError(f"mesh {format_mesh(axes)} needs {n} devices, have {len(devices)} "
                     f"({devices[0].platform})")
  return Mesh(np.asarray(devices[:n]).reshape(axes[sh.DATA_AXIS], axes[sh.MODEL_AXIS]), AXES)


MeshLike = Mesh | Mapping[str, int] | str | None


def _axes(mesh: MeshLike) -> dict[str, int]:
  return {a: int(mesh.shape.get(a, 1)) for a in AXES} if isinstance(mesh, Mesh) else parse_mesh(mesh)


def format_mesh(mesh: MeshLike) -> str:
  """`model:M`, `data:D` or `data:D,model:M`, its axes of one device left out (`1`: no mesh)."""
  axes = _axes(mesh)
  return ",".join(f"{a}:{axes[a]}" for a in AXES if axes[a] > 1) or "1"


def model_size(mesh: MeshLike) -> int:
  """Devices per tensor-parallel group (1 without a mesh)."""
  return _axes(mesh)[sh.MODEL_AXIS]


def data_size(mesh: MeshLike) -> int:
  """Stream groups a batch is split into (1 without a mesh)."""
  return _axes(mesh)[sh.DATA_AXIS]


def check(cfg: lsd.LSDConfig, mesh: MeshLike, batch: int | None = None, pad_heads: bool = False) -> None:
  """ValueError, naming the block and the divisors that would work, where `cfg` cannot split
  over `mesh`: every block's heads (unless `pad_heads`) and MLP width divisible by the `model`
  size, and `batch` (when given) by the `data` size."""
  m = model_size(mesh)
  s = cfg.model_size.denoiser
  splits = lambda k, j: (pad_heads or s.heads_of(j) % k == 0) and s.mlp_of(j) % k == 0  # noqa: E731
  for i in range(s.depth):
    if not splits(m, i):
      fits = [k for k in range(1, s.heads + 1) if all(splits(k, j) for j in range(s.depth))]
      pad = "" if pad_heads else " (or zero-pad the heads: TensorParallel(pad_heads=True), --tp_pad_heads)"
      raise ValueError(f"tensor parallelism over {m} devices splits every block's heads and MLP "
                       f"columns: {cfg.size} block {i} has {s.heads_of(i)} heads and an MLP of {s.mlp_of(i)}, "
                       f"not divisible by {m}; this model splits over model:{'|'.join(map(str, fits))}{pad}")
  d = data_size(mesh)
  if batch is not None and batch % d:
    raise ValueError(f"a batch of {batch} streams does not split over data:{d}")


def block_options(mesh: Mesh | None, options: layers.TensorParallel | None = None) -> layers.TensorParallel | None:
  """The DiT blocks' tensor-parallel options for `mesh` (None: no tensor parallelism)."""
  if model_size(mesh) == 1:
    return None
  return options or layers.TensorParallel()


# ----------------------------------------------------------------------------- parameters


def _qkv_order(x, groups: int, heads: int, forward: bool):
  """The q/k/v columns (last axis, (3, heads, head_dim) on one device) reordered to (groups, 3,
  heads/groups, head_dim), so that a contiguous split into `groups` gives each device the q/k/v
  kernel of its heads; `forward=False` undoes it."""
  lead, width = x.shape[:-1], x.shape[-1]
  hd = width // (3 * heads)
  split = (3, groups, heads // groups, hd) if forward else (groups, 3, heads // groups, hd)
  perm = tuple(range(len(lead))) + tuple(len(lead) + i for i in (1, 0, 2, 3))
  return x.reshape(*lead, *split).transpose(perm).reshape(*lead, width)


def _xp(x):
  """numpy for host arrays (loaded or random weights), jax.numpy for device arrays."""
  return np if isinstance(x, np.ndarray) else jnp


def _qkv_padded(x, heads: int, padded: int):
  """q/k/v columns (3, heads, head_dim) -> (3, padded, head_dim): the new heads' columns zero,
  or (padded < heads) the zero heads dropped again."""
  if padded == heads:
    return x
  lead, hd = x.shape[:-1], x.shape[-1] // (3 * heads)
  x = x.reshape(*lead, 3, heads, hd)
  if padded < heads:
    x = x[..., :padded, :]
  else:
    x = _xp(x).concatenate([x, _xp(x).zeros((*lead, 3, padded - heads, hd), x.dtype)], axis=-2)
  return x.reshape(*lead, 3 * padded * hd)


def _relayout(den_params, cfg: lsd.LSDConfig, groups: int, forward: bool, pad_heads: bool):
  s = cfg.model_size.denoiser
  out = dict(den_params)
  for i in range(s.depth):
    block = dict(out[f"block_{i}"])
    heads = s.heads_of(i)
    padded = layers.padded_heads(heads, groups, pad_heads)
    for name in ("qkv_kernel", "qkv_bias"):
      if forward:
        block[name] = _qkv_order(_qkv_padded(block[name], heads, padded), groups, padded, True)
      else:
        block[name] = _qkv_padded(_qkv_order(block[name], groups, padded, False), padded, heads)
    if padded > heads:  # the out-projection's rows of the zero heads (heads come in order)
      w, hd = block["out_kernel"], s.head_dim
      block["out_kernel"] = (_xp(w).concatenate([w, _xp(w).zeros(((padded - heads) * hd, w.shape[1]), w.dtype)])
                             if forward else w[:heads * hd])
    out[f"block_{i}"] = block
  return out


def to_tensor_layout(den_params, cfg: lsd.LSDConfig, groups: int, pad_heads: bool = False):
  """The denoiser's params with every block's q/k/v columns in the layout of `groups`
  tensor-parallel devices (same shapes; `groups` = 1 changes nothing). With `pad_heads`, blocks
  whose heads do not divide by `groups` get zero heads up to the next multiple (q/k/v columns
  and out-projection rows: the shapes grow)."""
  return den_params if groups == 1 else _relayout(den_params, cfg, groups, True, pad_heads)


def from_tensor_layout(den_params, cfg: lsd.LSDConfig, groups: int, pad_heads: bool = False):
  """The inverse of `to_tensor_layout`: the one-device layout (what export and training use)."""
  return den_params if groups == 1 else _relayout(den_params, cfg, groups, False, pad_heads)


def param_shardings(cfg: lsd.LSDConfig, mesh: Mesh, rules=sh.TENSOR_RULES) -> dict[str, Any]:
  """NamedShardings of {"autoencoder", "denoiser"} from the parameters' logical axis names."""
  boxed = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), cfg, boxed=True))
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, list(rules))


def prepare(cfg: lsd.LSDConfig, params: Mapping[str, Any], mesh: Mesh,
            tensor: layers.TensorParallel | None = None, rules=sh.TENSOR_RULES) -> dict[str, Any]:
  """`params` ({"autoencoder", "denoiser"}, host or device, one-device layout) in the tensor
  layout of `mesh` (zero heads added where `tensor.pad_heads` asks), placed on it per `rules`
  (each device holds its heads' and MLP columns' slices and a copy of everything else). The
  mega kernel has no tensor-parallel form: a `megastep` config runs per op here (logged once)."""
  pad = bool(tensor and tensor.pad_heads)
  check(cfg, mesh, pad_heads=pad)
  if cfg.kernel_impl == "megastep":
    api.warn_fallback_once("megastep", f"no tensor-parallel mega kernel (mesh {format_mesh(mesh)})")
  params = {"autoencoder": params["autoencoder"],
            "denoiser": to_tensor_layout(params["denoiser"], cfg, model_size(mesh), pad)}
  return jax.device_put(params, param_shardings(cfg, mesh, rules))


# ----------------------------------------------------------------------------- state and tracing


def stream_sharding(mesh: Mesh, batch_axis: bool = False) -> NamedSharding:
  """Where a stream's arrays live: replicated over the mesh, or (`batch_axis`) split by their
  leading (stream) axis over `data`."""
  return NamedSharding(mesh, P(sh.DATA_AXIS) if batch_axis and data_size(mesh) > 1 else P())


@contextlib.contextmanager
def traced_under(mesh: Mesh, rules=sh.TENSOR_RULES) -> Iterator[None]:
  """The context a frame function is traced in (inside `jax.jit`, unlike `jax.set_mesh`): the
  mesh for `shard_map` and the sharding constraints, and the logical rules that map the model's
  axis names onto it."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(list(rules)):
    yield
