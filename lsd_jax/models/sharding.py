"""Logical axis names used on parameters and activations, and the default rules.

Parameters and activations carry logical names (`batch`, `frame`, `token`, `embed`, `mlp`,
`heads`, ...); a config maps them onto mesh axes with `flax.linen.logical_axis_rules`, so one
model shards over data parallel, FSDP or tensor parallel meshes without code changes.

Two rule sets ship: `DEFAULT_RULES` (training: data parallel + FSDP over `embed`) and
`TENSOR_RULES` (streaming: Megatron-style tensor parallelism over a `model` mesh axis, streams
data parallel over `data`; see `lsd_jax.models.parallel`). `modulation` names the adaLN
modulation outputs and the concatenated history-level features: the conditioning, which stays
replicated under tensor parallelism (it is a matrix-vector product per frame, and splitting it
would add a collective per block for a few kilobytes).
"""

from __future__ import annotations

import flax.linen as nn

BATCH = "batch"
FRAME = "frame"
TOKEN = "token"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
HEAD_DIM = "head_dim"
QKV = "qkv"
COND = "cond"
MOD = "modulation"
PATCH_IN = "patch_in"
CONV_IN = "conv_in"
CONV_OUT = "conv_out"
KERNEL_H = "kernel_h"
KERNEL_W = "kernel_w"
HEIGHT = "height"
WIDTH = "width"
CHANNEL = "channel"

# Data parallel over `data`, parameters fully sharded (FSDP) over `fsdp` along `embed`.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (EMBED, "fsdp"),
    (FRAME, None),
    (TOKEN, None),
    (MLP, None),
    (HEADS, None),
    (HEAD_DIM, None),
    (QKV, None),
    (COND, None),
    (MOD, None),
    (PATCH_IN, None),
    (CONV_IN, None),
    (CONV_OUT, None),
    (KERNEL_H, None),
    (KERNEL_W, None),
    (HEIGHT, None),
    (WIDTH, None),
    (CHANNEL, None),
)

# Mesh axes of tensor-parallel streaming: `model` splits attention heads and MLP columns (one
# reduction per sub-block), `data` splits a batch of independent streams.
DATA_AXIS = "data"
MODEL_AXIS = "model"

TENSOR_RULES: tuple[tuple[str, str | None], ...] = tuple(
    (name, {BATCH: DATA_AXIS, HEADS: MODEL_AXIS, QKV: MODEL_AXIS, MLP: MODEL_AXIS}.get(name))
    for name, _ in DEFAULT_RULES)


def constrain(x, *names):
  """Activation sharding constraint by logical names (a no-op outside a rules context)."""
  return nn.with_logical_constraint(x, names)


def init(initializer, *names):
  """Parameter initializer annotated with logical axis names."""
  return nn.with_logical_partitioning(initializer, names)
