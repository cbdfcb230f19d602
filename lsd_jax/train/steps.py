"""The jitted train steps: the autoencoder, and the LSD denoiser on prompted effects.

Each is a pure `step(state, batch, ...) -> (state, metrics)`; `fold_in(key, state.step)` gives
the step's randomness, so a resumed run reproduces the same noise. Ground truth is rendered on
device inside the step: the effect of every clip, then both clips through the frozen encoder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lsd_jax.datasets import effects
from lsd_jax.diffusion import distill, forcing, history, shortcut
from lsd_jax.models import lsd
from lsd_jax.models.autoencoder import Autoencoder
from lsd_jax.train import state as state_lib


def frames_01(clip_uint8):
  return clip_uint8.astype(jnp.float32) / 255.0


def render_targets(batch, key, present=None):
  """Effect ground truth for every clip of the batch, on device: B x T x H x W x 3 in [0, 1].
  `present`: the (frame, temporal) effect ids the batch can hold (the run's prompt table,
  `effects.present_effects`), so that only those effects are compiled; None: all of them."""
  spec = effects.EffectSpec(batch["effect_frame_id"], batch["effect_temporal_id"], batch["effect_params"])
  clips = frames_01(batch["clip"])
  keys = jax.random.split(key, clips.shape[0])
  return effects.render_batch(spec, clips, keys, present=present)


# ------------------------------------------------------------------------------ autoencoder


@dataclasses.dataclass(frozen=True)
class AEStepConfig:
  latent_penalty: float = 1e-4  # keeps latents near unit scale
  ema_decay: float = 0.999
  frames_per_clip: int = 2  # frames of each clip (input and target) used per step
  latent_match: float = 1.0  # with a teacher: weight of || E(x) - E_teacher(x) ||^2
  effects_present: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # render_targets' `present`


def ae_loss(ae: Autoencoder, params, x_Nx_HxWx3_01, latent_penalty: float, teacher=None,
            latent_match: float = 1.0):
  """L1 + MSE reconstruction (+ a small latent penalty). With `teacher = (ae, params)`, the
  autoencoder learns the teacher's latent space instead: its encoder matches the teacher's
  latents and its decoder reconstructs from both the teacher's latents and its own, so a
  denoiser trained on the teacher's latents runs on it unchanged (the light autoencoder of
  model v3 takes over the conv one's latents this way)."""
  x = x_Nx_HxWx3_01 * 2.0 - 1.0
  z = ae.apply({"params": params}, x, method=Autoencoder.encode)
  y = ae.apply({"params": params}, z, method=Autoencoder.decode)
  l1 = jnp.mean(jnp.abs(y - x))
  mse = jnp.mean(jnp.square(y - x))
  reg = jnp.mean(jnp.square(z))
  psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))  # range [-1, 1] -> peak-to-peak 2
  info = {"l1": l1, "psnr": psnr, "latent_rms": jnp.sqrt(reg)}
  if teacher is None:
    loss = l1 + mse + latent_penalty * reg
  else:
    t_ae, t_params = teacher
    z_t = jax.lax.stop_gradient(t_ae.apply({"params": t_params}, x, method=Autoencoder.encode))
    y_t = ae.apply({"params": params}, z_t, method=Autoencoder.decode)
    match = jnp.mean(jnp.square(z - z_t)) / jnp.maximum(jnp.mean(jnp.square(z_t)), 1e-6)
    mse_t = jnp.mean(jnp.square(y_t - x))
    loss = l1 + mse + jnp.mean(jnp.abs(y_t - x)) + mse_t + latent_match * match
    info.update(latent_match=match, psnr_from_teacher=10.0 * jnp.log10(4.0 / jnp.maximum(mse_t, 1e-10)))
  info["loss"] = loss
  return loss, info


def ae_train_step(state: state_lib.TrainState, batch, key, *, ae: Autoencoder, tx: optax.GradientTransformation,
                  cfg: AEStepConfig, teacher_ae: Autoencoder | None = None, teacher_params=None):
  key = jax.random.fold_in(key, state.step)
  k_fx, k_pick = jax.random.split(key)
  targets = render_targets(batch, k_fx, cfg.effects_present)
  b, t = targets.shape[:2]
  pick = jax.random.randint(k_pick, (b, cfg.frames_per_clip), 0, t)
  take = lambda x: jnp.take_along_axis(x, pick[:, :, None, None, None], axis=1)  # noqa: E731
  x = jnp.concatenate([take(frames_01(batch["clip"])), take(targets)], axis=1)
  x = x.reshape((-1,) + x.shape[2:])
  teacher = None if teacher_ae is None else (teacher_ae, teacher_params)
  (_, info), grads = jax.value_and_grad(
      lambda p: ae_loss(ae, p, x, cfg.latent_penalty, teacher, cfg.latent_match), has_aux=True)(state.params)
  info["grad_norm"] = optax.tree.norm(grads)
  return state_lib.apply_gradients(state, grads, tx, cfg.ema_decay), info


# ------------------------------------------------------------------------------ LSD denoiser


@dataclasses.dataclass(frozen=True)
class LSDStepConfig:
  forcing: forcing.ForcingConfig = forcing.ForcingConfig()
  augment: tuple[dict[str, Any], ...] = ()  # history transforms, see history.compose
  bootstrap_frac: float = 0.25
  max_log2: int = 7
  level_kind: str = "logit_normal"
  level_mean: float = 0.0  # logit-normal mean of the flow-matching levels (> 0: nearer noise)
  ema_decay: float = 0.999
  p_no_prompt: float = 0.0  # chance of replacing the prompt by zeros (and the target by the input)
  prompt_repeats: int = 1  # R: each host clip trains under R prompts (R - 1 drawn on device)
  loss_weight: str = "velocity"  # shortcut.LOSS_WEIGHTS: "x0" weighs flow frames by t^2
  p_history_swap: float = 0.0  # with prompt repeats: history from the same clip under another prompt
  prompt_mix: float = 0.0  # chance of mixing a prompt's embedding with a same-effect twin's (mix_prompts)
  prompt_centroid: float = 0.0  # chance of a prompt's embedding becoming its spec's mean (centroid_prompts)
  prompt_noise: float = 0.0  # chance of a random direction added to a prompt's embedding (noise_prompts)
  prompt_noise_scale: float = 1.0  # its norm against the embedding's: cosine 1 / sqrt(1 + scale^2) on average
  # Scales p_no_history and p_history_swap for samples with a temporal effect (echo, particles):
  # their history carries the effect's state (where each particle is), so dropping or swapping
  # it asks for particles from nowhere (history_drop_chances).
  temporal_history_scale: float = 1.0
  # The flow's noise scale: eps ~ N(0, noise_scale^2 I), the draw the sampler starts from at
  # `LSDConfig.noise_scale` (train the model at the scale it samples at), and for samples with a
  # particle effect `particle_noise_scale` (None: noise_scale), as `LSDConfig.noise_scale_for`.
  noise_scale: float = 1.0
  particle_noise_scale: float | None = None
  effects_present: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # render_targets' `present`

  def __post_init__(self):
    # A chance outside [0, 1] would be clipped silently by the `uniform < p` draws (a typo of 30
    # for 0.3 trains every sample that way): say so before anything compiles.
    for name in ("bootstrap_frac", "p_no_prompt", "p_history_swap", "prompt_mix", "prompt_centroid", "prompt_noise"):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f"train.{name} is a chance and must be in [0, 1], got {v}")
    if self.prompt_repeats < 1:
      raise ValueError(f"train.prompt_repeats must be at least 1, got {self.prompt_repeats}")
    if self.prompt_noise_scale < 0:
      raise ValueError(f"train.prompt_noise_scale must be >= 0, got {self.prompt_noise_scale}")
    if self.temporal_history_scale < 0:
      raise ValueError(f"train.temporal_history_scale must be >= 0, got {self.temporal_history_scale}")
    for name in ("noise_scale", "particle_noise_scale"):
      v = getattr(self, name)
      if v is not None and not 0.0 < v <= 2.0:  # 0 would leave nothing to denoise: x_t = (1 - t) x0
        raise ValueError(f"train.{name} must be in (0, 2], got {v}")


PROMPT_FIELDS = ("effect_frame_id", "effect_temporal_id", "effect_params", "prompt_emb")


def repeat_prompts(batch, key, bank, repeats: int):
  """The batch with R = `repeats` prompts per clip: its own, then R - 1 rows of `bank` (the
  prompt table as device arrays, fields `PROMPT_FIELDS`) drawn uniformly on device. The clips
  stay B (`clip`); every prompt field becomes R * B, copy r of clip b at row r * B + b. The same
  input under several prompts in one batch makes the prompt the only way to tell the targets
  apart, and it multiplies what each decoded host clip trains by R at no input-pipeline cost."""
  if repeats <= 1:
    return batch
  b = batch["clip"].shape[0]
  n = bank["prompt_emb"].shape[0]
  rows = jax.random.randint(key, ((repeats - 1) * b,), 0, n)
  out = dict(batch)
  for f in PROMPT_FIELDS:
    out[f] = jnp.concatenate([batch[f], jnp.take(bank[f], rows, axis=0).astype(batch[f].dtype)], axis=0)
  if "prompt_id" in batch:
    out["prompt_id"] = jnp.concatenate([batch["prompt_id"], rows.astype(batch["prompt_id"].dtype)])
  return out


def _prompt_rows(batch, bank, table: str, option: str):
  """The batch's prompt-table rows (`prompt_id`), checked against its prompts and against the
  bank holding `table` (`tasks.prompt_bank`), for the prompt transforms that look rows up."""
  if bank is None or table not in bank or "prompt_id" not in batch:
    raise ValueError(f"{option} needs the prompt bank's {table} (tasks.prompt_bank) and the batch's prompt_id")
  ids = batch["prompt_id"]
  if ids.shape[0] != batch["prompt_emb"].shape[0]:
    raise ValueError(f"prompt_id has {ids.shape[0]} rows for {batch['prompt_emb'].shape[0]} prompts")
  return ids


def mix_prompts(batch, key, bank, p: float):
  """With probability p, each sample's prompt embedding becomes a random point between its own and
  the embedding of another train prompt that asks for exactly the same effect and parameters
  (`bank["twin_rows"]`, rows of the same spec), put back on the unit sphere the MiniLM embeddings
  live on. The denoiser then learns a neighbourhood of each wording instead of its exact
  embedding, which is what unseen wording needs (model v3.1 scores 28.2 dB with its train wording
  and 25.5 with the val wording: reports/model_v3/README.md). The empty prompt (the zero vector:
  no effect) is never mixed. Needs `prompt_id` (the pipeline's table row; `repeat_prompts` extends
  it to the drawn prompts)."""
  if p <= 0:
    return batch
  ids = _prompt_rows(batch, bank, "twin_rows", "prompt_mix")
  n = ids.shape[0]
  k_hit, k_pick, k_a = jax.random.split(key, 3)
  twins = jnp.asarray(bank["twin_rows"])
  other_row = twins[ids, jax.random.randint(k_pick, (n,), 0, twins.shape[1])]
  other = jnp.take(jnp.asarray(bank["prompt_emb"]), other_row, axis=0).astype(jnp.float32)
  own = batch["prompt_emb"].astype(jnp.float32)
  a = jax.random.uniform(k_a, (n, 1))
  mixed = a * own + (1.0 - a) * other
  own_norm = jnp.linalg.norm(own, axis=-1, keepdims=True)
  norm = jnp.linalg.norm(mixed, axis=-1, keepdims=True)
  ok = (own_norm > 1e-6) & (jnp.linalg.norm(other, axis=-1, keepdims=True) > 1e-6) & (norm > 1e-6)
  mixed = mixed / jnp.maximum(norm, 1e-6) * own_norm
  hit = (jax.random.uniform(k_hit, (n, 1)) < p) & ok
  out = dict(batch)
  out["prompt_emb"] = jnp.where(hit, mixed, own).astype(batch["prompt_emb"].dtype)
  return out


def centroid_prompts(batch, key, bank, p: float):
  """With probability p, each sample's prompt embedding becomes the mean embedding of every train
  prompt that asks for exactly its effect and parameters (`bank["centroid_emb"]`, the row's spec
  mean, `tasks.spec_centroids`). That mean is what prompt anchoring gives the model at inference
  (`prompts.anchor_many`, target "centroid": the streaming default), and no train prompt has it:
  model v3.5 scores 30.1 dB anchored over the 16 deterministic effects against 27.2 with the raw
  val wording (reports/model_v3/README.md, stretch 10), so training on it meets the inference
  input where it is. The empty prompt (no effect) stays zero. Needs `prompt_id`, as `mix_prompts`
  does; applied after it."""
  if p <= 0:
    return batch
  ids = _prompt_rows(batch, bank, "centroid_emb", "prompt_centroid")
  centre = jnp.take(jnp.asarray(bank["centroid_emb"]), ids, axis=0).astype(batch["prompt_emb"].dtype)
  hit = jax.random.uniform(key, (ids.shape[0], 1)) < p
  out = dict(batch)
  out["prompt_emb"] = jnp.where(hit, centre, batch["prompt_emb"])
  return out


def noise_prompts(batch, key, p: float, scale: float):
  """With probability p, each sample's prompt embedding e becomes e + scale * |e| * u (u a random
  unit direction), put back at e's norm: a cosine of 1 / sqrt(1 + scale^2) to e on average (0.71
  at scale 1), about where an unseen val paraphrase sits from its nearest train twin (0.69 on
  average over the 400 val prompts, and 0.64 from the nearest train prompt of another effect;
  reports/model_v3/README.md, stretch 12). The denoiser then cannot key on the exact embedding of
  a train phrasing, only on the directions that tell effects apart, which a random direction in 384
  dimensions barely touches (conditioning augmentation). The empty prompt (no effect) stays
  zero; needs no prompt bank. Applied after `centroid_prompts`."""
  if p <= 0 or scale <= 0:
    return batch
  own = batch["prompt_emb"].astype(jnp.float32)
  k_hit, k_dir = jax.random.split(key)
  u = jax.random.normal(k_dir, own.shape)
  u = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-6)
  own_norm = jnp.linalg.norm(own, axis=-1, keepdims=True)
  moved = own + scale * own_norm * u
  moved = moved / jnp.maximum(jnp.linalg.norm(moved, axis=-1, keepdims=True), 1e-6) * own_norm
  hit = (jax.random.uniform(k_hit, (own.shape[0], 1)) < p) & (own_norm > 1e-6)
  out = dict(batch)
  out["prompt_emb"] = jnp.where(hit, moved, own).astype(batch["prompt_emb"].dtype)
  return out


def lsd_inputs(batch, key, *, ae: Autoencoder, ae_params, cfg: LSDStepConfig):
  """Encoded input and target clips (the last K+1 frames) and the prompt embeddings. With
  prompt repeats (`repeat_prompts`) the B clips are encoded once and tiled to the R * B prompts."""
  k_fx, k_drop = jax.random.split(key)
  clips = frames_01(batch["clip"])
  b = clips.shape[0]
  reps = batch["prompt_emb"].shape[0] // b
  tiled = jnp.tile(clips, (reps,) + (1,) * (clips.ndim - 1))
  targets = render_targets({**batch, "clip": jnp.tile(batch["clip"], (reps,) + (1,) * (clips.ndim - 1))}, k_fx,
                           cfg.effects_present)
  prompt = batch["prompt_emb"].astype(jnp.float32)
  if cfg.p_no_prompt > 0:  # an empty prompt is the identity effect
    drop = jax.random.uniform(k_drop, (reps * b,)) < cfg.p_no_prompt
    targets = jnp.where(drop[:, None, None, None, None], tiled, targets)
    prompt = jnp.where(drop[:, None], 0.0, prompt)
  n = cfg.forcing.history_len + 1
  clips, targets = clips[:, -n:], targets[:, -n:]  # earlier frames only warm up temporal effects
  t = clips.shape[1]
  both = jnp.concatenate([clips, targets], axis=0).reshape(((1 + reps) * b * t,) + clips.shape[2:])
  z = jax.lax.stop_gradient(lsd.encode(ae, ae_params, both))
  z = z.reshape(((1 + reps) * b, t) + z.shape[1:])
  c = jnp.tile(z[:b], (reps,) + (1,) * (z.ndim - 1))
  return c, z[b:], prompt


def history_drop_chances(temporal_id_N, cfg: LSDStepConfig):
  """Per sample (p_no_history, p_history_swap): the config's, times `temporal_history_scale` for
  samples whose temporal effect is not "none" (echo and the particles). A particle's position
  in the next frame is its position in the history plus its velocity; with no history, or
  another effect's, the only answer that lowers the loss is a blur of where particles might be
  (model v3.1 tracks 9-36% of the truth's particles, moving at the wrong velocity:
  reports/model_v3/README.md)."""
  temporal = jnp.asarray(temporal_id_N) > 0
  scale = jnp.where(temporal, cfg.temporal_history_scale, 1.0)
  return cfg.forcing.p_no_history * scale, cfg.p_history_swap * scale


def swap_history(key, y_NxTx, reps: int, p, k: int):
  """With prompt repeats (row r * B + b is clip b under prompt r), gives each sample, with
  probability p, the K history frames of the same clip under another of its prompts; the
  target frame stays. Its history then shows another effect than its prompt asks for, as right
  after a prompt switch, so the prompt, not the history, must say which effect to make: without
  this a model learns to read the effect off its history and cannot start one from an empty
  ring (reports/model_v3/README.md). `p` is a number or one chance per sample ([N])."""
  n = y_NxTx.shape[0]
  if reps <= 1 or (isinstance(p, (int, float)) and p <= 0):
    return y_NxTx
  b = n // reps
  k_hit, k_shift = jax.random.split(key)
  hit = jax.random.uniform(k_hit, (n,)) < p
  shift = jax.random.randint(k_shift, (n,), 1, reps)  # another copy, never the sample itself
  row = jnp.arange(n)
  src = jnp.where(hit, ((row // b + shift) % reps) * b + row % b, row)
  hist = jnp.take(y_NxTx[:, :k], src, axis=0)
  return jnp.concatenate([hist, y_NxTx[:, k:]], axis=1)


def _particle_flow_scale(cfg: LSDStepConfig) -> float:
  return cfg.noise_scale if cfg.particle_noise_scale is None else cfg.particle_noise_scale


def flow_noise_scaled(cfg: LSDStepConfig) -> bool:
  """Whether the step trains on a scaled flow noise (`flow_noise_scales` is not None)."""
  return cfg.noise_scale != 1.0 or _particle_flow_scale(cfg) != 1.0


def flow_noise_scales(temporal_id_N, cfg: LSDStepConfig):
  """Each sample's flow noise scale ([N]) from its temporal effect id: `cfg.particle_noise_scale`
  for a particle effect (alone or composed), else `cfg.noise_scale`; None when both are 1 (the
  standard normal, and the program of a run that never set them)."""
  if not flow_noise_scaled(cfg):
    return None
  particle = _particle_flow_scale(cfg)
  ids = jnp.asarray([effects.TEMPORAL_EFFECTS.index(n) for n in effects.PARTICLE_EFFECTS], jnp.int32)
  is_particle = jnp.any(jnp.asarray(temporal_id_N, jnp.int32)[:, None] == ids[None, :], axis=1)
  return jnp.where(is_particle, jnp.float32(particle), jnp.float32(cfg.noise_scale))


def lsd_forcing_inputs(den_params, batch, key, *, den, ae, ae_params, cfg: LSDStepConfig):
  """The model's velocity function and its diffusion-forcing inputs for one batch:
  (vf, loss key, x0, x0_in, cond, bootstrap_last_only)."""
  k_in, k_force, k_loss = jax.random.split(key, 3)
  c, y, prompt = lsd_inputs(batch, k_in, ae=ae, ae_params=ae_params, cfg=cfg)
  reps = batch["prompt_emb"].shape[0] // batch["clip"].shape[0]
  p_none_N, p_swap = None, cfg.p_history_swap  # None: forcing's own p_no_history for every sample
  if cfg.temporal_history_scale != 1.0:
    p_none_N, p_swap_N = history_drop_chances(batch["effect_temporal_id"], cfg)
    p_swap = p_swap_N if cfg.p_history_swap > 0 else p_swap  # a zero stays a number: no swap is traced
  y = swap_history(jax.random.fold_in(k_in, 7), y, reps, p_swap, cfg.forcing.history_len)
  vf = lsd.velocity_fn(den, den_params)
  # The model-made history hook: a one-step re-denoise of noised history by the current model.
  extra = {"model": history.model_history(_self_history(vf, c, prompt, cfg.forcing))}
  augment = history.compose(cfg.augment, extra=extra) if cfg.augment else None
  x0, x0_in, cond, last = forcing.make_inputs(k_force, c, y, prompt, cfg.forcing, augment, p_no_history_B=p_none_N)
  return vf, k_loss, x0, x0_in, cond, last


def lsd_loss(den_params, batch, key, *, den, ae, ae_params, cfg: LSDStepConfig, teacher_fn=None):
  vf, k_loss, x0, x0_in, cond, last = lsd_forcing_inputs(den_params, batch, key, den=den, ae=ae,
                                                         ae_params=ae_params, cfg=cfg)
  return shortcut.shortcut_loss(vf, k_loss, x0, cond, x0_in=x0_in, bootstrap_frac=cfg.bootstrap_frac,
                                max_log2=cfg.max_log2, level_kind=cfg.level_kind, bootstrap_last_only=last,
                                teacher_fn=teacher_fn, level_mean=cfg.level_mean, loss_weight=cfg.loss_weight,
                                eps_scale_B=flow_noise_scales(batch["effect_temporal_id"], cfg))


def distill_loss(den_params, batch, key, *, den, teacher, teacher_params, ae, ae_params, cfg: LSDStepConfig,
                 dcfg: distill.DistillConfig):
  """The student's loss against a frozen teacher's trajectory (`lsd_jax.diffusion.distill`) on the
  same diffusion-forcing inputs as `lsd_loss` (history made by the student itself)."""
  vf, k_loss, x0, x0_in, cond, last = lsd_forcing_inputs(den_params, batch, key, den=den, ae=ae,
                                                         ae_params=ae_params, cfg=cfg)
  teacher_fn = lsd.velocity_fn(teacher, jax.lax.stop_gradient(teacher_params))
  return distill.distill_loss(vf, teacher_fn, k_loss, x0, cond, dcfg, x0_in=x0_in, bootstrap_frac=cfg.bootstrap_frac,
                              max_log2=cfg.max_log2, level_kind=cfg.level_kind, bootstrap_last_only=last,
                              level_mean=cfg.level_mean)


def _self_history(vf, c_BxTxHxWxC, prompt_BxE, fcfg: forcing.ForcingConfig, level: float = 0.5):
  """predict_fn for the model-history hook: each history frame noised to `level`, then one
  shortcut step of size `level` back, conditioned on its own input frame (no history)."""

  def predict(key, frames_BxKxHxWxC):
    b, k = frames_BxKxHxWxC.shape[:2]
    cin = c_BxTxHxWxC[:, :k]
    base = cin if fcfg.residual else jnp.zeros_like(cin)  # a residual model diffuses y - c
    eps = jax.random.normal(key, frames_BxKxHxWxC.shape)
    x = (1 - level) * (frames_BxKxHxWxC - base) + level * eps
    t = jnp.full((b, k), level)
    if fcfg.mode == "concat":
      cond = {"c": cin, "prompt": prompt_BxE, "hist": jnp.zeros((b, k, k) + frames_BxKxHxWxC.shape[2:]),
              "tau": jnp.ones((b, k, k))}
      d = jnp.full((b, k), level)
    else:
      cond = {"c": cin, "prompt": prompt_BxE}
      d = jnp.full((b, k), level)
    return base + x - level * vf(x, t, d, cond)

  return predict


def split_by_effect(info, batch):
  """Replaces the per-sample flow errors in `info` by their sums and counts per effect group
  (`effects.GROUP_NAMES`): `effect_flow_sum_G`, `effect_flow_count_G`. The loop accumulates them
  between log steps and logs `loss_flow/<effect>`."""
  info = dict(info)
  err, w = info.pop("flow_err_B"), info.pop("flow_w_B")
  g = effects.group_id(batch["effect_frame_id"], batch["effect_temporal_id"])
  n = len(effects.GROUP_NAMES)
  info["effect_flow_sum_G"] = jax.ops.segment_sum(err * w, g, num_segments=n)
  info["effect_flow_count_G"] = jax.ops.segment_sum(w, g, num_segments=n)
  return info


def lsd_train_step(state: state_lib.TrainState, batch, key, *, den, ae, ae_params, tx, cfg: LSDStepConfig,
                   prompt_bank=None):
  key = jax.random.fold_in(key, state.step)
  batch = repeat_prompts(batch, jax.random.fold_in(key, 0x9E7), prompt_bank, cfg.prompt_repeats)
  batch = mix_prompts(batch, jax.random.fold_in(key, 0x313), prompt_bank, cfg.prompt_mix)
  batch = centroid_prompts(batch, jax.random.fold_in(key, 0xC3), prompt_bank, cfg.prompt_centroid)
  batch = noise_prompts(batch, jax.random.fold_in(key, 0x7A5), cfg.prompt_noise, cfg.prompt_noise_scale)
  (_, info), grads = jax.value_and_grad(
      lambda p: lsd_loss(p, batch, key, den=den, ae=ae, ae_params=ae_params, cfg=cfg), has_aux=True)(state.params)
  info["grad_norm"] = optax.tree.norm(grads)
  return state_lib.apply_gradients(state, grads, tx, cfg.ema_decay), split_by_effect(info, batch)


def distill_train_step(state: state_lib.TrainState, batch, key, *, den, teacher, teacher_params, ae, ae_params, tx,
                       cfg: LSDStepConfig, dcfg: distill.DistillConfig, prompt_bank=None):
  key = jax.random.fold_in(key, state.step)
  batch = repeat_prompts(batch, jax.random.fold_in(key, 0x9E7), prompt_bank, cfg.prompt_repeats)
  batch = mix_prompts(batch, jax.random.fold_in(key, 0x313), prompt_bank, cfg.prompt_mix)
  batch = centroid_prompts(batch, jax.random.fold_in(key, 0xC3), prompt_bank, cfg.prompt_centroid)
  batch = noise_prompts(batch, jax.random.fold_in(key, 0x7A5), cfg.prompt_noise, cfg.prompt_noise_scale)
  (_, info), grads = jax.value_and_grad(
      lambda p: distill_loss(p, batch, key, den=den, teacher=teacher, teacher_params=teacher_params, ae=ae,
                             ae_params=ae_params, cfg=cfg, dcfg=dcfg), has_aux=True)(state.params)
  info["grad_norm"] = optax.tree.norm(grads)
  return state_lib.apply_gradients(state, grads, tx, cfg.ema_decay), split_by_effect(info, batch)
