"""The grain input pipeline: a weighted mixture of clip sources, each clip paired with a prompt.

Host batches are dicts of numpy arrays:

    clip                uint8   BxTxHxWx3   input frames (effects run on device, in the step)
    effect_frame_id     int32   B           per-frame effect of the prompt
    effect_temporal_id  int32   B           temporal effect of the prompt
    effect_params       float32 BxP         effect parameters
    prompt_emb          float32 Bx384       text embedding of the prompt
    prompt_id           int32   B           row of the prompt table
    source_id           int32   B           which source (order of `source_names(config)`)

Everything is a function of (config.seed, global example index): the mixture (grain's
MapDataset.mix over endless random-access sources), each source's crop / camera / scene, and the
prompt. Process p of n reads global examples p, p + n, p + 2n, ... so hosts never overlap, and
the iterator's `get_state()` / `set_state()` resume exactly. Orbax saves it next to the train
state with grain's handler:

    ckpt = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=grain.checkpoint.CheckpointSave(data_iter))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lsd_jax.datasets import sources

EMBED_DIM = 384
SOURCE_NAMES = ("library", "photos", "procedural", "folder")
# Salt so the prompt draw of example i is independent of the sources' draws for example i.
_PROMPT_SALT = 0x5EED_0001


@dataclasses.dataclass(frozen=True)
class PromptTable:
  """Prompts the pipeline samples from: row i is one prompt and its effect."""
  texts: tuple[str, ...]
  embeddings: np.ndarray  # Nx384 float32
  frame_ids: np.ndarray  # N int32
  temporal_ids: np.ndarray  # N int32
  params: np.ndarray  # NxP float32

  def __post_init__(self):
    n = len(self.texts)
    if n == 0:
      raise ValueError("PromptTable is empty")
    checks = {"embeddings": (self.embeddings, (n, EMBED_DIM)),
              "frame_ids": (self.frame_ids, (n,)), "temporal_ids": (self.temporal_ids, (n,))}
    for name, (array, shape) in checks.items():
      if np.shape(array) != shape:
        raise ValueError(f"PromptTable.{name} has shape {np.shape(array)}, expected {shape}")
    if np.ndim(self.params) != 2 or len(self.params) != n:
      raise ValueError(f"PromptTable.params has shape {np.shape(self.params)}, expected {n}xP")
    object.__setattr__(self, "texts", tuple(self.texts))
    object.__setattr__(self, "embeddings", np.asarray(self.embeddings, np.float32))
    object.__setattr__(self, "frame_ids", np.asarray(self.frame_ids, np.int32))
    object.__setattr__(self, "temporal_ids", np.asarray(self.temporal_ids, np.int32))
    object.__setattr__(self, "params", np.asarray(self.params, np.float32))

  def __len__(self) -> int:
    return len(self.texts)


def default_data_config() -> ml_collections.ConfigDict:
  """The data section of a training config; copy it and override fields."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.height, c.width, c.num_frames = 256, 256, 4
  c.global_batch_size = 8  # split evenly over processes
  c.sources = ml_collections.ConfigDict({
      # Real clips of the local library (data/prepare_library.py).
      "library": {"weight": 0.5, "manifest": "data/library/manifest.json", "split": "train",
                  "strides": (1, 2), "min_crop_scale": 0.6,
                  # A folder: decode every clip once into uint8 .npy there and read through
                  # memory maps (the library is ~0.8 GB decoded at 272 px); empty: decode per read.
                  "decoded_cache": ""},
      # scikit-image's photos under a moving camera.
      "photos": {"weight": 0.2, "split": "train", "max_omega": 0.08},
      # Endless seeded scenes.
      "procedural": {"weight": 0.3},
      # The user's own videos; a weight > 0 needs a path.
      "folder": {"weight": 0.0, "path": "", "strides": (1, 2), "min_crop_scale": 0.6},
  })
  c.prompt_split = "train"
  c.effects = ""  # comma-separated effect names: train on their prompts only (empty: all)
  c.strengths = ""  # comma-separated effect strengths (0.45, 0.85, 1.0): only prompts at them
  c.effect_weights = ""  # "pixel_art:3,identity:2": those effects' prompt rows drawn N times as often
  c.read_threads = 2  # grain ReadOptions.num_threads (per process or per worker)
  c.prefetch_buffer_size = 8  # elements read ahead by those threads
  c.worker_count = 0  # > 0: decode in that many grain worker processes (mp_prefetch)
  c.worker_buffer_size = 2  # batches each worker keeps ready
  return c


def source_names(config: ml_collections.ConfigDict) -> list[str]:
  """Names of the sources with a positive weight, in source_id order."""
  return [n for n in SOURCE_NAMES if config.sources[n].weight > 0]


def make_source(name: str, config: ml_collections.ConfigDict) -> Any:
  """One random-access source of uint8 TxHxWx3 clips, as configured."""
  geometry = {"height": config.height, "width": config.width,
              "num_frames": config.num_frames}
  # Distinct sources must not share random draws for the same index.
  seed = (config.seed * len(SOURCE_NAMES) + SOURCE_NAMES.index(name)) & 0xFFFFFFFF
  cfg = config.sources[name]
  if name == "library":
    return sources.VideoClipSource.from_manifest(
        cfg.manifest, cfg.split, strides=tuple(cfg.strides),
        min_crop_scale=cfg.min_crop_scale, seed=seed, decoded_cache=cfg.get("decoded_cache") or None,
        **geometry)
  if name == "photos":
    return sources.PhotoSource.from_skimage(cfg.split, max_omega=cfg.max_omega, seed=seed,
                                            **geometry)
  if name == "procedural":
    return sources.ProceduralSource(seed=seed, **geometry)
  if name == "folder":
    if not cfg.path:
      raise ValueError("config.sources.folder.weight > 0 needs config.sources.folder.path")
    return sources.VideoClipSource.from_folder(
        cfg.path, strides=tuple(cfg.strides), min_crop_scale=cfg.min_crop_scale, seed=seed,
        **geometry)
  raise ValueError(f"unknown source {name!r}; known: {SOURCE_NAMES}")


def _tag(clip: np.ndarray, source_id: int) -> dict[str, np.ndarray]:
  return {"clip": clip, "source_id": np.int32(source_id)}


def _add_prompt(index: int, element: dict[str, np.ndarray], table: PromptTable,
                seed: int) -> dict[str, np.ndarray]:
  row = int(sources.example_rng(seed ^ _PROMPT_SALT, index).integers(len(table)))
  return {
      "clip": element["clip"],
      "effect_frame_id": table.frame_ids[row],
      "effect_temporal_id": table.temporal_ids[row],
      "effect_params": table.params[row],
      "prompt_emb": table.embeddings[row],
      "prompt_id": np.int32(row),
      "source_id": element["source_id"],
  }


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is not in [0, {count})")
  return index, count


def make_examples(config: ml_collections.ConfigDict, prompt_table: PromptTable,
                  source_list: Sequence[Any] | None = None) -> grain.MapDataset:
  """All processes' examples, unbatched: global example i is element i (endless)."""
  names = source_names(config)
  if not names:
    raise ValueError("every source has weight 0")
  if source_list is None:
    source_list = [make_source(n, config) for n in names]
  weights = [config.sources[n].weight for n in names]
  parts = [grain.MapDataset.source(src).map(functools.partial(_tag, source_id=i))
           for i, src in enumerate(source_list)]
  mixed = grain.MapDataset.mix(parts, weights) if len(parts) > 1 else parts[0]
  return mixed.map_with_index(functools.partial(_add_prompt, table=prompt_table,
                                                seed=config.seed))


def make_dataset(config: ml_collections.ConfigDict, prompt_table: PromptTable, *,
                 process_index: int | None = None, process_count: int | None = None,
                 source_list: Sequence[Any] | None = None) -> grain.MapDataset:
  """This process's batches (config.global_batch_size / process_count examples each)."""
  index, count = _process_shard(process_index, process_count)
  if config.global_batch_size % count:
    raise ValueError(f"global batch {config.global_batch_size} does not split over "
                     f"{count} processes")
  examples = make_examples(config, prompt_table, source_list)
  return examples[index::count].batch(config.global_batch_size // count, drop_remainder=True)


def make_iterator(config: ml_collections.ConfigDict, prompt_table: PromptTable, *,
                  process_index: int | None = None, process_count: int | None = None,
                  source_list: Sequence[Any] | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator over this process's host batches."""
  dataset = make_dataset(config, prompt_table, process_index=process_index,
                         process_count=process_count, source_list=source_list)
  stream = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_buffer_size))
  if config.worker_count > 0:
    stream = stream.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return iter(stream)


def to_global_batch(batch: dict[str, np.ndarray], mesh: Mesh,
                    batch_spec: PartitionSpec = PartitionSpec("data")) -> dict[str, jax.Array]:
  """Host batch -> global jax arrays sharded along their leading (batch) axis by batch_spec.

  Each process passes its own slice; the global batch is the processes' slices in process
  order, as make_dataset produces them.
  """
  sharding = NamedSharding(mesh, batch_spec)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
