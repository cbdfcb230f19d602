r"""Tensor parallelism on 8 fake CPU devices; prints one JSON line of measurements for
tests/models/test_parallel.py (which starts it with the XLA flag that makes the devices):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.models.parallel_probe

- `split`: the denoiser piece of the frame function (S shortcut steps + ring push) of a model
  with 8 heads per block (two of base's blocks, pruned) on one device and split over model:2,
  model:4 and model:8: relative error of the new latent; the same on model:4 with the q/k/v
  columns not reordered (the layout the test must catch), and with the reductions in 2 token
  chunks; the collectives XLA compiled for model:4, with and without chunks.
- `padded`: the small model's 6 heads over model:4, zero-padded to 8 (`pad_heads`).
- `attention`: the same, attention history mode (frame-causal), model:2.
- `streams`: the whole frame function on a batch of 2 streams over data:2,model:2 (f32 partial
  sums, reductions in 2 token chunks) against one device.
- `engine`: a stream of frames through `StreamModel(mesh="model:2")` against one device: uint8
  differences, compilations, lowerings after the warm-up, where the state lives; and the error
  for a stream on a `data` axis.
"""

from __future__ import annotations

import dataclasses
import json

import jax
from jax import monitoring
from jax.sharding import NamedSharding
import numpy as np

from lsd_jax.models import frame, layers, lsd, parallel, sizes
from lsd_jax.stream import engine

LOWERINGS: list[str] = []
monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: LOWERINGS.append(name) if name.endswith("jaxpr_to_mlir_module_duration") else None)

# base's blocks pruned to 8 heads (base is the smallest size with 8 or more heads) and 512 MLP
# units, in a size of this process only that keeps two of base's twelve blocks: every block is
# split alike (the collectives are counted per block), and a base of 12 compiled seven times was
# most of this probe's time. 32x32.
sizes.SIZES["base-2blocks"] = dataclasses.replace(
    sizes.SIZES["base"], name="base-2blocks", denoiser=dataclasses.replace(sizes.SIZES["base"].denoiser, depth=2))
SPLIT8 = lsd.LSDConfig(size="base-2blocks", height=32, width=32, steps=1, block_heads=(8,) * 2, block_mlp=(512,) * 2)
TINY = lsd.LSDConfig(size="tiny", height=32, width=32, steps=1)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _denoise_inputs(cfg, batch=1):
  rng = np.random.default_rng(1)
  h, w, c = cfg.latent_shape
  ring = frame.empty_ring(cfg, batch)
  ring = ring._replace(frames_BxKxHxWxC=rng.standard_normal(ring.frames_BxKxHxWxC.shape).astype(np.float32),
                       levels_BxK=np.full(ring.levels_BxK.shape, 0.2, np.float32))
  c_lat = rng.standard_normal((batch, h, w, c)).astype(np.float32)
  prompt = rng.standard_normal((batch, 384)).astype(np.float32)
  return ring, c_lat, prompt, jax.random.key(5)


def _denoise(cfg, params, mesh, args, place=True, tensor=None):
  ring, c_lat, prompt, key = args
  p = frame.prepare_params(cfg, params, mesh, tensor) if place else params
  fn = jax.jit(frame.frame_fns(cfg, mesh, tensor).denoise)
  if mesh is not None:
    rep = parallel.stream_sharding(mesh)
    ring, c_lat, prompt, key = jax.device_put((ring, c_lat, prompt, key), rep)
  compiled = fn.lower(p, ring, c_lat, prompt, key).compile()  # run and read (collectives) once
  _, z = compiled(p, ring, c_lat, prompt, key)
  return np.asarray(z), compiled, (p, ring, c_lat, prompt, key)


def _collectives(compiled) -> dict[str, int]:
  hlo = compiled.as_text()
  return {op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(")
          for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")}


def split() -> dict:
  params = lsd.random_params(0, SPLIT8)
  args = _denoise_inputs(SPLIT8)
  one, _, _ = _denoise(SPLIT8, params, None, args)
  out = {"rel_err": {}, "depth": SPLIT8.model_size.denoiser.depth, "steps": SPLIT8.steps}
  for tp in (2, 4, 8):
    mesh = parallel.make_mesh(f"model:{tp}")
    z, fn, placed = _denoise(SPLIT8, params, mesh, args)
    out["rel_err"][tp] = _rel(z, one)
    if tp == 4:
      out["collectives"] = _collectives(fn)
      qkv = placed[0]["denoiser"]["block_0"]["qkv_kernel"]
      out["qkv_shard_shape"] = list(qkv.addressable_shards[0].data.shape)
      out["qkv_shape"] = list(qkv.shape)
      unordered = jax.device_put(params, parallel.param_shardings(SPLIT8, mesh))  # no q/k/v reordering
      z_bad, _, _ = _denoise(SPLIT8, unordered, mesh, args, place=False)
      out["rel_err_unordered"] = _rel(z_bad, one)
      z2, fn2, _ = _denoise(SPLIT8, params, mesh, args, tensor=layers.TensorParallel(chunks=2))
      out["rel_err_chunks2"] = _rel(z2, one)
      out["collectives_chunks2"] = _collectives(fn2)
  return out


def padded() -> dict:
  cfg = lsd.LSDConfig(size="small", height=32, width=32, steps=1)
  params = lsd.random_params(0, cfg)
  args = _denoise_inputs(cfg)
  one, _, _ = _denoise(cfg, params, None, args)
  z, _, placed = _denoise(cfg, params, parallel.make_mesh("model:4"), args, tensor=layers.TensorParallel(pad_heads=True))
  out_kernel = placed[0]["denoiser"]["block_0"]["out_kernel"]
  return {"rel_err": _rel(z, one), "out_kernel_shape": list(out_kernel.shape)}


def attention() -> dict:
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, steps=1, history_mode="attention")
  params = lsd.random_params(0, cfg)
  args = _denoise_inputs(cfg)
  one, _, _ = _denoise(cfg, params, None, args)
  z, _, _ = _denoise(cfg, params, parallel.make_mesh("model:2"), args)
  return {"rel_err": _rel(z, one)}


def streams() -> dict:
  cfg = TINY
  params = lsd.random_params(0, cfg)
  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, (2, cfg.height, cfg.width, 3), dtype=np.uint8)
  prompt = rng.standard_normal((2, 384)).astype(np.float32)
  key = jax.random.key(9)
  ring1, out1 = jax.jit(frame.frame_fn(cfg))(params, frame.empty_ring(cfg, 2), frames, prompt, key)
  mesh = parallel.make_mesh("data:2,model:2")
  fn = jax.jit(frame.frame_fns(cfg, mesh, layers.TensorParallel("float32", chunks=2)).frame)
  batch = parallel.stream_sharding(mesh, batch_axis=True)
  ring, out = fn(frame.prepare_params(cfg, params, mesh), frame.empty_ring(cfg, 2, mesh),
                 jax.device_put(frames, batch), jax.device_put(prompt, batch),
                 jax.device_put(key, parallel.stream_sharding(mesh)))
  return {"rel_err_latent": _rel(ring.frames_BxKxHxWxC, ring1.frames_BxKxHxWxC),
          "max_abs_out": float(np.abs(np.asarray(out) - np.asarray(out1)).max()),
          "ring_spec": str(ring.frames_BxKxHxWxC.sharding.spec)}


def _stream(mesh, params, frames, emb, n_after):
  info = engine.ModelInfo(name="t", label="t", trained=False, checkpoint=None, size=TINY.size,
                          resolution="32x32", steps=TINY.steps)
  model = engine.StreamModel(TINY, params, info, mesh=mesh)
  model.add_embedding("p", emb)
  model.add_embedding("q", -emb)
  session = engine.StreamSession(model, seed=3, prompt="p")
  session.warmup()
  before = len(LOWERINGS)
  outs = [session(f) for f in frames]
  session.set_prompt("q", transition_frames=2)  # a new prompt, a transition, a reset: same step
  outs += [session(f) for f in frames[:3]]
  session.reset()
  outs += [session(f) for f in frames[:n_after]]
  return model, session, np.stack(outs), len(LOWERINGS) - before


def stream_on_mesh() -> dict:
  rng = np.random.default_rng(3)
  frames = rng.integers(0, 256, (6, TINY.height, TINY.width, 3), dtype=np.uint8)
  emb = rng.standard_normal(384).astype(np.float32)
  emb /= np.linalg.norm(emb)
  params = lsd.random_params(0, TINY)
  _, _, one, _ = _stream(None, params, frames, emb, 2)
  model, session, tp, lowered = _stream("model:2", params, frames, emb, 2)
  on_mesh = parallel.stream_sharding(model.mesh)
  state = jax.tree.leaves(session.state)
  diff = np.abs(one.astype(np.int32) - tp.astype(np.int32))
  try:
    engine.StreamModel(TINY, params, model.info, mesh="data:2")
    data_axis_error = None
  except ValueError as e:
    data_axis_error = str(e)
  return {"frames": len(tp), "compilations": model.compilations(), "lowerings_after_warmup": lowered,
          "state_on_mesh": all(isinstance(x.sharding, NamedSharding) and x.sharding.is_equivalent_to(on_mesh, x.ndim)
                               for x in state),
          "state_devices": sorted({d.id for x in state for d in x.devices()}),
          "mean_abs_u8": float(diff.mean()), "max_abs_u8": int(diff.max()),
          "frames_distinct": len({f.tobytes() for f in tp}), "mesh": model.info.mesh,
          "data_axis_error": data_axis_error}


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  print(json.dumps({"split": split(), "padded": padded(), "attention": attention(), "streams": streams(),
                    "engine": stream_on_mesh()}))


if __name__ == "__main__":
  main()
