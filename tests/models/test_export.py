import os

import jax
import numpy as np
import pytest

from lsd_jax.models import export, lsd


def test_round_trip(tmp_path):
  cfg = lsd.LSDConfig(size="tiny", height=32, width=48)
  params = lsd.init_params(jax.random.key(0), cfg)
  export.save(str(tmp_path), cfg, params, dtype="float32", metadata={"steps": 3})
  cfg2, params2, meta = export.load(str(tmp_path))
  assert cfg2 == cfg and meta == {"steps": 3}
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_bf16_and_errors(tmp_path):
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32)
  params = lsd.init_params(jax.random.key(0), cfg)
  export.save(str(tmp_path), cfg, params)
  assert os.path.getsize(tmp_path / export.PARAMS_FILE) < 4 * sum(x.size for x in jax.tree.leaves(params)) * 0.6
  with pytest.raises(export.CheckpointError, match="missing"):
    export.load(str(tmp_path / "nope"))
  (tmp_path / export.PARAMS_FILE).write_bytes(b"garbage" * 10)
  with pytest.raises(export.CheckpointError, match="corrupt"):
    export.load(str(tmp_path))
  other = lsd.LSDConfig(size="tiny", height=32, width=32, history_len=2)
  export.save(str(tmp_path), cfg, lsd.init_params(jax.random.key(0), other))
  with pytest.raises(export.CheckpointError, match="do not match"):
    export.load(str(tmp_path))


def test_eval_loading_overrides_tau_inf_and_noise_scale(tmp_path):
  """lsd_jax.eval.loading.load_model (evaluate.py --tau_inf / --noise_scale): the overrides reach
  the config; none given, the folder's own; out of range, refused."""
  from lsd_jax.eval import loading
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32)
  export.save(str(tmp_path), cfg, lsd.init_params(jax.random.key(0), cfg), dtype="float32")
  assert loading.load_model(str(tmp_path))[0] == cfg
  got = loading.load_model(str(tmp_path), tau_inf=0.3, noise_scale=0.5)[0]
  assert (got.tau_inf, got.noise_scale) == (0.3, 0.5)
  with pytest.raises(ValueError, match="noise_scale"):
    loading.load_model(str(tmp_path), noise_scale=3.0)


def test_per_prompt_noise_scale_round_trips_and_stays_out_of_old_configs(tmp_path):
  """particle_noise_scale: saved and loaded with the folder; left out of config.json when unset,
  so the configs written before it stay byte for byte what they were."""
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, noise_scale=0.25, particle_noise_scale=1.0)
  export.save(str(tmp_path), cfg, lsd.init_params(jax.random.key(0), cfg), dtype="float32")
  back = export.load(str(tmp_path))[0]
  assert back == cfg and back.per_prompt_noise and (back.noise_scale_for(True), back.noise_scale_for(False)) == (1.0, 0.25)
  plain = lsd.LSDConfig(size="tiny", height=32, width=32)
  assert "particle_noise_scale" not in plain.to_dict() and not plain.per_prompt_noise
  assert not lsd.LSDConfig(noise_scale=0.5, particle_noise_scale=0.5).per_prompt_noise  # the same scale: one program
