"""The model flags of both streaming front ends (lsd-stream and lsd-serve), spelt one way.

  --model_dir=DIR  --steps=S  --tau_inf=T  --noise_scale=X  --particle_noise_scale=X
  --kernel_impl=NAME  --ae_conv=auto|xla|gemm  --[no]bake_params  --seed=N  --mesh=model:M
  --[no]anchor_prompts

The spellings of earlier releases stay as aliases: --checkpoint (both tools), --tau-inf and
--kernel-impl (lsd-stream). Bad values end with a usage message at flag parsing, before anything
loads or compiles. Importing this module loads neither jax nor the model (so `--help` is quick).
"""

from __future__ import annotations

import re
from typing import Any

from absl import flags

# engine.MAX_STEPS, pallas_kernels.api.IMPLEMENTATIONS and models.gemm_conv.CONV_IMPLS, spelt out
# because importing those modules loads jax; tests/stream/test_flags.py checks that they agree.
MAX_STEPS = 16
KERNEL_IMPLS = ("auto", "xla", "mosaic", "triton", "megastep")
AE_CONVS = ("auto", "xla", "gemm")

MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Model folder (config.json + params.safetensors). Default: "
    "checkpoints/lsd_small, else a labelled random-init tiny model.")
STEPS = flags.DEFINE_integer(
    "steps", None, f"Shortcut steps per frame, 1..{MAX_STEPS} (default: the model's). Each step "
    "is unrolled into the compiled program.")
TAU_INF = flags.DEFINE_float(
    "tau_inf", None, "History noise level at inference, in [0, 1) (default: the model's). Higher "
    "follows the input and prompt switches faster but flickers more.")
NOISE_SCALE = flags.DEFINE_float(
    "noise_scale", None, "The initial noise's scale per frame, in [0, 2] (default: the model's; 0.25 "
    "for the shipped one, 1 for a model that sets none): a sampling temperature; below 1 the frames "
    "vary less from draw to draw and sit nearer the mean output of the model (the shipped one: +1.1 "
    "dB on the deterministic effects). Prompts read as a particle effect use --particle_noise_scale.")
PARTICLE_NOISE_SCALE = flags.DEFINE_float(
    "particle_noise_scale", None, "The initial noise's scale for a prompt read as a particle effect "
    "(snowfall, rain, fireflies, bubbles; alone or composed), in [0, 2] (default: the model's; 1 for "
    "the shipped one, whose other prompts sample at 0.25): their particles come from the draw.")
KERNEL_IMPL = flags.DEFINE_enum(
    "kernel_impl", None, list(KERNEL_IMPLS),
    "Denoiser ops implementation (default: the model's, xla): auto picks Pallas kernels on GPUs; "
    "megastep runs each denoiser step as one Mosaic GPU kernel on a Hopper GPU "
    "(pallas_kernels/megastep_mgpu.py; elsewhere it acts as auto).")
AE_CONV = flags.DEFINE_enum(
    "ae_conv", None, list(AE_CONVS),
    "How the autoencoder's convolutions run, on the same weights (default auto: gemm on a GPU, xla "
    "elsewhere, for a model that names no other): xla is one cuDNN call each on a GPU, which XLA "
    "keeps out of its command buffers (CUDA graphs); gemm computes each as im2col + one matrix "
    "multiply, so the whole frame can be one command buffer (faster on an H200, slower on a CPU).")
BAKE_PARAMS = flags.DEFINE_bool(
    "bake_params", False, "Compile the weights into the frame as constants, so each call passes only "
    "the state, the frame and the prompt (one device only; a compile per model). On an H200 the "
    "shipped model's frame at S = 2 took 1.538 / 1.953 ms p50 / p99 baked against 1.716 / 2.094 "
    "(2026-12-04, with --ae_conv=gemm); the same frames bit for bit.")
MESH = flags.DEFINE_string(
    "mesh", None, "Split the denoiser over this many GPUs of the host (tensor parallelism: each "
    "block's attention heads and MLP columns; the autoencoder is replicated): model:M or M, e.g. "
    "model:4. The model's heads and MLP width must divide by M. Default: one device.")
ANCHOR_PROMPTS = flags.DEFINE_bool(
    "anchor_prompts", None, "Anchor each prompt that matches a known effect well to the mean "
    "embedding of the train prompts asking for the same effect and strength (the model follows its "
    "train wording best: +2 dB held-out for model v3). Default: on for a trained model, off for random weights; "
    "--noanchor_prompts feeds every prompt's own embedding.")
SEED = flags.DEFINE_integer(
    "seed", 0, "Stream seed: the noise of every frame derives from it (lsd-serve: the first "
    "session's; each next one adds 1).")

flags.DEFINE_alias("checkpoint", "model_dir")
flags.DEFINE_alias("tau-inf", "tau_inf")
flags.DEFINE_alias("kernel-impl", "kernel_impl")

flags.register_validator("steps", lambda v: v is None or 1 <= v <= MAX_STEPS,
                         f"--steps must be in 1..{MAX_STEPS}")
flags.register_validator("tau_inf", lambda v: v is None or 0.0 <= v < 1.0,
                         "--tau_inf must be in [0, 1)")
flags.register_validator("noise_scale", lambda v: v is None or 0.0 <= v <= 2.0,
                         "--noise_scale must be in [0, 2]")
flags.register_validator("particle_noise_scale", lambda v: v is None or 0.0 <= v <= 2.0,
                         "--particle_noise_scale must be in [0, 2]")
# The syntax of models.parallel.parse_mesh for one stream (no data axis); the device count and
# the model's heads are checked when the model loads.
flags.register_validator("mesh", lambda v: v is None or re.fullmatch(r"(model:)?[1-9][0-9]*", v.strip()) is not None,
                         "--mesh must be model:M or M (M >= 1 devices), e.g. model:4")

NAMES = ("model_dir", "steps", "tau_inf", "noise_scale", "particle_noise_scale", "kernel_impl", "ae_conv", "bake_params",
         "seed", "mesh", "anchor_prompts")


def model_kwargs() -> dict[str, Any]:
  """engine.StreamModel.load's arguments from the parsed flags."""
  return {"steps": STEPS.value, "tau_inf": TAU_INF.value, "noise_scale": NOISE_SCALE.value,
          "particle_noise_scale": PARTICLE_NOISE_SCALE.value,
          "kernel_impl": KERNEL_IMPL.value,
          "ae_conv": AE_CONV.value, "bake_params": BAKE_PARAMS.value, "mesh": MESH.value,
          "anchor_prompts": ANCHOR_PROMPTS.value}
