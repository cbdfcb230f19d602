"""The epilogue-fused GEMM (`gemm_mgpu.linear`), the MLP on it (`mlp_gemm_mgpu`) and the FP8 path
(`fp8`) against the f32 references of `pallas_kernels/reference.py`.

On the CPU: Mosaic GPU interpret mode at the denoiser's GEMM shapes (small 256x384->1536, base
256x768->3072, large 1560 rows at a narrower N; the full large shape is `-m slow`), ragged M,
both warpgroup splits, several tiles per CTA; every output element must be written (the
interpreter's fresh memory reads as NaN, which fails `rel_err`); inputs are fresh random draws
per case. Lowering: every denoiser shape lowers through Mosaic GPU's layout inference and
dialect lowering for an abstract H200 (what can be checked without a GPU). `-m gpu`: compiled,
on a Hopper GPU. Errors are relative Frobenius norms; bf16 operands get 1e-2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, use_abstract_mesh

from pallas_kernels import api, bench, fp8, gemm_mgpu, mlp_gemm_mgpu, reference, xla
from tests.pallas_kernels.test_kernels import BF16_TOL, _grad_err, _jit, _mlp_args, _normal

G = gemm_mgpu.TuningConfig
M, N = gemm_mgpu.Dim.M, gemm_mgpu.Dim.N

MODEL_SHAPES = gemm_mgpu.MODEL_SHAPES  # the denoiser's GEMMs per block: qkv, out-projection, fc1, fc2


def _linear_args(lead, k, n, bias=True):
  return (_normal((*lead, k)), _normal((k, n), 1 / np.sqrt(k)), _normal((n,), 0.5) if bias else None)


def _check_linear(lead, k, n, activation, bias, config):
  x, w, b = _linear_args(lead, k, n, bias)
  out = _jit(gemm_mgpu.linear, activation=activation, config=config)(x, w, b)
  assert out.shape == (*lead, n) and out.dtype == x.dtype
  assert bench.rel_err(out, _jit(reference.linear_reference, activation=activation)(x, w, b)) < BF16_TOL


@pytest.mark.parametrize("lead,k,n,activation,bias,config", [
    pytest.param((256,), 384, 1536, "gelu_tanh", True, None, id="small-fc1-auto"),
    pytest.param((256,), 768, 3072, "gelu_tanh", True, G(num_ctas=4), id="base-fc1-128x128"),
    pytest.param((256,), 1536, 384, None, True, G(tile_m=64, num_ctas=3, wgmma_in_flight=1), id="small-fc2-N384"),
    # the large model's 1560 tokens: 12 full row tiles and one of 24 rows; N narrowed from 6144
    pytest.param((1560,), 1536, 384, "gelu_tanh", True, G(num_ctas=5, wgmma_in_flight=1), id="large-M1560-N384"),
    # two frames of 50 tokens (M = 100) split along M: the last tile's second warpgroup reads and
    # writes only rows past the end; no bias
    pytest.param((2, 50), 128, 192, None, False, G(tile_m=64, tile_n=64, wg_dimension=M, num_ctas=2),
                 id="ragged-wgM-nobias"),
    pytest.param((1, 200), 192, 512, "gelu_tanh", True,
                 G(tile_m=64, tile_n=128, max_concurrent_steps=2, epi_tile_n=64, grid_minor_dim=M,
                   grid_tile_width=2, num_ctas=3), id="snakeM-epi-pieces"),
])
def test_linear_interpret(interpret, lead, k, n, activation, bias, config):
  _check_linear(lead, k, n, activation, bias, config)


def test_tma_rows_rounds_m_to_a_multiple_of_8():
  # TMA tiles x's and out's rows by 8: on an H200, M = 100 failed to lower before this rounding
  assert [gemm_mgpu.tma_rows(m) for m in (1, 8, 9, 100, 256, 1560, 1561)] == [1, 8, 16, 104, 256, 1560, 1568]


def test_linear_interpret_pads_rows_not_a_multiple_of_8(interpret):
  """M = 3 x 33 = 99 rows runs as 104 and comes back as 99, equal to the reference."""
  _check_linear((3, 33), 128, 128, "gelu_tanh", True, G(tile_m=64, tile_n=64, wg_dimension=M, num_ctas=2))


@pytest.mark.slow
def test_linear_interpret_large_fc1_full_shape(interpret):
  """The large model's fc1 at its full shape, 1560x1536->6144 (about 3.5 minutes on 2 cores)."""
  _check_linear((1, 1560), 1536, 6144, "gelu_tanh", True, G(num_ctas=8))


def test_linear_catches_a_dropped_bias_and_activation(interpret):
  """The check can fail: the kernel without the bias, or without the GELU, is far off."""
  x, w, b = _linear_args((128,), 128, 256)
  ref = _jit(reference.linear_reference, activation="gelu_tanh")(x, w, b)
  cfg = G(tile_m=64, tile_n=64, num_ctas=2)
  assert bench.rel_err(_jit(gemm_mgpu.linear, activation="gelu_tanh", config=cfg)(x, w, b), ref) < BF16_TOL
  assert bench.rel_err(_jit(gemm_mgpu.linear, activation="gelu_tanh", config=cfg)(x, w, None), ref) > 0.1
  assert bench.rel_err(_jit(gemm_mgpu.linear, config=cfg)(x, w, b), ref) > 0.1


def test_linear_grad_interpret(interpret):
  x, w, b = _linear_args((64,), 128, 128)
  fn = functools.partial(gemm_mgpu.linear, activation="gelu_tanh", config=G(tile_m=64, tile_n=64, num_ctas=2))
  ref = functools.partial(reference.linear_reference, activation="gelu_tanh")
  assert _grad_err(fn, ref, (x, w, b)) < BF16_TOL


@pytest.mark.parametrize("bad", [dict(tile_m=96), dict(tile_n=320), dict(tile_n=256), dict(tile_k=128),
                                 dict(max_concurrent_steps=1),
                                 dict(wgmma_in_flight=2), dict(max_concurrent_steps=2, wgmma_in_flight=2),
                                 dict(epi_tile_n=96), dict(tile_m=64, epi_tile_m=128), dict(num_ctas=0)])
def test_config_validates(bad):
  with pytest.raises(ValueError):
    G(**bad)


def test_fit_and_auto_config():
  fit = gemm_mgpu.fit_config(384, 1536, G())  # CTA tile 128x256 does not divide N = 384
  assert fit.tile_n == 64 and fit.cta_tile == (128, 128) and 384 % fit.cta_tile[1] == 0
  assert gemm_mgpu.fit_config(192, 128, G(tile_n=64)).wg_dimension == M  # 128 columns do not divide 192
  assert gemm_mgpu.fit_config(384, 64, G(wgmma_in_flight=1)).wgmma_in_flight == 0  # one K step
  for bad in [(100, 384), (384, 100)]:
    with pytest.raises(ValueError):
      gemm_mgpu.fit_config(*bad, G())
  with pytest.raises(ValueError):  # 8 stages of (128 + 512) x 64 bf16 do not fit shared memory
    gemm_mgpu.fit_config(512, 512, G(tile_m=64, tile_n=256, wg_dimension=M, max_concurrent_steps=8))
  # on 132 SMs: the small shapes take 64x128 CTA tiles (more tiles), the large ones 128x256
  assert gemm_mgpu.auto_config(256, 1536, 384, num_ctas=132).cta_tile == (64, 128)
  assert gemm_mgpu.auto_config(1560, 6144, 1536, num_ctas=132).cta_tile == (128, 256)
  for shapes in MODEL_SHAPES.values():
    for m, k, n, _ in shapes:
      cfg = gemm_mgpu.auto_config(m, n, k, num_ctas=132)
      assert n % cfg.cta_tile[1] == 0 and cfg.smem_bytes() <= 227 * 1024


# ------------------------------------------------------------------- lowering (CPU, no GPU)

def _lower_for_h200(fn, *avals):
  """Lowers `fn` for CUDA with an abstract H200 (132 SMs): Pallas traces the kernel, Mosaic GPU
  runs layout inference and lowers its dialect (what fails there fails here); the C++ passes
  and ptxas, which run when XLA compiles on a GPU, do not run."""
  device = AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
  mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=device)
  with use_abstract_mesh(mesh):
    return jax.jit(fn).trace(*avals).lower(lowering_platforms=("cuda",)).as_text()


def test_kernels_lower_at_the_model_shapes(monkeypatch):
  import jax.experimental.mosaic.gpu.core as mgpu_core

  inferred = []
  infer = mgpu_core.layout_inference.infer_layout
  monkeypatch.setattr(mgpu_core.layout_inference, "infer_layout", lambda *a, **k: (inferred.append(1), infer(*a, **k))[1])
  bf16 = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)  # noqa: E731
  count = 0
  for shapes in MODEL_SHAPES.values():
    for m, k, n, act in shapes:
      hlo = _lower_for_h200(functools.partial(gemm_mgpu.linear, activation=act), bf16(1, m, k), bf16(k, n), bf16(n))
      assert hlo.count("custom_call @mosaic_gpu") == 1
      count += 1
  assert len(inferred) == count  # layout inference ran for every kernel
  for d in (384, 768, 1536):
    hlo = _lower_for_h200(mlp_gemm_mgpu.mlp, bf16(1, 1560, d), bf16(d, 4 * d), bf16(4 * d), bf16(4 * d, d), bf16(d))
    assert hlo.count("custom_call @mosaic_gpu") == 2
  # a tuning that the benchmark sweeps: one wgmma in flight, split along M
  hlo = _lower_for_h200(functools.partial(gemm_mgpu.linear, config=G(wg_dimension=M, wgmma_in_flight=1)),
                        bf16(1560, 1536), bf16(1536, 1536), bf16(1536))
  assert hlo.count("custom_call @mosaic_gpu") == 1


# ------------------------------------------------------------------------- the MLP on it

@pytest.mark.parametrize("b,l,d,f,config", [
    pytest.param(1, 256, 384, 1536, mlp_gemm_mgpu.TuningConfig(fc2=G(tile_m=64, num_ctas=3)), id="small"),
    pytest.param(2, 100, 192, 256, mlp_gemm_mgpu.TuningConfig(G(tile_m=64, tile_n=64, num_ctas=3),
                                                              G(tile_m=64, tile_n=64, wg_dimension=M, num_ctas=2)),
                 id="ragged-two-frames"),
])
def test_mlp_gemm_interpret(interpret, b, l, d, f, config):
  args = _mlp_args(b, l, d, f)
  out = _jit(mlp_gemm_mgpu.mlp, config=config)(*args)
  assert out.shape == (b, l, d) and out.dtype == args[0].dtype
  assert bench.rel_err(out, _jit(reference.mlp_reference)(*args)) < BF16_TOL
  assert bench.rel_err(out, _jit(xla.mlp_xla)(*args)) < BF16_TOL


def test_mlp_gemm_rounds_the_hidden_like_xla(interpret):
  """fc1's output is rounded to bf16 once, as `xla.mlp_xla` does: the kernel is nearer to XLA
  than either is to the f32 reference."""
  args = _mlp_args(1, 128, 128, 256)
  out = _jit(mlp_gemm_mgpu.mlp, config=mlp_gemm_mgpu.TuningConfig(G(tile_m=64, num_ctas=2), G(tile_m=64, num_ctas=2)))(*args)
  ref, via_xla = _jit(reference.mlp_reference)(*args), _jit(xla.mlp_xla)(*args)
  assert bench.rel_err(out, via_xla) < 0.5 * bench.rel_err(via_xla, ref)


def test_mlp_gemm_grad_interpret(interpret):
  args = _mlp_args(1, 64, 128, 128)
  fn = functools.partial(mlp_gemm_mgpu.mlp, config=mlp_gemm_mgpu.TuningConfig(G(tile_m=64, num_ctas=2),
                                                                               G(tile_m=64, tile_n=64, num_ctas=2)))
  assert _grad_err(fn, reference.mlp_reference, args) < BF16_TOL


def test_mlp_gemm_supports_and_falls_back():
  assert mlp_gemm_mgpu.supports(1536, 6144)  # the large model, which the on-chip kernel cannot take
  assert not mlp_gemm_mgpu.supports(96, 384)
  args = _mlp_args(1, 16, 96, 384)  # D = 96: XLA, which runs on the CPU without interpret mode
  assert bench.rel_err(mlp_gemm_mgpu.mlp(*args), reference.mlp_reference(*args)) < BF16_TOL
  with pytest.raises(ValueError):
    mlp_gemm_mgpu.TuningConfig(fc1=dict(tile_m=64))


# ------------------------------------------------------------------------------ dispatch

def test_api_linear_and_mlp_reach_the_gemm(interpret):
  """`linear` and `mlp` enabled for mosaic: the api hands out the registered GEMM kernels (the
  module functions under the registry's jit); by default they stay on XLA."""
  assert api._pick("linear", "mosaic", xla.linear_xla) is xla.linear_xla  # pylint: disable=protected-access
  assert api._pick("mlp", "mosaic", xla.mlp_xla) is xla.mlp_xla  # pylint: disable=protected-access
  with api.kernel_ops({"linear", "mlp"}, backends=("mosaic",)):
    fn = api._pick("linear", "mosaic", xla.linear_xla)  # pylint: disable=protected-access
    assert fn is api.registry("mosaic")["linear"] and fn.__wrapped__ is gemm_mgpu.linear
    assert api.registry("mosaic")["mlp"].__wrapped__ is mlp_gemm_mgpu.mlp
    x, w, b = _linear_args((1, 64), 128, 128)
    out = api.linear(x, w, b, activation="gelu_tanh", implementation="mosaic")
    assert bench.rel_err(out, reference.linear_reference(x, w, b, activation="gelu_tanh")) < BF16_TOL
  x, w, b = _linear_args((1, 8), 64, 64)
  assert bench.rel_err(api.linear(x, w, b), reference.linear_reference(x, w, b)) < BF16_TOL  # XLA
  with api.kernel_ops({"linear"}, backends=("triton",)):  # no Triton GEMM: XLA
    assert api._pick("linear", "triton", xla.linear_xla) is xla.linear_xla  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------- FP8

def test_fp8_linear_error_against_bf16():
  """Per-tensor e4m3 at the large model's contraction depth: the error is what 3 mantissa bits
  give (~20x bf16's), bounded; a scale applied twice, or left out, is far off."""
  x, w, b = _linear_args((512,), 1536, 1024)
  ref = reference.linear_reference(x, w, b, activation="gelu_tanh")
  bf16_err = bench.rel_err(xla.linear_xla(x, w, b, activation="gelu_tanh"), ref)
  w_q, w_scale = fp8.quantize_weight(w)
  assert w_q.dtype == jnp.float8_e4m3fn and w_scale.dtype == jnp.bfloat16
  assert 400 < float(jnp.max(jnp.abs(w_q.astype(jnp.float32)))) <= fp8.F8_MAX  # the range is used
  err = bench.rel_err(fp8.linear_fp8(x, w_q, w_scale, b, activation="gelu_tanh"), ref)
  assert bf16_err < 3e-3 and 1e-2 < err < 6e-2 and err > 5 * bf16_err
  assert bench.rel_err(fp8.linear_fp8(x, w_q, w_scale * w_scale, b, activation="gelu_tanh"), ref) > 0.5
  assert bench.rel_err(fp8.linear_fp8(x, w_q, jnp.bfloat16(1), b, activation="gelu_tanh"), ref) > 0.5


def test_fp8_mlp_error_and_calibrated_scale():
  args = _mlp_args(1, 256, 384, 1536)
  x, w1, b1, w2, b2 = args
  ref = reference.mlp_reference(*args)
  (w1_q, s1), (w2_q, s2) = fp8.quantize_weight(w1), fp8.quantize_weight(w2)
  err = bench.rel_err(fp8.mlp_fp8(x, w1_q, s1, b1, w2_q, s2, b2), ref)
  assert 1e-2 < err < 8e-2
  # a fixed activation scale (calibrated once) gives the same numbers as the per-call amax
  sx = fp8.scale_of(x)
  a = fp8.linear_fp8(x, w1_q, s1, b1, x_scale=sx)
  assert bench.rel_err(a, fp8.linear_fp8(x, w1_q, s1, b1)) == 0.0
  assert float(fp8.scale_of(jnp.zeros((4, 4)))) == 1.0


# ------------------------------------------------------------------ GPU: the model's shapes

@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n,act", [pytest.param(*s, id=f"{size}-{s[0]}x{s[1]}x{s[2]}")
                                       for size, shapes in MODEL_SHAPES.items() for s in shapes])
def test_linear_gpu(hopper, m, k, n, act):
  fn = jax.jit(functools.partial(gemm_mgpu.linear, activation=act))
  for _ in range(2):  # fresh inputs twice: stale output memory would not match the second
    x, w, b = _linear_args((m,), k, n)
    assert bench.rel_err(fn(x, w, b), reference.linear_reference(x, w, b, activation=act)) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("config", [G(wgmma_in_flight=1), G(tile_m=64, tile_n=64, wg_dimension=M),
                                    G(tile_m=64, tile_n=256, max_concurrent_steps=3, grid_minor_dim=M, grid_tile_width=4)],
                         ids=["in-flight", "64x64-wgM", "64x256-snakeM"])
def test_linear_gpu_configs(hopper, config):
  for lead in ((1560,), (2, 1560), (1, 100)):  # ragged M, two frames
    x, w, b = _linear_args(lead, 1536, 1536)
    out = gemm_mgpu.linear(x, w, b, activation="gelu_tanh", config=config)
    assert bench.rel_err(out, reference.linear_reference(x, w, b, activation="gelu_tanh")) < BF16_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("l,d", [(256, 384), (256, 768), (1560, 1536)])
def test_mlp_gemm_gpu(hopper, l, d):
  fn = jax.jit(mlp_gemm_mgpu.mlp)
  for _ in range(2):
    args = _mlp_args(1, l, d, 4 * d)
    assert bench.rel_err(fn(*args), reference.mlp_reference(*args)) < BF16_TOL


# ------------------------------------------------- the device script (gemm_bench) on the CPU

def test_gemm_bench_rows_and_table(tmp_path, monkeypatch):
  """What the next GPU call runs, minus CUPTI: rows are checked against the reference (a wrong
  function is a row with a large error, an exception a row with its error), written as they
  come, and tabled with ratios to XLA."""
  from pallas_kernels import gemm_bench

  monkeypatch.setattr(gemm_bench, "_times", lambda fn, args, iters: {
      "p50_ms": 0.02 if "xla" in str(fn) else 0.01, "p99_ms": 0.03, "back_to_back_ms": 0.04,
      "kernels": [("k", 1, 0.01)]})
  rows = gemm_bench.Rows(str(tmp_path), budget_s=60)
  args = lambda key: gemm_bench._inputs(key, 64, 64, 128)  # noqa: E731
  ref = functools.partial(reference.linear_reference, activation="gelu_tanh")
  gemm_bench._measure(rows, "gemm", "s", "xla", jax.jit(functools.partial(xla.linear_xla, activation="gelu_tanh")),
                      args, ref, 2)
  gemm_bench._measure(rows, "gemm", "s", "kernel", jax.jit(lambda x, w, b: xla.linear_xla(x, w, b)), args, ref, 2,
                      config="no-gelu")
  gemm_bench._measure(rows, "gemm", "s", "kernel", lambda x, w, b: x @ w[:3], args, ref, 2, config="broken")
  xla_row, wrong, broken = rows.rows
  assert xla_row["rel_err"] < BF16_TOL and wrong["rel_err"] > 0.1 and "error" in broken
  assert len((tmp_path / "gemm_bench.jsonl").read_text().splitlines()) == 3
  md = gemm_bench.table(rows.rows)
  assert "| s | kernel | no-gelu | 0.0100 |" in md and "| 2.00 |" in md and "fastest kernel" in md
  gemm_bench.Rows(str(tmp_path), budget_s=0)  # a spent budget starts no row
  spent = gemm_bench.Rows(str(tmp_path), budget_s=0)
  gemm_bench._measure(spent, "gemm", "s", "xla", None, args, ref, 2)
  assert spent.rows == []


def test_gemm_bench_sweep_configs_fit_every_shape():
  from pallas_kernels import gemm_bench

  for shapes in MODEL_SHAPES.values():
    for m, k, n, _ in shapes:
      auto = gemm_mgpu.auto_config(m, n, k, num_ctas=132)
      sweep = gemm_bench.sweep_configs(auto, n, k)
      assert len(sweep) == len(set(sweep)) >= 3 and auto not in sweep
      for cfg in sweep:
        assert gemm_mgpu.supports(n, k, cfg)
