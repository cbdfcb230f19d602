"""The grain pipeline: batch contract, determinism, resume, process sharding, global arrays."""

import hashlib
import os
import subprocess
import sys
import textwrap

from absl import flags
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, PartitionSpec

from lsd_jax.datasets import pipeline
from tests.conftest import fake_devices_flags

NUM_PROMPTS, NUM_PARAMS = 7, 5


@pytest.fixture
def table():
  rng = np.random.default_rng(0)
  return pipeline.PromptTable(
      texts=tuple(f"prompt {i}" for i in range(NUM_PROMPTS)),
      embeddings=rng.normal(size=(NUM_PROMPTS, 384)),
      frame_ids=np.arange(NUM_PROMPTS) % 4, temporal_ids=np.arange(NUM_PROMPTS) % 3,
      params=rng.normal(size=(NUM_PROMPTS, NUM_PARAMS)))


@pytest.fixture
def config(library_manifest):
  c = pipeline.default_data_config()
  c.height, c.width, c.num_frames, c.global_batch_size = 24, 40, 3, 4
  c.sources.library.manifest = str(library_manifest)
  c.read_threads, c.prefetch_buffer_size = 2, 4
  return c


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def clip_hashes(batches):
  return [hashlib.sha1(c.tobytes()).hexdigest() for b in batches for c in b["clip"]]


def test_batch_contract(config, table):
  batch = next(pipeline.make_iterator(config, table))
  expected = {"clip": ((4, 3, 24, 40, 3), np.uint8), "effect_frame_id": ((4,), np.int32),
              "effect_temporal_id": ((4,), np.int32),
              "effect_params": ((4, NUM_PARAMS), np.float32),
              "prompt_emb": ((4, 384), np.float32), "prompt_id": ((4,), np.int32),
              "source_id": ((4,), np.int32)}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
  rows = batch["prompt_id"]
  np.testing.assert_array_equal(batch["prompt_emb"], table.embeddings[rows])
  np.testing.assert_array_equal(batch["effect_frame_id"], table.frame_ids[rows])
  np.testing.assert_array_equal(batch["effect_temporal_id"], table.temporal_ids[rows])
  np.testing.assert_array_equal(batch["effect_params"], table.params[rows])


def test_deterministic_given_seed(config, table):
  a = take(pipeline.make_iterator(config, table), 3)
  assert_batches_equal(a, take(pipeline.make_iterator(config, table), 3))
  config.seed = 1
  b = take(pipeline.make_iterator(config, table), 3)
  assert not set(clip_hashes(a)) & set(clip_hashes(b))


def test_resume_from_state_gives_the_same_next_batches(config, table):
  iterator = pipeline.make_iterator(config, table)
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 3)
  resumed = pipeline.make_iterator(config, table)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected)


def test_orbax_saves_and_restores_the_iterator(config, table, tmp_path):
  iterator = pipeline.make_iterator(config, table)
  take(iterator, 2)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = take(iterator, 2)
  resumed = pipeline.make_iterator(config, table)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert_batches_equal(take(resumed, 2), expected)


def test_processes_read_disjoint_slices_of_one_global_stream(config, table):
  config.global_batch_size = 4
  whole = take(pipeline.make_iterator(config, table, process_index=0, process_count=1), 2)
  shards = [take(pipeline.make_iterator(config, table, process_index=p, process_count=2), 2)
            for p in range(2)]
  assert shards[0][0]["clip"].shape[0] == 2
  h0, h1 = clip_hashes(shards[0]), clip_hashes(shards[1])
  assert not set(h0) & set(h1)
  # Process p holds global examples p, p + 2, ...: together the two are the global stream.
  interleaved = [h for pair in zip(h0, h1) for h in pair]
  assert interleaved == clip_hashes(whole)
  with pytest.raises(ValueError, match="split"):
    pipeline.make_dataset(config, table, process_index=0, process_count=3)


class _Constant:
  """A cheap source: clip of one value, so the mixture test decodes nothing."""

  def __init__(self, value, config):
    self.shape = (config.num_frames, config.height, config.width, 3)
    self.value = value

  def __len__(self):
    return 2**31 - 1

  def __getitem__(self, index):
    return np.full(self.shape, self.value, np.uint8)


def test_mixture_follows_the_weights(config, table):
  config.sources.library.weight, config.sources.photos.weight = 0.6, 0.1
  config.sources.procedural.weight = 0.3
  fakes = [_Constant(v, config) for v in (10, 20, 30)]
  examples = pipeline.make_examples(config, table, fakes)
  ids = np.array([examples[i]["source_id"] for i in range(1000)])
  np.testing.assert_allclose(np.bincount(ids, minlength=3) / 1000, [0.6, 0.1, 0.3], atol=0.02)
  assert all(examples[i]["clip"][0, 0, 0, 0] == 10 * (ids[i] + 1) for i in range(50))
  counts = np.bincount([examples[i]["prompt_id"] for i in range(1000)], minlength=NUM_PROMPTS)
  assert counts.min() > 0.5 * 1000 / NUM_PROMPTS  # every prompt is drawn


def test_bad_configs_fail_clearly(config, table):
  config.sources.folder.weight = 0.5
  with pytest.raises(ValueError, match="folder.path"):
    pipeline.make_dataset(config, table)
  for name in pipeline.SOURCE_NAMES:
    config.sources[name].weight = 0.0
  with pytest.raises(ValueError, match="weight 0"):
    pipeline.make_dataset(config, table)
  with pytest.raises(ValueError, match="embeddings"):
    pipeline.PromptTable(("a",), np.zeros((1, 10)), np.zeros(1), np.zeros(1), np.zeros((1, 2)))


def test_global_batch_on_one_device_mesh(config, table):
  batch = next(pipeline.make_iterator(config, table))
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  arrays = pipeline.to_global_batch(batch, mesh, PartitionSpec("data"))
  for k, v in batch.items():
    assert arrays[k].shape == v.shape and arrays[k].dtype == v.dtype
    assert arrays[k].sharding.spec == PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(arrays[k]), v)


def test_global_batch_on_four_fake_devices(tmp_path):
  code = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import Mesh, PartitionSpec
      from lsd_jax.datasets import pipeline
      assert jax.device_count() == 4
      mesh = Mesh(np.array(jax.devices()).reshape(4, 1), ("data", "model"))
      batch = {"clip": np.arange(8 * 2 * 4 * 6 * 3, dtype=np.uint8).reshape(8, 2, 4, 6, 3),
               "prompt_id": np.arange(8, dtype=np.int32)}
      arrays = pipeline.to_global_batch(batch, mesh, PartitionSpec("data"))
      clip = arrays["clip"]
      assert clip.shape == (8, 2, 4, 6, 3), clip.shape
      assert clip.sharding.spec == PartitionSpec("data")
      shards = sorted(clip.addressable_shards, key=lambda s: s.index[0].start)
      assert [s.data.shape for s in shards] == [(2, 2, 4, 6, 3)] * 4
      for i, s in enumerate(shards):
        np.testing.assert_array_equal(np.asarray(s.data), batch["clip"][2 * i:2 * i + 2])
      np.testing.assert_array_equal(np.asarray(arrays["prompt_id"]), batch["prompt_id"])
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS=fake_devices_flags(4),
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(config, table):
  # grain's worker processes read absl flags, which an absl entry point would have parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  expected = take(pipeline.make_iterator(config, table), 4)
  config.worker_count = 2
  iterator = pipeline.make_iterator(config, table)
  try:
    assert_batches_equal(take(iterator, 4), expected)
  finally:
    iterator.close()
