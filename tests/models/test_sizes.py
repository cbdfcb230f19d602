import jax
import jax.numpy as jnp
import pytest

from lsd_jax.models import layers, lsd, sizes


@pytest.mark.parametrize("name", list(sizes.SIZES))
@pytest.mark.parametrize("mode", ["concat", "attention"])
@pytest.mark.parametrize("ae", sizes.AE_KINDS)
def test_reported_params_match_parameter_trees(name, mode, ae):
  cfg = lsd.LSDConfig(size=name, height=64, width=64, history_mode=mode, autoencoder=ae)
  tree = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), cfg))
  counted = sizes.count_params(cfg.model_size, mode, cfg.history_len)
  assert layers.count(tree["denoiser"]) == counted["denoiser"]
  assert layers.count(tree["autoencoder"]) == counted["autoencoder"]


def test_size_targets():
  small = sizes.count_params("small")["total"]
  assert small * 2 <= 40e6, f"small is {small * 2 / 1e6:.1f} MB in bf16"
  large = sizes.count_params("large")["total"]
  assert 1.2e9 <= large <= 1.4e9
  base = sizes.count_params("base")["denoiser"]
  assert 1.1e8 <= base <= 1.5e8


def test_denoiser_flops_match_xla_cost_analysis():
  cfg = lsd.LSDConfig(size="tiny", height=64, width=64)
  _, den = lsd.build(cfg)
  params = lsd.init_params(jax.random.key(0), cfg)["denoiser"]
  args, kw = lsd.dummy_inputs(cfg)
  cost = jax.jit(lambda p: den.apply({"params": p}, *args, **kw)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = sizes.denoiser_flops(cfg.model_size, 64, 64)
  # XLA also counts element-wise work (norms, GELU, softmax); matmuls dominate.
  assert 0.9 * analytic <= cost["flops"] <= 1.5 * analytic, (cost["flops"], analytic)


def test_report_fields():
  r = sizes.report("small", 256, 256, steps=2)
  assert r["tokens_per_frame"] == 256
  assert r["flops_frame"] == r["flops_encode"] + 2 * r["flops_denoiser_step"] + r["flops_decode"]
  assert r["bf16_megabytes"] <= 40
  with pytest.raises(ValueError, match="unknown model size"):
    sizes.get_size("huge")
