"""The training loop: auto-resume, sharded jitted step, metrics one step late, checkpoints.

`train(config, workdir)` runs the task `config.task` names (`lsd_jax.train.tasks`: its model,
step, frozen inputs, warm start, held-out evaluator and what a finished run writes); the loop
itself knows no task.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from lsd_jax.datasets import pipeline
from lsd_jax.train import checkpoint, heldout, sharding, tasks, writers


def prompt_table(split: str, effect_names: str = "", strengths: str = "",
                 effect_weights: str = "") -> pipeline.PromptTable:
  """The precomputed prompts of `split`; with `effect_names` ("thermal" or "sepia,echo"), only
  the rows whose effect is one of them (a single-effect capacity check, a subset study); with
  `strengths` ("1.0" or "0.85,1.0"), only rows whose effect strength is one of them; with
  `effect_weights` ("pixel_art:3,identity:2"), each row of a named effect repeated that many
  times, so that the uniform row draw (host and on-device prompt repeats) samples it that much
  more often."""
  from lsd_jax.datasets import effects, prompts

  t = prompts.load_embedding_table(split)
  rows = np.arange(len(t.texts))
  wanted = [e for e in effect_names.split(",") if e]
  if wanted:
    names = t.names()
    unknown = sorted(set(wanted) - set(names))
    if unknown:
      raise ValueError(f"data.effects names {unknown}, which no {split} prompt has; known: "
                       f"{sorted(set(names) - {effects.spec_name(effects.make_spec())})[:40]}")
    rows = np.asarray([i for i in rows if names[i] in wanted])
  levels = [float(v) for v in strengths.split(",") if v]
  if levels:
    rows = np.asarray([i for i in rows if any(abs(float(t.params[i][0]) - v) < 1e-6 for v in levels)])
    if not len(rows):
      raise ValueError(f"data.strengths {levels}: no {split} prompt{' of ' + effect_names if wanted else ''} has one")
  weights = {}
  for item in (w for w in effect_weights.split(",") if w):
    name, _, count = item.partition(":")
    if not count.isdigit() or int(count) < 1:
      raise ValueError(f"data.effect_weights item {item!r}: want name:N with a whole N >= 1")
    weights[name] = int(count)
  if weights:
    names = t.names()
    unknown = sorted(set(weights) - set(names[i] for i in rows))
    if unknown:
      raise ValueError(f"data.effect_weights names {unknown}, which no selected {split} prompt has")
    rows = np.asarray([i for i in rows for _ in range(weights.get(names[i], 1))])
  return pipeline.PromptTable(tuple(t.texts[i] for i in rows), t.embeddings[rows], t.frame_ids[rows],
                              t.temporal_ids[rows], t.params[rows])


def train(config: ml_collections.ConfigDict, workdir: str,
          prompts: pipeline.PromptTable | None = None) -> dict[str, Any]:
  """Trains until config.total_steps (or config.stop_at / config.max_minutes); returns a summary.
  `prompts` defaults to the precomputed table of `config.data.prompt_split`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = [(r[0], tuple(r[1]) if isinstance(r[1], (list, tuple)) else r[1]) for r in config.rules]
  table = prompts or prompt_table(config.data.prompt_split, config.data.get("effects", ""),
                                  config.data.get("strengths", ""),
                                  config.data.get("effect_weights", ""))
  task = tasks.build(config, table)
  state, shardings = sharding.sharded_init(task.init, mesh, rules)
  data_iter = pipeline.make_iterator(config.data, table)
  mgr = checkpoint.manager(workdir, keep=config.keep_checkpoints, every=config.checkpoint_every)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  restored, start = checkpoint.restore_latest(mgr, abstract, data_iter)
  if restored is not None:
    state = restored
  elif config.get("init_from"):
    state = task.warm_start(state, config.init_from)
  batch_sh = sharding.batch_sharding(mesh)
  extras = jax.device_put(task.frozen, sharding.replicated(mesh))
  jitted = jax.jit(lambda s, b, k, ex: task.step(s, b, k, **ex),
                   in_shardings=(shardings, batch_sh, sharding.replicated(mesh), sharding.replicated(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  writer = writers.MetricWriter(workdir)
  probe = task.heldout(workdir)
  acc = _EffectAccumulator()
  key = jax.random.key(config.seed + 1)
  stop = min(config.total_steps, config.get("stop_at") or config.total_steps)
  deadline = time.time() + 60 * config.max_minutes if config.get("max_minutes") else math.inf
  pending, t_last, n_last, step = None, time.time(), 0, start
  logging.info("training %s from step %d to %d on %s", config.task, start, stop, mesh)
  with sharding.activate(mesh, rules):
    if probe is not None and restored is None and config.get("init_from"):
      _heldout(writer, probe, step, state)  # the warm start itself, at this run's sampler: the baseline
    while step < stop and time.time() < deadline:
      batch = pipeline.to_global_batch(next(data_iter), mesh, batch_sh.spec)
      state, metrics = jitted(state, batch, key, extras)
      step += 1
      if pending is not None:  # read one step late, so the host never waits on the device
        _log(writer, *pending, t_last, n_last, config, acc)
        t_last, n_last = (time.time(), pending[0]) if pending[0] % config.log_every == 0 else (t_last, n_last)
      pending = (step, metrics)
      if probe is not None and step % config.heldout.every == 0:
        _heldout(writer, probe, step, state)
      checkpoint.save(mgr, step, state, data_iter)
    if pending is not None:
      _log(writer, *pending, t_last, n_last, config, acc, force=True)
    if probe is not None and step > start and step % config.heldout.every:
      _heldout(writer, probe, step, state)
    if mgr.latest_step() != step:
      checkpoint.save(mgr, step, state, data_iter, force=True)
    mgr.wait_until_finished()
  writer.plot()
  writer.close()
  summary = {"task": config.task, "start_step": start, "end_step": step}
  if step >= config.total_steps or config.get("export_on_stop", True):
    summary.update(task.finish(state, data_iter, workdir))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


class _EffectAccumulator:
  """Sums the per-effect flow-loss vectors of every step between two log steps, so each logged
  `loss_flow/<effect>` averages all the samples of that effect in the interval, not one step's."""

  def __init__(self):
    self.sum = self.count = None

  def add(self, total_G, count_G):
    self.sum = total_G if self.sum is None else self.sum + total_G
    self.count = count_G if self.count is None else self.count + count_G

  def pop(self) -> dict[str, float]:
    from lsd_jax.datasets import effects

    if self.sum is None:
      return {}
    out = {f"loss_flow/{n}": float(s / c) for n, s, c in zip(effects.GROUP_NAMES, self.sum, self.count) if c > 0}
    self.sum = self.count = None
    return out


def _log(writer, step, metrics, t_last, n_last, config, acc: _EffectAccumulator | None = None, force=False):
  host = jax.device_get(metrics)
  per_effect = {k: np.asarray(host.pop(k)) for k in ("effect_flow_sum_G", "effect_flow_count_G") if k in host}
  vals = {k: float(v) for k, v in host.items()}
  if not math.isfinite(vals["loss"]):
    raise FloatingPointError(f"loss is {vals['loss']} at step {step}; stopping (last checkpoint kept)")
  if acc is not None and per_effect:
    acc.add(per_effect["effect_flow_sum_G"], per_effect["effect_flow_count_G"])
  if step % config.log_every and not force:
    return
  dt = time.time() - t_last
  vals["steps_per_sec"] = (step - n_last) / dt if dt > 0 and step > n_last else float("nan")
  if acc is not None:
    vals.update(acc.pop())
  writer.write(step, vals)
  logging.info("step %d | loss %.5f | %.2f steps/s | %s", step, vals["loss"], vals["steps_per_sec"],
               " ".join(f"{k} {v:.4g}" for k, v in vals.items()
                        if k not in ("loss", "steps_per_sec") and "/" not in k))


def _heldout(writer, probe, step, state):
  t0 = time.time()
  vals = probe(state.ema_params, state.params)
  writer.write(step, vals)
  logging.info("step %d | %s | %.1f s", step, heldout.summary_line(vals), time.time() - t0)
