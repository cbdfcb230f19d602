"""The LSD model bundle: autoencoder + denoiser for one size, resolution and history mode.

`LSDConfig` is what a checkpoint records and what the training, streaming and benchmark code
build models from. Parameters are a plain dict {"autoencoder": ..., "denoiser": ...}.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lsd_jax.diffusion.shortcut import VelocityFn
from lsd_jax.models import gemm_conv, megastep, sizes
from lsd_jax.models.autoencoder import Autoencoder
from lsd_jax.models.denoiser import Denoiser, DenoiserConfig
from lsd_jax.models.layers import TensorParallel
from pallas_kernels import api


@dataclasses.dataclass(frozen=True)
class LSDConfig:
  size: str = "small"
  height: int = 256
  width: int = 256
  history_mode: str = "concat"
  history_len: int = 3  # K
  tau_inf: float = 0.5  # history noise level at inference (0.5: the shipped model's, see the 100k-frame runs)
  steps: int = 2  # S shortcut steps per frame
  latent_scale: float = 1.0
  kernel_impl: str = "xla"
  residual: bool = False  # the denoiser diffuses target - input latent (see diffusion.forcing)
  autoencoder: str = "conv"  # sizes.AE_KINDS: "conv" (models before v3) or "light"
  # How the autoencoder's convolutions run (gemm_conv.CONV_IMPLS), on the same parameters: "xla"
  # (cuDNN calls on a GPU, each outside XLA's command buffers) or "gemm" (im2col + GEMM, inside).
  ae_conv: str = "xla"
  # Per-block attention heads and MLP widths of a pruned denoiser (empty: the size's own).
  block_heads: tuple[int, ...] = ()
  block_mlp: tuple[int, ...] = ()
  # Latent pixels per token side (0: the size's own, 2). 1 gives 4x the tokens on the same
  # parameters but the patch embedding and the final layer (a capacity ablation, issue 16).
  patch: int = 0
  # The initial noise's scale at inference (a sampling temperature; 1: the trained distribution).
  noise_scale: float = 1.0
  # The scale for a prompt read as a particle effect (snowfall, rain, fireflies, bubbles; alone or
  # composed), whose particles come from the draw; None: noise_scale for every prompt. When set
  # (and different) the scale is chosen per prompt (`noise_scale_for`) and is an input of the
  # compiled frame, so a prompt switch never recompiles.
  particle_noise_scale: float | None = None

  def __post_init__(self):
    for name in ("block_heads", "block_mlp"):  # JSON gives lists; keep the config hashable
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    if not 0.0 <= self.noise_scale <= 2.0:
      raise ValueError(f"noise_scale must be in [0, 2], got {self.noise_scale}")
    if self.particle_noise_scale is not None and not 0.0 <= self.particle_noise_scale <= 2.0:
      raise ValueError(f"particle_noise_scale must be in [0, 2] or None, got {self.particle_noise_scale}")
    if self.patch < 0:
      raise ValueError(f"patch must be >= 1 (or 0: the size's own), got {self.patch}")
    if self.autoencoder not in sizes.AE_KINDS:
      raise ValueError(f"autoencoder must be one of {sizes.AE_KINDS}, got {self.autoencoder!r}")
    sizes.tokens_per_frame(self.model_size, self.height, self.width)  # validates
    if not 0.0 <= self.tau_inf < 1.0:
      raise ValueError(f"tau_inf must be in [0, 1), got {self.tau_inf}")
    if self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    api.resolve(self.kernel_impl)  # an unknown implementation fails here, with the known ones
    gemm_conv.conv_fn(self.ae_conv)  # likewise

  @property
  def model_size(self) -> sizes.ModelSize:
    """The named size, with this config's autoencoder kind and, when it is pruned, its
    per-block widths."""
    s = sizes.get_size(self.size).with_autoencoder(self.autoencoder)
    if self.patch and self.patch != s.denoiser.patch:
      s = dataclasses.replace(s, name=f"{s.name}-p{self.patch}",
                              denoiser=dataclasses.replace(s.denoiser, patch=self.patch))
    if not (self.block_heads or self.block_mlp):
      return s
    den = dataclasses.replace(s.denoiser, block_heads=self.block_heads, block_mlp=self.block_mlp)
    return dataclasses.replace(s, name=f"{s.name}-pruned", denoiser=den)

  @property
  def per_prompt_noise(self) -> bool:
    """Whether the initial noise's scale depends on the prompt (`noise_scale_for`)."""
    return self.particle_noise_scale is not None and self.particle_noise_scale != self.noise_scale

  def noise_scale_for(self, particles: bool) -> float:
    """The initial noise's scale for a prompt read as a particle effect (`particles`) or not."""
    return float(self.particle_noise_scale) if particles and self.particle_noise_scale is not None \
        else float(self.noise_scale)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    a = self.model_size.autoencoder
    return (self.height // sizes.AE_FACTOR, self.width // sizes.AE_FACTOR, a.latent_channels)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    # ae_conv is how to run the model, not what it is: left out at its default, so config.json
    # files and eval resume fingerprints stay what they were before the option existed.
    if d["ae_conv"] == "xla":
      del d["ae_conv"]
    for k, default in (("patch", 0), ("noise_scale", 1.0), ("particle_noise_scale", None)):  # likewise
      if d[k] == default:
        del d[k]
    return d

  @classmethod
  def from_config(cls, config, latent_scale: float = 1.0, autoencoder: str | None = None) -> "LSDConfig":
    """The model a training config (`config.model`, `config.data`) describes. `latent_scale`
    and `autoencoder` (the kind) come from the autoencoder actually loaded, when there is one."""
    m = config.model
    return cls(size=m.size, height=config.data.height, width=config.data.width, history_mode=m.history_mode,
               history_len=m.history_len, tau_inf=m.tau_inf, steps=m.steps, latent_scale=latent_scale,
               kernel_impl=m.kernel_impl, residual=bool(m.get("residual", False)),
               autoencoder=autoencoder or m.get("autoencoder", "conv"), patch=int(m.get("patch", 0)),
               noise_scale=float(m.get("noise_scale", 1.0)),
               particle_noise_scale=config_particle_scale(m.get("particle_noise_scale")))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LSDConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown LSDConfig fields {sorted(unknown)}")
    return cls(**dict(d))


def config_particle_scale(v) -> float | None:
  """A training config's `model.particle_noise_scale` or `train.particle_noise_scale`: None or
  negative (the default, -1: a ConfigDict field keeps one type, so the command line can set it)
  stands for None."""
  return None if v is None or float(v) < 0 else float(v)


def build(cfg: LSDConfig, tensor_parallel: TensorParallel | None = None) -> tuple[Autoencoder, Denoiser]:
  """The modules of `cfg`; with `tensor_parallel` the denoiser's blocks split over a mesh's
  `model` axis (`lsd_jax.models.parallel`: its params in the tensor layout, traced under the mesh)."""
  s = cfg.model_size
  ae = Autoencoder(s.autoencoder, latent_scale=cfg.latent_scale, conv_impl=cfg.ae_conv)
  den = Denoiser(DenoiserConfig(s.denoiser, s.autoencoder.latent_channels, cfg.history_mode,
                                cfg.history_len, cfg.kernel_impl, tensor_parallel))
  return ae, den


def dummy_inputs(cfg: LSDConfig, batch: int = 1):
  """Arguments of one denoiser call in this config's mode (zeros; for init and shapes)."""
  h, w, c = cfg.latent_shape
  k = cfg.history_len
  t = 1 if cfg.history_mode == "concat" else k + 1
  args = (jnp.zeros((batch, t, h, w, c)), jnp.zeros((batch, t, h, w, c)), jnp.zeros((batch, t)),
          jnp.zeros((batch, t)), jnp.zeros((batch, sizes.PROMPT_DIM)))
  kw = {}
  if cfg.history_mode == "concat":
    kw = {"hist_BxTxKxHxWxC": jnp.zeros((batch, t, k, h, w, c)), "tau_BxTxK": jnp.zeros((batch, t, k))}
  return args, kw


def init_params(key, cfg: LSDConfig, *, boxed: bool = False) -> dict[str, Any]:
  """Fresh parameters (float32). With `boxed`, keeps flax's logical-partitioning boxes.

  Jitted (cfg static), with the same values as flax's eager init: op by op, the init forward
  pass takes twice as long on a CPU, and a second call for one config costs nothing."""
  return _init_params(key, cfg, boxed)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_params(key, cfg: LSDConfig, boxed: bool) -> dict[str, Any]:
  ae, den = build(cfg)
  k_ae, k_den = jax.random.split(key)
  ae_vars = ae.init(k_ae, jnp.zeros((1, cfg.height, cfg.width, 3)))
  args, kw = dummy_inputs(cfg)
  den_vars = den.init(k_den, *args, **kw)
  params = {"autoencoder": ae_vars["params"], "denoiser": den_vars["params"]}
  return params if boxed else nn.meta.unbox(params)


def random_params(seed: int, cfg: LSDConfig) -> dict[str, Any]:
  """Random weights for `cfg` (float32 numpy), the one rule for streams without a trained model,
  benchmarks and tests: every leaf random, the adaLN-zero gates included, so that every block
  (and the prompt) changes the output: kernels ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.02^2),
  biases N(0, 0.02^2). Drawn from the shapes alone (an eager flax init takes half a minute on a
  CPU), each leaf from its own generator (seed, leaf index) on a thread pool (numpy draws
  without the GIL: the 1.3B large model in seconds on a many-core host)."""
  from flax import traverse_util

  shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), cfg))
  flat = traverse_util.flatten_dict(shapes)
  paths = sorted(flat)

  def draw(i: int) -> np.ndarray:
    path, shape = paths[i], flat[paths[i]].shape
    noise = np.random.default_rng([seed, i]).standard_normal(shape, dtype=np.float32)
    if len(shape) >= 2:
      return noise / np.float32(np.sqrt(np.prod(shape[:-1])))
    return 1.0 + 0.02 * noise if path[-1] == "scale" else 0.02 * noise

  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    leaves = list(pool.map(draw, range(len(paths))))
  return traverse_util.unflatten_dict(dict(zip(paths, leaves)))


def velocity_fn(den: Denoiser, den_params, packed=None) -> VelocityFn:
  """u(x, t, d, cond) with cond = {"c", "prompt"[, "hist", "tau"]}, as the objective and sampler expect.

  `packed` (from `with_kernel_params`): the denoiser's weights packed for the whole-step mega
  kernel; the step then runs as one Mosaic GPU call where `megastep.step_supported` says it can
  (else as `Denoiser.apply`)."""

  def apply(x, t, d, cond):
    return den.apply({"params": den_params}, x, cond["c"], t, d, cond["prompt"],
                     cond.get("hist"), cond.get("tau"))

  if packed is None:
    return apply
  return megastep.velocity_fn(den.config, den_params, packed, fallback=apply)


def megastep_unsupported(cfg: LSDConfig) -> str | None:
  """Why the whole-step mega kernel cannot run this config here (None: it can): the model's
  shape (history mode, pruned blocks, tokens per frame, widths) first, then the device."""
  s = cfg.model_size.denoiser
  h, w, _ = cfg.latent_shape
  _, den = build(cfg)
  why = megastep.step_supported(den.config, (h // s.patch) * (w // s.patch))
  if why is None and not api.is_hopper():
    why = f"needs a Hopper GPU, have {jax.devices()[0].device_kind}"
  return why


def with_kernel_params(cfg: LSDConfig, params):
  """`params` plus, for `kernel_impl="megastep"` where the mega kernel can run this config
  (`megastep_unsupported`), the denoiser's weights packed for it under "megastep" (made once
  here, not per step). Pass `params.get("megastep")` to `velocity_fn`. Elsewhere `params` as
  they are (the step then runs per op, as "auto"), logged once."""
  if cfg.kernel_impl != "megastep" or "megastep" in params:
    return params
  why = megastep_unsupported(cfg)
  if why is not None:
    api.warn_fallback_once("megastep", why)
    return params
  return {**params, "megastep": megastep.pack(params["denoiser"])}


def encode(ae: Autoencoder, ae_params, frames_NxHxWx3):
  """uint8 or [0, 1] float frames -> latents."""
  x = frames_NxHxWx3
  x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
  return ae.apply({"params": ae_params}, x * 2.0 - 1.0, method=Autoencoder.encode)


def decode(ae: Autoencoder, ae_params, z_NxhxwxC):
  """Latents -> frames as floats in [0, 1]."""
  x = ae.apply({"params": ae_params}, z_NxhxwxC, method=Autoencoder.decode)
  return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)
