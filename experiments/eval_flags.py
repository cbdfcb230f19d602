"""The evaluation protocol's command-line flags, declared once for every entry point that
evaluates (`experiments/evaluate.py`, `experiments/sweep.py`): importing this module defines
them, `eval_config(...)` reads them into a `protocol.EvalConfig`."""

from absl import flags

from lsd_jax.eval import protocol

MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest (held-out split)")
STEPS = flags.DEFINE_integer("steps", 2, "S, sampler steps per frame (in a sweep: for arms that do not set it)")
EFFECTS = flags.DEFINE_list("effects", [], "effects (val-prompt names like sepia, snowfall, cartoon+rain); "
                            "empty: all single effects")
CLIPS = flags.DEFINE_integer("clips", 4, "held-out clips (0: none)")
CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 32, "frames per held-out clip")
STREAM_FRAMES = flags.DEFINE_integer("stream_frames", 2000, "procedural stream length (100000 for the drift run)")
SWITCH_EVERY = flags.DEFINE_integer("switch_every", 250, "frames between prompt switches on the stream")
CHUNK = flags.DEFINE_integer("chunk", 256, "frames per jitted scan (constant memory per chunk)")


def eval_config(**fields) -> protocol.EvalConfig:
  """The protocol from the flags above; `fields` sets the rest (an entry point's own flags)."""
  return protocol.EvalConfig(steps=STEPS.value, effects=tuple(EFFECTS.value) or None, clips=CLIPS.value,
                             clip_frames=CLIP_FRAMES.value, stream_frames=STREAM_FRAMES.value,
                             switch_every=SWITCH_EVERY.value, chunk=CHUNK.value, **fields)
