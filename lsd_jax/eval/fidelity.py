"""Held-out fidelity per effect: a model streamed over held-out clips, frame by frame, in
lossless mode, against the effect's exact ground truth, at several step counts S.

For each effect one held-out (val) paraphrase is the prompt. Two references frame the numbers:
`input_psnr` (the untouched input against the target: what doing nothing scores) and
`ae_psnr` (the target through the autoencoder: the ceiling any latent model can reach).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.datasets import effects
from lsd_jax.eval import metrics
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd


def rollout_fn(cfg: lsd.LSDConfig, steps: int):
  """jit(f(params, frames_TxHxWx3 uint8, prompt_E, key[, noise]) -> out_TxHxWx3 in [0, 1]): a
  stream from an empty history, the model's frame function (`models.frame`) scanned over the
  clip; `noise`: the initial noise's scale of the prompt (a per-prompt scale), else the config's."""
  fn = model_frame.frame_fn(dataclasses.replace(cfg, steps=steps))

  def run(params, frames, prompt_E, key, noise=None):
    t = frames.shape[0]
    prompts = jnp.broadcast_to(prompt_E, (t, *prompt_E.shape))
    noise_T = None if noise is None else jnp.broadcast_to(jnp.asarray(noise, jnp.float32), (t,))
    _, outs = model_frame.scan_frames(fn, params, model_frame.empty_ring(cfg), frames, prompts, jnp.arange(t), key,
                                      noise_T)
    return outs

  return jax.jit(run)


def prompt_noise_scales(cfg: lsd.LSDConfig, texts: dict[str, str], encoder=None) -> dict[str, float] | None:
  """{name: the initial noise scale the stream engine gives `texts[name]`} for a model whose scale
  is chosen per prompt (`LSDConfig.per_prompt_noise`): each text's effect read from its words
  (`prompts.match_many`, as the engine reads it), particles or not; None for any other model."""
  if not cfg.per_prompt_noise:
    return None
  from lsd_jax.datasets import prompts  # pylint: disable=import-outside-toplevel

  names = list(texts)
  read, _ = prompts.match_many([texts[n] for n in names], encoder)
  return {n: cfg.noise_scale_for(effects.has_particles(r)) for n, r in zip(names, read)}  # '' reads as identity


def ae_roundtrip_fn(cfg: lsd.LSDConfig):
  ae, _ = lsd.build(cfg)
  return jax.jit(lambda p, x: lsd.decode(ae, p, lsd.encode(ae, p, x)))


def evaluate(cfg: lsd.LSDConfig, params, clips: Sequence[np.ndarray], prompts: dict, *,
             steps_list=(1, 2, 4), seed: int = 0, noise_scales: dict[str, float] | None = None) -> dict[str, Any]:
  """PSNR per effect and S, averaged over clips and frames (frames after the first K+1, so the
  history is full; the first frames are reported separately as `start_psnr`). `noise_scales`
  (`prompt_noise_scales`): each effect's initial noise scale, recorded in its row."""
  roll = {s: rollout_fn(cfg, s) for s in steps_list}
  params = model_frame.prepare_params(cfg, params)  # packed for the mega kernel if cfg asks for it
  rt = ae_roundtrip_fn(cfg)
  render = jax.jit(effects.render_clip)
  warm = cfg.history_len + 1
  results = {}
  for name, (text, emb, spec) in prompts.items():
    row = {"prompt": text, "psnr": {}, "start_psnr": {}}
    noise = () if noise_scales is None else (jnp.float32(noise_scales[name]),)
    if noise_scales is not None:
      row["noise_scale"] = noise_scales[name]
    inp, aes = [], []
    per_s = {s: ([], []) for s in steps_list}
    for j, clip in enumerate(clips):
      target = np.asarray(render(effects.EffectSpec(*(jnp.asarray(x) for x in spec)), clip.astype(np.float32) / 255.0,
                                 jax.random.key(1000 + j)))
      inp.append(metrics.psnr(clip.astype(np.float32) / 255.0, target, axis=(1, 2, 3))[warm:])
      aes.append(metrics.psnr(np.asarray(rt(params["autoencoder"], target)), target, axis=(1, 2, 3))[warm:])
      for s in steps_list:
        out = np.asarray(roll[s](params, clip, jnp.asarray(emb), jax.random.key(seed + j), *noise))
        p = metrics.psnr(out, target, axis=(1, 2, 3))
        per_s[s][0].append(p[warm:])
        per_s[s][1].append(p[:warm])
    row["input_psnr"] = float(np.mean(np.concatenate(inp)))
    row["ae_psnr"] = float(np.mean(np.concatenate(aes)))
    for s in steps_list:
      row["psnr"][s] = float(np.mean(np.concatenate(per_s[s][0])))
      row["start_psnr"][s] = float(np.mean(np.concatenate(per_s[s][1])))
    results[name] = row
  return results


def markdown(results: dict[str, Any], steps_list=(1, 2, 4)) -> str:
  head = "| effect | val prompt | " + " | ".join(f"PSNR S={s}" for s in steps_list) + " | input as output | AE ceiling |"
  lines = [head, "|" + "---|" * (len(steps_list) + 4)]
  for name, r in results.items():
    lines.append(f"| {name} | {r['prompt']} | " + " | ".join(f"{r['psnr'][s]:.2f}" for s in steps_list)
                 + f" | {r['input_psnr']:.2f} | {r['ae_psnr']:.2f} |")
  means = {s: np.mean([r["psnr"][s] for r in results.values()]) for s in steps_list}
  lines.append("| **mean** | | " + " | ".join(f"**{means[s]:.2f}**" for s in steps_list)
               + f" | {np.mean([r['input_psnr'] for r in results.values()]):.2f}"
               + f" | {np.mean([r['ae_psnr'] for r in results.values()]):.2f} |")
  return "\n".join(lines)
