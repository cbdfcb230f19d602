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
