"""The diagnosis tool: its three conditions on one model, and what tells them apart."""

import jax
import numpy as np

from experiments.configs import lsd as lsd_config
from lsd_jax.eval import diagnose, fidelity
from lsd_jax.models import lsd
from lsd_jax.train import heldout


def test_conditions_differ_where_they_should():
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, residual=True, tau_inf=0.5)
  params = lsd.init_params(jax.random.key(0), cfg)
  params["denoiser"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(3), x.shape),
                                    params["denoiser"])
  clips = heldout.heldout_clips(lsd_config.get_config("smoke").data, 1, 6, 32, 32)
  chosen = heldout.single_effect_prompts(["negative"])
  res = diagnose.diagnose(cfg, params, {"heldout": clips}, chosen)
  row = res["negative"]["heldout"]
  assert set(row) == set(diagnose.CONDITIONS) | {"input", "start"}
  assert all(np.isfinite(v) for v in row.values())
  # The streamed condition is eval_fidelity's own stream: the same PSNR.
  streamed = np.asarray(fidelity.rollout_fn(cfg, cfg.steps)(params, clips[0], chosen["negative"][1], jax.random.key(0)))
  import jax.numpy as jnp
  from lsd_jax.datasets import effects
  target = np.asarray(jax.jit(effects.render_clip)(effects.EffectSpec(*(jnp.asarray(x) for x in chosen["negative"][2])),
                                                     clips[0].astype(np.float32) / 255.0, jax.random.key(1000)))
  warm = cfg.history_len + 1
  assert abs(diagnose._psnr(streamed[warm:], target[warm:]) - row["streamed"]) < 1e-3
  # A random model's output depends on its history, so the three conditions do not coincide.
  assert len({round(row[c], 3) for c in diagnose.CONDITIONS}) == 3
  assert "| negative |" in diagnose.markdown(res)
