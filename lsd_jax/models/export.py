"""The shipped-model format: a folder with `config.json` and `params.safetensors`.

Small, portable, loadable on a CPU-only machine without orbax: the parameters are flattened
to "/"-joined names and stored in bf16 (or f32), the `LSDConfig` and provenance in JSON. The
training code writes it from a train state (`lsd_jax.train`); the streaming runtime reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from lsd_jax.models.lsd import LSDConfig

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"


class CheckpointError(ValueError):
  """A model folder that is missing, incomplete or corrupt."""


def save_params(path: str, params: dict[str, Any], *, dtype: str = "bfloat16") -> str:
  """A parameter tree as one safetensors file ("/"-joined names), written atomically."""
  import ml_dtypes
  from safetensors.numpy import save_file

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  flat = traverse_util.flatten_dict(params, sep="/")
  np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}[dtype]
  arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32).astype(np_dtype)) for k, v in flat.items()}
  save_file(arrays, path + ".tmp")
  os.replace(path + ".tmp", path)
  return path


def load_params(path: str, *, dtype=np.float32) -> dict[str, Any]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  if not os.path.isfile(path):
    raise CheckpointError(f"{path} is missing")
  try:
    flat = load_file(path)
  except (SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: corrupt weights ({e})") from e
  flat = {k: v.astype(dtype) for k, v in flat.items()}
  bad = sorted(k for k, v in flat.items() if not np.isfinite(v).all())
  if bad:  # an intact header over NaN weights would stream silent black frames
    raise CheckpointError(f"{path}: {len(bad)} of {len(flat)} weight arrays hold NaN or Inf "
                          f"(first: {bad[0]}); the file is damaged or training diverged")
  return traverse_util.unflatten_dict(flat, sep="/")


def save(directory: str, cfg: LSDConfig, params: dict[str, Any], *, dtype: str = "bfloat16",
         metadata: dict[str, Any] | None = None) -> str:
  """Writes config.json and params.safetensors (atomically, via temporary names)."""
  os.makedirs(directory, exist_ok=True)
  save_params(os.path.join(directory, PARAMS_FILE), params, dtype=dtype)
  doc = {"lsd_config": cfg.to_dict(), "dtype": dtype, "metadata": metadata or {}}
  tmp = os.path.join(directory, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(directory, CONFIG_FILE))
  return directory


def _read_config(directory: str) -> tuple[LSDConfig, dict[str, Any]]:
  cfg_path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(cfg_path) as f:
      doc = json.load(f)
    return LSDConfig.from_dict(doc["lsd_config"]), doc
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{cfg_path}: unreadable model config ({e})") from e


def load_config(directory: str) -> LSDConfig:
  """Only the model folder's LSDConfig (its architecture), without reading the weights."""
  if not os.path.isfile(os.path.join(directory, CONFIG_FILE)):
    raise CheckpointError(f"{directory!r} is not a model folder: {CONFIG_FILE} is missing")
  return _read_config(directory)[0]


def load(directory: str, *, dtype=np.float32) -> tuple[LSDConfig, dict[str, Any], dict[str, Any]]:
  """Returns (config, params, metadata); raises CheckpointError with the reason."""
  cfg_path, params_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, PARAMS_FILE)
  for p in (cfg_path, params_path):
    if not os.path.isfile(p):
      raise CheckpointError(f"{directory!r} is not a model folder: {os.path.basename(p)} is missing")
  cfg, doc = _read_config(directory)
  params = load_params(params_path, dtype=dtype)
  _check_tree(cfg, params, directory)
  logging.info("loaded %s model (%s, %dx%d) from %s", cfg.size, cfg.history_mode, cfg.width, cfg.height, directory)
  return cfg, params, doc.get("metadata", {})


def _check_tree(cfg: LSDConfig, params, directory: str) -> None:
  import jax

  from lsd_jax.models import lsd

  want = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), cfg))
  want_flat = traverse_util.flatten_dict(want, sep="/")
  got_flat = traverse_util.flatten_dict(params, sep="/")
  missing = sorted(set(want_flat) - set(got_flat))
  extra = sorted(set(got_flat) - set(want_flat))
  bad = [k for k in want_flat if k in got_flat and tuple(want_flat[k].shape) != tuple(got_flat[k].shape)]
  if missing or extra or bad:
    raise CheckpointError(f"{directory}: weights do not match the config (missing {missing[:3]}, "
                          f"unexpected {extra[:3]}, wrong shapes {bad[:3]})")
