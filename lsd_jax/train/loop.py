"""The training loop: auto-resume, sharded jitted step, metrics one step late, checkpoints.

`train(config, workdir)` runs the task named by `config.task`:
- ``"autoencoder"``: the per-frame autoencoder on input frames and their effect targets; at the
  end measures `latent_scale` and writes `workdir/autoencoder/` (weights + JSON).
- ``"lsd"``: the denoiser with diffusion forcing, history augmentation and the shortcut
  objective, on top of a frozen autoencoder (`config.autoencoder_dir`); at the end exports the
  shipped-model folder (`lsd_jax.models.export`) to `workdir/export/` (EMA weights).
- ``"distill"``: a student denoiser (the architecture of `config.init_from`, e.g. a pruned
  model, warm-started from it; or the teacher's, fresh) trained on a frozen exported teacher's
  trajectory (`lsd_jax.diffusion.distill`, `config.distill`), on the teacher's autoencoder;
  exports like ``"lsd"``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lsd_jax.datasets import pipeline
from lsd_jax.diffusion import distill, forcing
from lsd_jax.models import export, lsd, sizes
from lsd_jax.models.autoencoder import Autoencoder
from lsd_jax.train import checkpoint, heldout, sharding, steps, writers
from lsd_jax.train import state as state_lib

AE_FILE = "autoencoder/params.safetensors"
AE_META = "autoencoder/meta.json"


def prompt_table(split: str, effect_names: str = "") -> pipeline.PromptTable:
  """The precomputed prompts of `split`; with `effect_names` ("thermal" or "sepia,echo"), only
  the rows whose effect is one of them (a single-effect capacity check, a subset study)."""
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
  return pipeline.PromptTable(tuple(t.texts[i] for i in rows), t.embeddings[rows], t.frame_ids[rows],
                              t.temporal_ids[rows], t.params[rows])


def lsd_config(config: ml_collections.ConfigDict, latent_scale: float = 1.0,
               autoencoder: str | None = None) -> lsd.LSDConfig:
  """The model's LSDConfig from a training config; `autoencoder` (the kind of the autoencoder
  actually loaded) overrides `config.model.autoencoder`."""
  m = config.model
  return lsd.LSDConfig(size=m.size, height=config.data.height, width=config.data.width,
                       history_mode=m.history_mode, history_len=m.history_len, tau_inf=m.tau_inf,
                       steps=m.steps, latent_scale=latent_scale, kernel_impl=m.kernel_impl,
                       residual=bool(m.get("residual", False)),
                       autoencoder=autoencoder or m.get("autoencoder", "conv"))


def load_autoencoder(directory: str) -> tuple[Any, dict[str, Any]]:
  """An autoencoder run's workdir (its `autoencoder/` export), or a whole exported model folder
  (e.g. checkpoints/lsd_small), whose autoencoder is then reused. Returns (params, meta)."""
  if os.path.isfile(os.path.join(directory, AE_META)):
    with open(os.path.join(directory, AE_META)) as f:
      meta = json.load(f)
    meta.setdefault("kind", "conv")  # autoencoder runs before v3 wrote no kind
    return export.load_params(os.path.join(directory, AE_FILE)), meta
  if os.path.isfile(os.path.join(directory, export.CONFIG_FILE)):
    cfg, params, meta = export.load(directory)
    return params["autoencoder"], {"size": cfg.size, "latent_scale": cfg.latent_scale, "kind": cfg.autoencoder,
                                   "steps": meta.get("steps"), "from_model": directory}
  raise FileNotFoundError(f"{directory!r} holds neither {AE_META} (an autoencoder run) nor "
                          f"{export.CONFIG_FILE} (an exported model)")


def warm_start(state: state_lib.TrainState, directory: str, task: str = "lsd") -> state_lib.TrainState:
  """The weights of an exported model's denoiser (or, for the autoencoder task, of an
  autoencoder run or exported model's autoencoder) as the starting point (params and EMA) of a
  new run; the optimizer and step start fresh. Every leaf must match in shape."""
  if task == "autoencoder":
    src, meta = load_autoencoder(directory)
  else:
    _, params, meta = export.load(directory)
    src = params["denoiser"]
  flat_src = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(src)}
  flat_dst = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  if flat_src.keys() != flat_dst.keys():
    diff = sorted(set(flat_src) ^ set(flat_dst))[:5]
    raise ValueError(f"init_from {directory!r}: parameter trees differ (e.g. {diff})")
  bad = [k for k in flat_dst if tuple(flat_src[k].shape) != tuple(flat_dst[k].shape)]
  if bad:
    raise ValueError(f"init_from {directory!r}: shape mismatch at {bad[:5]}")
  put = lambda dst, v: jax.device_put(np.asarray(v, dst.dtype), dst.sharding)  # noqa: E731
  logging.info("warm start: %s weights from %s (trained %s steps)", task, directory, meta.get("steps"))
  return state.replace(params=jax.tree.map(put, state.params, src), ema_params=jax.tree.map(put, state.ema_params, src))


def step_config(config, model: lsd.LSDConfig | None = None) -> steps.LSDStepConfig:
  """The step's settings from `config.train`; the history mode, K and parameterisation from
  `config.model`, or from `model` (a distillation student's exported architecture)."""
  t = config.train
  if model is None:
    mode, k, residual = config.model.history_mode, config.model.history_len, bool(config.model.get("residual", False))
  else:
    mode, k, residual = model.history_mode, model.history_len, model.residual
  return steps.LSDStepConfig(
      forcing=forcing.ForcingConfig(mode=mode, history_len=k, tau_kind=t.tau_kind, tau_max=t.tau_max,
                                    p_stream_start=t.p_stream_start, residual=residual,
                                    p_no_history=t.get("p_no_history", 0.0)),
      augment=tuple(dict(a) for a in t.augment), bootstrap_frac=t.bootstrap_frac, max_log2=t.max_log2,
      level_kind=t.level_kind, level_mean=t.get("level_mean", 0.0), ema_decay=t.ema_decay,
      p_no_prompt=t.p_no_prompt, prompt_repeats=t.get("prompt_repeats", 1),
      loss_weight=t.get("loss_weight", "velocity"), p_history_swap=t.get("p_history_swap", 0.0))


def prompt_bank(table: pipeline.PromptTable) -> dict[str, np.ndarray]:
  """The prompt table as the arrays `steps.repeat_prompts` draws extra prompts from."""
  return {"effect_frame_id": table.frame_ids, "effect_temporal_id": table.temporal_ids,
          "effect_params": table.params, "prompt_emb": table.embeddings}


def _build(config, workdir, table: pipeline.PromptTable):
  """Models, the boxed-state init function and the step function for the configured task."""
  opt = config.optim
  tx = state_lib.make_optimizer(opt.lr, config.total_steps, opt.warmup_steps, opt.weight_decay, opt.clip_norm)
  if config.task == "autoencoder":
    cfg = lsd_config(config)
    ae = Autoencoder(cfg.model_size.autoencoder)

    def init_fn():
      p = ae.init(jax.random.key(config.seed), jnp.zeros((1, cfg.height, cfg.width, 3)))["params"]
      return state_lib.create(p, tx)

    step_cfg = steps.AEStepConfig(ema_decay=config.train.ema_decay, latent_penalty=config.train.latent_penalty,
                                  latent_match=config.train.get("latent_match", 1.0))
    models = {"cfg": cfg, "ae": ae}
    if not config.get("teacher_autoencoder"):
      return models, init_fn, functools.partial(steps.ae_train_step, ae=ae, tx=tx, cfg=step_cfg), ()
    # Learn a trained autoencoder's latent space (its latent scale too) with this architecture.
    t_params, t_meta = load_autoencoder(config.teacher_autoencoder)
    t_size = sizes.get_size(t_meta["size"]).with_autoencoder(t_meta["kind"])
    if t_size.autoencoder.latent_channels != cfg.model_size.autoencoder.latent_channels:
      raise ValueError(f"teacher autoencoder {config.teacher_autoencoder} has {t_size.autoencoder.latent_channels} "
                       f"latent channels, this one {cfg.model_size.autoencoder.latent_channels}")
    models.update(teacher_params=t_params, teacher_meta=t_meta)
    step = functools.partial(steps.ae_train_step, ae=ae, tx=tx, cfg=step_cfg, teacher_ae=Autoencoder(t_size.autoencoder))
    return models, init_fn, step, ("teacher_params",)
  if config.task == "lsd":
    ae_params, meta = load_autoencoder(config.autoencoder_dir)
    cfg = lsd_config(config, latent_scale=float(meta["latent_scale"]), autoencoder=meta["kind"])
    if meta["size"] != cfg.size:
      raise ValueError(f"autoencoder in {config.autoencoder_dir} is {meta['size']!r}, model is {cfg.size!r}")
    ae, den = lsd.build(cfg)
    args, kw = lsd.dummy_inputs(cfg)

    def init_fn():
      p = den.init(jax.random.key(config.seed), *args, **kw)["params"]
      return state_lib.create(p, tx)

    step = functools.partial(steps.lsd_train_step, den=den, ae=ae, tx=tx, cfg=step_config(config))
    models = {"cfg": cfg, "ae": ae, "den": den, "ae_params": ae_params, "prompt_bank": prompt_bank(table)}
    return models, init_fn, step, ("ae_params", "prompt_bank")
  if config.task == "distill":
    return _build_distill(config, tx, table)
  raise ValueError(f"unknown task {config.task!r}")


def student_config(config, teacher_cfg: lsd.LSDConfig) -> lsd.LSDConfig:
  """The student's architecture: `init_from`'s (e.g. a pruned export), else the teacher's. It must
  share the teacher's latent space, history mode, K and parameterisation, and the data's size."""
  cfg = export.load_config(config.init_from) if config.get("init_from") else teacher_cfg
  same = ("height", "width", "history_mode", "history_len", "residual")
  bad = [f for f in same if getattr(cfg, f) != getattr(teacher_cfg, f)]
  if cfg.latent_shape != teacher_cfg.latent_shape:
    bad.append("latent_shape")
  if (config.data.height, config.data.width) != (cfg.height, cfg.width):
    bad.append(f"data {config.data.height}x{config.data.width}")
  if bad:
    raise ValueError(f"student {config.init_from!r} and teacher {config.distill.teacher!r} differ in {bad}")
  return dataclasses.replace(cfg, latent_scale=teacher_cfg.latent_scale)


def _build_distill(config, tx, table: pipeline.PromptTable):
  t_cfg, t_params, _ = export.load(config.distill.teacher)
  cfg = student_config(config, t_cfg)
  ae_params = t_params["autoencoder"]
  if config.get("autoencoder_dir"):
    ae_params, meta = load_autoencoder(config.autoencoder_dir)
    if abs(float(meta["latent_scale"]) - t_cfg.latent_scale) > 1e-6:
      raise ValueError(f"autoencoder {config.autoencoder_dir} is not the teacher's (latent scale differs)")
  ae, den = lsd.build(cfg)
  _, teacher = lsd.build(t_cfg)
  args, kw = lsd.dummy_inputs(cfg)

  def init_fn():
    p = den.init(jax.random.key(config.seed), *args, **kw)["params"]
    return state_lib.create(p, tx)

  dcfg = distill.DistillConfig(teacher_steps=config.distill.teacher_steps, data_weight=config.distill.data_weight)
  step = functools.partial(steps.distill_train_step, den=den, teacher=teacher, ae=ae, tx=tx,
                           cfg=step_config(config, cfg), dcfg=dcfg)
  models = {"cfg": cfg, "ae": ae, "den": den, "ae_params": ae_params, "teacher_params": t_params["denoiser"],
            "prompt_bank": prompt_bank(table)}
  return models, init_fn, step, ("ae_params", "teacher_params", "prompt_bank")


def train(config: ml_collections.ConfigDict, workdir: str,
          prompts: pipeline.PromptTable | None = None) -> dict[str, Any]:
  """Trains until config.total_steps (or config.stop_at / config.max_minutes); returns a summary.
  `prompts` defaults to the precomputed table of `config.data.prompt_split`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = [(r[0], tuple(r[1]) if isinstance(r[1], (list, tuple)) else r[1]) for r in config.rules]
  table = prompts or prompt_table(config.data.prompt_split, config.data.get("effects", ""))
  models, init_fn, step_fn, extra_names = _build(config, workdir, table)
  state, shardings = sharding.sharded_init(init_fn, mesh, rules)
  data_iter = pipeline.make_iterator(config.data, table)
  mgr = checkpoint.manager(workdir, keep=config.keep_checkpoints, every=config.checkpoint_every)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  restored, start = checkpoint.restore_latest(mgr, abstract, data_iter)
  if restored is not None:
    state = restored
  elif config.get("init_from"):
    state = warm_start(state, config.init_from, config.task)
  batch_sh = sharding.batch_sharding(mesh)
  extras = {n: jax.device_put(models[n], sharding.replicated(mesh)) for n in extra_names}
  jitted = jax.jit(lambda s, b, k, ex: step_fn(s, b, k, **ex),
                   in_shardings=(shardings, batch_sh, sharding.replicated(mesh), sharding.replicated(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  writer = writers.MetricWriter(workdir)
  probe = heldout.build(config, models["cfg"], models["ae_params"], workdir) if "den" in models else None
  acc = _EffectAccumulator()
  key = jax.random.key(config.seed + 1)
  stop = min(config.total_steps, config.get("stop_at") or config.total_steps)
  deadline = time.time() + 60 * config.max_minutes if config.get("max_minutes") else math.inf
  pending, t_last, n_last, step = None, time.time(), 0, start
  logging.info("training %s from step %d to %d on %s", config.task, start, stop, mesh)
  with sharding.activate(mesh, rules):
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
    summary.update(_finish(config, workdir, models, state, data_iter))
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


def _finish(config, workdir, models, state, data_iter) -> dict[str, Any]:
  params = jax.device_get(state.ema_params)
  if config.task == "autoencoder":
    teacher = models.get("teacher_meta")  # a distilled autoencoder keeps its teacher's latent scale
    scale = float(teacher["latent_scale"]) if teacher else _latent_scale(models["ae"], params, data_iter, batches=4)
    export.save_params(os.path.join(workdir, AE_FILE), params, dtype="float32")
    meta = {"size": config.model.size, "kind": models["cfg"].autoencoder, "latent_scale": scale,
            "steps": int(state.step)}
    if teacher:
      meta["teacher"] = {"dir": config.teacher_autoencoder, **{k: teacher[k] for k in ("size", "kind", "steps")
                                                               if k in teacher}}
    with open(os.path.join(workdir, AE_META), "w") as f:
      json.dump(meta, f, indent=2)
    return {"latent_scale": scale}
  cfg = models["cfg"]
  full = {"autoencoder": jax.device_get(models["ae_params"]), "denoiser": params}
  out = os.path.join(workdir, "export")
  meta = {"steps": int(state.step), "config": config.name, "autoencoder_dir": config.autoencoder_dir}
  if config.task == "distill":
    meta.update(teacher=config.distill.teacher, teacher_steps=config.distill.teacher_steps,
                init_from=config.get("init_from", ""))
  export.save(out, cfg, full, metadata=meta)
  return {"export": out}


def _latent_scale(ae, params, data_iter, batches: int) -> float:
  """Std of the encoder's latents over a few batches of inputs: the diffusion's unit scale."""
  enc = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=Autoencoder.encode))
  vals = []
  for _ in range(batches):
    clip = np.asarray(next(data_iter)["clip"])
    x = clip.reshape((-1,) + clip.shape[2:]).astype(np.float32) / 127.5 - 1.0
    vals.append(np.asarray(enc(params, x)).ravel())
  return float(np.std(np.concatenate(vals)))
