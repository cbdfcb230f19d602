import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsd_jax.diffusion import history

NAMES = sorted(history.TRANSFORMS)


def _frames(dtype=jnp.float32):
  return jax.random.normal(jax.random.key(7), (3, 4, 6, 10, 5)).astype(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_identity_at_zero_strength(name):
  f = _frames()
  out = history.TRANSFORMS[name](jax.random.key(1), f, 0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(f))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_deterministic_shape_dtype_and_active(name, dtype):
  f = _frames(dtype)
  fn = jax.jit(history.TRANSFORMS[name])
  a = fn(jax.random.key(1), f, 0.8)
  b = fn(jax.random.key(1), f, 0.8)
  assert a.shape == f.shape and a.dtype == f.dtype
  np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
  assert not np.array_equal(np.asarray(a, np.float32), np.asarray(f, np.float32)), "strength 0.8 changed nothing"
  if name not in ("blur", "quantize"):  # those two take no randomness
    c = fn(jax.random.key(2), f, 0.8)
    assert not np.array_equal(np.asarray(a, np.float32), np.asarray(c, np.float32))


def test_per_frame_strength():
  f = _frames()
  s = jnp.array([[0.0, 1.0, 0.0, 1.0]] * 3)
  out = history.blur(jax.random.key(0), f, s)
  np.testing.assert_array_equal(np.asarray(out[:, 0]), np.asarray(f[:, 0]))
  assert not np.array_equal(np.asarray(out[:, 1]), np.asarray(f[:, 1]))


def test_drop_repeat_copies_neighbours():
  f = _frames()
  out = np.asarray(history.drop_repeat(jax.random.key(0), f, 1.0))
  np.testing.assert_array_equal(out[:, 1:], np.asarray(f[:, :-1]))
  np.testing.assert_array_equal(out[:, 0], np.asarray(f[:, 1]))


def test_model_history_hook():
  f = _frames()
  hook = history.model_history(lambda key, x: -x)
  np.testing.assert_array_equal(np.asarray(hook(jax.random.key(0), f, 0.0)), np.asarray(f))
  np.testing.assert_array_equal(np.asarray(hook(jax.random.key(0), f, 1.0)), -np.asarray(f))


def test_compose_from_config():
  spec = [{"name": "blur", "max": 1.0, "p": 1.0}, {"name": "color", "max": 0.5, "p": 0.5},
          {"name": "noise", "max": 0.3}, {"name": "model", "p": 0.2}]
  fn = jax.jit(history.compose(spec, extra={"model": history.model_history(lambda k, x: x * 0.5)}))
  f = _frames()
  a, b = fn(jax.random.key(3), f, 1.0), fn(jax.random.key(3), f, 1.0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert a.shape == f.shape and a.dtype == f.dtype
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(3), f, 0.0)), np.asarray(f))
  assert not np.array_equal(np.asarray(a), np.asarray(f))
  with pytest.raises(ValueError, match="unknown history transform"):
    history.compose([{"name": "sharpen"}])
