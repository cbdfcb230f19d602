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
- velocity: the (dy, dx) phase-correlation shift between consecutive particle layers
  max(0, luma(frame) - luma(F)) -- the dominant displacement of particle mass per frame.
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

PER_FRAME = ("psnr", "ssim", "flicker", "density_out", "density_gt", "vel_out_y", "vel_out_x",
             "vel_gt_y", "vel_gt_x")


def model_chunk_fn(cfg: lsd.LSDConfig, steps: int):
  """jit(f(params, ring, frames_TxHxWx3 uint8, prompt_TxE, index_T, key) -> (ring, out_TxHxWx3)):
  `models.frame.scan_frames` of the frame function at S = `steps`, the ring donated."""
  fn = model_frame.frame_fn(dataclasses.replace(cfg, steps=steps))

  def run(params, ring, frames, prompt_TxE, index_T, key):
    return model_frame.scan_frames(fn, params, ring, frames, prompt_TxE, index_T, key)

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
"""jit(f(carry, out_T, target_T, frame_only_T, reset_T) -> (carry, {PER_FRAME key: [T]}))."""
