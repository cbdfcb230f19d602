"""The evaluation protocol (DESIGN.md section 8), the same for every model and ablation arm:
`EvalConfig`, each effect over held-out clips, and one endless procedural stream with a prompt
schedule (`runner.run_stream`, summarised by `summary.py`). With a state folder an interrupted
evaluation continues where it stopped: the held-out results are kept there and the stream resumes
from its saved state (`resume.py`)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from lsd_jax.eval import chunks, fidelity, resume, runner, summary
from lsd_jax.eval import frames as frames_lib
from lsd_jax.eval.runner import Prompt
from lsd_jax.models import lsd


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The evaluation protocol (the same for every model and ablation arm). The last three fields
  change how a run is carried out, not its numbers."""
  steps: int = 2  # S at inference
  effects: tuple[str, ...] | None = None  # effect names (prompts.pick_val_prompts keys); None: all single effects
  clips: int = 4  # held-out clips
  clip_frames: int = 32
  stream_frames: int = 2_000  # procedural stream length (100_000 for the drift run)
  switch_every: int = 250  # prompt switch period on the procedural stream
  segment: int = 0  # drift segment; 0: one full cycle of the schedule (len(effects) * switch_every)
  chunk: int = 256
  seed: int = 0
  scene: int = 0  # procedural scene index
  progress: bool = True
  render_workers: int = 0  # processes rendering the procedural stream (0: a background thread)
  checkpoint_every: int = 10_000  # frames between saves of the stream's progress (with a state folder)
  max_minutes: float = 0.0  # stop the stream (saved, resumable) after this long; 0: no limit

  def segment_frames(self, n_effects: int) -> int:
    cycle = n_effects * self.switch_every
    if self.segment and self.segment % cycle:
      raise ValueError(f"drift segment of {self.segment} frames is not a whole number of schedule cycles ({cycle} "
                       f"frames: {n_effects} effects x {self.switch_every}); its segments would hold different "
                       "effects and the drift ratio would compare them, not the model over time")
    return self.segment or cycle


RUN_ONLY = ("progress", "render_workers", "checkpoint_every", "max_minutes")  # EvalConfig fields outside the protocol


def choose_prompts(effect_names: Sequence[str] | None) -> dict[str, Prompt]:
  """One val prompt per effect name (None: every single effect), from the precomputed table."""
  from lsd_jax.datasets import prompts as prompts_lib

  chosen = prompts_lib.pick_val_prompts(prompts_lib.load_embedding_table(), effect_names)
  if effect_names is None:
    return {k: v for k, v in chosen.items() if "+" not in k}
  missing = [e for e in effect_names if e not in chosen]
  if missing:
    raise ValueError(f"no val prompt for effects {missing}; known: {sorted(chosen)}")
  return {e: chosen[e] for e in effect_names}


def evaluate_heldout(cfg, params, clips: Sequence[np.ndarray], prompts: dict[str, Prompt], ec: EvalConfig,
                     model_fn=None, noise_scales: dict[str, float] | None = None) -> dict[str, Any]:
  """Each effect over each held-out clip as its own stream (fresh history), first K+1 frames
  excluded (the history is not full yet)."""
  model_fn = model_fn or chunks.model_chunk_fn(cfg, ec.steps)
  warm = cfg.history_len + 1
  out = {}
  for e, p in prompts.items():
    merged: dict[str, list] = {k: [] for k in chunks.PER_FRAME}
    for j, clip in enumerate(clips):
      res = runner.run_stream(cfg, params, clip, {e: p}, runner.Schedule((0,), (e,)), len(clip), steps=ec.steps,
                              chunk=min(ec.chunk, len(clip)), seed=ec.seed + j, model_fn=model_fn,
                              noise_scales=noise_scales and {e: noise_scales[e]})
      for k in chunks.PER_FRAME:
        merged[k].append(res.per_frame[k][warm:])
    pf = {k: np.concatenate(v) for k, v in merged.items()}
    out[e] = {"prompt": p[0], **summary.summarize_frames(pf, np.ones(len(pf["psnr"]), bool), p[2], cfg.height, cfg.width)}
  return out


def evaluate_procedural(cfg, params, prompts: dict[str, Prompt], ec: EvalConfig, model_fn=None,
                        state_dir: str | None = None,
                        noise_scales: dict[str, float] | None = None) -> tuple[dict[str, Any], runner.StreamResult]:
  """One endless procedural stream cycling through the prompts; drift, switches and latency.
  With `state_dir` the stream checkpoints there and resumes from it (see runner.run_stream)."""
  source = frames_lib.ProceduralFrames(height=cfg.height, width=cfg.width, seed=ec.seed, scene_index=ec.scene,
                                       workers=ec.render_workers)
  sched = runner.Schedule.cycle(list(prompts), ec.switch_every, ec.stream_frames)
  ckpt = dict(checkpoint=os.path.join(state_dir, "stream_state.npz"), checkpoint_every=ec.checkpoint_every,
              max_seconds=60.0 * ec.max_minutes if ec.max_minutes > 0 else None,
              fingerprint={"source": "procedural", "scene": ec.scene}) if state_dir else {}
  try:
    res = runner.run_stream(cfg, params, source, prompts, sched, ec.stream_frames, steps=ec.steps, chunk=ec.chunk,
                     seed=ec.seed, model_fn=model_fn, progress=ec.progress, desc="procedural stream",
                     noise_scales=noise_scales, **ckpt)
  finally:
    source.close()
  out = summary.summarize_stream(res, prompts, segment=ec.segment_frames(len(prompts)), warm=cfg.history_len + 1,
                                 height=cfg.height, width=cfg.width)
  out.update(complete=res.complete, planned_frames=ec.stream_frames, resumed_at=res.resumed_at)
  return out, res


def _protocol(ec: EvalConfig) -> dict[str, Any]:
  return {k: v for k, v in dataclasses.asdict(ec).items() if k not in RUN_ONLY}


def evaluate(cfg: lsd.LSDConfig, params, clips: Sequence[np.ndarray], ec: EvalConfig,
             state_dir: str | None = None, encoder=None) -> tuple[dict[str, Any], runner.StreamResult]:
  """The whole protocol: held-out clips (when any) and the procedural stream. With `state_dir`
  the held-out results and the stream's progress are kept there, so an interrupted evaluation
  continues where it stopped. `encoder`: the text encoder a per-prompt noise scale reads the
  prompts with (None: MiniLM)."""
  prompts = choose_prompts(ec.effects)
  noise = fidelity.prompt_noise_scales(cfg, {e: p[0] for e, p in prompts.items()}, encoder)  # None: one scale
  model_fn = chunks.model_chunk_fn(cfg, ec.steps)
  logging.info("evaluating %s at S=%d on %d held-out clips and a %d-frame stream (%d effects)", cfg.size,
               ec.steps, len(clips), ec.stream_frames, len(prompts))
  heldout = _cached_heldout(cfg, params, clips, prompts, ec, model_fn, state_dir, noise) if clips else {}
  stream, res = evaluate_procedural(cfg, params, prompts, ec, model_fn, state_dir, noise)
  return {"protocol": dataclasses.asdict(ec), "model": {**cfg.to_dict()}, "heldout": heldout,
          "stream": stream, **({"noise_scales": noise} if noise else {})}, res


def _cached_heldout(cfg, params, clips, prompts, ec, model_fn, state_dir, noise_scales=None):
  if state_dir is None:
    return evaluate_heldout(cfg, params, clips, prompts, ec, model_fn, noise_scales)
  path = os.path.join(state_dir, "heldout.json")
  # the model's config too: the same weights at another tau_inf or noise scale stream differently
  key = {"params": resume.params_digest(params), "protocol": _protocol(ec), "clips": len(clips),
         "model": cfg.to_dict(), **({"noise_scales": noise_scales} if noise_scales else {})}
  key = json.loads(json.dumps(key))
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved["key"] == key:
      logging.info("held-out results from %s", path)
      return saved["heldout"]
  heldout = evaluate_heldout(cfg, params, clips, prompts, ec, model_fn, noise_scales)
  os.makedirs(state_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"key": key, "heldout": heldout}, f)
  os.replace(path + ".tmp", path)
  return heldout
