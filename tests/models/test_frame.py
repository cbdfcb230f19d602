"""One frame function for every path: the stream engine (jitted step, donated state), evaluation
(a chunked `lax.scan`) and the latency benchmark (the jitted frame it times) give bit-identical
frames and history rings for the same weights, key and frames."""

import jax
import numpy as np

from lsd_jax.eval import chunks, latency
from lsd_jax.models import frame as model_frame
from lsd_jax.models import lsd
from lsd_jax.stream import engine

CFG = lsd.LSDConfig(size="tiny", height=64, width=64, steps=1)  # not the stream tests' config: its own jit
SEED, T = 7, 6


def _inputs():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (T, CFG.height, CFG.width, 3), dtype=np.uint8)
  emb = rng.standard_normal(384).astype(np.float32)
  return lsd.random_params(0, CFG), frames, emb / np.linalg.norm(emb)


def _engine(params, frames, emb):
  info = engine.ModelInfo(name="t", label="t", trained=False, checkpoint=None, size=CFG.size, resolution="64x64",
                          steps=CFG.steps)
  model = engine.StreamModel(CFG, params, info)
  model.add_embedding("p", emb)  # no text encoder
  session = engine.StreamSession(model, seed=SEED, prompt="p")
  outs = np.stack([session(f) for f in frames])
  return session.state.ring, outs


def _evaluation(params, frames, emb):
  fn = chunks.model_chunk_fn(CFG, CFG.steps)
  ring, outs = chunks.empty_ring(CFG), []
  for lo in (0, 3):  # two chunks, the ring carried across
    hi = lo + 3
    ring, out = fn(params, ring, frames[lo:hi], np.repeat(emb[None], hi - lo, 0), np.arange(lo, hi, dtype=np.int32),
                   jax.random.key(SEED))
    outs.append(np.asarray(out))
  return ring, np.concatenate(outs)


def _benchmark(params, frames, emb, seed=SEED):
  frame = latency.frame_fn(CFG, CFG.steps)
  ring, outs = model_frame.empty_ring(CFG), []
  for i in range(T):
    ring, out = frame(params, ring, frames[i:i + 1], emb[None], model_frame.frame_key(jax.random.key(seed), i))
    outs.append(np.asarray(out[0]))
  return ring, np.stack(outs)


def _assert_rings_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_engine_evaluation_and_benchmark_compute_the_same_frames():
  params, frames, emb = _inputs()
  ring_e, out_e = _engine(params, frames, emb)
  ring_v, out_v = _evaluation(params, frames, emb)
  ring_b, out_b = _benchmark(params, frames, emb)
  np.testing.assert_array_equal(out_v, out_b)  # [0, 1] floats, bit for bit
  np.testing.assert_array_equal(np.asarray(model_frame.to_uint8(out_v)), out_e)  # the engine's uint8 frames
  _assert_rings_equal(ring_e, ring_v)  # the history latents after the last frame
  _assert_rings_equal(ring_v, ring_b)
  assert out_e.dtype == np.uint8 and len({f.tobytes() for f in out_e}) == T  # every frame its own
  _, other = _benchmark(params, frames, emb, seed=SEED + 1)  # the check can fail: another key, other frames
  assert not np.array_equal(other, out_b)


def test_frame_key_is_fold_in_of_the_next_index():
  """Frame i of a stream samples with fold_in(stream_key, i + 1) (DESIGN.md section 1)."""
  key = jax.random.key(3)
  for i in (0, 1, 41):
    np.testing.assert_array_equal(jax.random.key_data(model_frame.frame_key(key, i)),
                                  jax.random.key_data(jax.random.fold_in(key, i + 1)))
