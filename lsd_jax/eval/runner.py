"""One evaluation stream in constant memory: a model over a clip or an endless procedural stream
with a prompt schedule, in lossless mode, cut into chunks of `chunk` frames, each chunk the three
jitted scans of `chunks.py` (model, ground truth, metrics).

The host waits once per chunk (the model scan is timed with block_until_ready; the latency per
frame is that time over the chunk's frames) and never inside one, and keeps only the per-frame
scalars: 100,000 frames are ~10 MB of host memory and a fixed amount of device memory. With a
checkpoint path the stream's whole state is saved as it goes (`resume.py`) and a stream started
on it continues with the same numbers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lsd_jax.datasets import effects
from lsd_jax.eval import chunks
from lsd_jax.eval import frames as frames_lib
from lsd_jax.eval import resume
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd

Prompt = tuple[str, np.ndarray, effects.EffectSpec]  # text, embedding, spec (prompts.pick_val_prompts)


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
  per_frame: dict[str, np.ndarray]  # chunks.PER_FRAME -> [frames]
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
               max_seconds: float | None = None, fingerprint: dict[str, Any] | None = None,
               noise_scales: Mapping[str, float] | None = None) -> StreamResult:
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
  `noise_scales` ({prompt name: scale}, `fidelity.prompt_noise_scales`): each prompt's initial
  noise scale, for a model whose scale is chosen per prompt.
  """
  if max_seconds is not None and checkpoint is None:
    raise ValueError("max_seconds needs a checkpoint (a stopped stream must be resumable)")
  if keep_frames and checkpoint is not None:
    raise ValueError("keep_frames is for short in-memory streams, not checkpointed ones")
  source = frames_lib.ClipFrames(frames) if isinstance(frames, np.ndarray) else frames
  model_fn = model_fn or chunks.model_chunk_fn(cfg, steps)
  key = jax.random.key(seed)
  gt_key = jax.random.key(seed + 10_000)
  first = prompts[schedule.names[0]][2]
  carry = (chunks.empty_ring(cfg), effects.init_state(effects.EffectSpec(*(jnp.asarray(x) for x in first)),
                                               (cfg.height, cfg.width, 3), jax.random.fold_in(gt_key, 0)),
           chunks.empty_metric_carry(cfg.height, cfg.width))
  emb = np.stack([prompts[n][1] for n in schedule.names]).astype(np.float32)
  noise = None if noise_scales is None else np.asarray([noise_scales[n] for n in schedule.names], np.float32)
  specs = [prompts[n][2] for n in schedule.names]
  spec_arrays = effects.EffectSpec(*(np.stack([np.asarray(s[f]) for s in specs]) for f in range(3)))
  starts = np.asarray(schedule.starts)
  rows: dict[str, list[np.ndarray]] = {k: [] for k in chunks.PER_FRAME}
  seg_all, secs, counts, walls, kept = [], [], [], [], []
  done, cold = 0, [0]
  if checkpoint is not None:
    fingerprint = {"params": resume.params_digest(params), "model": cfg.to_dict(), "steps": steps,
                   "chunk": chunk, "seed": seed, "metrics": chunks.METRICS_VERSION, "num_frames": num_frames,
                   "starts": list(schedule.starts),
                   "names": list(schedule.names), "prompts": {n: prompts[n][0] for n in schedule.names},
                   **({"noise_scales": {n: float(v) for n, v in noise_scales.items()}} if noise_scales else {}),
                   **(fingerprint or {})}
    saved = resume.load(checkpoint, carry, fingerprint)
    if saved is not None:
      done, carry = saved.done, jax.tree.map(jnp.asarray, saved.carry)
      for k in chunks.PER_FRAME:
        rows[k].append(saved.per_frame[k])
      seg_all.append(saved.prompt_index)
      secs, counts, walls = list(saved.chunk_seconds), list(saved.chunk_frames), list(saved.chunk_wall_seconds)
      cold = [int(c) for c in saved.cold_chunks] + [len(secs)]
      logging.info("resuming %s at frame %d of %d from %s", desc, done, num_frames, checkpoint)
  resumed_at = last_saved = done
  ring, state, mcarry = carry
  params = jax.device_put(model_frame.prepare_params(cfg, params))  # packed for the mega kernel if asked
  fetch = frames_lib.Prefetcher(source)
  bar = _progress_bar(num_frames, desc, done) if progress else None
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
      ring, out = model_fn(params, ring, block, emb[seg], index, key, *(() if noise is None else (noise[seg],)))
      out.block_until_ready()
      secs.append(time.perf_counter() - t0)
      counts.append(n)
      spec_T = effects.EffectSpec(*(a[seg] for a in spec_arrays))
      state, (target, frame_only) = chunks.truth_chunk_fn(state, block, spec_T, reset, index, gt_key)
      mcarry, row = chunks.metrics_chunk_fn(mcarry, out, target, frame_only, reset, spec_T)
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
        resume.save(checkpoint, resume.ResumeState(
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


def _progress_bar(total: int, desc: str, initial: int = 0):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, desc=desc, unit="frame", smoothing=0.05)
