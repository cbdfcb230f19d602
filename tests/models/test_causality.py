"""Frame causality: the output for frame j has exactly zero gradient w.r.t. every later frame."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.diffusion import forcing
from lsd_jax.models import lsd
from tests.conftest import randomize

K = 3


def _clip_fn(cfg):
  """f(z_clip, c_clip) -> per-frame outputs, every frame at once, in the config's mode."""
  _, den = lsd.build(cfg)
  params = randomize(lsd.init_params(jax.random.key(0), cfg)["denoiser"], jax.random.key(1))
  vf = lsd.velocity_fn(den, params)
  prompt = jnp.ones((1, 384)) * 0.1

  def f(z, c):
    b, t = z.shape[:2]
    levels = jnp.linspace(0.2, 0.9, t)[None].repeat(b, 0)
    if cfg.history_mode == "concat":  # frame j's history = frames j-K .. j-1 of the same clip
      hist, missing = forcing.sliding_history(z, K)
      tau = jnp.where(missing, 1.0, 0.3)
      return vf(z, levels, levels * 0.5, {"c": c, "prompt": prompt, "hist": hist, "tau": tau})
    return vf(z, levels, levels * 0.5, {"c": c, "prompt": prompt})

  return f


@pytest.mark.parametrize("mode", ["concat", "attention"])
def test_no_gradient_from_future_frames(mode):
  cfg = lsd.LSDConfig(size="tiny", height=32, width=48, history_mode=mode, history_len=K)
  f = _clip_fn(cfg)
  t = K + 1
  h, w, c = cfg.latent_shape
  z = jax.random.normal(jax.random.key(2), (1, t, h, w, c))
  cin = jax.random.normal(jax.random.key(3), (1, t, h, w, c))
  # one compiled gradient for every output frame j (a traced index)
  grad = jax.jit(jax.grad(lambda z_, c_, j: jnp.sum(f(z_, c_)[:, j] ** 2), argnums=(0, 1)))
  for j in range(t):
    gz, gc = grad(z, cin, j)
    for later in range(j + 1, t):
      assert np.all(np.asarray(gz[:, later]) == 0.0), f"frame {j} sees target/history frame {later}"
      assert np.all(np.asarray(gc[:, later]) == 0.0), f"frame {j} sees input frame {later}"
    # ... and the test can fail: frame j does depend on itself and on its history.
    assert np.abs(np.asarray(gz[:, j])).sum() > 0
    assert np.abs(np.asarray(gc[:, j])).sum() > 0
    for earlier in range(max(0, j - K), j):
      assert np.abs(np.asarray(gz[:, earlier])).sum() > 0, f"frame {j} ignores history frame {earlier}"
    if mode == "attention" and j > 0:
      assert np.abs(np.asarray(gc[:, j - 1])).sum() > 0


def test_attention_window_limits_history():
  """With window K, frame j sees nothing older than j - K (checked on a K=1 model, T=2... K+1)."""
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, history_mode="attention", history_len=1)
  _, den = lsd.build(cfg)
  params = randomize(lsd.init_params(jax.random.key(0), cfg)["denoiser"], jax.random.key(1))
  h, w, c = cfg.latent_shape
  z = jax.random.normal(jax.random.key(2), (1, 2, h, w, c))
  out = lambda z_: den.apply({"params": params}, z_, z_, jnp.full((1, 2), 0.5), jnp.zeros((1, 2)),  # noqa: E731
                             jnp.zeros((1, 384)))
  g = jax.jit(jax.grad(lambda z_: jnp.sum(out(z_)[:, 1] ** 2)))(z)
  assert np.abs(np.asarray(g[:, 0])).sum() > 0
  with pytest.raises(ValueError, match="at most K\\+1"):
    den.apply({"params": params}, jnp.zeros((1, 3, h, w, c)), jnp.zeros((1, 3, h, w, c)),
              jnp.zeros((1, 3)), jnp.zeros((1, 3)), jnp.zeros((1, 384)))
