"""Held-out fidelity while training: a fixed small batch of held-out streams, scored per effect.

Every `config.heldout.every` steps the loop streams a few held-out clips (never trained on) frame
by frame through the current model, one stream per (single effect, clip), each prompted by one
of the effect's val paraphrases, at the model's own S and tau_inf, exactly as `eval.fidelity`
does, and scores PSNR against the effect's exact ground truth after the first K + 1 frames. Two
references sit beside it, computed once: the input returned unchanged and the autoencoder's round
trip of the target (the ceiling). The numbers go to TensorBoard, `train_metrics.jsonl` and the
PNG curves as `heldout_psnr/<effect>`, `heldout_psnr_mean` (EMA weights, what is exported) and
`heldout_psnr_mean_raw` (the raw weights), and the references once to `heldout_refs.json`.

All streams run as one batch (the sampler is batched), so one evaluation is one compiled call.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsd_jax.datasets import effects, prompts, sources
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd


@dataclasses.dataclass(frozen=True)
class Probe:
  """The fixed held-out batch and its references. `names[i]` is stream i's effect."""
  names: tuple[str, ...]  # per stream
  texts: tuple[str, ...]  # per stream: the val prompt
  clips_BxTxHxWx3: np.ndarray  # uint8
  prompts_BxE: np.ndarray
  targets_BxTxHxWx3: np.ndarray  # float32 in [0, 1]
  input_psnr: dict[str, float]  # per effect
  ae_psnr: dict[str, float]  # per effect
  warm: int  # frames before scoring starts (K + 1)
  clip_index: np.ndarray  # per stream: which clip (its key, as eval.fidelity keys clip j)
  # per stream: the initial noise's scale of its effect (`LSDConfig.noise_scale_for`, as
  # eval.fidelity gives each prompt its scale) for a model whose scale is chosen per prompt; else None
  noise_B: np.ndarray | None = None


def _psnr(a, b, axis):
  mse = np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64)), axis=axis)
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def heldout_clips(data_config, n: int, frames: int, height: int, width: int) -> list[np.ndarray]:
  """`n` held-out clips: the library's held-out split when the config trains on the library,
  else procedural scenes of a seed training never uses (a tiny CPU run has no library)."""
  lib = data_config.sources.library
  if lib.weight > 0 and os.path.isfile(lib.manifest):
    src = sources.VideoClipSource.from_manifest(lib.manifest, "heldout", height=height, width=width,
                                                num_frames=frames, seed=7, strides=(1,))
  else:
    src = sources.ProceduralSource(height=height, width=width, num_frames=frames, seed=0x4E1D)
  return [np.asarray(src[i]) for i in range(n)]


def single_effect_prompts(names: Sequence[str] | None = None) -> dict[str, tuple[str, np.ndarray, effects.EffectSpec]]:
  """One val paraphrase per single effect (no compositions), as `eval.fidelity` picks them;
  restricted to `names` when given."""
  chosen = prompts.pick_val_prompts(prompts.load_embedding_table(), names or None)
  return {n: (t, np.asarray(e, np.float32), spec) for n, (t, e, spec) in chosen.items() if "+" not in n}


def make_probe(cfg: lsd.LSDConfig, ae_params, clips: Sequence[np.ndarray], chosen: dict) -> Probe:
  """Renders every target once and measures both references."""
  ae, _ = lsd.build(cfg)
  render = jax.jit(jax.vmap(effects.render_clip))
  roundtrip = jax.jit(lambda p, x: lsd.decode(ae, p, lsd.encode(ae, p, x)))
  names, texts, cl, pr, specs, idx = [], [], [], [], [], []
  for name, (text, emb, spec) in chosen.items():
    for j, clip in enumerate(clips):
      names.append(name), texts.append(text), cl.append(clip), pr.append(emb), specs.append(spec), idx.append(j)
  clips_b = np.stack(cl)
  spec_b = effects.EffectSpec(*(jnp.asarray(np.stack(f)) for f in zip(*specs)))
  keys = jax.vmap(jax.random.key)(1000 + jnp.asarray(idx))  # eval.fidelity's effect keys
  targets = np.asarray(render(spec_b, jnp.asarray(clips_b, jnp.float32) / 255.0, keys))
  warm = cfg.history_len + 1
  flat = targets.reshape((-1,) + targets.shape[2:])
  rt = np.concatenate([np.asarray(roundtrip(ae_params, flat[i:i + 64])) for i in range(0, len(flat), 64)])
  rt = rt.reshape(targets.shape)
  inp = _psnr(clips_b[:, warm:] / 255.0, targets[:, warm:], axis=(2, 3, 4)).mean(1)
  aep = _psnr(rt[:, warm:], targets[:, warm:], axis=(2, 3, 4)).mean(1)
  per = lambda v: {n: float(np.mean([x for m, x in zip(names, v) if m == n])) for n in chosen}  # noqa: E731
  noise = None
  if cfg.per_prompt_noise:  # the probe knows each stream's effect: its scale from the name
    noise = np.asarray([cfg.noise_scale_for(effects.has_particles(n)) for n in names], np.float32)
  return Probe(tuple(names), tuple(texts), clips_b, np.stack(pr), targets, per(inp), per(aep), warm,
               np.asarray(idx, np.int32), noise)


def rollout_fn(cfg: lsd.LSDConfig) -> Callable[..., jax.Array]:
  """jit(f(params, clips_BxTxHxWx3 uint8, prompts_BxE, keys_B[, noise_B]) -> outputs in [0, 1]): B
  lossless streams at once, stream b exactly as `eval.fidelity` streams one clip under key
  `keys_B[b]` (and initial noise scale `noise_B[b]`, for a per-prompt scale): the model's frame
  function (`models.frame`) scanned over each clip, vmapped over clips."""
  fn = model_frame.frame_fn(cfg)

  def stream(params, clip, prompt_e, key, noise=None):
    t = clip.shape[0]
    prompts = jnp.broadcast_to(prompt_e, (t, *prompt_e.shape))
    noise_T = None if noise is None else jnp.broadcast_to(noise, (t,))
    _, outs = model_frame.scan_frames(fn, params, model_frame.empty_ring(cfg), clip, prompts, jnp.arange(t), key,
                                      noise_T)
    return outs

  plain = jax.jit(jax.vmap(stream, in_axes=(None, 0, 0, 0)))
  noised = jax.jit(jax.vmap(stream, in_axes=(None, 0, 0, 0, 0)))
  return lambda params, clips, prompts_BxE, keys, noise_B=None: (  # noqa: E731
      plain(params, clips, prompts_BxE, keys) if noise_B is None else noised(params, clips, prompts_BxE, keys, noise_B))


class HeldoutEval:
  """Callable `(step, ema_denoiser, raw_denoiser) -> metrics` over a fixed probe."""

  def __init__(self, cfg: lsd.LSDConfig, ae_params, probe: Probe, workdir: str | None = None):
    self.cfg, self.ae_params, self.probe = cfg, ae_params, probe
    self._roll = rollout_fn(cfg)
    if workdir:
      with open(os.path.join(workdir, "heldout_refs.json"), "w") as f:
        json.dump({"effects": sorted(set(probe.names)), "prompts": dict(zip(probe.names, probe.texts)),
                   "clips": int(len(probe.names) / max(1, len(set(probe.names)))),
                   "frames": int(probe.clips_BxTxHxWx3.shape[1]), "scored_from_frame": probe.warm,
                   "steps": self.cfg.steps, "tau_inf": self.cfg.tau_inf,
                   "noise_scale": (dict(zip(probe.names, probe.noise_B.tolist())) if probe.noise_B is not None
                                   else self.cfg.noise_scale),
                   "input_psnr": probe.input_psnr, "ae_psnr": probe.ae_psnr}, f, indent=2)

  def psnr(self, den_params) -> dict[str, float]:
    p = self.probe
    params = {"autoencoder": self.ae_params, "denoiser": den_params}
    out = np.asarray(self._roll(params, jnp.asarray(p.clips_BxTxHxWx3), jnp.asarray(p.prompts_BxE),
                                jax.vmap(jax.random.key)(jnp.asarray(p.clip_index)),
                                None if p.noise_B is None else jnp.asarray(p.noise_B)))
    per_stream = _psnr(out[:, p.warm:], p.targets_BxTxHxWx3[:, p.warm:], axis=(2, 3, 4)).mean(1)
    return {n: float(np.mean([x for m, x in zip(p.names, per_stream) if m == n])) for n in dict.fromkeys(p.names)}

  def __call__(self, ema_params, raw_params=None) -> dict[str, float]:
    per = self.psnr(ema_params)
    vals = {f"heldout_psnr/{n}": v for n, v in per.items()}
    vals["heldout_psnr_mean"] = float(np.mean(list(per.values())))
    vals["heldout_input_psnr_mean"] = float(np.mean([self.probe.input_psnr[n] for n in per]))
    vals["heldout_ae_psnr_mean"] = float(np.mean([self.probe.ae_psnr[n] for n in per]))
    if raw_params is not None:
      vals["heldout_psnr_mean_raw"] = float(np.mean(list(self.psnr(raw_params).values())))
    return vals


def build(config, cfg: lsd.LSDConfig, ae_params, workdir: str | None) -> HeldoutEval | None:
  """The evaluator `config.heldout` asks for (None when `every` is 0)."""
  h = config.get("heldout")
  if h is None or not h.every:
    return None
  wanted = [e for e in (config.data.get("effects") or "").split(",") if e] or None
  chosen = single_effect_prompts(wanted)
  if not chosen:
    raise ValueError(f"no val prompt for the effects {wanted}")
  clips = heldout_clips(config.data, h.clips, h.frames, cfg.height, cfg.width)
  probe = make_probe(cfg, jax.device_get(ae_params), clips, chosen)
  logging.info("held-out probe: %d effects x %d clips x %d frames; input-as-output %.2f dB, ceiling %.2f dB",
               len(chosen), len(clips), h.frames, np.mean(list(probe.input_psnr.values())),
               np.mean(list(probe.ae_psnr.values())))
  return HeldoutEval(cfg, ae_params, probe, workdir)


def summary_line(vals: dict[str, Any]) -> str:
  return (f"held-out PSNR {vals['heldout_psnr_mean']:.2f} dB (input as output {vals['heldout_input_psnr_mean']:.2f}, "
          f"ceiling {vals['heldout_ae_psnr_mean']:.2f})")
