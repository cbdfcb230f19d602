"""The denoiser's side of the mega kernels: what in them knows the model.

The kernels (`pallas_kernels/megastep_mgpu.py`, `megablock_mgpu.py`) take plain arrays in their
own layouts and know nothing of Flax. Here the `Denoiser`'s parameter tree is packed into the
whole-step kernel's layout (`pack`, once per model), its conditioning is computed from those
parameters as `Denoiser._condition` computes it (`condition`), and a denoiser step runs through
the kernel (`denoise`, `velocity_fn`), reached only through `pallas_kernels.api`. `step_supported`
says which configs it runs; `lsd.with_kernel_params` / `lsd.velocity_fn` decide when. (The
one-block kernel is not used by the model; its tests map a `DiTBlock`'s parameters onto its
layout.)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lsd_jax.models import layers
from lsd_jax.models.sizes import FREQ_DIM
from pallas_kernels import api

_PATCH_OUT = 64  # the whole-step kernel's patch-out width (the final layer's padded columns)


def _round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pack(dparams, dtype=jnp.bfloat16) -> dict[str, jax.Array]:
  """The `Denoiser`'s params (concat history, within-frame attention, unpruned) as the kernel
  wants them: per-block weights stacked on a leading depth axis, bf16, patch-in and patch-out
  widths padded to 64. Do this once per model (it copies every weight)."""
  blocks = sorted((k for k in dparams if k.startswith("block_")), key=lambda k: int(k[6:]))
  if not blocks:
    raise ValueError("no block_* params: not a Denoiser param tree")
  cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
  stack = lambda name: jnp.stack([cast(dparams[b][name]) for b in blocks])  # noqa: E731
  w_emb = cast(dparams["patch_embed"]["Dense_0"]["kernel"])
  p_in = _round_up(w_emb.shape[0], 64)
  w_f = cast(dparams["final"]["Dense_1"]["Dense_0"]["kernel"])
  p_out = w_f.shape[1]
  if p_out > _PATCH_OUT:
    raise ValueError(f"patch-out width {p_out} > {_PATCH_OUT} is not supported")
  mod = [dparams[b]["Dense_0"]["Dense_0"] for b in blocks]
  return {
      "w_emb": jnp.pad(w_emb, ((0, p_in - w_emb.shape[0]), (0, 0))),
      "b_emb": cast(dparams["patch_embed"]["Dense_0"]["bias"]),
      "w_qkv": stack("qkv_kernel"), "b_qkv": stack("qkv_bias"),
      "w_out": stack("out_kernel"), "b_out": stack("out_bias"),
      "w1": stack("fc1_kernel"), "b1": stack("fc1_bias"),
      "w2": stack("fc2_kernel"), "b2": stack("fc2_bias"),
      "w_mod": jnp.stack([cast(m["kernel"]) for m in mod]),  # depth x D x 6D
      "b_mod": jnp.stack([cast(m["bias"]) for m in mod]),
      "w_fmod": cast(dparams["final"]["Dense_0"]["Dense_0"]["kernel"]),
      "b_fmod": cast(dparams["final"]["Dense_0"]["Dense_0"]["bias"]),
      "w_f": jnp.pad(w_f, ((0, 0), (0, _PATCH_OUT - p_out))),
      "b_f": jnp.pad(cast(dparams["final"]["Dense_1"]["Dense_0"]["bias"]), (0, _PATCH_OUT - p_out)),
  }


def step_supported(den_cfg, length: int) -> str | None:
  """None when the mega kernel runs this `DenoiserConfig` at `length` tokens per frame, else why
  not (the caller falls back to the per-op path)."""
  s = den_cfg.size
  if den_cfg.history_mode != "concat":
    return "frame-causal attention (history_mode='attention') is not in the mega kernel"
  if s.pruned:
    return "pruned blocks (per-block widths) are not in the mega kernel"
  if s.patch * s.patch * den_cfg.latent_channels > _PATCH_OUT:
    return f"patch-out width {s.patch * s.patch * den_cfg.latent_channels} > {_PATCH_OUT}"
  return api.megastep_check(length, s.width, s.width * s.mlp_ratio, s.heads)


def _dense(p, x, dtype):
  """flax.linen.Dense(dtype=dtype) on params p."""
  return (x.astype(dtype) @ p["kernel"].astype(dtype)) + p["bias"].astype(dtype)


def _scalar_embed(p, s, width, dtype):
  h = _dense(p["Dense_0"]["Dense_0"], layers.sinusoidal(s, FREQ_DIM), dtype)
  return _dense(p["Dense_1"]["Dense_0"], jax.nn.silu(h), dtype)


def condition(dparams, den_cfg, t_BxT, d_BxT, prompt_BxE, tau_BxTxK, dtype=jnp.bfloat16):
  """The per-frame condition vector, as `Denoiser._condition` computes it (concat mode); the
  end-to-end test against `Denoiser.apply` pins the two together."""
  width = den_cfg.size.width
  b, t = t_BxT.shape
  cond = _scalar_embed(dparams["t_embed"], t_BxT, width, dtype)
  cond += _scalar_embed(dparams["d_embed"], d_BxT, width, dtype)
  pr = _dense(dparams["prompt_in"]["Dense_0"], prompt_BxE, dtype)
  cond += _dense(dparams["prompt_out"]["Dense_0"], jax.nn.silu(pr), dtype)[:, None, :]
  taus = _scalar_embed(dparams["tau_embed"], tau_BxTxK, width, dtype).reshape(b, t, -1)
  return cond + _dense(dparams["tau_mix"]["Dense_0"], jax.nn.silu(taus), dtype)


def denoise(dparams, packed, den_cfg, z_BxTxHxWxC, c_BxTxHxWxC, t_BxT, d_BxT, prompt_BxE,
            hist_BxTxKxHxWxC, tau_BxTxK):
  """`Denoiser.apply` (concat history mode) with the trunk in the mega kernel
  (`api.megastep_trunk`): the conditioning, patchify and unpatchify in XLA. `packed` =
  `pack(dparams)`, made once."""
  s = den_cfg.size
  b, t, h, w, c = z_BxTxHxWxC.shape
  k = den_cfg.history_len
  hist = jnp.moveaxis(hist_BxTxKxHxWxC, 2, 4).reshape(b, t, h, w, k * c)
  x = jnp.concatenate([a.astype(jnp.bfloat16) for a in (z_BxTxHxWxC, c_BxTxHxWxC, hist)], -1)
  patches = layers.patchify(x, s.patch)
  length = patches.shape[2]
  pos = layers.sincos_2d(h // s.patch, w // s.patch, s.width)
  cond = condition(dparams, den_cfg, t_BxT, d_BxT, prompt_BxE, tau_BxTxK)
  out = api.megastep_trunk(patches.reshape(b * t, length, -1), pos, cond.reshape(b * t, s.width), packed,
                           heads=s.heads)
  p_out = s.patch * s.patch * c
  out = out[..., :p_out].reshape(b, t, length, p_out)
  return layers.unpatchify(out, s.patch, h, w, c).astype(jnp.float32)


def velocity_fn(den_cfg, dparams, packed, *, fallback: Callable | None = None) -> Callable:
  """u(x, t, d, cond) through the mega kernel, the signature of `lsd.velocity_fn`; where the
  kernel does not support the shape (decided at trace time), `fallback` (logged once)."""

  def fn(x, t, d, cond):
    s = den_cfg.size
    length = (x.shape[2] // s.patch) * (x.shape[3] // s.patch)
    why = step_supported(den_cfg, length)
    if why is not None and fallback is not None:
      api.warn_fallback_once("megastep", why)
      return fallback(x, t, d, cond)
    if why is not None:
      raise ValueError(f"the mega kernel cannot run this step: {why}")
    return denoise(dparams, packed, den_cfg, x, cond["c"], t, d, cond["prompt"], cond["hist"], cond["tau"])

  return fn

