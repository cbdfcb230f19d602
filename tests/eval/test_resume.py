"""Long evaluation streams: a stream stopped part-way and resumed from its checkpoint gives
exactly the numbers of one uninterrupted stream (library and CLI); frames by absolute index
(inline, worker processes) are the procedural stream's frames; the metrics' FFTs never deadlock
XLA:CPU's thread pool."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.datasets import effects, sources
from lsd_jax.eval import chunks, frames, protocol, resume, runner
from tests.eval.conftest import CFG

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EFFECTS = ("sepia", "snowfall")  # a per-frame and a temporal (particle) effect


@pytest.fixture(scope="module")
def tiny(tiny32):
  return tiny32[1], chunks.model_chunk_fn(CFG, 1), protocol.choose_prompts(EFFECTS)


def _stream(tiny, **kw):
  params, fn, prompts = tiny
  src = frames.ProceduralFrames(height=32, width=32, seed=3)
  sched = runner.Schedule.cycle(list(prompts), 5, 24)
  return runner.run_stream(CFG, params, src, prompts, sched, 24, steps=1, chunk=6, seed=1, model_fn=fn, **kw)


def _assert_same(a: runner.StreamResult, b: runner.StreamResult):
  assert set(a.per_frame) == set(b.per_frame)
  for k in a.per_frame:  # bit for bit (NaN where the other has NaN)
    np.testing.assert_array_equal(a.per_frame[k], b.per_frame[k], err_msg=k)
  np.testing.assert_array_equal(a.prompt_index, b.prompt_index)


def test_stopped_and_resumed_stream_equals_uninterrupted(tiny, tmp_path):
  whole = _stream(tiny)
  ckpt = str(tmp_path / "state.npz")
  first = _stream(tiny, checkpoint=ckpt, max_seconds=0.0)  # stops after its first chunk
  assert not first.complete and len(first.prompt_index) == 6
  second = _stream(tiny, checkpoint=ckpt, max_seconds=0.0)
  assert second.resumed_at == 6 and len(second.prompt_index) == 12 and not second.complete
  rest = _stream(tiny, checkpoint=ckpt)
  assert rest.complete and rest.resumed_at == 12 and len(rest.chunk_seconds) == 4
  assert rest.cold_chunks == (0, 1, 2)  # each run's first chunk compiled: left out of steady latency
  _assert_same(rest, whole)
  assert np.isfinite(rest.per_frame["psnr"]).all()
  assert not np.isnan(whole.per_frame["vel_out_y"][6:]).all()  # particle stats carried over the boundaries


def test_resume_refuses_another_run(tiny, tmp_path):
  ckpt = str(tmp_path / "state.npz")
  _stream(tiny, checkpoint=ckpt, max_seconds=0.0)
  params, fn, prompts = tiny
  src = frames.ProceduralFrames(height=32, width=32, seed=3)
  sched = runner.Schedule.cycle(list(prompts), 5, 24)
  with pytest.raises(ValueError, match="seed"):
    runner.run_stream(CFG, params, src, prompts, sched, 24, steps=1, chunk=6, seed=2, model_fn=fn,
                           checkpoint=ckpt)
  other = jax.tree.map(lambda x: x + 1, params)
  with pytest.raises(ValueError, match="params"):
    runner.run_stream(CFG, other, src, prompts, sched, 24, steps=1, chunk=6, seed=1, model_fn=fn,
                           checkpoint=ckpt)


def test_checkpoint_roundtrip_keeps_every_carry_bit(tmp_path):
  carry = (chunks.empty_ring(CFG), chunks.empty_metric_carry(8, 8))
  carry = jax.tree.map(lambda x: x + jax.random.uniform(jax.random.key(0), x.shape).astype(x.dtype), carry)
  p = resume.ResumeState(12, carry, {"psnr": np.arange(12.0)}, np.zeros(12, int), np.ones(2), np.full(2, 6),
                        np.ones(2), np.zeros(1, int))
  path = str(tmp_path / "s.npz")
  resume.save(path, p, {"a": (1, 2)})
  q = resume.load(path, carry, {"a": [1, 2]})
  assert q.done == 12 and jax.tree.structure(q.carry) == jax.tree.structure(carry)
  for x, y in zip(jax.tree.leaves(carry), jax.tree.leaves(q.carry)):
    np.testing.assert_array_equal(np.asarray(x), y)
  assert resume.load(str(tmp_path / "none.npz"), carry, {}) is None


def test_procedural_frames_by_index_match_the_stream():
  it = sources.ProceduralSource(height=24, width=40, num_frames=1, seed=5).stream(2)
  want = np.stack([next(it) for _ in range(13)])
  inline = frames.ProceduralFrames(height=24, width=40, seed=5, scene_index=2)
  np.testing.assert_array_equal(inline(3, 10), want[3:13])
  pool = frames.ProceduralFrames(height=24, width=40, seed=5, scene_index=2, workers=2)
  try:
    np.testing.assert_array_equal(pool(3, 10), want[3:13])
  finally:
    pool.close()
  pre = frames.Prefetcher(inline)
  pre.ahead(0, 4)
  np.testing.assert_array_equal(pre.get(0, 4), want[:4])
  np.testing.assert_array_equal(pre.get(4, 2), want[4:6])  # not prefetched: computed on demand
  pre.close()


def test_metrics_fft_ops_are_one_dependent_chain():
  """Two FFT ops (forward of all layers, then inverse): independent FFTs may run side by side on
  XLA:CPU's pool and deadlock it (phase_shift's docstring)."""
  z = jnp.zeros((4, 64, 64, 3))
  spec_T = effects.stack_specs([effects.make_spec("identity", "rain")] * 4)
  hlo = chunks.metrics_chunk_fn.lower(chunks.empty_metric_carry(64, 64), z, z, z,
                                           np.zeros(4, bool), spec_T).compile().as_text()
  ffts = [line for line in hlo.splitlines() if " fft(" in line]
  assert len(ffts) == 2, ffts
  assert "fft_type=FFT" in ffts[0] and "fft_type=IFFT" in ffts[1]


def test_metrics_chunk_at_256_does_not_hang_on_two_cores():
  """The explore notebook's hang: at 256x256 the metrics chunk deadlocked on 2 cores (4 of 4 runs
  before the fix). Pinned to 2 CPUs in a subprocess, 4 chunks must finish well inside the limit."""
  code = textwrap.dedent("""
      import os; os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
      import numpy as np, jax, jax.numpy as jnp
      from lsd_jax.datasets import effects
      from lsd_jax.eval import chunks
      rng = np.random.default_rng(0)
      spec_T = effects.stack_specs([effects.make_spec("identity", "snowfall")] * 8)
      out, gt, fo = (jnp.asarray(rng.random((8, 256, 256, 3), dtype=np.float32)) for _ in range(3))
      mc = chunks.empty_metric_carry(256, 256)
      for _ in range(4):
        mc, row = chunks.metrics_chunk_fn(mc, out, gt, fo, np.zeros(8, bool), spec_T)
        jax.block_until_ready(row)
      print("finished")
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert "finished" in proc.stdout, proc.stderr[-2000:]


def test_evaluate_cli_stops_and_resumes_exactly(tiny32, tmp_path):
  model_dir = tiny32[0]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)

  def run(out, *extra):
    cmd = [sys.executable, "-m", "experiments.evaluate", f"--model={model_dir}", "--steps=1",
           "--clips=0", "--stream_frames=30", "--switch_every=5", "--chunk=8", "--effects=sepia,snowfall",
           f"--out={out}", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "eval.json").read_text())["stream"]

  whole = run(tmp_path / "whole")
  assert whole["complete"] and not (tmp_path / "whole" / "resume").exists()
  part = run(tmp_path / "cut", "--max_minutes=1e-9")  # stops after its first chunk
  assert not part["complete"] and part["frames"] == 8 and part["planned_frames"] == 30
  assert (tmp_path / "cut" / "resume" / "stream_state.npz").exists()
  assert "partial: 8 of 30 frames" in (tmp_path / "cut" / "eval.md").read_text()
  done = run(tmp_path / "cut")
  assert done["complete"] and done["resumed_at"] == 8 and done["frames"] == 30
  assert not (tmp_path / "cut" / "resume").exists()
  a, b = np.load(tmp_path / "whole" / "per_frame.npz"), np.load(tmp_path / "cut" / "per_frame.npz")
  for k in chunks.PER_FRAME:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert whole["drift"] == done["drift"] and whole["per_effect"] == done["per_effect"]


def test_heldout_cache_is_keyed_by_the_model_config(tmp_path, monkeypatch):
  """evaluate.py's saved held-out results are reused for the same weights, protocol and config,
  and recomputed when the config differs (--tau_inf, --noise_scale on the same folder)."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  from lsd_jax.eval import protocol  # pylint: disable=import-outside-toplevel
  from lsd_jax.models import lsd  # pylint: disable=import-outside-toplevel

  calls = []
  monkeypatch.setattr(protocol, "evaluate_heldout", lambda cfg, *a, **k: calls.append(cfg.tau_inf) or {"x": cfg.tau_inf})
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32)
  params = {"w": np.ones(3, np.float32)}
  ec = protocol.EvalConfig()
  run = lambda c: protocol._cached_heldout(c, params, [np.zeros(1)], {}, ec, None, str(tmp_path))  # pylint: disable=protected-access
  assert run(cfg) == {"x": 0.5} and run(cfg) == {"x": 0.5} and calls == [0.5]  # the second from the file
  assert run(dataclasses.replace(cfg, tau_inf=0.1)) == {"x": 0.1} and calls == [0.5, 0.1]
  run(dataclasses.replace(cfg, tau_inf=0.1, noise_scale=0.25))
  assert len(calls) == 3  # another noise scale: recomputed too
