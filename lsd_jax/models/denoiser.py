"""The causal per-frame denoiser: a DiT over latent patches with adaLN-zero conditioning.

It predicts the shortcut velocity `u(z, t, d | c, history, prompt)` for target frames. How the
history enters is `history_mode`:

- ``"concat"`` (default): each target frame's tokens carry the noisy target patch, the input
  frame's latent patch and its K history latents (noised at their own levels tau_k) along
  channels; attention runs within the frame. Frames of a batch never see each other.
- ``"attention"``: a clip of T <= K+1 frames, each at its own noise level (diffusion forcing),
  each frame's tokens carrying (noisy frame, input latent); attention over all tokens under a
  frame-causal mask with a window of K earlier frames. Each frame's level doubles as its tau.

Both modes are causal: the output for frame j depends on nothing from frames after j.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lsd_jax.models import layers
from lsd_jax.models import sharding as sh
from lsd_jax.models.sizes import FREQ_DIM, DenoiserSize

HISTORY_MODES = ("concat", "attention")


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  size: DenoiserSize
  latent_channels: int
  history_mode: str = "concat"
  history_len: int = 3  # K
  kernel_impl: str = "xla"  # pallas_kernels.api implementation
  # Megatron-style tensor parallelism of the blocks (lsd_jax.models.parallel); None: one device.
  tensor_parallel: layers.TensorParallel | None = None

  def __post_init__(self):
    if self.history_mode not in HISTORY_MODES:
      raise ValueError(f"history_mode must be one of {HISTORY_MODES}, got {self.history_mode!r}")
    if self.history_len < 1:
      raise ValueError(f"history_len must be >= 1, got {self.history_len}")


class Denoiser(nn.Module):
  """u(z, t, d | c, history, prompt) for every target frame.

  Args (call):
    z_BxTxHxWxC: noisy target latents (T target frames).
    c_BxTxHxWxC: latents of the corresponding input frames.
    t_BxT: each target frame's noise level in [0, 1] (1 = pure noise).
    d_BxT: shortcut step size (0 = instantaneous velocity).
    prompt_BxE: prompt embeddings (E = 384; zeros = no effect).
    hist_BxTxKxHxWxC, tau_BxTxK: concat mode only: each target frame's K history latents
      (oldest first) and their noise levels.
  Returns v_BxTxHxWxC (float32).
  """

  config: DenoiserConfig
  dtype: jnp.dtype = jnp.bfloat16

  @nn.compact
  def __call__(self, z_BxTxHxWxC, c_BxTxHxWxC, t_BxT, d_BxT, prompt_BxE,
               hist_BxTxKxHxWxC=None, tau_BxTxK=None):
    cfg, s = self.config, self.config.size
    b, t, h, w, c = z_BxTxHxWxC.shape
    k = cfg.history_len
    if c != cfg.latent_channels:
      raise ValueError(f"expected {cfg.latent_channels} latent channels, got {c}")
    if c_BxTxHxWxC.shape != z_BxTxHxWxC.shape:
      raise ValueError(f"input latents {c_BxTxHxWxC.shape} != target latents {z_BxTxHxWxC.shape}")
    parts = [z_BxTxHxWxC, c_BxTxHxWxC]
    if cfg.history_mode == "concat":
      if hist_BxTxKxHxWxC is None or tau_BxTxK is None:
        raise ValueError("concat history mode needs hist_BxTxKxHxWxC and tau_BxTxK")
      if hist_BxTxKxHxWxC.shape != (b, t, k, h, w, c) or tau_BxTxK.shape != (b, t, k):
        raise ValueError(f"history {hist_BxTxKxHxWxC.shape} / tau {tau_BxTxK.shape} do not match "
                         f"(B, T, K, H, W, C) = {(b, t, k, h, w, c)}")
      hist = jnp.moveaxis(hist_BxTxKxHxWxC, 2, 4).reshape(b, t, h, w, k * c)
      parts.append(hist)
    else:
      if hist_BxTxKxHxWxC is not None:
        raise ValueError("attention history mode takes history as earlier frames of z, not hist_*")
      if t > k + 1:
        raise ValueError(f"attention mode sees at most K+1 = {k + 1} frames, got T = {t}")
    x = jnp.concatenate([p.astype(self.dtype) for p in parts], axis=-1)
    x = layers.patchify(x, s.patch)  # B x T x L x (p*p*C_in)
    x = sh.constrain(x, sh.BATCH, sh.FRAME, sh.TOKEN, sh.PATCH_IN)
    x = layers.Dense(s.width, (sh.PATCH_IN, sh.EMBED), self.dtype, name="patch_embed")(x)
    pos = layers.sincos_2d(h // s.patch, w // s.patch, s.width)
    x = x + pos.astype(self.dtype)
    if cfg.history_mode == "attention":  # frame position in the window, newest last
      x = x + layers.sinusoidal(jnp.arange(t) - (t - 1), s.width, scale=1.0)[:, None].astype(self.dtype)

    cond = self._condition(t_BxT, d_BxT, prompt_BxE, tau_BxTxK)
    causal = cfg.history_mode == "attention"
    for i in range(s.depth):
      pruned = {"head_dim": s.head_dim, "mlp_dim": s.mlp_of(i)} if s.pruned else {}
      x = layers.DiTBlock(s.heads_of(i), s.mlp_ratio, frame_causal=causal, window=k if causal else None,
                          dtype=self.dtype, kernel_impl=cfg.kernel_impl, tensor_parallel=cfg.tensor_parallel,
                          name=f"block_{i}", **pruned)(x, cond)
    out = layers.FinalLayer(s.patch * s.patch * c, self.dtype, name="final")(x, cond)
    v = layers.unpatchify(out, s.patch, h, w, c).astype(jnp.float32)
    return sh.constrain(v, sh.BATCH, sh.FRAME, sh.HEIGHT, sh.WIDTH, sh.CHANNEL)

  def _condition(self, t_BxT, d_BxT, prompt_BxE, tau_BxTxK):
    cfg, width = self.config, self.config.size.width
    b, t = t_BxT.shape
    cond = layers.ScalarEmbedder(width, FREQ_DIM, self.dtype, name="t_embed")(t_BxT)
    cond += layers.ScalarEmbedder(width, FREQ_DIM, self.dtype, name="d_embed")(d_BxT)
    p = layers.Dense(width, (sh.COND, sh.EMBED), self.dtype, name="prompt_in")(prompt_BxE)
    p = layers.Dense(width, (sh.EMBED, sh.COND), self.dtype, name="prompt_out")(nn.silu(p))
    cond += p[:, None, :]
    if cfg.history_mode == "concat":
      taus = layers.ScalarEmbedder(width, FREQ_DIM, self.dtype, name="tau_embed")(tau_BxTxK)
      taus = taus.reshape(b, t, cfg.history_len * width)
      cond += layers.Dense(width, (sh.MOD, sh.COND), self.dtype, name="tau_mix")(nn.silu(taus))
    return sh.constrain(cond, sh.BATCH, sh.FRAME, sh.COND)
