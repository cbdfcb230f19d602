"""One trainer per task: what the loop needs to train each, and nothing the loop must know.

A `Task` holds the task's model config, an `init()` giving the fresh (boxed) train state, the
pure `step(state, batch, key, **frozen) -> (state, metrics)`, the `frozen` arrays the step reads
but never trains (a frozen autoencoder, a teacher, the prompt bank), `warm_start(state, dir)`,
`finish(state, data_iter, workdir)` (what a finished run writes) and, for denoiser tasks, the
held-out evaluator. `build(config, table)` picks the task by `config.task`:

- ``"autoencoder"``: the per-frame autoencoder on input frames and their effect targets (or, with
  `config.teacher_autoencoder`, distilled into that autoencoder's latent space); writes
  `workdir/autoencoder/` (weights + meta.json with the latent scale and kind).
- ``"lsd"``: the denoiser with diffusion forcing, history augmentation and the shortcut
  objective on a frozen autoencoder (`config.autoencoder_dir`); exports the model folder.
- ``"distill"``: a student denoiser (`config.init_from`'s architecture, e.g. a pruned model, or
  the teacher's) on a frozen exported teacher's trajectory (`config.distill`); exports likewise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsd_jax.datasets import effects, pipeline
from lsd_jax.diffusion import distill, forcing
from lsd_jax.models import export, lsd, sizes
from lsd_jax.models.autoencoder import Autoencoder
from lsd_jax.train import heldout, steps
from lsd_jax.train import state as state_lib

AE_FILE = "autoencoder/params.safetensors"
AE_META = "autoencoder/meta.json"


@dataclasses.dataclass
class Task:
  name: str
  cfg: lsd.LSDConfig
  init: Callable[[], state_lib.TrainState]
  step: Callable[..., tuple[state_lib.TrainState, dict]]
  frozen: dict[str, Any]
  finish: Callable[[state_lib.TrainState, Any, str], dict[str, Any]]
  warm_start: Callable[[state_lib.TrainState, str], state_lib.TrainState]
  heldout: Callable[[str], heldout.HeldoutEval | None] = lambda workdir: None


# ------------------------------------------------------------------------------ shared pieces


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


def copy_weights(state: state_lib.TrainState, src, directory: str, what: str, steps_done=None) -> state_lib.TrainState:
  """`src` as the starting point (params and EMA) of a new run; optimizer and step fresh. Every
  leaf must match in name and shape."""
  flat_src = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(src)}
  flat_dst = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
  if flat_src.keys() != flat_dst.keys():
    diff = sorted(set(flat_src) ^ set(flat_dst))[:5]
    raise ValueError(f"init_from {directory!r}: parameter trees differ (e.g. {diff})")
  bad = [k for k in flat_dst if tuple(flat_src[k].shape) != tuple(flat_dst[k].shape)]
  if bad:
    raise ValueError(f"init_from {directory!r}: shape mismatch at {bad[:5]}")
  put = lambda dst, v: jax.device_put(np.asarray(v, dst.dtype), dst.sharding)  # noqa: E731
  logging.info("warm start: %s weights from %s (trained %s steps)", what, directory, steps_done)
  return state.replace(params=jax.tree.map(put, state.params, src), ema_params=jax.tree.map(put, state.ema_params, src))


def warm_start_denoiser(state: state_lib.TrainState, directory: str) -> state_lib.TrainState:
  """The denoiser of an exported model folder as the starting point."""
  _, params, meta = export.load(directory)
  return copy_weights(state, params["denoiser"], directory, "denoiser", meta.get("steps"))


def warm_start_autoencoder(state: state_lib.TrainState, directory: str) -> state_lib.TrainState:
  """The autoencoder of an autoencoder run or an exported model folder as the starting point."""
  params, meta = load_autoencoder(directory)
  return copy_weights(state, params, directory, "autoencoder", meta.get("steps"))


def step_config(config, model: lsd.LSDConfig | None = None,
                table: pipeline.PromptTable | None = None) -> steps.LSDStepConfig:
  """The step's settings from `config.train`; the history mode, K and parameterisation from
  `config.model`, or from `model` (a distillation student's exported architecture). With the
  prompt table the run trains on, the step renders only the effects the table holds."""
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
      loss_weight=t.get("loss_weight", "velocity"), p_history_swap=t.get("p_history_swap", 0.0),
      temporal_history_scale=t.get("temporal_history_scale", 1.0),
      prompt_mix=t.get("prompt_mix", 0.0), prompt_centroid=t.get("prompt_centroid", 0.0),
      prompt_noise=t.get("prompt_noise", 0.0), prompt_noise_scale=t.get("prompt_noise_scale", 1.0),
      noise_scale=float(t.get("noise_scale", 1.0)),
      particle_noise_scale=lsd.config_particle_scale(t.get("particle_noise_scale")),
      effects_present=_present(table))


def _present(table: pipeline.PromptTable | None):
  return None if table is None else effects.present_effects(table.frame_ids, table.temporal_ids)


TWINS_PER_ROW = 8


def _spec_groups(table: pipeline.PromptTable) -> tuple[list, dict]:
  """Each row's spec (effect ids and exact parameters) and the rows of each spec."""
  keys = [(int(f), int(t), np.asarray(p, np.float32).tobytes())
          for f, t, p in zip(table.frame_ids, table.temporal_ids, table.params)]
  groups: dict = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  return keys, groups


def twin_rows(table: pipeline.PromptTable, per_row: int = TWINS_PER_ROW, seed: int = 0) -> np.ndarray:
  """N x per_row rows of the table that ask for exactly the same effect and parameters as each
  row (drawn with replacement among the others of its spec; the row itself where it has none):
  what `steps.mix_prompts` mixes an embedding with."""
  keys, groups = _spec_groups(table)
  rng = np.random.default_rng(seed)
  out = np.empty((len(keys), per_row), np.int32)
  for i, k in enumerate(keys):
    others = [j for j in groups[k] if j != i] or [i]
    out[i] = rng.choice(others, per_row)
  return out


def spec_centroids(table: pipeline.PromptTable) -> np.ndarray:
  """N x D float32: each row's spec mean, the mean embedding of the rows with exactly its effect
  and parameters (itself included), as `prompts.anchor_many` makes a centroid anchor from the
  train rows of a spec; what `steps.centroid_prompts` gives a prompt. The empty prompt (the zero
  embedding, "no effect") shares identity's spec, but it is no wording: it stays zero and is left
  out of identity's mean, as anchoring leaves it out."""
  emb = np.asarray(table.embeddings, np.float32)
  worded = np.linalg.norm(emb, axis=1) > 1e-6
  keys, groups = _spec_groups(table)
  means = {}
  for k, rows in groups.items():
    rows = [i for i in rows if worded[i]]
    means[k] = emb[rows].mean(0) if rows else np.zeros(emb.shape[1], np.float32)
  out = np.stack([means[k] for k in keys]).astype(np.float32)
  out[~worded] = 0.0
  return out


def prompt_bank(table: pipeline.PromptTable) -> dict[str, np.ndarray]:
  """The prompt table as the arrays `steps.repeat_prompts` draws extra prompts from, with each
  row's same-spec twins (`twin_rows`, for `steps.mix_prompts`) and spec means (`spec_centroids`,
  for `steps.centroid_prompts`)."""
  return {"effect_frame_id": table.frame_ids, "effect_temporal_id": table.temporal_ids,
          "effect_params": table.params, "prompt_emb": table.embeddings, "twin_rows": twin_rows(table),
          "centroid_emb": spec_centroids(table)}


def _optimizer(config):
  opt = config.optim
  return state_lib.make_optimizer(opt.lr, config.total_steps, opt.warmup_steps, opt.weight_decay, opt.clip_norm)


def _denoiser_init(config, cfg: lsd.LSDConfig, den, tx):
  args, kw = lsd.dummy_inputs(cfg)

  def init():
    return state_lib.create(den.init(jax.random.key(config.seed), *args, **kw)["params"], tx)

  return init


def _export_denoiser(config, cfg: lsd.LSDConfig, ae_params, extra_meta: dict[str, Any]):
  def finish(state, data_iter, workdir) -> dict[str, Any]:
    del data_iter
    full = {"autoencoder": jax.device_get(ae_params), "denoiser": jax.device_get(state.ema_params)}
    out = os.path.join(workdir, "export")
    meta = {"steps": int(state.step), "config": config.name, "autoencoder_dir": config.autoencoder_dir, **extra_meta}
    export.save(out, cfg, full, metadata=meta)
    return {"export": out}

  return finish


# ------------------------------------------------------------------------------ the tasks


def autoencoder_task(config, table: pipeline.PromptTable) -> Task:
  tx = _optimizer(config)
  cfg = lsd.LSDConfig.from_config(config)
  ae = Autoencoder(cfg.model_size.autoencoder)

  def init():
    return state_lib.create(ae.init(jax.random.key(config.seed), jnp.zeros((1, cfg.height, cfg.width, 3)))["params"], tx)

  step_cfg = steps.AEStepConfig(ema_decay=config.train.ema_decay, latent_penalty=config.train.latent_penalty,
                                latent_match=config.train.get("latent_match", 1.0), effects_present=_present(table))
  step = functools.partial(steps.ae_train_step, ae=ae, tx=tx, cfg=step_cfg)
  frozen, teacher = {}, None
  if config.get("teacher_autoencoder"):  # learn that autoencoder's latent space (its scale too)
    t_params, teacher = load_autoencoder(config.teacher_autoencoder)
    t_size = sizes.get_size(teacher["size"]).with_autoencoder(teacher["kind"])
    if t_size.autoencoder.latent_channels != cfg.model_size.autoencoder.latent_channels:
      raise ValueError(f"teacher autoencoder {config.teacher_autoencoder} has {t_size.autoencoder.latent_channels} "
                       f"latent channels, this one {cfg.model_size.autoencoder.latent_channels}")
    step = functools.partial(step, teacher_ae=Autoencoder(t_size.autoencoder))
    frozen = {"teacher_params": t_params}

  def finish(state, data_iter, workdir) -> dict[str, Any]:
    params = jax.device_get(state.ema_params)
    scale = float(teacher["latent_scale"]) if teacher else _latent_scale(ae, params, data_iter, batches=4)
    export.save_params(os.path.join(workdir, AE_FILE), params, dtype="float32")
    meta = {"size": config.model.size, "kind": cfg.autoencoder, "latent_scale": scale, "steps": int(state.step)}
    if teacher:
      meta["teacher"] = {"dir": config.teacher_autoencoder, **{k: teacher[k] for k in ("size", "kind", "steps")
                                                               if k in teacher}}
    with open(os.path.join(workdir, AE_META), "w") as f:
      json.dump(meta, f, indent=2)
    return {"latent_scale": scale}

  return Task("autoencoder", cfg, init, step, frozen, finish, warm_start_autoencoder)


def lsd_task(config, table: pipeline.PromptTable) -> Task:
  tx = _optimizer(config)
  ae_params, meta = load_autoencoder(config.autoencoder_dir)
  cfg = lsd.LSDConfig.from_config(config, latent_scale=float(meta["latent_scale"]), autoencoder=meta["kind"])
  if meta["size"] != cfg.size:
    raise ValueError(f"autoencoder in {config.autoencoder_dir} is {meta['size']!r}, model is {cfg.size!r}")
  ae, den = lsd.build(cfg)
  step = functools.partial(steps.lsd_train_step, den=den, ae=ae, tx=tx, cfg=step_config(config, table=table))
  return Task("lsd", cfg, _denoiser_init(config, cfg, den, tx), step,
              {"ae_params": ae_params, "prompt_bank": prompt_bank(table)},
              _export_denoiser(config, cfg, ae_params, {}), warm_start_denoiser,
              lambda workdir: heldout.build(config, cfg, ae_params, workdir))


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


def distill_task(config, table: pipeline.PromptTable) -> Task:
  tx = _optimizer(config)
  t_cfg, t_params, _ = export.load(config.distill.teacher)
  cfg = student_config(config, t_cfg)
  ae_params = t_params["autoencoder"]
  if config.get("autoencoder_dir"):
    ae_params, meta = load_autoencoder(config.autoencoder_dir)
    if abs(float(meta["latent_scale"]) - t_cfg.latent_scale) > 1e-6:
      raise ValueError(f"autoencoder {config.autoencoder_dir} is not the teacher's (latent scale differs)")
  ae, den = lsd.build(cfg)
  _, teacher = lsd.build(t_cfg)
  dcfg = distill.DistillConfig(teacher_steps=config.distill.teacher_steps, data_weight=config.distill.data_weight)
  scfg = step_config(config, cfg, table)
  if steps.flow_noise_scaled(scfg):  # the student follows the teacher's trajectory from the standard draw
    raise ValueError("train.noise_scale / train.particle_noise_scale are for the lsd task: distillation "
                     "samples the teacher's trajectories from the standard normal")
  step = functools.partial(steps.distill_train_step, den=den, teacher=teacher, ae=ae, tx=tx, cfg=scfg, dcfg=dcfg)
  extra = {"teacher": config.distill.teacher, "teacher_steps": config.distill.teacher_steps,
           "init_from": config.get("init_from", "")}
  return Task("distill", cfg, _denoiser_init(config, cfg, den, tx), step,
              {"ae_params": ae_params, "teacher_params": t_params["denoiser"], "prompt_bank": prompt_bank(table)},
              _export_denoiser(config, cfg, ae_params, extra), warm_start_denoiser,
              lambda workdir: heldout.build(config, cfg, ae_params, workdir))


TASKS: dict[str, Callable[..., Task]] = {"autoencoder": autoencoder_task, "lsd": lsd_task, "distill": distill_task}


def build(config, table: pipeline.PromptTable) -> Task:
  """The task `config.task` names, built from the config and the prompt table it trains on."""
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
  return TASKS[config.task](config, table)


def _latent_scale(ae, params, data_iter, batches: int) -> float:
  """Std of the encoder's latents over a few batches of inputs: the diffusion's unit scale."""
  enc = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=Autoencoder.encode))
  vals = []
  for _ in range(batches):
    clip = np.asarray(next(data_iter)["clip"])
    x = clip.reshape((-1,) + clip.shape[2:]).astype(np.float32) / 127.5 - 1.0
    vals.append(np.asarray(enc(params, x)).ravel())
  return float(np.std(np.concatenate(vals)))
