"""Structured pruning: a real smaller architecture, tile-aligned widths, importance-ordered."""

import dataclasses

import flax.linen as nn

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.models import export, layers, lsd, prune, sizes
from tests.conftest import randomize

CFG = lsd.LSDConfig(size="small", height=32, width=32)  # 6 blocks, 6 heads of 64, MLP 1536; 4 tokens


@pytest.fixture(scope="module")
def model():
  _, den = lsd.build(CFG)
  a, k = lsd.dummy_inputs(CFG)
  init = lambda key: randomize(nn.meta.unbox(den.init(key, *a, **k)["params"]), jax.random.key(1), 0.05)  # noqa: E731
  den_params = jax.jit(init)(jax.random.key(0))
  params = {"autoencoder": {}, "denoiser": den_params}  # pruning never touches the autoencoder
  k = jax.random.split(jax.random.key(2), 6)
  h, w, c = CFG.latent_shape
  args = (jax.random.normal(k[0], (2, 1, h, w, c)), jax.random.normal(k[1], (2, 1, h, w, c)),
          jax.random.uniform(k[2], (2, 1)), jnp.full((2, 1), 0.25), jax.random.normal(k[3], (2, sizes.PROMPT_DIM)))
  kw = {"hist_BxTxKxHxWxC": jax.random.normal(k[4], (2, 1, 3, h, w, c)), "tau_BxTxK": jax.random.uniform(k[5], (2, 1, 3))}
  return params, args, kw


def _out(cfg, den_params, args, kw):
  _, den = lsd.build(cfg)
  return np.asarray(jax.jit(lambda p, a, k: den.apply({"params": p}, *a, **k))(den_params, args, kw))


def _scores(seed=0):
  rng = np.random.default_rng(seed)
  return [{"heads": rng.random(6), "mlp": rng.random(1536)} for _ in range(6)]


def test_pruning_nothing_preserves_the_function_exactly(model):
  params, args, kw = model
  new_cfg, new_params, _ = prune.prune(CFG, params, _scores(), prune.PruneConfig(tile=128))
  assert new_cfg == CFG
  np.testing.assert_array_equal(_out(new_cfg, new_params["denoiser"], args, kw),
                                _out(CFG, params["denoiser"], args, kw))


def test_keeping_every_unit_with_explicit_widths_is_exact_too(model):
  """The per-block code path (head_dim / mlp_dim given) is the same function at full width."""
  params, args, kw = model
  full = dataclasses.replace(CFG, block_heads=(6,) * 6, block_mlp=(1536,) * 6)
  np.testing.assert_array_equal(_out(full, params["denoiser"], args, kw), _out(CFG, params["denoiser"], args, kw))


@pytest.mark.parametrize("tile", [64, 128])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_pruned_widths_are_tile_multiples_and_a_real_smaller_model(model, tile, allocation):
  params, args, kw = model
  pc = prune.PruneConfig(keep_heads=0.5, keep_mlp=0.3, tile=tile, allocation=allocation)
  new_cfg, new_params, keep = prune.prune(CFG, params, _scores(tile), pc)
  s = new_cfg.model_size.denoiser
  for i in range(s.depth):
    assert (s.heads_of(i) * s.head_dim) % tile == 0 and s.mlp_of(i) % tile == 0
    assert 0 < s.heads_of(i) < 6 and 0 < s.mlp_of(i) < 1536
  prune.check_tiles(new_cfg, tile)
  want = jax.eval_shape(lambda: lsd.init_params(jax.random.key(0), new_cfg))["denoiser"]
  assert jax.tree.map(lambda a: a.shape, want) == jax.tree.map(np.shape, new_params["denoiser"])
  assert layers.count(new_params["denoiser"]) == sizes.count_params(new_cfg.model_size)["denoiser"]
  assert layers.count(new_params["denoiser"]) < 0.75 * layers.count(params["denoiser"])
  if allocation == "uniform":
    assert len(set(s.block_heads)) == 1 and len(set(s.block_mlp)) == 1
    assert sum(s.block_mlp) == 6 * tile * round(0.3 * 1536 / tile)
  assert np.isfinite(_out(new_cfg, new_params["denoiser"], args, kw)).all()


def test_global_allocation_gives_important_blocks_more():
  scores = [{"heads": np.full(6, 10.0 if i < 2 else 1.0), "mlp": np.full(1536, 10.0 if i < 2 else 1.0)}
            for i in range(6)]
  keep = prune.select(scores, CFG, prune.PruneConfig(keep_heads=0.56, keep_mlp=0.5, tile=128, allocation="global"))
  heads, mlp = [len(h) for h in keep.heads], [len(f) for f in keep.mlp]
  assert heads[0] == heads[1] == 6 and heads[2:] == [2] * 4 and sum(heads) == 20
  assert mlp[0] == mlp[1] == 1536 and sum(mlp) == 6 * 768


def test_kept_units_follow_the_scores():
  scores = [{"heads": np.array([5.0, 0.1, 4.0, 0.2, 3.0, 2.0]), "mlp": np.arange(1536.0)[::-1].copy()}] * 6
  keep = prune.select(scores, CFG, prune.PruneConfig(keep_heads=4 / 6, keep_mlp=0.25, tile=128))
  np.testing.assert_array_equal(keep.heads[0], [0, 2, 4, 5])
  np.testing.assert_array_equal(keep.mlp[0], np.arange(384))


def test_taylor_importance_removes_the_least_important_head(model):
  """A head whose output rows are scaled down 100x gets the lowest Taylor score in every block;
  removing it changes the output far less than removing the highest-scored head."""
  params, args, kw = model
  den_params = jax.tree.map(lambda x: x, params["denoiser"])
  weak = 3
  for i in range(6):
    blk = dict(den_params[f"block_{i}"])
    w = np.array(blk["out_kernel"])
    w[weak * 64:(weak + 1) * 64] *= 0.01
    blk["out_kernel"] = w
    den_params[f"block_{i}"] = blk
  _, den = lsd.build(CFG)
  target = jax.random.normal(jax.random.key(9), args[0].shape)

  def loss_fn(p, batch):
    a, k = batch
    return jnp.mean(jnp.square(den.apply({"params": p}, *a, **k) - target))

  scores = prune.taylor_importance(loss_fn, den_params, [(args, kw)], CFG)
  for b in scores:
    assert int(np.argmin(b["heads"])) == weak
  keep = prune.select(scores, CFG, prune.PruneConfig(keep_heads=5 / 6, tile=64))
  assert all(weak not in h for h in keep.heads)
  ref = _out(CFG, den_params, args, kw)
  mlp_all = tuple(np.arange(1536) for _ in range(6))
  strongest = [int(np.argmax(b["heads"])) for b in scores]
  least = prune.Keep(keep.heads, mlp_all)
  most = prune.Keep(tuple(np.delete(np.arange(6), s) for s in strongest), mlp_all)
  err = {}
  for name, k in (("least", least), ("most", most)):
    c, p = prune.apply(CFG, den_params, k)
    err[name] = float(np.mean(np.square(_out(c, p, args, kw) - ref)))
  assert err["least"] < 0.05 * err["most"], err


def test_pruned_model_exports_and_reloads(model, tmp_path):
  params, args, kw = model
  new_cfg, new_params, _ = prune.prune(CFG, params, _scores(), prune.PruneConfig(keep_heads=1 / 3, keep_mlp=0.5, tile=128))
  ae, _ = lsd.build(CFG)
  ae_vars = jax.jit(lambda key: ae.init(key, jnp.zeros((1, 32, 32, 3))))(jax.random.key(3))
  new_params["autoencoder"] = nn.meta.unbox(ae_vars["params"])
  export.save(str(tmp_path), new_cfg, new_params, dtype="float32")
  cfg2, params2, _ = export.load(str(tmp_path))
  assert cfg2 == new_cfg and cfg2.block_heads == (2,) * 6 and cfg2.block_mlp == (768,) * 6
  assert export.load_config(str(tmp_path)) == new_cfg
  np.testing.assert_array_equal(_out(cfg2, params2["denoiser"], args, kw),
                                _out(new_cfg, new_params["denoiser"], args, kw))


def test_old_configs_without_block_widths_still_load():
  cfg = lsd.LSDConfig.from_dict({"size": "small", "height": 256, "width": 256, "history_mode": "concat",
                                 "history_len": 3, "tau_inf": 0.1, "steps": 2, "latent_scale": 1.25,
                                 "kernel_impl": "xla"})
  assert cfg.block_heads == () and cfg.model_size == sizes.get_size("small")


def test_invalid_widths_and_configs_are_rejected():
  with pytest.raises(ValueError, match="block_heads"):
    lsd.LSDConfig(size="small", block_heads=(7,) * 6)
  with pytest.raises(ValueError, match="block_mlp"):
    lsd.LSDConfig(size="small", block_mlp=(768,) * 5)
  with pytest.raises(ValueError, match="keep_heads"):
    prune.PruneConfig(keep_heads=0.0)
  with pytest.raises(ValueError, match="allocation"):
    prune.PruneConfig(allocation="random")
  with pytest.raises(ValueError, match="tile"):
    prune.check_tiles(lsd.LSDConfig(size="small", block_heads=(3,) * 6, block_mlp=(1536,) * 6), 128)


def test_pruned_flops_match_xla_cost_analysis():
  cfg = lsd.LSDConfig(size="tiny", height=64, width=64, block_heads=(1, 2), block_mlp=(64, 128))
  _, den = lsd.build(cfg)
  args, kw = lsd.dummy_inputs(cfg)
  params = nn.meta.unbox(jax.jit(lambda key: den.init(key, *args, **kw)["params"])(jax.random.key(0)))
  cost = jax.jit(lambda p: den.apply({"params": p}, *args, **kw)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic = sizes.denoiser_flops(cfg.model_size, 64, 64)
  assert analytic < 0.6 * sizes.denoiser_flops(sizes.get_size("tiny"), 64, 64)
  assert 0.9 * analytic <= cost["flops"] <= 1.5 * analytic, (cost["flops"], analytic)
