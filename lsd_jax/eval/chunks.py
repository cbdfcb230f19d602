"""The three jitted scans that one chunk of an evaluation stream runs (`runner.run_stream`).

1. the model (`model_chunk_fn`): the model's frame function (`models.frame`, the one the stream
   engine jits and the latency benchmark times) scanned over the chunk, the latent ring buffer
   carried across chunks, so a chunked stream equals one long stream (same noise: the key is
   folded in by the absolute frame index);
2. the ground truth (`truth_chunk_fn`): `effects.render_step` with its EffectState carried
   across chunks, re-initialised at a prompt switch (the new effect starts from its own state);
3. the metrics (`metrics_chunk_fn`, vmapped over the chunk): PSNR, SSIM, flicker and particle
   statistics per frame, with the chunk's previous frame carried, so only a few scalars per
   frame come back to the host.

Particle statistics (temporal particle effects) compare the output and the ground truth through
the same estimators, computed against the per-frame-effect-only frame F (the input with only the
per-frame part of the effect; what the particles are drawn over):
- density: the fraction of pixels where luma(frame) - luma(F) > metrics.PARTICLE_THRESHOLD;
- velocity and speed: particles tracked between consecutive frames (`metrics.particle_coverage`,
  `particle_peaks`, `track_displacement`): the mean displacement of the matched particles and
  their mean speed, with how many matched.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lsd_jax.datasets import effects
from lsd_jax.diffusion import sampler
from lsd_jax.eval import metrics
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd

# Bumped when a per-frame metric changes meaning: a stream checkpoint of another version is refused.
METRICS_VERSION = 2  # 2: particle velocity by tracking (1: phase correlation of whole layers)
PER_FRAME = ("psnr", "ssim", "flicker", "density_out", "density_gt", "vel_out_y", "vel_out_x",
             "vel_gt_y", "vel_gt_x", "speed_out", "speed_gt", "tracked_out", "tracked_gt")


def model_chunk_fn(cfg: lsd.LSDConfig, steps: int):
  """jit(f(params, ring, frames_TxHxWx3 uint8, prompt_TxE, index_T, key[, noise_T]) -> (ring,
  out_TxHxWx3)): `models.frame.scan_frames` of the frame function at S = `steps`, the ring
  donated; `noise_T`: the initial noise's scale per frame (a per-prompt scale)."""
  fn = model_frame.frame_fn(dataclasses.replace(cfg, steps=steps))

  def run(params, ring, frames, prompt_TxE, index_T, key, noise_T=None):
    return model_frame.scan_frames(fn, params, ring, frames, prompt_TxE, index_T, key, noise_T)

  return jax.jit(run, donate_argnums=1)


def empty_ring(cfg: lsd.LSDConfig) -> sampler.Ring:
  return model_frame.empty_ring(cfg)


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
  prev_layer_out: jax.Array  # HxW blurred particle coverage (metrics.particle_coverage)
  prev_layer_gt: jax.Array
  has_prev: jax.Array  # bool


def empty_metric_carry(height: int, width: int) -> MetricCarry:
  z3 = lambda: jnp.zeros((height, width, 3), jnp.float32)  # distinct buffers: the carry is donated
  z = lambda: jnp.zeros((height, width), jnp.float32)
  return MetricCarry(z3(), z3(), z(), z(), jnp.array(False))


def _particle_tracks(prev_cov, cov, moved_T, px: float):
  """`metrics.track_layers` on the 2T pairs (output and truth stacked), NaN where not moved."""
  vel, speed, count = metrics.track_layers(prev_cov, cov, px)
  keep = jnp.tile(moved_T, 2)
  return (jnp.where(keep[:, None], vel, jnp.nan), jnp.where(keep, speed, jnp.nan),
          jnp.where(keep, count, 0).astype(jnp.float32))


def _metrics(carry: MetricCarry, out_T, target_T, frame_only_T, reset_T, spec_T: effects.EffectSpec):
  """All frames of a chunk at once (vmapped, no loop): previous frames are the carry's last
  frame followed by the chunk shifted by one. `spec_T` is each frame's effect (the particle
  coverage and the tracking blur depend on it)."""
  shift = lambda first, xs: jnp.concatenate([first[None], xs[:-1]])
  h, w = out_T.shape[1:3]
  px = min(h, w) / effects.REF_SIZE
  lay_y = jax.vmap(metrics.particle_layer)(out_T, frame_only_T)
  lay_g = jax.vmap(metrics.particle_layer)(target_T, frame_only_T)
  cov = jnp.concatenate([metrics.track_coverage(out_T, frame_only_T, spec_T.temporal_id, spec_T.params),
                         metrics.track_coverage(target_T, frame_only_T, spec_T.temporal_id, spec_T.params)])
  # A barrier between the layers and their consumers: without it XLA:CPU fuses the SSIM, the
  # layers and the FFTs into one computation whose compile time explodes with the frame size.
  lay_y, lay_g, cov = jax.lax.optimization_barrier((lay_y, lay_g, cov))
  t = out_T.shape[0]
  cov_y, cov_g = cov[:t], cov[t:]
  has_prev = shift(carry.has_prev, jnp.ones(reset_T.shape, bool))
  moved = has_prev & ~reset_T  # particles re-spawn at a switch: no displacement to measure
  particles = metrics.has_particles(spec_T.temporal_id)
  prev_cov = jnp.concatenate([shift(carry.prev_layer_out, cov_y), shift(carry.prev_layer_gt, cov_g)])
  nan_T = jnp.full((2 * t,), jnp.nan)
  vel, speed, count = jax.lax.cond(  # a chunk without a particle effect skips the tracking
      jnp.any(particles & moved), lambda: _particle_tracks(prev_cov, cov, moved & particles, px),
      lambda: (jnp.stack([nan_T, nan_T], -1), nan_T, jnp.zeros((2 * t,))))
  flick = metrics.flicker_step(shift(carry.prev_out, out_T), out_T, shift(carry.prev_gt, target_T), target_T)
  ssim_T = jax.lax.optimization_barrier(metrics.ssim(*jax.lax.optimization_barrier((out_T, target_T))))
  row = {"psnr": metrics.psnr_frames(out_T, target_T), "ssim": ssim_T,
         "flicker": jnp.where(has_prev, flick, jnp.nan),
         "density_out": metrics.particle_density(lay_y), "density_gt": metrics.particle_density(lay_g),
         "vel_out_y": vel[:t, 0], "vel_out_x": vel[:t, 1], "vel_gt_y": vel[t:, 0], "vel_gt_x": vel[t:, 1],
         "speed_out": speed[:t], "speed_gt": speed[t:], "tracked_out": count[:t], "tracked_gt": count[t:]}
  return MetricCarry(out_T[-1], target_T[-1], cov_y[-1], cov_g[-1], jnp.array(True)), row


metrics_chunk_fn = jax.jit(_metrics, donate_argnums=0)
"""jit(f(carry, out_T, target_T, frame_only_T, reset_T, spec_T) -> (carry, {PER_FRAME key: [T]}))."""
