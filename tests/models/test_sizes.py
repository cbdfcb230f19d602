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


def test_patch_override_changes_tokens_not_blocks(tmp_path):
  """LSDConfig.patch (a capacity ablation): 4x the tokens at patch 1, the same transformer blocks;
  only the patch embedding and the final layer change shape. It is saved with the model and
  loads back; at its default the saved config has no such key (old folders load unchanged)."""
  from lsd_jax.models import export
  base = lsd.LSDConfig(size="tiny", height=64, width=64)
  p1 = lsd.LSDConfig(size="tiny", height=64, width=64, patch=1)
  assert "patch" not in base.to_dict() and p1.to_dict()["patch"] == 1
  assert sizes.tokens_per_frame(p1.model_size, 64, 64) == 4 * sizes.tokens_per_frame(base.model_size, 64, 64)
  t0 = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), base))["denoiser"]
  t1 = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), p1))["denoiser"]
  shapes = lambda t: {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  s0, s1 = shapes(t0), shapes(t1)
  assert s0.keys() == s1.keys()
  changed = sorted(k for k in s0 if s0[k] != s1[k])
  assert changed and all("patch_embed" in k or "final" in k for k in changed), changed
  assert layers.count(t1) == sizes.count_params(p1.model_size)["denoiser"]
  c = p1.model_size.autoencoder.latent_channels
  assert sizes.denoiser_flops(p1.model_size, 64, 64) > 3.5 * sizes.denoiser_flops(base.model_size, 64, 64)
  params = lsd.init_params(jax.random.key(0), p1)
  export.save(str(tmp_path), p1, params, dtype="float32")
  cfg2, params2, _ = export.load(str(tmp_path))
  assert cfg2 == p1
  args, kw = lsd.dummy_inputs(p1)
  _, den = lsd.build(p1)
  out = den.apply({"params": params2["denoiser"]}, *args, **kw)
  assert out.shape == args[0].shape and out.shape[-1] == c
  assert lsd.LSDConfig.from_dict(base.to_dict()) == base
  with pytest.raises(ValueError, match="patch"):
    lsd.LSDConfig(size="tiny", patch=-1)
  with pytest.raises(ValueError, match="divisible"):
    lsd.LSDConfig(size="tiny", height=64, width=64, patch=3)
