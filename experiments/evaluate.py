"""The evaluation protocol (DESIGN.md section 8) for an exported model folder: held-out real clips
and an endless procedural stream with a prompt schedule, lossless, per effect: PSNR, SSIM,
flicker, particle density/velocity, prompt-switch response, drift curve and ratio, latency.

Writes eval.json, eval.md, drift.png, per_effect.png, latency.png and per_frame.npz to --out.

CPU check (a few frames; the shipped model takes ~0.25 s a frame on a CPU):
  python experiments/evaluate.py --model=checkpoints/lsd_small --clips=1 --clip_frames=8 \
      --stream_frames=64 --switch_every=16 --chunk=16 --effects=sepia,snowfall --out=reports/eval_cpu

The drift run (GPU, H100; scripts/gpu_eval.sh drift): 100,000 frames at S=1, switching every
1,250 frames through 8 effects (4 per-frame, 4 temporal), drift segments of 10,000 frames (one full
cycle each, so every segment sees the same mix of effects), frames rendered by 12 processes:
  python experiments/evaluate.py --model=checkpoints/lsd_small --steps=1 --stream_frames=100000 \
      --switch_every=1250 --chunk=1000 --clips=0 --render_workers=12 --max_minutes=8 \
      --effects=sepia,cartoon,thermal,pencil_sketch,snowfall,rain,echo,fireflies --out=reports/drift_h100
Device memory is constant in --stream_frames (the ring, the effect state and the previous frames
are carried from chunk to chunk; each chunk is one jitted lax.scan with no host sync inside); the
host keeps ~10 scalars per frame. The run is resumable: every --checkpoint_every frames (and
when --max_minutes runs out) the stream's state goes to --out/resume/, and the same command with
the same --out continues from there with the same numbers as an uninterrupted run; a stopped
run's report covers the frames so far and says it is partial.
"""

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder")
_MANIFEST = flags.DEFINE_string("manifest", "data/library/manifest.json", "clip library manifest (held-out split)")
_OUT = flags.DEFINE_string("out", "reports/eval_cpu", "output folder")
_STEPS = flags.DEFINE_integer("steps", 2, "S, sampler steps per frame")
_EFFECTS = flags.DEFINE_list("effects", [], "effects (val-prompt names like sepia, snowfall, cartoon+rain); empty: all single effects")
_CLIPS = flags.DEFINE_integer("clips", 4, "held-out clips (0: none)")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 32, "frames per held-out clip")
_STREAM_FRAMES = flags.DEFINE_integer("stream_frames", 2000, "procedural stream length (100000 for the drift run)")
_SWITCH_EVERY = flags.DEFINE_integer("switch_every", 250, "frames between prompt switches on the stream")
_SEGMENT = flags.DEFINE_integer("segment", 0, "drift segment in frames (0: one schedule cycle)")
_CHUNK = flags.DEFINE_integer("chunk", 256, "frames per jitted scan (constant memory per chunk)")
_SEED = flags.DEFINE_integer("seed", 0, "noise and scene seed")
_TITLE = flags.DEFINE_string("title", "Evaluation", "report title")
_RENDER_WORKERS = flags.DEFINE_integer("render_workers", 0, "processes rendering the procedural stream (0: one thread)")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 10_000, "frames between saves of the stream's progress")
_MAX_MINUTES = flags.DEFINE_float("max_minutes", 0.0, "stop the stream after this long, resumable (0: no limit)")
_TAU_INF = flags.DEFINE_float("tau_inf", None, "history noise level at inference (default: the model's own)")
flags.register_validator("tau_inf", lambda v: v is None or 0.0 <= v < 1.0, message="--tau_inf must be in [0, 1)")


def main(argv):
  del argv
  from lsd_jax.eval import stream_eval

  ec = stream_eval.EvalConfig(steps=_STEPS.value, effects=tuple(_EFFECTS.value) or None, clips=_CLIPS.value,
                              clip_frames=_CLIP_FRAMES.value, stream_frames=_STREAM_FRAMES.value,
                              switch_every=_SWITCH_EVERY.value, segment=_SEGMENT.value, chunk=_CHUNK.value,
                              seed=_SEED.value, render_workers=_RENDER_WORKERS.value,
                              checkpoint_every=_CHECKPOINT_EVERY.value, max_minutes=_MAX_MINUTES.value)
  results = stream_eval.evaluate_model_dir(_MODEL.value, _OUT.value, ec, manifest=_MANIFEST.value, title=_TITLE.value,
                                           tau_inf=_TAU_INF.value)
  logging.info("wrote %s", results["files"])
  s = results["stream"]
  if not s["complete"]:
    logging.warning("stream stopped at frame %d of %d; run the same command again to continue", s["frames"],
                    s["planned_frames"])
  with open(results["files"]["markdown"]) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)
