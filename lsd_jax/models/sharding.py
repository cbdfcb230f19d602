"""Logical axis names used on parameters and activations, and the default rules.

Parameters and activations carry logical names (`batch`, `frame`, `token`, `embed`, `mlp`,
`heads`, ...); a config maps them onto mesh axes with `flax.linen.logical_axis_rules`, so one
model shards over data parallel, FSDP or tensor parallel meshes without code changes.
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
    (PATCH_IN, None),
    (CONV_IN, None),
    (CONV_OUT, None),
    (KERNEL_H, None),
    (KERNEL_W, None),
    (HEIGHT, None),
    (WIDTH, None),
    (CHANNEL, None),
)


def constrain(x, *names):
  """Activation sharding constraint by logical names (a no-op outside a rules context)."""
  return nn.with_logical_constraint(x, names)


def init(initializer, *names):
  """Parameter initializer annotated with logical axis names."""
  return nn.with_logical_partitioning(initializer, names)
