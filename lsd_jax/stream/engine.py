"""The streaming engine: one jitted pure `stream_step` and the `StreamSession` around it.

Per frame (DESIGN.md section 1), inside ONE jitted function with static shapes and a donated
state, so a stream never recompiles after warm-up and never grows memory:

  uint8 frame (already at the model's size) -> the model's frame function (`models.frame`: encode
  -> S shortcut steps, frame i keyed fold_in(stream key, i + 1) -> push into the history ring
  -> decode) -> uint8 frame

The frame function is the one evaluation scans and the latency benchmark times, so a stream's
output equals theirs bit for bit for the same weights, key and frames.

`StreamModel` is what several streams share (config, parameters on device, the compiled step,
the prompt-embedding cache); `StreamSession` is one stream's state on top of it. The text
encoder runs once per new prompt text, never per frame.

Several GPUs (`mesh="model:4"`, lsd-stream/lsd-serve `--mesh`): the same frame function with the
denoiser split over the mesh (`models.parallel`), the params placed on it once, the state and
the prompt replicated on it, and the step jitted with the state's sharding pinned, so a stream
stays on its mesh and compiles once.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import pathlib
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np

from lsd_jax.diffusion import sampler
from lsd_jax.models import export, gemm_conv, lsd, parallel, sizes
from lsd_jax.models import frame as model_frame
from lsd_jax.models.layers import TensorParallel
from lsd_jax.stream import preprocess

DEFAULT_CHECKPOINT = "checkpoints/lsd_small"  # relative to the repository root
RANDOM_TINY_LABEL = "random-init tiny (untrained)"
FALLBACK_CONFIG = lsd.LSDConfig(size="tiny", height=256, width=256)
EMBEDDING_CACHE_SIZE = 128  # prompts kept; bounded so a long-running server stays flat
# The largest S a stream accepts: 8x the shipped model's S = 2 and 4x the largest S evaluated.
# Every step is unrolled into the compiled program, so compile time and memory grow with S
# (S = 1000 compiled for 8.5 min at 6 GB on a CPU before this bound).
MAX_STEPS = 16


class NonFiniteOutput(RuntimeError):
  """The model produced NaN or Inf: the stream's history is poisoned, so it stops."""


def repo_root() -> pathlib.Path:
  return pathlib.Path(__file__).resolve().parents[2]


def default_checkpoint_dir() -> pathlib.Path:
  return repo_root() / DEFAULT_CHECKPOINT


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a stream reports about its model (CLI summary, stats JSON, web page, logs)."""
  name: str
  label: str
  trained: bool
  checkpoint: str | None
  size: str
  resolution: str
  steps: int
  mesh: str = "1"  # the devices the step runs on (models.parallel.format_mesh)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def load_model(checkpoint: str | os.PathLike | None = None, *, seed: int = 0,
               fallback: lsd.LSDConfig = FALLBACK_CONFIG) -> tuple[lsd.LSDConfig, dict, ModelInfo]:
  """(config, params, info) from a model folder; None means DEFAULT_CHECKPOINT, and where that
  folder does not exist yet a random-init tiny model, labelled so. An explicit folder that is
  missing or broken raises export.CheckpointError."""
  if checkpoint is None:
    default = default_checkpoint_dir()
    if (default / export.CONFIG_FILE).is_file():
      checkpoint = default
    else:
      logging.warning("No trained model at %s yet: streaming with a %s model (%s, %dx%d). "
                      "Its output is noise-like; it exercises the runtime, not the effects.",
                      default, RANDOM_TINY_LABEL, fallback.size, fallback.width, fallback.height)
      info = ModelInfo(name="random-tiny", label=RANDOM_TINY_LABEL, trained=False, checkpoint=None,
                       size=fallback.size, resolution=f"{fallback.width}x{fallback.height}",
                       steps=fallback.steps)
      return fallback, lsd.random_params(seed, fallback), info
  cfg, params, meta = export.load(os.fspath(checkpoint))
  name = str(meta.get("name") or pathlib.Path(checkpoint).resolve().name)
  trained = not meta.get("random_weights", False)
  label = f"{name} ({cfg.size}, {cfg.width}x{cfg.height}{'' if trained else ', random weights'})"
  info = ModelInfo(name=name, label=label, trained=trained, checkpoint=os.fspath(checkpoint),
                   size=cfg.size, resolution=f"{cfg.width}x{cfg.height}", steps=cfg.steps)
  return cfg, params, info


class StreamState(NamedTuple):
  ring: sampler.Ring  # the last K generated latents (batch 1)
  index: jax.Array  # int32 scalar: frames processed so far
  key_data: jax.Array  # uint32 raw data of the stream key (a plain array, so it can be donated)


def initial_state(cfg: lsd.LSDConfig, seed: int) -> StreamState:
  """The state of a fresh stream, as host (numpy) arrays: no device work, no compilation."""
  h, w, c = cfg.latent_shape
  k = cfg.history_len
  zeros = np.zeros((1, k, h, w, c), np.float32)
  ring = sampler.Ring(zeros, zeros.copy(), np.ones((1, k), np.float32))
  key_data = np.asarray(jax.random.key_data(jax.random.key(seed)))
  return StreamState(ring, np.zeros((), np.int32), key_data)


class StepFns(NamedTuple):
  """The fused step and its three pieces (for the `profile` timing mode only)."""
  # noise (optional, last): the initial noise's scale, a float32 scalar, for a model whose scale
  # is chosen per prompt (LSDConfig.per_prompt_noise); otherwise left out (the config's own)
  step: Callable  # (params, state, frame_HxWx3, prompt_E[, noise]) -> (state, out_HxWx3, finite), state donated
  encode: Callable  # (params, frame_HxWx3) -> c_1xhxwxC
  denoise: Callable  # (params, state, c, prompt_E[, noise]) -> (state, z_1xhxwxC), state donated
  decode: Callable  # (params, z) -> out_HxWx3 uint8


@functools.lru_cache(maxsize=8)
def make_step_fns(cfg: lsd.LSDConfig, mesh: Mesh | None = None, tensor: TensorParallel | None = None) -> StepFns:
  """The model's frame function (`models.frame`) jitted for one config, around the stream's
  state; cached, so models of one config share their compilations (the parameters are
  arguments, not constants). With a `mesh`, the frame function of that mesh, every output
  replicated on it (the state comes back where it went in: no recompilation, no transfer);
  `tensor` sets how its blocks split and reduce (`models.layers.TensorParallel`)."""
  step, encode, denoise, decode = _stream_fns(cfg, mesh, tensor)
  if mesh is None:
    return StepFns(step=jax.jit(step, donate_argnums=(1,)), encode=jax.jit(encode),
                   denoise=jax.jit(denoise, donate_argnums=(1,)), decode=jax.jit(decode))
  on_mesh = parallel.stream_sharding(mesh)
  return StepFns(step=jax.jit(step, donate_argnums=(1,), out_shardings=on_mesh),
                 encode=jax.jit(encode, out_shardings=on_mesh),
                 denoise=jax.jit(denoise, donate_argnums=(1,), out_shardings=on_mesh),
                 decode=jax.jit(decode, out_shardings=on_mesh))


class _Baked:
  """A jitted function of (state, ...) with the parameters closed over as constants of the
  executable, called as (params, state, ...) like the others: the `params` given are ignored
  (they are the model's own, which never change after StreamModel.__init__)."""

  def __init__(self, fn: Callable, params, donate_state: bool):
    self._jit = jax.jit(lambda *a: fn(params, *a), donate_argnums=(0,) if donate_state else ())

  def __call__(self, _params, *args):
    return self._jit(*args)

  def lower(self, _params, *args):
    return self._jit.lower(*args)

  def _cache_size(self) -> int:
    return self._jit._cache_size()  # pylint: disable=protected-access


def make_baked_step_fns(cfg: lsd.LSDConfig, params) -> StepFns:
  """`make_step_fns(cfg)` with `params` baked into each executable as constants, so that a call
  passes the state, the frame and the prompt alone, not every parameter leaf (116 for the
  shipped small model); one model's own compilations (not cached across models). No mesh."""
  step, encode, denoise, decode = _stream_fns(cfg, None, None)
  return StepFns(step=_Baked(step, params, True), encode=_Baked(encode, params, False),
                 denoise=_Baked(denoise, params, True), decode=_Baked(decode, params, False))


def _stream_fns(cfg: lsd.LSDConfig, mesh: Mesh | None, tensor: TensorParallel | None):
  """The unjitted (step, encode, denoise, decode) of StepFns, each taking params first."""
  fns = model_frame.frame_fns(cfg, mesh, tensor)

  def key_of(state: StreamState):  # frame i (= state.index) samples with fold_in(stream_key, i + 1)
    return model_frame.frame_key(jax.random.wrap_key_data(state.key_data), state.index)

  def encode(params, frame_HxWx3):
    return fns.encode(params, frame_HxWx3[None])

  def denoise(params, state: StreamState, c_1xhxwxC, prompt_E, noise=None):
    ring, z = fns.denoise(params, state.ring, c_1xhxwxC, prompt_E[None].astype(jnp.float32), key_of(state),
                          None if noise is None else noise[None])
    return StreamState(ring, state.index + 1, state.key_data), z

  def decode(params, z_1xhxwxC):
    return model_frame.to_uint8(fns.decode(params, z_1xhxwxC)[0])

  def stream_step(params, state: StreamState, frame_HxWx3, prompt_E, noise=None):
    # `finite`: the new history ring holds no NaN or Inf (StreamSession._check_finite), computed
    # here so that it comes back with the frame in one transfer, not in a second dispatch
    ring, out = fns.frame(params, state.ring, frame_HxWx3[None], prompt_E[None].astype(jnp.float32), key_of(state),
                          None if noise is None else noise[None])
    return StreamState(ring, state.index + 1, state.key_data), model_frame.to_uint8(out[0]), _finite(ring)

  return stream_step, encode, denoise, decode


def _finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


_all_finite = jax.jit(_finite)  # the profile mode's check (its three pieces return no flag)


class StreamModel:
  """What streams share: config, parameters on device, compiled functions, prompt embeddings."""

  def __init__(self, cfg: lsd.LSDConfig, params, info: ModelInfo, *, steps: int | None = None,
               tau_inf: float | None = None, noise_scale: float | None = None,
               particle_noise_scale: float | None = None, param_dtype=None, text_encoder=None,
               kernel_impl: str | None = None, mesh: str | Mapping[str, int] | Mesh | None = None,
               tensor: TensorParallel | None = None, anchor_prompts: bool | None = None,
               ae_conv: str | None = None, bake_params: bool = False):
    if steps is not None and not (isinstance(steps, (int, np.integer)) and 1 <= steps <= MAX_STEPS):
      raise ValueError(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if steps is not None and steps != cfg.steps:
      cfg = dataclasses.replace(cfg, steps=steps)
      info = dataclasses.replace(info, steps=steps)
    if tau_inf is not None:  # history noise at inference (LSDConfig checks its range): higher
      cfg = dataclasses.replace(cfg, tau_inf=float(tau_inf))  # follows input and prompt sooner, flickers more
    if noise_scale is not None:  # the initial noise's scale, a sampling temperature (LSDConfig checks it)
      cfg = dataclasses.replace(cfg, noise_scale=float(noise_scale))
    if particle_noise_scale is not None:  # the same for prompts read as a particle effect
      cfg = dataclasses.replace(cfg, particle_noise_scale=float(particle_noise_scale))
    if kernel_impl is not None:  # pallas_kernels.api implementation (LSDConfig checks the name)
      cfg = dataclasses.replace(cfg, kernel_impl=kernel_impl)
    # the autoencoder's convolutions, "xla" or "gemm" on the same parameters; "auto" (and None for
    # a model at the default xla): gemm on a GPU, where it is faster, xla elsewhere (gemm_conv.resolve)
    ae_conv = gemm_conv.resolve(ae_conv, cfg.ae_conv)
    if ae_conv != cfg.ae_conv:
      cfg = dataclasses.replace(cfg, ae_conv=ae_conv)
    self.mesh = mesh if isinstance(mesh, Mesh) else parallel.make_mesh(mesh)
    if parallel.data_size(self.mesh) > 1:  # a session is one stream (the benchmark batches them)
      raise ValueError(f"a stream runs on a model:M mesh, not {parallel.format_mesh(self.mesh)}: "
                       "data:D splits a batch of streams (benchmark_latency.py --streams)")
    if info is not None and self.mesh is not None:
      info = dataclasses.replace(info, mesh=parallel.format_mesh(self.mesh))
    self.cfg, self.info = cfg, info
    if param_dtype is not None:
      params = jax.tree.map(lambda p: jnp.asarray(p, param_dtype), params)
    if self.mesh is None:
      self.params = jax.device_put(model_frame.prepare_params(cfg, params))
    else:  # in the tensor layout, each device its slices (parallel.prepare checks the split)
      self.params = model_frame.prepare_params(cfg, params, self.mesh, tensor)
    # bake_params: the parameters as constants of the compiled frame (make_baked_step_fns), so a
    # call passes the state, frame and prompt and no parameter leaf: host time per frame (issue
    # 17), at the cost of a compile per model
    if bake_params and self.mesh is not None:
      raise ValueError("bake_params needs a model on one device (no mesh): the tensor layout's "
                       "parameters are sharded arguments")
    self.bake_params = bool(bake_params)
    self.fns = (make_baked_step_fns(cfg, self.params) if self.bake_params else
                make_step_fns(cfg, self.mesh, tensor if self.mesh is not None else None))
    self._text_encoder = text_encoder
    # Prompt anchoring (datasets.prompts.anchor_many): a prompt that matches a known effect well
    # is given the mean embedding of the train prompts asking for that effect and parameters.
    # Default: on for a trained model (it follows its train wording best), off for random weights.
    self.anchor_prompts = bool(info.trained if anchor_prompts is None and info is not None else anchor_prompts)
    self.anchors: dict[str, Any] = {}  # text -> prompts.Anchor, for the prompts anchored so far
    self._embeddings: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._noise_scales: dict[str, float] = {}  # text -> its initial noise scale (per_prompt_noise)
    self._lock = threading.Lock()
    self.encoder_calls = 0

  @classmethod
  def load(cls, checkpoint: str | os.PathLike | None = None, *, seed: int = 0, **kw) -> "StreamModel":
    cfg, params, info = load_model(checkpoint, seed=seed)
    return cls(cfg, params, info, **kw)

  @classmethod
  def random(cls, cfg: lsd.LSDConfig, *, seed: int = 0, **kw) -> "StreamModel":
    """`cfg`'s model on random weights (every leaf, `lsd.random_params`), labelled so: what the
    benchmarks time without a checkpoint."""
    info = ModelInfo(name=f"random-{cfg.size}", label=f"{cfg.size} (random weights)", trained=False,
                     checkpoint=None, size=cfg.size, resolution=f"{cfg.width}x{cfg.height}", steps=cfg.steps)
    return cls(cfg, lsd.random_params(seed, cfg), info, **kw)

  @property
  def height(self) -> int:
    return self.cfg.height

  @property
  def width(self) -> int:
    return self.cfg.width

  @property
  def text_encoder(self):
    """The prompt encoder: the one given, else the shared MiniLM, loaded on first use."""
    if self._text_encoder is None:
      from lsd_jax.models import text_encoder

      self._text_encoder = text_encoder.default_encoder()
    return self._text_encoder

  def embed(self, text: str) -> np.ndarray:
    """The prompt's float32 [384] embedding, computed once per distinct text (LRU cache)."""
    with self._lock:
      if text in self._embeddings:
        self._embeddings.move_to_end(text)
        return self._embeddings[text]
    if not text.strip():
      emb = np.zeros((sizes.PROMPT_DIM,), np.float32)  # the text encoder's own "no effect"
    else:
      emb = self._anchored(text) if self.anchor_prompts else None
      if emb is None:  # anchoring off or failed
        emb = np.asarray(self.text_encoder.encode([text])[0], np.float32)
        self.encoder_calls += 1
    with self._lock:
      self._embeddings[text] = emb
      while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
        self._embeddings.popitem(last=False)
    return emb

  def _anchored(self, text: str) -> np.ndarray | None:
    """The anchor's embedding for `text`, the prompt's own for a weak match (anchor_many has
    encoded it already), or None where anchoring failed (a missing prompt table must not end a
    stream)."""
    try:
      from lsd_jax.datasets import prompts  # pylint: disable=import-outside-toplevel

      anchor = prompts.anchor_many([text], self.text_encoder)[0]
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("prompt anchoring failed (%s); using the prompt's own embedding", e)
      return None
    self.encoder_calls += 1 if prompts.ANCHOR_METHOD == "map" else 2  # map: one call; match: its own and the prompt's
    with self._lock:
      self.anchors[text] = anchor
    if anchor.embedding is None:
      logging.info("prompt %r: unsure (%s, %s %.2f), its own embedding", text, anchor.name, prompts.ANCHOR_METHOD,
                   anchor.score)
      return anchor.own
    logging.info("prompt %r anchored to %s (%s, %s %.2f)", text,
                 f"the mean of {len(anchor.rows)} train prompts like {anchor.text!r}" if len(anchor.rows) > 1
                 else f"the train paraphrase {anchor.text!r}", anchor.name, prompts.ANCHOR_METHOD, anchor.score)
    return anchor.embedding

  def noise_scale_of(self, text: str) -> float:
    """The initial noise's scale for `text`: `cfg.noise_scale_for(particles)`, particles where
    the effect read from its words (the anchor's reading, else `prompts.match`) has a particle
    part; without a per-prompt scale, or for the empty prompt, the config's own. Where the words
    cannot be read (no prompt table or encoder) the config's own, with a warning."""
    if not self.cfg.per_prompt_noise or not text.strip():
      return float(self.cfg.noise_scale)
    with self._lock:
      if text in self._noise_scales:
        return self._noise_scales[text]
      anchor = self.anchors.get(text)
    try:
      if anchor is not None:
        name = anchor.name
      else:
        from lsd_jax.datasets import prompts  # pylint: disable=import-outside-toplevel

        name = prompts.match(text, self.text_encoder)[0]
        self.encoder_calls += 1
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("could not read the effect of %r (%s); noise scale %g", text, e, self.cfg.noise_scale)
      return float(self.cfg.noise_scale)
    from lsd_jax.datasets import effects  # pylint: disable=import-outside-toplevel

    scale = self.cfg.noise_scale_for(effects.has_particles(name))
    logging.info("prompt %r read as %s: noise scale %g", text, name, scale)
    with self._lock:
      self._noise_scales[text] = scale
    return scale

  def add_embedding(self, text: str, embedding) -> None:
    """Registers a precomputed embedding for `text` (e.g. from a .npy, where no text encoder
    is installed); set_prompt(text) then never calls the encoder."""
    emb = np.asarray(embedding, np.float32).reshape(-1)
    if emb.shape != (sizes.PROMPT_DIM,):
      raise ValueError(f"embedding must have {sizes.PROMPT_DIM} values, got {emb.shape}")
    with self._lock:
      self._embeddings[text] = emb
      while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
        self._embeddings.popitem(last=False)

  def put(self, tree):
    """`tree` on the device(s) the step runs on (with a mesh: replicated over it)."""
    if self.mesh is None:
      return jax.device_put(tree)
    return jax.device_put(tree, parallel.stream_sharding(self.mesh))

  def compilations(self) -> int:
    """Compiled variants of the fused step (1 after warm-up, forever after)."""
    return self.fns.step._cache_size()  # pylint: disable=protected-access


def _check_prompt(text) -> None:
  if not isinstance(text, str):
    raise TypeError(f"the prompt must be a str, got {type(text).__name__} {repr(text)[:80]}")


class StreamSession:
  """One stream: `session(frame) -> frame`, `set_prompt(text, transition_frames)`, `reset()`.

  `model` is a StreamModel, or a checkpoint folder (None: DEFAULT_CHECKPOINT, else the labelled
  random-init tiny model). Output frames are uint8 at the model's resolution. Not thread-safe:
  one session is driven by one thread at a time (share the StreamModel instead).
  """

  def __init__(self, model: StreamModel | str | os.PathLike | None = None, *, seed: int = 0,
               prompt: str = "", steps: int | None = None):
    if not isinstance(model, StreamModel):
      model = StreamModel.load(model, steps=steps)
    elif steps is not None and steps != model.cfg.steps:
      raise ValueError("steps is fixed by the StreamModel; build the model with steps=")
    _check_prompt(prompt)
    self.model = model
    self.seed = seed
    self._initial = initial_state(model.cfg, seed)
    self._state = self.model.put(self._initial)
    emb = model.embed(prompt)
    self.prompt = prompt
    self._emb_from = self._emb_to = emb
    self._emb_dev = self.model.put(emb)
    # the initial noise's scale per prompt (LSDConfig.per_prompt_noise), blended like the
    # embedding during a transition; None: the config's own, part of the compiled step
    self._noise_from = self._noise_to = model.noise_scale_of(prompt)
    self._noise_dev = self._put_noise(self._noise_to)
    self._transition = 0
    self._since_set = 0
    self.last_input: np.ndarray | None = None  # the last frame as the model saw it (sinks)

  # -- prompt ---------------------------------------------------------------------------------

  def set_prompt(self, text: str, transition_frames: int = 0) -> None:
    """Takes effect on the next frame; with transition_frames = T > 0 the embedding moves
    linearly from the one in effect now to the new one over the next T frames."""
    _check_prompt(text)
    if isinstance(transition_frames, bool) or not isinstance(transition_frames, (int, np.integer)):
      raise TypeError(f"transition_frames must be an int, got {transition_frames!r:.80}")
    if transition_frames < 0:
      raise ValueError(f"transition_frames must be >= 0, got {transition_frames}")
    target = self.model.embed(text)
    noise = self.model.noise_scale_of(text)
    self._emb_from = self._current_embedding()
    self._noise_from = self._current_noise()
    self._emb_to, self._noise_to = target, noise
    self._transition = int(transition_frames)
    self._since_set = 0
    self.prompt = text
    if self._transition == 0:
      self._emb_dev = self.model.put(target)
      self._noise_dev = self._put_noise(noise)

  def _current_embedding(self) -> np.ndarray:
    """The embedding the last frame used."""
    if self._transition == 0 or self._since_set >= self._transition:
      return self._emb_to
    a = self._since_set / self._transition
    return ((1.0 - a) * self._emb_from + a * self._emb_to).astype(np.float32)

  def _current_noise(self) -> float:
    """The initial noise scale the last frame used."""
    if self._transition == 0 or self._since_set >= self._transition:
      return self._noise_to
    a = self._since_set / self._transition
    return (1.0 - a) * self._noise_from + a * self._noise_to

  def _put_noise(self, scale: float):
    return self.model.put(np.float32(scale)) if self.model.cfg.per_prompt_noise else None

  @property
  def current_noise_scale(self) -> float:
    """The initial noise's scale the last frame used (mid-transition: the blend)."""
    return float(self._current_noise())

  @property
  def current_embedding(self) -> np.ndarray:
    """The prompt embedding the last frame used (mid-transition: the blend)."""
    return self._current_embedding()

  def _next_prompt(self) -> tuple:
    """The step's prompt arguments for the next frame, on device (fresh copies only during a
    transition): (embedding,), or (embedding, noise scale) for a per-prompt scale."""
    if self._transition and self._since_set < self._transition:
      self._since_set += 1
      self._emb_dev = self.model.put(self._current_embedding())
      self._noise_dev = self._put_noise(self._current_noise())
    return (self._emb_dev,) if self._noise_dev is None else (self._emb_dev, self._noise_dev)

  # -- frames ---------------------------------------------------------------------------------

  def prepare(self, frame) -> np.ndarray:
    return preprocess.prepare_frame(frame, self.model.height, self.model.width)

  def __call__(self, frame) -> np.ndarray:
    """One input frame (any size / layout, see preprocess.prepare_frame) -> one output frame."""
    frame_HxWx3 = self.prepare(frame)
    self._state, out, finite = self.model.fns.step(self.model.params, self._state, frame_HxWx3,
                                                   *self._next_prompt())
    out, finite = jax.device_get((out, finite))
    self._check_finite(finite)
    return out

  def _check_finite(self, finite=None) -> None:
    """Raises NonFiniteOutput once the history ring (the generated latents) holds NaN or Inf:
    the uint8 output of such a frame is silent garbage (NaN casts to 0), and every later frame
    inherits it through the ring. `finite`: the fused step's own flag, fetched with the frame
    (one transfer per frame); None: one small reduction on the device (the profile mode)."""
    if finite is None:
      finite = _all_finite(self._state.ring)
    if not bool(finite):
      raise NonFiniteOutput(f"the model produced NaN or Inf at frame {self.frame_index} (its "
                            "weights or this kernel implementation overflow); stopping the stream")

  def process_timed(self, frame, *, profile: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Like __call__, also returning seconds per stage.

    Default: `preprocess` (host) and `device` = the fused jitted step with its transfers
    (host frame in -> host frame out), one dispatch as in __call__. With profile=True the step
    runs as three jitted pieces, each waited for: `encode` (with the frame's upload), `denoise`
    (S steps + ring push) and `decode` (with the download); the sum is a little slower than the
    fused step, which XLA optimises as a whole.
    """
    t0 = time.perf_counter()
    frame_HxWx3 = self.last_input = self.prepare(frame)
    prompt = self._next_prompt()
    t1 = time.perf_counter()
    p, fns = self.model.params, self.model.fns
    if not profile:
      self._state, out, finite = fns.step(p, self._state, frame_HxWx3, *prompt)
      out, finite = jax.device_get((out, finite))
      t2 = time.perf_counter()
      self._check_finite(finite)
      return out, {"preprocess": t1 - t0, "device": t2 - t1}
    c = jax.block_until_ready(fns.encode(p, frame_HxWx3))
    t2 = time.perf_counter()
    self._state, z = fns.denoise(p, self._state, c, *prompt)
    z = jax.block_until_ready(z)
    t3 = time.perf_counter()
    out = np.asarray(fns.decode(p, z))
    t4 = time.perf_counter()
    self._check_finite()
    return out, {"preprocess": t1 - t0, "encode": t2 - t1, "denoise": t3 - t2, "decode": t4 - t3,
                 "device": t4 - t1}

  def reset(self, seed: int | None = None) -> None:
    """Back to the stream's initial state (empty history, frame 0, the seed's key; a new seed
    if given); the prompt stays, and a transition in progress jumps to its target."""
    if seed is not None:
      if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
      self.seed = int(seed)
      self._initial = initial_state(self.model.cfg, self.seed)
    self._state = self.model.put(self._initial)
    self._emb_from, self._noise_from = self._emb_to, self._noise_to
    self._transition = 0
    self._emb_dev = self.model.put(self._emb_to)
    self._noise_dev = self._put_noise(self._noise_to)

  def warmup(self, *, profile: bool = False) -> float:
    """Compiles the step (or its profile pieces) on a throwaway copy of the state; returns the
    seconds it took. The stream's own state is untouched."""
    t0 = time.perf_counter()
    p, fns = self.model.params, self.model.fns
    frame = np.zeros((self.model.height, self.model.width, 3), np.uint8)
    prompt = (self._emb_dev,) if self._noise_dev is None else (self._emb_dev, self._noise_dev)
    state, out, _ = fns.step(p, self.model.put(self._initial), frame, *prompt)
    jax.block_until_ready(out)
    if profile:
      _all_finite(state.ring)  # compiles the profile mode's NaN check
      _, z = fns.denoise(p, self.model.put(self._initial), fns.encode(p, frame), *prompt)
      jax.block_until_ready(fns.decode(p, z))
    return time.perf_counter() - t0

  @property
  def frame_index(self) -> int:
    """Frames processed since the start or the last reset."""
    return int(self._state.index)

  @property
  def state(self) -> StreamState:
    return self._state

  @property
  def info(self) -> ModelInfo:
    return self.model.info
