"""Calibrated structured pruning of an exported model: Taylor importance on the training objective
over a few calibration batches, then `lsd_jax.models.prune`, then a new exported model folder.

The calibration loss is `steps.lsd_loss` without history augmentation (the plain shortcut
objective on the data's exact targets), each batch with its own fixed key, on the config's data
pipeline (`config.data`) and its `config.prune` settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsd_jax.datasets import pipeline
from lsd_jax.models import export, lsd, prune, sizes
from lsd_jax.train import loop, steps, tasks

REPORT_FILE = "prune.json"


def prune_config(config: ml_collections.ConfigDict) -> prune.PruneConfig:
  p = config.prune
  return prune.PruneConfig(keep_heads=p.keep_heads, keep_mlp=p.keep_mlp, tile=p.tile, allocation=p.allocation)


def size_report(cfg: lsd.LSDConfig, steps_per_frame: int | None = None) -> dict[str, Any]:
  """Parameters and FLOPs per frame (analytic, `sizes.report`) of a config's architecture."""
  return sizes.report(cfg.model_size, cfg.height, cfg.width, steps_per_frame or cfg.steps, cfg.history_mode,
                      cfg.history_len)


def calibration_batches(config: ml_collections.ConfigDict, n: int, prompts: pipeline.PromptTable | None = None):
  """`n` (batch, key) pairs from the config's data pipeline."""
  it = pipeline.make_iterator(config.data, prompts or loop.prompt_table(config.data.prompt_split))
  key = jax.random.key(config.seed + 7)
  return [(jax.tree.map(jnp.asarray, next(it)), jax.random.fold_in(key, i)) for i in range(n)]


def calibrate_and_prune(config: ml_collections.ConfigDict, model_dir: str, out_dir: str,
                        prompts: pipeline.PromptTable | None = None) -> dict[str, Any]:
  """Prunes the model in `model_dir` to `config.prune`'s widths; writes the pruned model folder
  (plus prune.json: scores, kept units, sizes before and after) to `out_dir`; returns the summary."""
  cfg, params, meta = export.load(model_dir)
  if (config.data.height, config.data.width) != (cfg.height, cfg.width):
    raise ValueError(f"data {config.data.height}x{config.data.width} != model {cfg.height}x{cfg.width}")
  pc = prune_config(config)
  ae, den = lsd.build(cfg)
  step_cfg = dataclasses.replace(tasks.step_config(config, cfg), augment=())

  def loss_fn(den_params, batch_key):
    batch, key = batch_key
    return steps.lsd_loss(den_params, batch, key, den=den, ae=ae, ae_params=params["autoencoder"], cfg=step_cfg)[0]

  batches = calibration_batches(config, config.prune.calib_batches, prompts)
  scores = prune.taylor_importance(loss_fn, params["denoiser"], batches, cfg)
  new_cfg, new_params, keep = prune.prune(cfg, params, scores, pc)
  prune.check_tiles(new_cfg, pc.tile)
  before, after = size_report(cfg), size_report(new_cfg)
  summary = {
      "model": model_dir, "prune": dataclasses.asdict(pc), "calib_batches": len(batches),
      "block_heads": [len(h) for h in keep.heads], "block_mlp": [len(f) for f in keep.mlp],
      "kept_heads": [h.tolist() for h in keep.heads], "kept_mlp": [f.tolist() for f in keep.mlp],
      "scores": [{k: np.asarray(v).tolist() for k, v in b.items()} for b in scores],
      "before": before, "after": after,
  }
  export.save(out_dir, new_cfg, new_params, metadata={
      **meta, "pruned_from": model_dir, "prune": dataclasses.asdict(pc),
      "block_heads": summary["block_heads"], "block_mlp": summary["block_mlp"]})
  with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
    json.dump(summary, f, indent=1)
  logging.info("pruned %s -> %s: denoiser params %d -> %d, FLOPs/frame %.3g -> %.3g", model_dir, out_dir,
               before["params_denoiser"], after["params_denoiser"], before["flops_frame"], after["flops_frame"])
  return summary
