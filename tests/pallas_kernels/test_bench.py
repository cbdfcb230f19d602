"""The kernel-profile helpers of pallas_kernels/bench.py on made-up CUPTI launches (the CUPTI
call itself needs a GPU: `kernel_profile` returns None here)."""

import jax.numpy as jnp
import pytest

from pallas_kernels import bench


@pytest.mark.parametrize("name,category", [
    ("attention_mgpu", "attention kernel"),
    ("attention_triton", "attention kernel"),
    ("cudnn_generated_fort_native_sdpa_sm90", "attention kernel"),
    ("megastep_mgpu", "mega kernel"),
    ("megastep_fc2", "mega kernel"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas", "gemm"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", "gemm"),
    ("gemm_fusion_dot_12", "gemm"),
    ("mlp_mgpu", "other pallas kernel"),
    ("ln_modulate_linear_triton", "other pallas kernel"),
    ("input_reduce_fusion_3", "reduction"),
    ("loop_transpose_fusion", "copy / layout"),
    ("loop_multiply_fusion_7", "elementwise fusion"),
    ("loop_convert_fusion_1", "elementwise fusion"),  # a dtype convert, not a convolution
    ("attention_mgpu_mosaic_gpu_kernel", "attention kernel"),  # as CUPTI names ours (H200)
    ("triton_softmax_fusion", "elementwise fusion"),
    ("some_new_kernel", "other"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "communication"),  # NCCL's names hold "reduce"
    ("ncclDevKernel_AllGather_RING_LL", "communication"),
])
def test_kernel_category(name, category):
  assert bench.kernel_category(name) == category


def test_summarize_launches_medians_per_name():
  calls = [
      [("gemm_fusion_dot", 0.10), ("loop_add_fusion", 0.01), ("gemm_fusion_dot", 0.12)],
      [("gemm_fusion_dot", 0.11), ("loop_add_fusion", 0.03), ("gemm_fusion_dot", 0.13)],
      [("gemm_fusion_dot", 0.30), ("loop_add_fusion", 0.02), ("gemm_fusion_dot", 0.30)],
  ]
  prof = bench.summarize_launches(calls)
  assert [k["name"] for k in prof] == ["gemm_fusion_dot", "loop_add_fusion"]  # largest first
  assert prof[0]["launches"] == 2
  assert prof[0]["ms"] == pytest.approx(0.24)  # median of the per-call sums 0.22, 0.24, 0.60
  assert prof[1]["ms"] == pytest.approx(0.02)
  cats = bench.by_category(prof)
  assert list(cats) == ["gemm", "elementwise fusion"]
  assert cats["gemm"] == pytest.approx(0.24)


def test_kernel_profile_is_none_off_the_gpu():
  assert bench.kernel_profile(lambda x: x + 1, jnp.ones(3)) is None
