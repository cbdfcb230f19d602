"""The MLP gelu_tanh(x @ w1 + b1) @ w2 + b2 as two calls of the epilogue-fused GEMM (`gemm_mgpu`).

    h   = bf16(gelu_tanh(x @ w1 + b1))     fc1: bias and GELU in the GEMM's epilogue, bf16 out
    out = bf16(h @ w2 + b2)                fc2: bias in the epilogue

The roundings are those of `xla.mlp_xla` (and of the Flax block): h is stored once, in bf16,
straight from the accumulator registers, so XLA's f32 GEMM output and the convert fusion that
re-reads it (0.52 ms a large step, `reports/latency/profile_h200_2026-11-27/`) are gone. The
hidden goes through HBM (L2 for the small and base shapes); the other MLP kernel
(`mlp_mgpu`, hidden kept on chip) measured 4-8x slower than XLA because each column tile
recomputed fc1 on a small grid (`NOTES.md`): here each GEMM is spread over the whole persistent
grid instead. Each GEMM's tile is `gemm_mgpu.auto_config`'s pick unless `config` sets it.

The backward pass is the VJP of the XLA op (`xla.mlp_xla`).
"""

from __future__ import annotations

import dataclasses
import functools

from absl import logging
import jax
import jax.numpy as jnp

from pallas_kernels import device
from pallas_kernels import gemm_mgpu
from pallas_kernels import xla
from pallas_kernels.reference import mlp_reference


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  """The GEMM configs of fc1 and fc2 (None: picked by shape, `gemm_mgpu.auto_config`)."""
  fc1: gemm_mgpu.TuningConfig | None = None
  fc2: gemm_mgpu.TuningConfig | None = None

  def __post_init__(self):
    for name in ("fc1", "fc2"):
      c = getattr(self, name)
      if c is not None and not isinstance(c, gemm_mgpu.TuningConfig):
        raise ValueError(f"{name} must be a gemm_mgpu.TuningConfig or None, got {c!r}")


DEFAULT_CONFIG = TuningConfig()


def _forward(x, w1, b1, w2, b2, *, config: TuningConfig):
  h = gemm_mgpu.linear(x, w1, b1, activation="gelu_tanh", config=config.fc1)
  return gemm_mgpu.linear(h, w2, b2, config=config.fc2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _mlp(x, w1, b1, w2, b2, config):
  return _forward(x, w1, b1, w2, b2, config=config)


def _fwd(x, w1, b1, w2, b2, config):
  return _mlp(x, w1, b1, w2, b2, config), (x, w1, b1, w2, b2)


def _bwd(config, res, d_out):
  del config
  _, vjp = jax.vjp(xla.mlp_xla, *res)
  return vjp(d_out)


_mlp.defvjp(_fwd, _bwd)


def supports(d: int, f: int, config: TuningConfig = DEFAULT_CONFIG) -> bool:
  return gemm_mgpu.supports(f, d, config.fc1) and gemm_mgpu.supports(d, f, config.fc2)


def mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, *, config: TuningConfig = DEFAULT_CONFIG):
  """`api.mlp` on Mosaic GPU (two epilogue-fused GEMMs); XLA for widths no GEMM tile fits."""
  d, f = w1_DxF.shape
  if not supports(d, f, config):
    device.warn_fallback_once("mlp", f"mosaic GEMM (D={d}, F={f} not multiples of 64)")
    return xla.mlp_xla(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D)
  return _mlp(x_BxLxD, w1_DxF, b1_F, w2_FxD, b2_D, config)


def main(_) -> None:
  from pallas_kernels import bench

  for length, d in [(256, 384), (256, 768), (1560, 1536)]:
    f = 4 * d
    keys = jax.random.split(jax.random.key(d), 5)
    x = jax.random.normal(keys[0], (1, length, d), jnp.bfloat16)
    w1 = jax.random.normal(keys[1], (d, f), jnp.bfloat16) / d ** 0.5
    b1 = jax.random.normal(keys[2], (f,), jnp.bfloat16) * 0.1
    w2 = jax.random.normal(keys[3], (f, d), jnp.bfloat16) / f ** 0.5
    b2 = jax.random.normal(keys[4], (d,), jnp.bfloat16) * 0.1
    args = (x, w1, b1, w2, b2)
    ref = mlp_reference(*args)
    fn = jax.jit(mlp)
    out = fn(*args)
    ref_fn = jax.jit(xla.mlp_xla)
    logging.info(f"L={length} D={d}: kernel {bench.kernel_time_ms(fn, *args)} ms "
                 f"xla: kernels {bench.kernel_time_ms(ref_fn, *args)} ms rel_err {bench.rel_err(out, ref):.2e} "
                 f"(xla {bench.rel_err(ref_fn(*args), ref):.2e})")


if __name__ == "__main__":
  from absl import app

  app.run(main)
