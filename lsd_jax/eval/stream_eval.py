"""Streamed evaluation in constant memory: a model over held-out clips and endless procedural
streams with prompt schedules, in lossless mode, with per-frame metrics computed on the device.

A stream is cut into chunks of `chunk` frames. Per chunk, three jitted scans run:
1. the model (`model_chunk_fn`): the latent ring buffer is carried across chunks, so a chunked
   stream equals one long stream (same noise: the key is folded in by the absolute frame index);
2. the ground truth (`truth_chunk_fn`): `effects.render_step` with its EffectState carried
   across chunks, re-initialised at a prompt switch (the new effect starts from its own state);
3. the metrics (`metrics_chunk_fn`, vmapped over the chunk): PSNR, SSIM, flicker and particle
   statistics per frame, with the chunk's previous frame carried, so only a few scalars per frame come back to the host.
The host waits once per chunk (the model scan is timed with block_until_ready; the latency per
frame is that time over the chunk's frames) and never inside one, and keeps only the per-frame
scalars: 100,000 frames are ~10 MB of host memory and a fixed amount of device memory.

Particle statistics (temporal particle effects) compare the output and the ground truth through
the same estimators, computed against the per-frame-effect-only frame F (the input with only the
per-frame part of the effect; what the particles are drawn over):
- density: the fraction of pixels where luma(frame) - luma(F) > metrics.PARTICLE_THRESHOLD;
- velocity: the (dy, dx) phase-correlation shift between consecutive particle layers
  max(0, luma(frame) - luma(F)) -- the dominant displacement of particle mass per frame.
The spec's own numbers (visible particle count, nominal velocity) are reported beside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsd_jax.datasets import effects
from lsd_jax.diffusion import sampler
from lsd_jax.eval import frames as frames_lib
from lsd_jax.eval import metrics
from lsd_jax.eval import progress as progress_lib
from lsd_jax.models import lsd

Prompt = tuple[str, np.ndarray, effects.EffectSpec]  # text, embedding, spec (fidelity.pick_prompts)
PER_FRAME = ("psnr", "ssim", "flicker", "density_out", "density_gt", "vel_out_y", "vel_out_x",
             "vel_gt_y", "vel_gt_x")


# ----------------------------------------------------------------------------- jitted chunks


def model_chunk_fn(cfg: lsd.LSDConfig, steps: int):
  """jit(f(params, ring, frames_TxHxWx3 uint8, prompt_TxE, index_T, key) -> (ring, out_TxHxWx3)).

  The same per-frame computation as fidelity.rollout_fn, with the ring as carry in and out."""
  ae, den = lsd.build(dataclasses.replace(cfg, steps=steps))

  def run(params, ring, frames, prompt_TxE, index_T, key):
    vf = lsd.velocity_fn(den, params["denoiser"])

    def one(ring, xs):
      i, frame, prompt_E = xs
      c_in = lsd.encode(ae, params["autoencoder"], frame[None])
      z = sampler.sample_frame(vf, jax.random.fold_in(key, i + 1), c_in, ring, prompt_E[None],
                               tau_inf=cfg.tau_inf, steps=steps, mode=cfg.history_mode, residual=cfg.residual)
      return sampler.push(ring, z, c_in), lsd.decode(ae, params["autoencoder"], z)[0]

    return jax.lax.scan(one, ring, (index_T, frames, prompt_TxE))

  return jax.jit(run, donate_argnums=1)


def empty_ring(cfg: lsd.LSDConfig) -> sampler.Ring:
  h, w, c = cfg.latent_shape
  ring = sampler.empty_ring(1, cfg.history_len, h, w, c)
  return jax.tree.map(lambda x: jnp.array(x, copy=True), ring)  # distinct buffers: the ring is donated


def _truth(state, frames, spec_T, reset_T, index_T, key):
  def one(state, xs):
    frame, spec, reset, i = xs
    frame = frame.astype(jnp.float32) / 255.0
    fresh = effects.init_state(spec, frame.shape, jax.random.fold_in(key, i))
    state = jax.tree.map(lambda a, b: jnp.where(reset, a, b), fresh, state)
    state, target = effects.render_step(spec, state, frame)
    return state, (target, effects.apply_frame_effect(spec, frame))

  return jax.lax.scan(one, state, (frames, spec_T, reset_T, index_T))


truth_chunk_fn = jax.jit(_truth, donate_argnums=0)
"""jit(f(state, frames_T uint8, spec_T, reset_T, index_T, key) -> (state, (target_T, frame_only_T)))."""


class MetricCarry(NamedTuple):
  prev_out: jax.Array  # HxWx3
  prev_gt: jax.Array
  prev_layer_out: jax.Array  # HxW particle layers
  prev_layer_gt: jax.Array
  has_prev: jax.Array  # bool


def empty_metric_carry(height: int, width: int) -> MetricCarry:
  z3 = lambda: jnp.zeros((height, width, 3), jnp.float32)  # distinct buffers: the carry is donated
  z = lambda: jnp.zeros((height, width), jnp.float32)
  return MetricCarry(z3(), z3(), z(), z(), jnp.array(False))


def _metrics(carry: MetricCarry, out_T, target_T, frame_only_T, reset_T):
  """All frames of a chunk at once (vmapped, no loop): previous frames are the carry's last
  frame followed by the chunk shifted by one."""
  shift = lambda first, xs: jnp.concatenate([first[None], xs[:-1]])
  lay_y = jax.vmap(metrics.particle_layer)(out_T, frame_only_T)
  lay_g = jax.vmap(metrics.particle_layer)(target_T, frame_only_T)
  # A barrier between the layers and their consumers: without it XLA:CPU fuses the SSIM, the
  # layers and the FFTs into one computation whose compile time explodes with the frame size.
  lay_y, lay_g = jax.lax.optimization_barrier((lay_y, lay_g))
  has_prev = shift(carry.has_prev, jnp.ones(reset_T.shape, bool))
  moved = (has_prev & ~reset_T)[:, None]  # particles re-spawn at a switch: no displacement to measure
  # Output and truth pairs in one phase_shift call: its FFTs must not run side by side (see there).
  v_y, v_g = jnp.split(jax.lax.optimization_barrier(metrics.phase_shift(
      jnp.concatenate([shift(carry.prev_layer_out, lay_y), shift(carry.prev_layer_gt, lay_g)]),
      jnp.concatenate([lay_y, lay_g]))), 2)
  v_y, v_g = jnp.where(moved, v_y, jnp.nan), jnp.where(moved, v_g, jnp.nan)
  flick = metrics.flicker_step(shift(carry.prev_out, out_T), out_T, shift(carry.prev_gt, target_T), target_T)
  ssim_T = jax.lax.optimization_barrier(metrics.ssim(*jax.lax.optimization_barrier((out_T, target_T))))
  row = {"psnr": metrics.psnr_frames(out_T, target_T), "ssim": ssim_T,
         "flicker": jnp.where(has_prev, flick, jnp.nan),
         "density_out": metrics.particle_density(lay_y), "density_gt": metrics.particle_density(lay_g),
         "vel_out_y": v_y[:, 0], "vel_out_x": v_y[:, 1], "vel_gt_y": v_g[:, 0], "vel_gt_x": v_g[:, 1]}
  return MetricCarry(out_T[-1], target_T[-1], lay_y[-1], lay_g[-1], jnp.array(True)), row


metrics_chunk_fn = jax.jit(_metrics, donate_argnums=0)


# ----------------------------------------------------------------------------- one stream


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Which prompt is active from which frame: `starts` ascending, the first 0; `names` index
  the prompts dict. The effect's ground-truth state restarts at each switch."""
  starts: tuple[int, ...]
  names: tuple[str, ...]

  def __post_init__(self):
    if not self.starts or self.starts[0] != 0 or list(self.starts) != sorted(set(self.starts)):
      raise ValueError(f"schedule starts must be ascending, distinct and begin at 0: {self.starts}")
    if len(self.starts) != len(self.names):
      raise ValueError("one name per start")

  @classmethod
  def cycle(cls, names: Sequence[str], every: int, total: int) -> "Schedule":
    """Switch every `every` frames, cycling through `names`, over `total` frames."""
    starts = tuple(range(0, max(total, 1), every))
    return cls(starts, tuple(names[i % len(names)] for i in range(len(starts))))

  def segment_index(self, index_T: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(self.starts), index_T, side="right") - 1


@dataclasses.dataclass
class StreamResult:
  per_frame: dict[str, np.ndarray]  # PER_FRAME -> [frames]
  prompt_index: np.ndarray  # [frames]: index into schedule.names
  chunk_seconds: np.ndarray  # model time of each chunk (block_until_ready)
  chunk_frames: np.ndarray
  schedule: Schedule
  outputs: np.ndarray | None = None  # [frames, H, W, 3] in [0, 1], only with keep_frames
  targets: np.ndarray | None = None
  chunk_wall_seconds: np.ndarray | None = None  # whole chunk: frames, model, truth, metrics
  num_frames: int = 0  # the stream's length; > len(prompt_index) when it stopped part-way
  resumed_at: int = 0  # frames restored from a checkpoint
  cold_chunks: tuple[int, ...] = (0,)  # chunks that include compilation (the first of each run)

  @property
  def complete(self) -> bool:
    return len(self.prompt_index) >= self.num_frames


def run_stream(cfg: lsd.LSDConfig, params, frames: frames_lib.FrameSource | np.ndarray, prompts: dict[str, Prompt],
               schedule: Schedule, num_frames: int, *, steps: int, chunk: int = 256, seed: int = 0,
               model_fn: Callable | None = None, progress: bool = False, desc: str = "stream",
               keep_frames: bool = False, checkpoint: str | None = None, checkpoint_every: int = 0,
               max_seconds: float | None = None, fingerprint: dict[str, Any] | None = None) -> StreamResult:
  """Streams `num_frames` frames through the model in chunks. `frames` is a clip (uint8
  TxHxWx3) or a source `f(lo, n)` of frames by absolute index (frames.py); the next chunk is
  fetched on a background thread while the device works.

  Device memory is independent of num_frames; per-frame scalars accumulate on the host (and,
  with `keep_frames`, the output and target frames: for short clips only).

  With `checkpoint` (a .npz path) the stream's progress is saved every `checkpoint_every`
  frames (0: only at the end or a stop), and a stream started on an existing checkpoint
  continues from it: same chunks, same carries, same keys, so the same numbers as one
  uninterrupted run. With `max_seconds` the stream stops after the first chunk that ends past
  that budget (saving first); the result is then partial (`complete` False). `fingerprint`
  adds what the caller knows of the stream's identity (its frame source) to the checkpoint's.
  """
  if max_seconds is not None and checkpoint is None:
    raise ValueError("max_seconds needs a checkpoint (a stopped stream must be resumable)")
  if keep_frames and checkpoint is not None:
    raise ValueError("keep_frames is for short in-memory streams, not checkpointed ones")
  source = frames_lib.ClipFrames(frames) if isinstance(frames, np.ndarray) else frames
  model_fn = model_fn or model_chunk_fn(cfg, steps)
  key = jax.random.key(seed)
  gt_key = jax.random.key(seed + 10_000)
  first = prompts[schedule.names[0]][2]
  carry = (empty_ring(cfg), effects.init_state(effects.EffectSpec(*(jnp.asarray(x) for x in first)),
                                               (cfg.height, cfg.width, 3), jax.random.fold_in(gt_key, 0)),
           empty_metric_carry(cfg.height, cfg.width))
  emb = np.stack([prompts[n][1] for n in schedule.names]).astype(np.float32)
  specs = [prompts[n][2] for n in schedule.names]
  spec_arrays = effects.EffectSpec(*(np.stack([np.asarray(s[f]) for s in specs]) for f in range(3)))
  starts = np.asarray(schedule.starts)
  rows: dict[str, list[np.ndarray]] = {k: [] for k in PER_FRAME}
  seg_all, secs, counts, walls, kept = [], [], [], [], []
  done, cold = 0, [0]
  if checkpoint is not None:
    fingerprint = {"params": progress_lib.params_digest(params), "model": cfg.to_dict(), "steps": steps,
                   "chunk": chunk, "seed": seed, "num_frames": num_frames, "starts": list(schedule.starts),
                   "names": list(schedule.names), "prompts": {n: prompts[n][0] for n in schedule.names},
                   **(fingerprint or {})}
    saved = progress_lib.load(checkpoint, carry, fingerprint)
    if saved is not None:
      done, carry = saved.done, jax.tree.map(jnp.asarray, saved.carry)
      for k in PER_FRAME:
        rows[k].append(saved.per_frame[k])
      seg_all.append(saved.prompt_index)
      secs, counts, walls = list(saved.chunk_seconds), list(saved.chunk_frames), list(saved.chunk_wall_seconds)
      cold = [int(c) for c in saved.cold_chunks] + [len(secs)]
      logging.info("resuming %s at frame %d of %d from %s", desc, done, num_frames, checkpoint)
  resumed_at = last_saved = done
  ring, state, mcarry = carry
  params = jax.device_put(params)
  fetch = frames_lib.Prefetcher(source)
  bar = _progress(num_frames, desc, done) if progress else None
  t_start = time.perf_counter()
  try:
    while done < num_frames:
      n = min(chunk, num_frames - done)
      t_wall = time.perf_counter()
      block = fetch.get(done, n)
      fetch.ahead(done + n, min(chunk, num_frames - done - n))
      if n < chunk:  # pad the last chunk to the compiled length; padded frames are dropped below
        block = np.concatenate([block, np.repeat(block[-1:], chunk - n, axis=0)])
      block = jax.device_put(block)  # once, for the model and the truth
      index = np.arange(done, done + chunk, dtype=np.int32)
      seg = schedule.segment_index(index)
      reset = np.isin(index, starts) & (index > 0)
      t0 = time.perf_counter()
      ring, out = model_fn(params, ring, block, emb[seg], index, key)
      out.block_until_ready()
      secs.append(time.perf_counter() - t0)
      counts.append(n)
      spec_T = effects.EffectSpec(*(a[seg] for a in spec_arrays))
      state, (target, frame_only) = truth_chunk_fn(state, block, spec_T, reset, index, gt_key)
      mcarry, row = metrics_chunk_fn(mcarry, out, target, frame_only, reset)
      for k, v in jax.device_get(row).items():
        rows[k].append(np.asarray(v)[:n])
      seg_all.append(seg[:n])
      if keep_frames:
        kept.append((np.asarray(out)[:n], np.asarray(target)[:n]))
      done += n
      walls.append(time.perf_counter() - t_wall)
      if bar is not None:
        bar.update(n)
      stop = max_seconds is not None and time.perf_counter() - t_start >= max_seconds and done < num_frames
      if checkpoint is not None and (done - last_saved >= max(checkpoint_every, 1) and checkpoint_every > 0
                                     or done == num_frames or stop):
        progress_lib.save(checkpoint, progress_lib.Progress(
            done, (ring, state, mcarry), {k: np.concatenate(v) for k, v in rows.items()}, np.concatenate(seg_all),
            np.asarray(secs), np.asarray(counts), np.asarray(walls), np.asarray(cold)), fingerprint)
        last_saved = done
      if stop:
        logging.info("%s stopped at frame %d of %d (time budget); re-run to continue", desc, done, num_frames)
        break
  finally:
    fetch.close()
    if bar is not None:
      bar.close()
  outs = (np.concatenate([o for o, _ in kept]), np.concatenate([t for _, t in kept])) if kept else (None, None)
  empty = np.zeros(0, np.float32)
  return StreamResult({k: np.concatenate(v) if v else empty for k, v in rows.items()},
                      np.concatenate(seg_all) if seg_all else np.zeros(0, int),
                      np.asarray(secs), np.asarray(counts), schedule, *outs, chunk_wall_seconds=np.asarray(walls),
                      num_frames=num_frames, resumed_at=resumed_at, cold_chunks=tuple(cold))


def _progress(total: int, desc: str, initial: int = 0):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="frame", smoothing=0.05)


# ----------------------------------------------------------------------------- summaries


def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def particle_summary(pf: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
  """Estimated density and mean velocity of output and truth over the masked frames."""
  out = {k: _nanmean(pf[k][mask]) for k in ("density_out", "density_gt", "vel_out_y", "vel_out_x",
                                              "vel_gt_y", "vel_gt_x")}
  out["density_ratio"] = out["density_out"] / out["density_gt"] if out["density_gt"] > 0 else float("nan")
  out["speed_out"] = float(np.hypot(out["vel_out_y"], out["vel_out_x"]))
  out["speed_gt"] = float(np.hypot(out["vel_gt_y"], out["vel_gt_x"]))
  return out


def summarize_frames(pf: dict[str, np.ndarray], mask: np.ndarray, spec: effects.EffectSpec | None,
                     height: int, width: int) -> dict[str, Any]:
  row = {"psnr": _nanmean(pf["psnr"][mask]), "ssim": _nanmean(pf["ssim"][mask]),
         "flicker": _nanmean(pf["flicker"][mask]), "frames": int(mask.sum())}
  stats = metrics.spec_particle_stats(spec, height, width) if spec is not None else None
  if stats is not None:
    row["particles"] = {**particle_summary(pf, mask), "spec": stats}
  return row


def summarize_stream(res: StreamResult, prompts: dict[str, Prompt], *, segment: int, warm: int,
                     height: int, width: int) -> dict[str, Any]:
  """Fidelity, flicker and particles per effect; drift curves (overall and per effect); switch
  responses per target effect (PSNR as the fidelity, each switch over its own interval)."""
  pf, sched = res.per_frame, res.schedule
  names = np.asarray(sched.names)[res.prompt_index]
  n = len(names)
  warm_mask = np.arange(n) >= warm
  per_effect = {e: summarize_frames(pf, (names == e) & warm_mask, prompts[e][2], height, width)
                for e in dict.fromkeys(sched.names)}
  curve = metrics.drift_curve(pf["psnr"], segment)
  if curve.size < 2:
    logging.warning("a %d-frame stream holds %d drift segment(s) of %d frames: no drift ratio (NaN); "
                    "make the stream at least two schedule cycles long", n, curve.size, segment)
  drift = {"segment": segment, "psnr_curve": curve.tolist(), "psnr_ratio": metrics.drift_ratio(curve),
           "ssim_curve": metrics.drift_curve(pf["ssim"], segment).tolist()}
  drift["ssim_ratio"] = metrics.drift_ratio(drift["ssim_curve"])
  seg_of = np.arange(n) // segment
  full = seg_of < max(1, n // segment)
  drift["per_effect"] = {}
  for e in per_effect:
    m = (names == e) & full
    c = [float(pf["psnr"][m & (seg_of == s)].mean()) for s in range(int(seg_of[full].max()) + 1)
         if (m & (seg_of == s)).any()]
    drift["per_effect"][e] = {"psnr_curve": c, "psnr_ratio": metrics.drift_ratio(c) if c else float("nan")}
  responses: dict[str, list] = {e: [] for e in per_effect}
  holds: dict[str, list] = {e: [] for e in per_effect}
  profiles: dict[str, list] = {e: [] for e in per_effect}
  bounds = [s for s in sched.starts if s < n] + [n]
  for j in range(len(bounds) - 1):
    lo, hi = bounds[j], bounds[j + 1]
    if j > 0:
      responses[sched.names[j]].append(metrics.switch_response(pf["psnr"][lo:hi], 0))
    planned_end = sched.starts[j + 1] if j + 1 < len(sched.starts) else max(res.num_frames, n)
    if planned_end <= n:  # whole intervals only (a stream stopped part-way cuts its last one short)
      h = metrics.hold_drift(pf["psnr"][lo:hi])
      if h is not None:
        holds[sched.names[j]].append(h)
        profiles[sched.names[j]].append(metrics.hold_profile(pf["psnr"][lo:hi]))
  switch = {}
  for e, rs in responses.items():
    got = [r for r in rs if r is not None]
    switch[e] = {"switches": len(rs), "never_reached": len(rs) - len(got),
                 "median_frames": float(np.median(got)) if got else None,
                 "mean_frames": float(np.mean(got)) if got else None}
  return {"frames": n, "per_effect": per_effect, "drift": drift, "switch_response": switch,
          "hold": hold_summary(holds, profiles), "latency": latency_summary(res)}


def hold_summary(holds: dict[str, list[tuple[float, float]]],
                 profiles: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
  """Per effect and overall: mean early and late PSNR over the held intervals (metrics.hold_drift)
  and their ratio, late / early (1.0: no drift while a prompt is held); with `profiles`
  (metrics.hold_profile of each interval) their mean per effect, PSNR across the interval."""
  per_effect, early_all, late_all = {}, [], []
  for e, hs in holds.items():
    if not hs:
      per_effect[e] = {"holds": 0, "early": None, "late": None, "ratio": float("nan")}
      continue
    early, late = (float(np.mean([h[i] for h in hs])) for i in (0, 1))
    per_effect[e] = {"holds": len(hs), "early": early, "late": late, "ratio": late / early}
    if profiles and profiles.get(e):
      per_effect[e]["profile"] = np.mean(np.stack(profiles[e]), axis=0).tolist()
    early_all += [h[0] for h in hs]
    late_all += [h[1] for h in hs]
  ratio = float(np.mean(late_all) / np.mean(early_all)) if early_all else float("nan")
  return {"psnr_ratio": ratio, "per_effect": per_effect}


def latency_summary(res: StreamResult) -> dict[str, Any]:
  """Model-only ms per frame of each chunk, and the whole pipeline's frames per second (frames,
  model, ground truth, metrics); chunks that compiled (the first of each run) are left out of
  the steady numbers and reported apart."""
  ms = 1e3 * res.chunk_seconds / res.chunk_frames
  warm = np.ones(ms.size, bool)
  warm[[c for c in res.cold_chunks if c < ms.size]] = False
  if not warm.any():
    warm[:] = True
  steady = ms[warm]
  out = {"first_chunk_ms_per_frame": float(ms[0]), "ms_per_frame_median": float(np.median(steady)),
         "ms_per_frame_p90": float(np.percentile(steady, 90)), "ms_per_frame_p99": float(np.percentile(steady, 99)),
         "chunks": int(ms.size), "cold_chunks": [int(c) for c in res.cold_chunks], "ms_per_frame_chunks": ms.tolist()}
  if res.chunk_wall_seconds is not None and res.chunk_wall_seconds.size == ms.size:
    out["pipeline_frames_per_s"] = float(res.chunk_frames[warm].sum() / res.chunk_wall_seconds[warm].sum())
  return out


# ----------------------------------------------------------------------------- protocol


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The evaluation protocol (the same for every model and ablation arm). The last three fields
  change how a run is carried out, not its numbers."""
  steps: int = 2  # S at inference
  effects: tuple[str, ...] | None = None  # effect names (fidelity.pick_prompts keys); None: all single effects
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
  from lsd_jax.datasets import prompts as prompts_lib
  from lsd_jax.eval import fidelity

  chosen = fidelity.pick_prompts(prompts_lib.load_embedding_table(), effect_names)
  if effect_names is None:
    return {k: v for k, v in chosen.items() if "+" not in k}
  missing = [e for e in effect_names if e not in chosen]
  if missing:
    raise ValueError(f"no val prompt for effects {missing}; known: {sorted(chosen)}")
  return {e: chosen[e] for e in effect_names}


def evaluate_heldout(cfg, params, clips: Sequence[np.ndarray], prompts: dict[str, Prompt], ec: EvalConfig,
                     model_fn=None) -> dict[str, Any]:
  """Each effect over each held-out clip as its own stream (fresh history), first K+1 frames
  excluded (the history is not full yet)."""
  model_fn = model_fn or model_chunk_fn(cfg, ec.steps)
  warm = cfg.history_len + 1
  out = {}
  for e, p in prompts.items():
    merged: dict[str, list] = {k: [] for k in PER_FRAME}
    for j, clip in enumerate(clips):
      res = run_stream(cfg, params, clip, {e: p}, Schedule((0,), (e,)), len(clip), steps=ec.steps,
                       chunk=min(ec.chunk, len(clip)), seed=ec.seed + j, model_fn=model_fn)
      for k in PER_FRAME:
        merged[k].append(res.per_frame[k][warm:])
    pf = {k: np.concatenate(v) for k, v in merged.items()}
    out[e] = {"prompt": p[0], **summarize_frames(pf, np.ones(len(pf["psnr"]), bool), p[2], cfg.height, cfg.width)}
  return out


def evaluate_procedural(cfg, params, prompts: dict[str, Prompt], ec: EvalConfig, model_fn=None,
                        state_dir: str | None = None) -> tuple[dict[str, Any], StreamResult]:
  """One endless procedural stream cycling through the prompts; drift, switches and latency.
  With `state_dir` the stream checkpoints there and resumes from it (see run_stream)."""
  source = frames_lib.ProceduralFrames(height=cfg.height, width=cfg.width, seed=ec.seed, scene_index=ec.scene,
                                       workers=ec.render_workers)
  sched = Schedule.cycle(list(prompts), ec.switch_every, ec.stream_frames)
  ckpt = dict(checkpoint=os.path.join(state_dir, "stream_state.npz"), checkpoint_every=ec.checkpoint_every,
              max_seconds=60.0 * ec.max_minutes if ec.max_minutes > 0 else None,
              fingerprint={"source": "procedural", "scene": ec.scene}) if state_dir else {}
  try:
    res = run_stream(cfg, params, source, prompts, sched, ec.stream_frames, steps=ec.steps, chunk=ec.chunk,
                     seed=ec.seed, model_fn=model_fn, progress=ec.progress, desc="procedural stream", **ckpt)
  finally:
    source.close()
  summary = summarize_stream(res, prompts, segment=ec.segment_frames(len(prompts)), warm=cfg.history_len + 1,
                             height=cfg.height, width=cfg.width)
  summary.update(complete=res.complete, planned_frames=ec.stream_frames, resumed_at=res.resumed_at)
  return summary, res


def _protocol(ec: EvalConfig) -> dict[str, Any]:
  return {k: v for k, v in dataclasses.asdict(ec).items() if k not in RUN_ONLY}


def evaluate(cfg: lsd.LSDConfig, params, clips: Sequence[np.ndarray], ec: EvalConfig,
             state_dir: str | None = None) -> tuple[dict[str, Any], StreamResult]:
  """The whole protocol: held-out clips (when any) and the procedural stream. With `state_dir`
  the held-out results and the stream's progress are kept there, so an interrupted evaluation
  continues where it stopped."""
  prompts = choose_prompts(ec.effects)
  model_fn = model_chunk_fn(cfg, ec.steps)
  logging.info("evaluating %s at S=%d on %d held-out clips and a %d-frame stream (%d effects)", cfg.size,
               ec.steps, len(clips), ec.stream_frames, len(prompts))
  heldout = _cached_heldout(cfg, params, clips, prompts, ec, model_fn, state_dir) if clips else {}
  stream, res = evaluate_procedural(cfg, params, prompts, ec, model_fn, state_dir)
  return {"protocol": dataclasses.asdict(ec), "model": {**cfg.to_dict()}, "heldout": heldout,
          "stream": stream}, res


def _cached_heldout(cfg, params, clips, prompts, ec, model_fn, state_dir):
  if state_dir is None:
    return evaluate_heldout(cfg, params, clips, prompts, ec, model_fn)
  path = os.path.join(state_dir, "heldout.json")
  key = {"params": progress_lib.params_digest(params), "protocol": _protocol(ec), "clips": len(clips)}
  key = json.loads(json.dumps(key))
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved["key"] == key:
      logging.info("held-out results from %s", path)
      return saved["heldout"]
  heldout = evaluate_heldout(cfg, params, clips, prompts, ec, model_fn)
  os.makedirs(state_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"key": key, "heldout": heldout}, f)
  os.replace(path + ".tmp", path)
  return heldout


def heldout_clips(manifest: str, n: int, frames: int, height: int, width: int, seed: int = 7) -> list[np.ndarray]:
  """`n` clips of `frames` frames from the library's held-out split (never used in training)."""
  from lsd_jax.datasets import sources

  if n <= 0:
    return []
  src = sources.VideoClipSource.from_manifest(manifest, "heldout", height=height, width=width, num_frames=frames,
                                              seed=seed, strides=(1,))
  return [src[i] for i in range(n)]


def file_clip(path: str, frames: int, height: int, width: int, start: int = 0) -> np.ndarray:
  """`frames` consecutive frames of one video file from `start`, centre-cropped to the output's
  aspect ratio and resized to HxW (uint8 TxHxWx3): a notebook's or a user's own clip."""
  from lsd_jax.datasets import sources, video

  clip = video.read_frames(path, start, frames)
  h, w = clip.shape[1:3]
  ch = min(h, int(round(w * height / width)))
  cw = min(w, int(round(ch * width / height)))
  y0, x0 = (h - ch) // 2, (w - cw) // 2
  return np.stack([sources.resize_to(f[y0:y0 + ch, x0:x0 + cw], height, width) for f in clip])


def evaluate_model_dir(model_dir: str, out_dir: str | None, ec: EvalConfig, *,
                       manifest: str = "data/library/manifest.json", title: str = "Evaluation",
                       tau_inf: float | None = None) -> dict[str, Any]:
  """Loads an exported model folder, runs the protocol, writes the report files (when `out_dir`).

  With `out_dir` the run is resumable: its state lives in `out_dir/resume/` until the stream is
  complete (then it is removed; the report and per_frame.npz hold everything). A run stopped by
  `ec.max_minutes` (or killed) continues when started again with the same `out_dir`; the report
  of a stopped run covers the frames streamed so far and says so (`stream.complete` false).
  `tau_inf` replaces the model's history noise level at inference (recorded in the results; part
  of the resume fingerprint, so a run is never continued at another level)."""
  from lsd_jax.eval import report
  from lsd_jax.models import export

  cfg, params, meta = export.load(model_dir)
  if tau_inf is not None:  # LSDConfig checks the range
    cfg = dataclasses.replace(cfg, tau_inf=float(tau_inf))
  clips = heldout_clips(manifest, ec.clips, ec.clip_frames, cfg.height, cfg.width)
  state_dir = os.path.join(out_dir, "resume") if out_dir else None
  if state_dir:
    os.makedirs(state_dir, exist_ok=True)
  results, res = evaluate(cfg, params, clips, ec, state_dir)
  results.update(model_dir=model_dir, metadata=meta, device=jax.devices()[0].device_kind, tau_inf=cfg.tau_inf)
  if out_dir:
    results["files"] = report.write(results, res, out_dir, title)
    if res.complete:
      shutil.rmtree(state_dir, ignore_errors=True)
  return results
