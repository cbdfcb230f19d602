"""Training diagnostics: held-out PSNR per effect and the flow loss split by effect."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import lsd as lsd_config
from lsd_jax.datasets import effects
from lsd_jax.eval import fidelity
from lsd_jax.models import lsd
from lsd_jax.train import heldout, loop, steps, writers
from tests.train.conftest import small_prompt_table


def test_split_by_effect_sums_each_group():
  fid = jnp.array([2, 2, 0, 0, 6], jnp.int32)
  tid = jnp.array([0, 0, 1, 0, 2], jnp.int32)  # thermal, thermal, echo, identity, sepia+snowfall
  info = {"flow_err_B": jnp.array([1.0, 3.0, 5.0, 7.0, 9.0]), "flow_w_B": jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])}
  out = steps.split_by_effect(info, {"effect_frame_id": fid, "effect_temporal_id": tid})
  assert "flow_err_B" not in out
  g = {n: i for i, n in enumerate(effects.GROUP_NAMES)}
  s, c = np.asarray(out["effect_flow_sum_G"]), np.asarray(out["effect_flow_count_G"])
  assert s[g["thermal"]] == 4.0 and c[g["thermal"]] == 2.0
  assert s[g["echo"]] == 5.0 and c[g["echo"]] == 1.0
  assert c[g["identity"]] == 0.0  # its only sample was a bootstrap sample (no flow-matching frame)
  assert s[g["composition"]] == 9.0 and c.sum() == 4.0


def test_prompt_table_keeps_only_the_named_effects():
  t = loop.prompt_table("train", "thermal")
  assert len(t) > 10 and set(t.frame_ids.tolist()) == {effects.FRAME_EFFECTS.index("thermal")}
  assert set(t.temporal_ids.tolist()) == {0}
  both = loop.prompt_table("train", "thermal,echo")
  assert len(both) > len(t)
  with pytest.raises(ValueError, match="no train prompt has"):
    loop.prompt_table("train", "watercolour")
  strong = loop.prompt_table("train", "thermal", "1.0")
  assert 0 < len(strong) < len(t) and set(np.round(strong.params[:, 0], 2).tolist()) == {1.0}
  with pytest.raises(ValueError, match="strengths"):
    loop.prompt_table("train", "thermal", "0.3")


def test_prompt_table_effect_weights_repeat_rows():
  base = loop.prompt_table("train", "thermal,echo")
  thermal = effects.FRAME_EFFECTS.index("thermal")
  n_thermal = int((base.frame_ids == thermal).sum())
  heavy = loop.prompt_table("train", "thermal,echo", effect_weights="thermal:3")
  assert 0 < n_thermal < len(base) and len(heavy) == len(base) + 2 * n_thermal
  assert int((heavy.frame_ids == thermal).sum()) == 3 * n_thermal
  assert int((heavy.frame_ids != thermal).sum()) == len(base) - n_thermal
  assert set(heavy.texts) == set(base.texts)
  for bad in ("thermal:0", "thermal", "thermal:x"):
    with pytest.raises(ValueError, match="name:N"):
      loop.prompt_table("train", "thermal,echo", effect_weights=bad)
  with pytest.raises(ValueError, match="effect_weights names"):
    loop.prompt_table("train", "thermal", effect_weights="echo:2")


def test_batched_probe_rollout_matches_the_fidelity_eval():
  """The held-out probe streams exactly what eval_fidelity streams (same sampler, keys, S)."""
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, residual=True, tau_inf=0.5)
  params = lsd.init_params(jax.random.key(0), cfg)
  params["denoiser"] = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(3), x.shape),
                                    params["denoiser"])  # adaLN-zero init would hide the prompt
  clips = np.random.default_rng(0).integers(0, 256, (2, 6, 32, 32, 3), dtype=np.uint8)
  prompts = np.random.default_rng(1).normal(size=(2, 384)).astype(np.float32)
  keys = jax.vmap(jax.random.key)(jnp.arange(2))
  batched = np.asarray(heldout.rollout_fn(cfg)(params, jnp.asarray(clips), jnp.asarray(prompts), keys))
  single = fidelity.rollout_fn(cfg, cfg.steps)
  psnr = lambda a, b: 10 * np.log10(1 / max(np.mean(np.square(a - b)), 1e-12))  # noqa: E731
  for i in range(2):
    ref = np.asarray(single(params, clips[i], jnp.asarray(prompts[i]), jax.random.key(i)))
    other_key = np.asarray(single(params, clips[i], jnp.asarray(prompts[i]), jax.random.key(7)))
    # Equal (vmapped, the same function; allowing bf16 rounding should batching reorder it),
    # far closer than the same stream under another key.
    assert psnr(batched[i], ref) > 45.0, psnr(batched[i], ref)
    assert psnr(batched[i], ref) > psnr(other_key, ref) + 10.0
  assert np.abs(batched[0] - batched[1]).max() > 1e-3  # different streams stay different


def test_probe_references():
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32)
  params = lsd.init_params(jax.random.key(0), cfg)
  clips = heldout.heldout_clips(lsd_config.get_config("smoke").data, 1, 6, 32, 32)
  chosen = heldout.single_effect_prompts(["identity", "negative"])
  probe = heldout.make_probe(cfg, params["autoencoder"], clips, chosen)
  assert sorted(probe.names) == ["identity", "negative"] and probe.warm == cfg.history_len + 1
  assert probe.input_psnr["identity"] == pytest.approx(120.0)  # the input is the identity's target
  assert probe.input_psnr["negative"] < 20.0
  evaluator = heldout.HeldoutEval(cfg, params["autoencoder"], probe)
  vals = evaluator(params["denoiser"], params["denoiser"])
  assert set(vals) >= {"heldout_psnr/identity", "heldout_psnr/negative", "heldout_psnr_mean",
                       "heldout_input_psnr_mean", "heldout_ae_psnr_mean", "heldout_psnr_mean_raw"}
  assert all(np.isfinite(v) for v in vals.values())


def _assert_heldout_logged(work):
  """Held-out PSNR per single effect at steps 10 and 20, the flow loss of each trained effect,
  the references and the curves."""
  hist = writers.read_jsonl(os.path.join(work, "train_metrics.jsonl"))
  single = [n for n in effects.GROUP_NAMES if n != "composition"]
  for n in single:
    vals = [v for v in hist[f"heldout_psnr/{n}"] if v is not None]
    assert len(vals) == 2 and all(np.isfinite(vals)), n  # steps 10 and 20
  trained = {"sepia", "negative", "pencil_sketch", "echo", "composition", "mirror"}  # small_prompt_table
  logged = {k.split("/")[1] for k in hist if k.startswith("loss_flow/")}
  assert logged and logged <= trained
  with open(os.path.join(work, "heldout_refs.json")) as f:
    refs = json.load(f)
  assert refs["input_psnr"]["identity"] == pytest.approx(120.0) and set(refs["effects"]) == set(single)
  assert os.path.isfile(os.path.join(work, "train_curves.png"))
  return hist


def test_training_logs_heldout_psnr_and_per_effect_losses(smoke_ae, tmp_path):
  """The smoke recipe on the conv autoencoder (slow: tests/conftest.py; the same logging is
  checked in the fast suite on the v3 recipe's run, test_v3_recipe_trains_end_to_end)."""
  cfg = lsd_config.get_config("smoke")
  cfg.autoencoder_dir = smoke_ae[0]
  cfg.heldout.every, cfg.heldout.clips, cfg.heldout.frames = 10, 1, 6
  work = str(tmp_path / "lsd")
  loop.train(cfg, work, small_prompt_table())
  _assert_heldout_logged(work)


def test_prompt_repeats_train_each_clip_under_several_prompts():
  """R prompts per host clip: the clips are encoded once and tiled; the extra prompts come from
  the bank; with R = 1 nothing changes."""
  from lsd_jax.train import tasks as tasks_lib

  table = small_prompt_table()
  bank = {k: jnp.asarray(v) for k, v in tasks_lib.prompt_bank(table).items()}
  rng = np.random.default_rng(0)
  batch = {"clip": jnp.asarray(rng.integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)),
           "effect_frame_id": jnp.array([6, 8], jnp.int32), "effect_temporal_id": jnp.zeros(2, jnp.int32),
           "effect_params": jnp.asarray(table.params[:2]), "prompt_emb": jnp.asarray(table.embeddings[:2])}
  assert steps.repeat_prompts(batch, jax.random.key(0), bank, 1) is batch
  rep = steps.repeat_prompts(batch, jax.random.key(0), bank, 3)
  assert rep["clip"].shape[0] == 2 and rep["prompt_emb"].shape == (6, 384)
  np.testing.assert_array_equal(rep["prompt_emb"][:2], batch["prompt_emb"])
  emb = np.asarray(table.embeddings)
  for row in np.asarray(rep["prompt_emb"][2:]):
    assert np.abs(emb - row).sum(1).min() < 1e-6  # every extra prompt is a row of the bank

  cfg = lsd.LSDConfig(size="tiny", height=32, width=32)
  ae, _ = lsd.build(cfg)
  ae_params = lsd.init_params(jax.random.key(0), cfg)["autoencoder"]
  step_cfg = steps.LSDStepConfig(prompt_repeats=3)
  inputs = jax.jit(lambda b, k, p: steps.lsd_inputs(b, k, ae=ae, ae_params=p, cfg=step_cfg))  # as the step runs it
  c, y, prompt = inputs(rep, jax.random.key(1), ae_params)
  assert c.shape[0] == y.shape[0] == prompt.shape[0] == 6
  np.testing.assert_array_equal(c[0], c[2])  # copy 1 of clip 0 has clip 0's input latents
  np.testing.assert_array_equal(c[1], c[5])
  assert float(jnp.abs(c[0] - c[1]).max()) > 0


def test_v3_recipe_trains_end_to_end(smoke_light_ae, tmp_path):
  """The v3 config (prompt repeats, shifted levels, short shortcut ladder, held-out probe) on
  the tiny size over a light autoencoder: the export records the light kind and its latent
  scale, and the run logs the held-out PSNR and the per-effect losses."""
  ae_dir, ae_summary, _ = smoke_light_ae
  cfg = lsd_config.get_config("v3_smoke")
  assert cfg.train.prompt_repeats == 4 and cfg.model.tau_inf == 0.5
  cfg.train.prompt_mix = 0.5  # v3c's prompt mixing rides along (steps.mix_prompts)
  cfg.train.prompt_centroid = 0.3  # and v3f's spec-mean prompts (steps.centroid_prompts)
  cfg.train.prompt_noise = 0.5  # and v3g's noised prompts (steps.noise_prompts)
  cfg.train.update({"p_no_history": 0.33, "p_history_swap": 0.33, "temporal_history_scale": 0.2})  # and v3d's
  # trained at the draw it samples from: 0.5, particle prompts 1 (steps.flow_noise_scales)
  cfg.model.update({"noise_scale": 0.5, "particle_noise_scale": 1.0})
  cfg.train.update({"noise_scale": 0.5, "particle_noise_scale": 1.0})
  assert (cfg.heldout.every, cfg.heldout.clips, cfg.heldout.frames, cfg.total_steps) == (10, 1, 6, 20)
  cfg.autoencoder_dir = ae_dir
  work = str(tmp_path / "lsd")
  summary = loop.train(cfg, work, small_prompt_table())
  from lsd_jax.models import export
  model_cfg, params, _ = export.load(summary["export"])
  assert model_cfg.autoencoder == "light" and model_cfg.tau_inf == 0.5
  assert (model_cfg.noise_scale, model_cfg.particle_noise_scale) == (0.5, 1.0)
  assert model_cfg.latent_scale == pytest.approx(ae_summary["latent_scale"])
  assert np.isfinite(np.asarray(params["autoencoder"]["encoder"]["Conv_0"]["kernel"], np.float32)).all()
  hist = _assert_heldout_logged(work)
  assert all(np.isfinite([v for v in hist["loss"] if v is not None]))
  assert [v for v in hist["heldout_psnr_mean"] if v is not None]
  # warm-started from that export, a run probes the warm start first (step 0, its baseline), and
  # the probe at step 0 is the export's last probe (the EMA weights it exported)
  # (no training step: the probe comes before the first, and the step never compiles)
  cfg.init_from, cfg.total_steps = summary["export"], 0
  work2 = str(tmp_path / "warm")
  loop.train(cfg, work2, small_prompt_table())
  warm = writers.read_jsonl(os.path.join(work2, "train_metrics.jsonl"))
  assert warm["step"] == [0] and warm["heldout_psnr_mean"][0] is not None
  assert warm["heldout_psnr_mean"][0] == pytest.approx(hist["heldout_psnr_mean"][-1], abs=0.02)


def test_flow_noise_scale_per_sample_from_its_temporal_effect():
  """train.noise_scale / particle_noise_scale: particle samples (alone or composed) get the
  particle scale, every other sample (per-frame, echo, none) the noise scale; both 1 is None
  (the standard program); the config reads -1 as None and bad values are refused."""
  from lsd_jax.train import tasks as tasks_lib

  names = ["none", "echo", "snowfall", "rain", "fireflies", "bubbles"]
  tid = jnp.asarray([effects.TEMPORAL_EFFECTS.index(n) for n in names], jnp.int32)
  out = steps.flow_noise_scales(tid, steps.LSDStepConfig(noise_scale=0.25, particle_noise_scale=1.0))
  np.testing.assert_array_equal(np.asarray(out), [0.25, 0.25, 1.0, 1.0, 1.0, 1.0])
  same = steps.flow_noise_scales(tid, steps.LSDStepConfig(noise_scale=0.5))
  np.testing.assert_array_equal(np.asarray(same), [0.5] * 6)
  assert steps.flow_noise_scales(tid, steps.LSDStepConfig()) is None
  assert steps.flow_noise_scales(tid, steps.LSDStepConfig(particle_noise_scale=1.0)) is None
  for bad in ({"noise_scale": 0.0}, {"noise_scale": 3.0}, {"particle_noise_scale": -0.5}):
    with pytest.raises(ValueError, match="noise_scale"):
      steps.LSDStepConfig(**bad)
  cfg = lsd_config.get_config("v3d")
  assert tasks_lib.step_config(cfg).particle_noise_scale is None and tasks_lib.step_config(cfg).noise_scale == 1.0
  cfg.train.noise_scale, cfg.train.particle_noise_scale = 0.25, 1.0
  assert (tasks_lib.step_config(cfg).noise_scale, tasks_lib.step_config(cfg).particle_noise_scale) == (0.25, 1.0)
  assert lsd.LSDConfig.from_config(cfg).particle_noise_scale is None  # the model's own field: -1 is None
  cfg.model.noise_scale, cfg.model.particle_noise_scale = 0.25, 1.0
  assert lsd.LSDConfig.from_config(cfg).noise_scale_for(True) == 1.0


def test_recipes_that_train_at_the_models_draw():
  """v3h (v3d) and v3i (v3g) train the flow at the scales the model samples at."""
  from lsd_jax.train import tasks as tasks_lib

  for recipe, prompt_noise in (("v3h", 0.0), ("v3i", 0.5)):
    cfg = lsd_config.get_config(recipe)
    scfg, model = tasks_lib.step_config(cfg), lsd.LSDConfig.from_config(cfg)
    assert (scfg.noise_scale, scfg.particle_noise_scale) == (model.noise_scale, model.particle_noise_scale) == (0.25, 1.0)
    assert scfg.prompt_noise == prompt_noise and scfg.p_history_swap == lsd_config.V3D_TRAIN["p_history_swap"]


def test_probe_streams_each_effect_at_its_noise_scale():
  """A per-prompt noise model's probe: particle streams at particle_noise_scale, the rest at
  noise_scale, exactly as eval_fidelity streams each prompt at its scale."""
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, residual=True, tau_inf=0.5, noise_scale=0.25,
                      particle_noise_scale=1.0)
  params = lsd.init_params(jax.random.key(0), cfg)
  params["denoiser"] = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(3), x.shape),
                                    params["denoiser"])
  clips = heldout.heldout_clips(lsd_config.get_config("smoke").data, 1, 6, 32, 32)
  probe = heldout.make_probe(cfg, params["autoencoder"], clips, heldout.single_effect_prompts(["negative", "snowfall"]))
  scales = dict(zip(probe.names, probe.noise_B.tolist()))
  assert scales == {"negative": 0.25, "snowfall": 1.0}
  out = np.asarray(heldout.rollout_fn(cfg)(params, jnp.asarray(probe.clips_BxTxHxWx3), jnp.asarray(probe.prompts_BxE),
                                           jax.vmap(jax.random.key)(jnp.asarray(probe.clip_index)),
                                           jnp.asarray(probe.noise_B)))
  single = fidelity.rollout_fn(cfg, cfg.steps)
  psnr = lambda a, b: 10 * np.log10(1 / max(np.mean(np.square(a - b)), 1e-12))  # noqa: E731
  for i, n in enumerate(probe.names):
    ref = np.asarray(single(params, probe.clips_BxTxHxWx3[i], jnp.asarray(probe.prompts_BxE[i]), jax.random.key(0),
                            jnp.float32(scales[n])))
    wrong = np.asarray(single(params, probe.clips_BxTxHxWx3[i], jnp.asarray(probe.prompts_BxE[i]), jax.random.key(0),
                              jnp.float32(1.25 - scales[n])))
    assert psnr(out[i], ref) > 45.0 and psnr(out[i], ref) > psnr(wrong, ref) + 5.0, n
  plain = heldout.make_probe(dataclasses.replace(cfg, particle_noise_scale=None), params["autoencoder"], clips,
                             heldout.single_effect_prompts(["negative"]))
  assert plain.noise_B is None


def test_history_swap_shows_another_prompts_history():
  reps, b, k = 3, 2, 3
  y = jnp.arange(reps * b * (k + 1), dtype=jnp.float32).reshape(reps * b, k + 1, 1, 1, 1)
  assert steps.swap_history(jax.random.key(0), y, reps, 0.0, k) is y
  out = np.asarray(steps.swap_history(jax.random.key(0), y, reps, 1.0, k))
  y = np.asarray(y)
  np.testing.assert_array_equal(out[:, k], y[:, k])  # every target frame stays its own
  for i in range(reps * b):
    src = [j for j in range(reps * b) if np.array_equal(out[i, :k], y[j, :k])]
    assert len(src) == 1 and src[0] != i and src[0] % b == i % b  # the same clip, another prompt
  half = np.asarray(steps.swap_history(jax.random.key(1), jnp.asarray(y), reps, 0.5, k))
  kept = [np.array_equal(half[i], y[i]) for i in range(reps * b)]
  assert 0 < sum(kept) < reps * b


def test_no_history_blanks_every_slot():
  from lsd_jax.diffusion import forcing

  c = jax.random.normal(jax.random.key(0), (64, 4, 4, 4, 2))
  cfg = forcing.ForcingConfig(p_stream_start=0.0, p_no_history=0.5)
  _, _, cond, _ = forcing.make_inputs(jax.random.key(1), c, c, jnp.zeros((64, 384)), cfg)
  tau = np.asarray(cond["tau"][:, 0])
  blank = (tau == 1.0).all(axis=1)
  assert 16 < blank.sum() < 48 and ((tau == 1.0).any(axis=1) == blank).all()


def test_temporal_effects_keep_their_history_more_often():
  """v3d: with temporal_history_scale 0, a sample whose temporal effect is echo or particles is
  never blanked or swapped; a per-frame one is at the config's rate (forcing and swap both)."""
  from lsd_jax.diffusion import forcing

  cfg = steps.LSDStepConfig(forcing=forcing.ForcingConfig(p_stream_start=0.0, p_no_history=1.0),
                            p_history_swap=1.0, temporal_history_scale=0.0)
  tid = jnp.asarray([0, effects.TEMPORAL_EFFECTS.index("rain"), 0, effects.TEMPORAL_EFFECTS.index("echo")] * 16)
  p_none, p_swap = steps.history_drop_chances(tid, cfg)
  np.testing.assert_array_equal(np.asarray(p_none), np.asarray(tid == 0, np.float32))
  np.testing.assert_array_equal(np.asarray(p_swap), np.asarray(tid == 0, np.float32))
  c = jax.random.normal(jax.random.key(0), (64, 4, 4, 4, 2))
  _, _, cond, _ = forcing.make_inputs(jax.random.key(1), c, c, jnp.zeros((64, 384)), cfg.forcing, p_no_history_B=p_none)
  blank = (np.asarray(cond["tau"][:, 0]) == 1.0).all(axis=1)
  np.testing.assert_array_equal(blank, np.asarray(tid == 0))
  reps, k = 4, 3
  y = jnp.arange(64 * (k + 1), dtype=jnp.float32).reshape(64, k + 1, 1, 1, 1)
  out = np.asarray(steps.swap_history(jax.random.key(2), y, reps, p_swap, k))
  kept = np.array([np.array_equal(out[i], np.asarray(y)[i]) for i in range(64)])
  np.testing.assert_array_equal(kept, np.asarray(tid > 0))
  half = steps.history_drop_chances(tid, dataclasses.replace(cfg, temporal_history_scale=0.5))[0]
  assert set(np.asarray(half).tolist()) == {1.0, 0.5}
