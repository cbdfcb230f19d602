"""Effects: exact recursions, persistent particles, composition order, batching, determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from lsd_jax.datasets import effects as fx

H, W, T = 24, 36, 4
render_clip = jax.jit(fx.render_clip)
render_step = jax.jit(fx.render_step)
init_state = jax.jit(fx.init_state, static_argnums=1)
apply_frame_effect = jax.jit(fx.apply_frame_effect)
conv_sep = jax.jit(fx._conv_sep)  # jitted, as the effects run it (op by op, each op compiles alone)


def _clip(seed=0, t=T, h=H, w=W):
  rng = np.random.default_rng(seed)
  # Smooth structure plus texture, so edges, blurs and quantisation all do something.
  y, x = np.mgrid[:h, :w] / max(h, w)
  base = np.stack([np.sin(6 * x + 3 * y), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 0.3 + 0.5
  return np.clip(base[None] + 0.15 * rng.uniform(size=(t, h, w, 3)), 0, 1).astype(np.float32)


def _all_specs():
  specs = [fx.make_spec(name) for name in fx.FRAME_EFFECTS]
  specs += [fx.make_spec("identity", name, density=0.8) for name in fx.TEMPORAL_EFFECTS[1:]]
  return specs


def test_name_tables():
  assert fx.FRAME_EFFECTS[0] == "identity" and fx.TEMPORAL_EFFECTS[0] == "none"
  assert len(fx.FRAME_EFFECTS) >= 11 and len(fx.TEMPORAL_EFFECTS) >= 5
  assert len(set(fx.FRAME_EFFECTS + fx.TEMPORAL_EFFECTS)) == len(fx.FRAME_EFFECTS + fx.TEMPORAL_EFFECTS)


@pytest.mark.parametrize("spec", _all_specs(), ids=fx.spec_name)
def test_every_effect_shape_dtype_range_deterministic(spec):
  clip = _clip()
  out = render_clip(spec, clip, jax.random.key(3))
  again = render_clip(spec, clip, jax.random.key(3))
  assert out.shape == clip.shape and out.dtype == jnp.float32
  assert bool(jnp.isfinite(out).all()) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  changed = float(jnp.abs(out - clip).max())
  if fx.spec_name(spec) == "identity":
    np.testing.assert_array_equal(np.asarray(out), clip)
  elif fx.spec_name(spec) != "echo":  # echo's first frame is its input
    assert changed > 0.05, fx.spec_name(spec)


def test_odd_and_non_square_sizes():
  for h, w in ((7, 5), (1, 9)):
    clip = _clip(t=2, h=h, w=w)
    for spec in (fx.make_spec("cartoon", "rain"), fx.make_spec("pixel_art", "bubbles")):
      out = render_clip(spec, clip, jax.random.key(0))
      assert out.shape == clip.shape and bool(jnp.isfinite(out).all())


def test_strength_zero_is_input_and_strength_blends():
  frame = _clip()[0]
  zero = fx.make_spec("thermal", strength=0.0)
  np.testing.assert_allclose(np.asarray(apply_frame_effect(zero, frame)), frame, atol=1e-6)
  full = np.asarray(apply_frame_effect(fx.make_spec("thermal", strength=1.0), frame))
  half = np.asarray(apply_frame_effect(fx.make_spec("thermal", strength=0.5), frame))
  np.testing.assert_allclose(half, 0.5 * frame + 0.5 * full, atol=1e-5)


def test_blur_matches_scipy_edge_mode():
  rng = np.random.default_rng(0)
  for h, w, r in ((9, 13, 3), (2, 11, 5), (30, 4, 2)):
    x = rng.uniform(size=(h, w, 3)).astype(np.float32)
    taps_y, taps_x = rng.uniform(size=2 * r + 1), rng.uniform(size=2 * r + 1)
    ref = ndimage.correlate1d(ndimage.correlate1d(x.astype(np.float64), taps_y, axis=0,
                                                  mode="nearest"), taps_x, axis=1, mode="nearest")
    got = conv_sep(jnp.asarray(x), jnp.asarray(taps_y, jnp.float32), jnp.asarray(taps_x, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


@pytest.mark.parametrize("frame_effect", ["identity", "sepia"])
def test_echo_is_the_exact_recursion(frame_effect):
  clip = _clip(seed=1)  # T frames: the shape the other render_clip tests compile (3 recursion steps)
  spec = fx.make_spec(frame_effect, "echo", density=0.7)
  out = np.asarray(render_clip(spec, clip, jax.random.key(0)))
  a = float(fx.echo_alpha(spec.params))
  assert 0.3 < a < 0.4
  prev = None
  for i in range(len(clip)):
    i_frame = np.asarray(apply_frame_effect(spec, clip[i]))
    prev = i_frame if prev is None else a * i_frame + (1 - a) * prev
    np.testing.assert_allclose(out[i], prev, atol=1e-6)


@pytest.mark.parametrize("name", ["snowfall", "rain", "fireflies", "bubbles"])
def test_particles_persist_and_respawn_at_entry_edge(name):
  spec = fx.make_spec("identity", name, density=1.0, speed=0.9)
  frame = _clip()[0]
  state = init_state(spec, frame.shape, jax.random.key(7))
  respawned = 0
  for _ in range(40):
    new_state, _ = render_step(spec, state, frame)
    expected = np.asarray(state.pos_Nx2 + fx.speed_factor(spec.params) * state.vel_Nx2)
    got = np.asarray(new_state.pos_Nx2)
    same = np.all(np.abs(got - expected) < 1e-4, axis=-1)
    m = fx._margin(fx._PARTICLES[name], min(H, W) / fx.REF_SIZE)
    left = np.any((expected < -m) | (expected > np.array([H, W]) + m), axis=-1)
    np.testing.assert_array_equal(same, ~left)  # exactly the particles that left were moved elsewhere
    if fx._PARTICLES[name].spawn == "top":
      assert np.all(got[left, 0] <= 0)
    elif fx._PARTICLES[name].spawn == "bottom":
      assert np.all(got[left, 0] >= H)
    respawned += int(left.sum())
    state = new_state
  assert respawned > 0
  mean_dy = float(np.mean(np.asarray(state.vel_Nx2)[:, 0]))
  assert {"snowfall": mean_dy > 0, "rain": mean_dy > 0, "bubbles": mean_dy < 0,
          "fireflies": True}[name]


def test_particles_drawn_where_they_are():
  # One visible snowflake: the output differs from the backdrop around it and nowhere far away.
  spec = fx.make_spec("identity", "snowfall", density=1.0 / fx.MAX_PARTICLES, size=0.5)
  frame = np.full((H, W, 3), 0.2, np.float32)
  state = init_state(spec, frame.shape, jax.random.key(0))
  state = state._replace(pos_Nx2=state.pos_Nx2.at[0].set(jnp.array([10.3, 20.6])))
  _, out = render_step(spec, state, frame)
  diff = np.abs(np.asarray(out) - 0.2 * fx._PARTICLES["snowfall"].backdrop).max(-1)
  peak = np.unravel_index(np.argmax(diff), diff.shape)
  assert peak == (10, 21) and diff[peak] > 0.3
  assert diff[:, :12].max() < 1e-6 and diff[18:].max() < 1e-6


def test_density_controls_how_many_particles_show():
  frame = np.zeros((H, W, 3), np.float32)
  covers = []
  for density in (0.0, 0.3, 1.0):
    spec = fx.make_spec("identity", "snowfall", density=density)
    _, out = render_step(spec, init_state(spec, frame.shape, jax.random.key(0)), frame)
    covers.append(float(np.asarray(out).sum()))
  assert covers[0] == 0.0 and 0 < covers[1] < covers[2]


def test_composition_is_frame_effect_then_temporal():
  clip = _clip(seed=2)
  composed = fx.make_spec("cartoon", "snowfall", density=0.8)
  temporal_only = composed._replace(frame_id=np.int32(0))
  state_a = state_b = init_state(composed, clip.shape[1:], jax.random.key(5))
  for frame in clip:
    state_a, out_a = render_step(composed, state_a, frame)
    state_b, out_b = render_step(temporal_only, state_b, apply_frame_effect(composed, frame))
    np.testing.assert_allclose(np.asarray(out_a), np.asarray(out_b), atol=1e-6)
  assert float(jnp.abs(out_a - apply_frame_effect(composed, clip[-1])).max()) > 0.05


def test_render_clip_equals_streaming_render_step():
  clip = _clip(seed=3)
  spec = fx.make_spec("neon_outlines", "fireflies", density=0.9)
  key = jax.random.key(11)
  whole = np.asarray(render_clip(spec, clip, key))
  state = init_state(spec, clip.shape[1:], key)
  for i, frame in enumerate(clip):
    state, out = render_step(spec, state, frame)
    np.testing.assert_allclose(whole[i], np.asarray(out), atol=1e-6)


def test_vmap_over_different_specs_equals_per_item():
  specs = [fx.make_spec("pencil_sketch", "rain", density=0.9), fx.make_spec("identity", "echo"),
           fx.make_spec("color_tint", color=(0.2, 0.4, 1.0), strength=0.6),
           fx.make_spec("pixel_art", "bubbles", scale=0.9, speed=0.2),
           fx.make_spec("thermal", "fireflies"), fx.make_spec("mirror", "snowfall", size=0.9)]
  batch = fx.stack_specs(specs)
  clips = np.stack([_clip(seed=s) for s in range(len(specs))])
  keys = jax.random.split(jax.random.key(0), len(specs))
  batched = np.asarray(jax.jit(jax.vmap(fx.render_clip))(batch, clips, keys))
  for i, spec in enumerate(specs):
    np.testing.assert_allclose(batched[i], np.asarray(render_clip(spec, clips[i], keys[i])),
                               atol=2e-5, err_msg=fx.spec_name(spec))


def test_render_batch_equals_vmap_of_render_clip():
  """The train step's grouped render gives what vmap(render_clip) gives, for every frame and
  temporal effect, repeated ids in any order, and a batch that is no multiple of the chunk."""
  rng = np.random.default_rng(0)
  specs = [fx.make_spec(f, t, strength=float(rng.uniform(0.3, 1.0)), density=float(rng.uniform()),
                        speed=float(rng.uniform()), size=float(rng.uniform()))
           for f, t in zip(list(fx.FRAME_EFFECTS) * 2, list(fx.TEMPORAL_EFFECTS) * 5)]
  order = rng.permutation(len(specs))[:23]  # 23: three chunks of 8 with one short
  batch = fx.stack_specs([specs[i] for i in order])
  clips = np.stack([_clip(seed=int(s)) for s in range(len(order))])
  keys = jax.random.split(jax.random.key(5), len(order))
  want = np.asarray(jax.jit(jax.vmap(fx.render_clip))(batch, clips, keys))
  for chunk in (8, 64):  # three chunks, the last one short; one chunk larger than the batch
    got = np.asarray(jax.jit(functools.partial(fx.render_batch, chunk=chunk))(batch, clips, keys))
    assert got.shape == want.shape
    for i in range(len(order)):
      np.testing.assert_allclose(got[i], want[i], atol=2e-5, err_msg=f"{fx.spec_name(specs[order[i]])}, chunk {chunk}")


def test_render_batch_of_present_effects_only():
  """`present` (a run's prompt table's ids) compiles only those effects and renders them exactly
  as the full render does; a sample whose effect is not among them comes out NaN, not zeros."""
  # ids with gaps (frame 2, 6, 8, 10; temporal 0, 1, 3), so that a sample given another present
  # effect's branch shows
  specs = [fx.make_spec("sepia"), fx.make_spec("thermal", "rain"), fx.make_spec("negative", "echo"),
           fx.make_spec("sepia", "rain"), fx.make_spec("mirror")]
  batch = fx.stack_specs(specs)
  clips = np.stack([_clip(seed=s) for s in range(len(specs))])
  keys = jax.random.split(jax.random.key(3), len(specs))
  present = fx.present_effects(batch.frame_id, batch.temporal_id)
  assert present == ((2, 6, 8, 10), (0, 1, 3))
  assert [fx.FRAME_EFFECTS[i] for i in present[0]] == ["thermal", "sepia", "negative", "mirror"]
  full = jax.jit(functools.partial(fx.render_batch, chunk=2))
  some = jax.jit(functools.partial(fx.render_batch, chunk=2, present=present))
  np.testing.assert_array_equal(np.asarray(some(batch, clips, keys)), np.asarray(full(batch, clips, keys)))
  # fewer branches compiled: the lowered program of the restricted render is smaller
  assert len(some.lower(batch, clips, keys).as_text()) < 0.5 * len(full.lower(batch, clips, keys).as_text())
  missing = jax.jit(functools.partial(fx.render_batch, chunk=2, present=(present[0][:-1], present[1])))(
      batch, clips, keys)  # jitted, as the train step renders (op by op, each op compiles alone)
  gone = [i for i, s in enumerate(specs) if int(s.frame_id) == present[0][-1]]
  assert gone and np.isnan(np.asarray(missing)[gone]).all()
  assert np.isfinite(np.delete(np.asarray(missing), gone, axis=0)).all()
  with pytest.raises(ValueError, match="present effect ids"):
    fx.render_batch(batch, clips, keys, present=((), present[1]))


def test_different_keys_give_different_particles_same_key_same():
  spec = fx.make_spec("identity", "snowfall", density=1.0)
  a = init_state(spec, (H, W, 3), jax.random.key(0))
  b = init_state(spec, (H, W, 3), jax.random.key(1))
  c = init_state(spec, (H, W, 3), jax.random.key(0))
  assert not np.allclose(np.asarray(a.pos_Nx2), np.asarray(b.pos_Nx2))
  np.testing.assert_array_equal(np.asarray(a.pos_Nx2), np.asarray(c.pos_Nx2))
