"""Diffusion forcing inputs: from a clip of latents to the denoiser's targets and conditioning.

A training clip holds T = K + 1 frames of input latents c and target latents y (the effect's
ground truth, encoded). In ``concat`` mode the last frame is the target and the K frames
before it are its history: corrupted by the history transforms, then noised at independent
levels tau_k (diffusion forcing), the oldest m of them sometimes blanked to pure noise at
tau = 1 (the start of a stream, when the ring is still empty). In ``attention`` mode every
frame is a target at its own level, the K earlier frames corrupted as context.

With ``residual`` the diffusion runs on r = y - c (the target latent minus the input frame's
latent) instead of on y: an effect that changes little (a tint, the identity, an echo) has a
small residual, so the model starts from "return the input" instead of rebuilding the whole
frame from noise. The history stays absolute (y) in ``concat`` mode, since temporal effects
read the previous outputs themselves; in ``attention`` mode history frames are tokens of the
same sequence, so they are residuals too. The sampler adds c back
(`sampler.sample_frame(residual=True)`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lsd_jax.diffusion import flow, history


@dataclasses.dataclass(frozen=True)
class ForcingConfig:
  mode: str = "concat"
  history_len: int = 3  # K
  tau_kind: str = "uniform"  # sampler of history levels
  tau_max: float = 0.5  # history levels in [0, tau_max]
  p_stream_start: float = 0.1  # chance that the oldest m >= 1 history frames are missing
  p_no_history: float = 0.0  # chance that all K are missing: the frame from input and prompt alone
  residual: bool = False  # diffuse y - c instead of y


def _missing_oldest(key, batch: int, k: int, p: float):
  """Mask BxK, True where a history slot is empty (the oldest m slots, m in 1..K, with prob p)."""
  k_hit, k_m = jax.random.split(key)
  hit = jax.random.uniform(k_hit, (batch,)) < p
  m = jax.random.randint(k_m, (batch,), 1, k + 1)
  return hit[:, None] & (jnp.arange(k)[None, :] < m[:, None])


def make_inputs(key, c_BxTxHxWxC, y_BxTxHxWxC, prompt_BxE, cfg: ForcingConfig,
                augment: history.Transform | None = None, strength=1.0, p_no_history_B=None):
  """Returns (x0, x0_in, cond, bootstrap_last_only) for `shortcut.shortcut_loss`.
  `p_no_history_B` (optional, [B]) replaces `cfg.p_no_history` per sample."""
  b, t = y_BxTxHxWxC.shape[:2]
  k = cfg.history_len
  if t != k + 1:
    raise ValueError(f"a training clip holds K + 1 = {k + 1} frames, got {t}")
  k_aug, k_tau, k_noise, k_miss = jax.random.split(key, 4)
  ctx = y_BxTxHxWxC[:, :k]
  if augment is not None:
    ctx = augment(k_aug, ctx, strength)
  if cfg.mode == "concat":
    tau = flow.sample_levels(k_tau, (b, k), cfg.tau_kind, t_max=cfg.tau_max)
    k_miss, k_none = jax.random.split(k_miss)
    missing = _missing_oldest(k_miss, b, k, cfg.p_stream_start)
    p_none = cfg.p_no_history if p_no_history_B is None else jnp.asarray(p_no_history_B, jnp.float32)
    missing |= (jax.random.uniform(k_none, (b,)) < p_none)[:, None]
    tau = jnp.where(missing, 1.0, tau)
    hist = history.noise(k_noise, ctx, tau)
    cond = {"c": c_BxTxHxWxC[:, k:], "prompt": prompt_BxE, "hist": hist[:, None], "tau": tau[:, None]}
    x0 = y_BxTxHxWxC[:, k:] - c_BxTxHxWxC[:, k:] if cfg.residual else y_BxTxHxWxC[:, k:]
    return x0, None, cond, False
  if cfg.mode == "attention":
    x0_in = jnp.concatenate([ctx, y_BxTxHxWxC[:, k:]], axis=1)
    x0 = y_BxTxHxWxC
    if cfg.residual:
      x0, x0_in = x0 - c_BxTxHxWxC, x0_in - c_BxTxHxWxC
    return x0, x0_in, {"c": c_BxTxHxWxC, "prompt": prompt_BxE}, True
  raise ValueError(f"unknown history mode {cfg.mode!r}")


def sliding_history(frames_BxTxHxWxC, k: int):
  """Each frame's K predecessors (oldest first) and a mask of slots before the clip's start.

  Returns hist_BxTxKxHxWxC (zeros where missing) and missing_BxTxK, so that a concat-mode
  denoiser can run every frame of a clip at once, frame j seeing only frames j-K .. j-1.
  """
  b, t = frames_BxTxHxWxC.shape[:2]
  src = jnp.arange(t)[:, None] - k + jnp.arange(k)[None, :]  # T x K, frame index of each slot
  missing = src < 0
  hist = jnp.take(frames_BxTxHxWxC, jnp.clip(src, 0, t - 1), axis=1)  # B x T x K x ...
  hist = jnp.where(missing[None, :, :, None, None, None], 0.0, hist)
  return hist, jnp.broadcast_to(missing, (b, t, k))
