import jax
import jax.numpy as jnp
import pytest

from lsd_jax.models import lsd, sizes
from lsd_jax.models.autoencoder import Autoencoder


@pytest.mark.parametrize("hw", [(64, 64), (48, 80), (40, 120)])
def test_round_trip_shapes(hw):
  """Any resolution divisible by 8, square or not (the denoiser's patch adds its own factor)."""
  h, w = hw
  ae = Autoencoder(sizes.get_size("tiny").autoencoder)
  params = ae.init(jax.random.key(0), jnp.zeros((1, h, w, 3)))["params"]
  frames = jax.random.randint(jax.random.key(1), (2, h, w, 3), 0, 256).astype(jnp.uint8)
  z = lsd.encode(ae, params, frames)
  assert z.shape == (2, h // 8, w // 8, 4)
  out = lsd.decode(ae, params, z)
  assert out.shape == (2, h, w, 3)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_rejects_sizes_not_divisible_by_8():
  cfg = lsd.LSDConfig(size="tiny", height=64, width=64)
  ae, _ = lsd.build(cfg)
  params = lsd.init_params(jax.random.key(0), cfg)["autoencoder"]
  with pytest.raises(ValueError, match="divisible by 8"):
    lsd.encode(ae, params, jnp.zeros((1, 60, 64, 3)))
  with pytest.raises(ValueError, match="not divisible"):
    lsd.LSDConfig(size="tiny", height=60, width=64)
