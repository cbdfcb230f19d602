"""One frame of a stream: the model's whole per-frame computation, written once for every path.

  frames_BxHxWx3 (uint8, or floats in [0, 1]) -> encode -> S shortcut steps from noise (key)
    -> push the new latent into the history ring -> decode -> frames in [0, 1]

The stream engine jits it (`stream.engine.make_step_fns`), evaluation scans it over chunks and
clips (`scan_frames`: `eval.chunks.model_chunk_fn`, `eval.fidelity.rollout_fn`), and the latency
benchmark times it (`eval.latency`), so the three compute the same numbers from the same
weights, key and frames (tests/models/test_frame.py checks that bit for bit).

Keys: frame i of a stream (0-based) samples with `frame_key(stream_key, i)` =
`fold_in(stream_key, i + 1)` (DESIGN.md: frame i+1 uses fold_in(stream_key, i+1)), so a replayed,
chunked or resumed stream draws the same noise.

The mega kernel: `prepare_params` packs the denoiser's weights for it once (`kernel_impl=
"megastep"` where it can run, see `lsd.with_kernel_params`), and the frame function runs each
denoiser step through it whenever the params carry the packed copy; every path that calls the
frame function therefore measures the same implementation.

Several devices (`lsd_jax.models.parallel`): `frame_fns(cfg, mesh)` is the same frame function
with the denoiser split over the mesh's `model` axis (and a batch of streams over `data`), its
pieces traced under the mesh and its logical rules, and `prepare_params(cfg, params, mesh)` puts
the params in that layout on the mesh. Without a mesh (or with a one-device one) nothing changes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lsd_jax.diffusion import sampler
from lsd_jax.models import layers, lsd, parallel

FrameFn = Callable[..., tuple[sampler.Ring, jax.Array]]


class FrameFns(NamedTuple):
  """The frame function and its three pieces (timed apart by the engine's profile mode)."""
  # noise_B (optional, last): the initial noise's scale per stream, an input of the program (the
  # per-prompt scale, `LSDConfig.per_prompt_noise`); None: cfg.noise_scale, part of the program
  frame: FrameFn  # (params, ring, frames_BxHxWx3, prompt_BxE, key[, noise_B]) -> (ring, out_BxHxWx3 in [0, 1])
  encode: Callable  # (params, frames_BxHxWx3) -> c_BxhxwxC
  denoise: Callable  # (params, ring, c_BxhxwxC, prompt_BxE, key[, noise_B]) -> (ring, z_BxhxwxC)
  decode: Callable  # (params, z_BxhxwxC) -> out_BxHxWx3 in [0, 1]


def frame_key(stream_key, index):
  """The key of frame `index` (0-based) of the stream keyed `stream_key`."""
  return jax.random.fold_in(stream_key, index + 1)


def frame_fns(cfg: lsd.LSDConfig, mesh: Mesh | None = None,
              tensor: layers.TensorParallel | None = None) -> FrameFns:
  """Pure (unjitted) functions of one frame for `cfg` (its S, tau_inf, history mode, residual).
  `params` is {"autoencoder", "denoiser"[, "megastep"]}: with "megastep" (`prepare_params`) each
  denoiser step runs as the mega kernel. With a `mesh` (`parallel.make_mesh`), the functions of
  that mesh: params from `prepare_params(cfg, params, mesh)`; `tensor` sets how the blocks
  reduce (`layers.TensorParallel`: the dtype of the partial sums, token chunks)."""
  if mesh is not None:
    parallel.check(cfg, mesh, pad_heads=bool(tensor and tensor.pad_heads))
  ae, den = lsd.build(cfg, parallel.block_options(mesh, tensor))

  def encode(params, frames_BxHxWx3):
    return lsd.encode(ae, params["autoencoder"], frames_BxHxWx3)

  def denoise(params, ring: sampler.Ring, c_BxhxwxC, prompt_BxE, key, noise_B=None):
    vel = lsd.velocity_fn(den, params["denoiser"], params.get("megastep"))
    z = sampler.sample_frame(vel, key, c_BxhxwxC, ring, prompt_BxE, tau_inf=cfg.tau_inf, steps=cfg.steps,
                             mode=cfg.history_mode, residual=cfg.residual,
                             noise_scale=cfg.noise_scale if noise_B is None else noise_B)
    return sampler.push(ring, z, c_BxhxwxC), z

  def decode(params, z_BxhxwxC):
    return lsd.decode(ae, params["autoencoder"], z_BxhxwxC)

  def frame(params, ring: sampler.Ring, frames_BxHxWx3, prompt_BxE, key, noise_B=None):
    c = encode(params, frames_BxHxWx3)
    ring, z = denoise(params, ring, c, prompt_BxE, key, noise_B)
    return ring, decode(params, z)

  fns = FrameFns(frame=frame, encode=encode, denoise=denoise, decode=decode)
  return fns if mesh is None else FrameFns(*(_traced_under(mesh, fn) for fn in fns))


def _traced_under(mesh: Mesh, fn: Callable) -> Callable:
  @functools.wraps(fn)
  def under_mesh(*args):
    with parallel.traced_under(mesh):
      return fn(*args)

  return under_mesh


def frame_fn(cfg: lsd.LSDConfig) -> FrameFn:
  """f(params, ring, frames_BxHxWx3, prompt_BxE, key) -> (ring, out_BxHxWx3 in [0, 1])."""
  return frame_fns(cfg).frame


def prepare_params(cfg: lsd.LSDConfig, params: dict[str, Any], mesh: Mesh | None = None,
                   tensor: layers.TensorParallel | None = None) -> dict[str, Any]:
  """`params` as the frame function wants them: with the mega kernel's packed weights where
  `cfg.kernel_impl` asks for it and it can run (made once here, never per frame); with a `mesh`,
  in its tensor layout (`tensor.pad_heads`: zero heads added) and placed on it
  (`parallel.prepare`). Pass the same `tensor` to `frame_fns`."""
  if mesh is not None:
    return parallel.prepare(cfg, params, mesh, tensor)
  return lsd.with_kernel_params(cfg, params)


def empty_ring(cfg: lsd.LSDConfig, batch: int = 1, mesh: Mesh | None = None) -> sampler.Ring:
  """A fresh stream's history (every slot empty), in distinct buffers (callers donate it); with
  a `mesh`, on it (a batch of streams split over `data`)."""
  h, w, c = cfg.latent_shape
  ring = sampler.empty_ring(batch, cfg.history_len, h, w, c)
  if mesh is not None:
    return jax.device_put(ring, parallel.stream_sharding(mesh, batch_axis=True))
  return jax.tree.map(lambda x: jnp.array(x, copy=True), ring)


def scan_frames(fn: FrameFn, params, ring: sampler.Ring, frames_TxHxWx3, prompt_TxE, index_T, stream_key,
                noise_T=None):
  """`fn` over T frames of one stream (batch 1) in a `lax.scan`, frame t keyed by its absolute
  index `index_T[t]`: (ring after the last frame, outs_TxHxWx3 in [0, 1]). `noise_T`: the
  initial noise's scale per frame (the per-prompt scale); None: the config's."""

  def one(ring, xs):
    i, frame, prompt_E, noise = xs
    ring, out = fn(params, ring, frame[None], prompt_E[None], frame_key(stream_key, i),
                   *(() if noise is None else (noise[None],)))
    return ring, out[0]

  return jax.lax.scan(one, ring, (index_T, frames_TxHxWx3, prompt_TxE, noise_T))


def to_uint8(frames):
  """[0, 1] floats -> uint8 (rounded), as streams deliver them."""
  return jnp.round(frames * 255.0).astype(jnp.uint8)
