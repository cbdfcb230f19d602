"""A tiny model overfits one fixed batch: the loss falls at least tenfold within a minute."""

import time

import jax
import jax.numpy as jnp
import optax
import pytest

from lsd_jax.diffusion import forcing, history, shortcut
from lsd_jax.models import lsd


@pytest.mark.parametrize("mode", ["concat", "attention"])
def test_tiny_model_overfits_one_batch(mode):
  cfg = lsd.LSDConfig(size="tiny", height=32, width=32, history_mode=mode)
  _, den = lsd.build(cfg)
  params = lsd.init_params(jax.random.key(0), cfg)["denoiser"]
  h, w, c = cfg.latent_shape
  k = cfg.history_len
  y = jax.random.normal(jax.random.key(1), (4, k + 1, h, w, c))
  cin = 0.5 * y + 0.1 * jax.random.normal(jax.random.key(2), y.shape)
  prompt = jax.random.normal(jax.random.key(3), (4, 384)) * 0.1
  augment = history.compose([{"name": "blur", "max": 0.5}, {"name": "color", "max": 0.5}])
  fixed = jax.random.key(4)  # one fixed batch: same data, levels and noise every step
  fcfg = forcing.ForcingConfig(mode=mode, history_len=k)
  opt = optax.adam(3e-3)
  state = opt.init(params)

  def loss_fn(p):
    x0, x0_in, cond, last = forcing.make_inputs(fixed, cin, y, prompt, fcfg, augment)
    return shortcut.shortcut_loss(lsd.velocity_fn(den, p), fixed, x0, cond, x0_in=x0_in,
                                  bootstrap_last_only=last, bootstrap_frac=0.25)

  @jax.jit
  def step(p, s):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    upd, s = opt.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss

  params, state, first = step(params, state)
  start, loss = time.time(), first
  while time.time() - start < 60 and loss > first / 10:
    for _ in range(10):
      params, state, loss = step(params, state)
  assert float(loss) < float(first) / 10, f"loss {float(first):.4f} -> {float(loss):.4f} in 60 s"
