"""Why a model misses an effect: the same frames scored under three conditions.

For each effect and clip split (held-out clips, and clips of the training split) the model's
PSNR against the exact ground truth after the first K + 1 frames is measured

- ``streamed``: lossless streaming with its own history, as `eval.fidelity` does (what users get);
- ``gt_history``: each frame sampled with the ground truth's K previous target latents as its
  history (level 0, then noised to tau_inf as always): the history training shows the model;
- ``no_history``: each frame sampled with an empty ring (every slot at level 1), from the input
  frame and the prompt alone.

Reading it: streamed far below gt_history means the model leans on a history that its own
outputs cannot provide (exposure); no_history as good as gt_history means the history adds
nothing; train far above held-out means it fits its training clips without generalising; all
of them low on both splits means the mapping itself is not learned (capacity, objective,
optimisation or conditioning).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.datasets import effects
from lsd_jax.diffusion import sampler
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd

CONDITIONS = ("streamed", "gt_history", "no_history")


def _psnr(a, b) -> float:
  mse = float(np.mean(np.square(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
  return 10.0 * np.log10(1.0 / max(mse, 1e-12))


def frame_fns(cfg: lsd.LSDConfig):
  """(streamed(params, clip, prompt, key) -> frames, per_frame(params, c_FxhxwxC, ring_F, prompt, keys_F)
  -> frames, encode), all through the model's frame function (`models.frame`)."""
  fns = model_frame.frame_fns(cfg)

  def streamed(params, clip, prompt_e, key):
    t = clip.shape[0]
    prompts = jnp.broadcast_to(prompt_e, (t, *prompt_e.shape))
    _, outs = model_frame.scan_frames(fns.frame, params, model_frame.empty_ring(cfg), clip, prompts, jnp.arange(t), key)
    return outs

  def per_frame(params, c_F, ring_F, prompt_e, keys_F):
    def one(c_in, ring, key):  # frame f alone, with the history ring given for it
      _, z = fns.denoise(params, sampler.Ring(*(x[None] for x in ring)), c_in[None], prompt_e[None], key)
      return z[0]

    return fns.decode(params, jax.vmap(one)(c_F, ring_F, keys_F))

  return jax.jit(streamed), jax.jit(per_frame), jax.jit(fns.encode)


def diagnose(cfg: lsd.LSDConfig, params, clips: dict[str, Sequence[np.ndarray]], chosen: dict, seed: int = 0) -> dict:
  """{effect: {split: {condition: PSNR, "input": .., "start": ..}}} over the given clips."""
  streamed, per_frame, encode = frame_fns(cfg)
  render = jax.jit(effects.render_clip)
  k = cfg.history_len
  warm = k + 1
  out = {}
  for name, (_, emb, spec) in chosen.items():
    row = {}
    for split, split_clips in clips.items():
      acc = {c: [] for c in CONDITIONS + ("input", "start")}
      for j, clip in enumerate(split_clips):
        frames01 = clip.astype(np.float32) / 255.0
        target = np.asarray(render(effects.EffectSpec(*(jnp.asarray(x) for x in spec)), frames01,
                                   jax.random.key(1000 + j)))
        key = jax.random.key(seed + j)
        t = clip.shape[0]
        s = np.asarray(streamed(params, clip, jnp.asarray(emb), key))
        acc["streamed"].append(_psnr(s[warm:], target[warm:]))
        acc["start"].append(_psnr(s[:1], target[:1]))
        acc["input"].append(_psnr(frames01[warm:], target[warm:]))
        c_all = encode(params, clip)
        y_all = encode(params, jnp.asarray(target))
        idx = np.arange(warm, t)
        hist_idx = idx[:, None] - k + np.arange(k)[None]  # F x K, oldest first
        keys = jax.vmap(lambda i: model_frame.frame_key(key, i))(jnp.asarray(idx))
        gt_ring = sampler.Ring(y_all[hist_idx], c_all[hist_idx], jnp.zeros(hist_idx.shape, jnp.float32))
        empty = sampler.Ring(jnp.zeros_like(y_all[hist_idx]), jnp.zeros_like(c_all[hist_idx]),
                             jnp.ones(hist_idx.shape, jnp.float32))
        for cond, ring in (("gt_history", gt_ring), ("no_history", empty)):
          o = np.asarray(per_frame(params, c_all[idx], ring, jnp.asarray(emb), keys))
          acc[cond].append(_psnr(o, target[warm:]))
      row[split] = {c: float(np.mean(v)) for c, v in acc.items()}
    out[name] = row
  return out


def markdown(results: dict) -> str:
  splits = list(next(iter(results.values())))
  head = ["effect"] + [f"{s} {c}" for s in splits for c in CONDITIONS] + [f"{splits[0]} input"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in results.items():
    vals = [f"{row[s][c]:.2f}" for s in splits for c in CONDITIONS] + [f"{row[splits[0]]['input']:.2f}"]
    lines.append(f"| {name} | " + " | ".join(vals) + " |")
  means = [f"**{np.mean([r[s][c] for r in results.values()]):.2f}**" for s in splits for c in CONDITIONS]
  lines.append("| **mean** | " + " | ".join(means) + f" | {np.mean([r[splits[0]]['input'] for r in results.values()]):.2f} |")
  return "\n".join(lines)

