"""The evaluation protocol (DESIGN.md section 8) for an exported model folder: held-out real clips
and an endless procedural stream with a prompt schedule, lossless, per effect: PSNR, SSIM,
flicker, particle density/velocity, prompt-switch response, drift curve and ratio, latency.

Writes eval.json, eval.md, drift.png, per_effect.png, latency.png and per_frame.npz to --out. The
protocol's flags are `experiments/eval_flags.py` (shared with sweep.py); the library does the work
(`lsd_jax.eval`: loading, protocol, runner, report).

CPU check (a few frames; the shipped model takes ~0.25 s a frame on a CPU):
  python -m experiments.evaluate --model=checkpoints/lsd_small --clips=1 --clip_frames=8 \
      --stream_frames=64 --switch_every=16 --chunk=16 --effects=sepia,snowfall --out=reports/eval_cpu

The drift run (GPU, H100; scripts/gpu_eval.sh drift): 100,000 frames at S=1, switching every
1,250 frames through 8 effects (4 per-frame, 4 temporal), drift segments of 10,000 frames (one full
cycle each, so every segment sees the same mix of effects), frames rendered by 12 processes:
  python -m experiments.evaluate --model=checkpoints/lsd_small --steps=1 --stream_frames=100000 \
      --switch_every=1250 --chunk=1000 --clips=0 --render_workers=12 --max_minutes=8 \
      --effects=sepia,cartoon,thermal,pencil_sketch,snowfall,rain,echo,fireflies --out=reports/drift_h100
Device memory is constant in --stream_frames (the ring, the effect state and the previous frames
are carried from chunk to chunk; each chunk is one jitted lax.scan with no host sync inside); the
host keeps ~10 scalars per frame. The run is resumable: every --checkpoint_every frames (and
when --max_minutes runs out) the stream's state goes to --out/resume/, and the same command with
the same --out continues from there with the same numbers as an uninterrupted run; a stopped
run's report covers the frames so far and says it is partial.
"""

import os
import shutil
from typing import Any

from absl import app, flags, logging
import jax

from experiments import eval_flags

_MODEL = flags.DEFINE_string("model", "checkpoints/lsd_small", "exported model folder")
_OUT = flags.DEFINE_string("out", "reports/eval_cpu", "output folder")
_SEGMENT = flags.DEFINE_integer("segment", 0, "drift segment in frames (0: one schedule cycle)")
_SEED = flags.DEFINE_integer("seed", 0, "noise and scene seed")
_TITLE = flags.DEFINE_string("title", "Evaluation", "report title")
_RENDER_WORKERS = flags.DEFINE_integer("render_workers", 0, "processes rendering the procedural stream (0: one thread)")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 10_000, "frames between saves of the stream's progress")
_MAX_MINUTES = flags.DEFINE_float("max_minutes", 0.0, "stop the stream after this long, resumable (0: no limit)")
_TAU_INF = flags.DEFINE_float("tau_inf", None, "history noise level at inference (default: the model's own)")
_NOISE = flags.DEFINE_float("noise_scale", None, "initial noise scale at inference, a sampling temperature in "
                            "[0, 2] (default: the model's own)")
_TEXT = flags.DEFINE_string("text_embeddings", None,
                            "read the prompts' embeddings for a per-prompt noise scale's reading from this .npz "
                            "(eval_fidelity.py --save_text_embeddings) instead of running the text encoder, on a "
                            "machine without the MiniLM package")
flags.register_validator("tau_inf", lambda v: v is None or 0.0 <= v < 1.0, message="--tau_inf must be in [0, 1)")


def evaluate_model_dir(model_dir: str, out_dir: str | None, ec, *, manifest: str = "data/library/manifest.json",
                       title: str = "Evaluation", tau_inf: float | None = None,
                       noise_scale: float | None = None, text_embeddings: str | None = None) -> dict[str, Any]:
  """Loads an exported model folder, runs the protocol, writes the report files (when `out_dir`).

  With `out_dir` the run is resumable: its state lives in `out_dir/resume/` until the stream is
  complete (then it is removed; the report and per_frame.npz hold everything). A run stopped by
  `ec.max_minutes` (or killed) continues when started again with the same `out_dir`; the report
  of a stopped run covers the frames streamed so far and says so (`stream.complete` false).
  `tau_inf` replaces the model's history noise level at inference (`noise_scale`, likewise, its
  initial noise's scale) (recorded in the results; part
  of the resume fingerprint, so a run is never continued at another level). `text_embeddings`: a
  recorded .npz (`text_encoder.LookupEncoder`) for what a per-prompt noise scale reads of the
  prompts, where the MiniLM package is missing."""
  from lsd_jax.eval import loading, protocol, report
  from lsd_jax.models import text_encoder

  cfg, params, meta = loading.load_model(model_dir, tau_inf=tau_inf, noise_scale=noise_scale)
  clips = loading.heldout_clips(manifest, ec.clips, ec.clip_frames, cfg.height, cfg.width)
  state_dir = os.path.join(out_dir, "resume") if out_dir else None
  if state_dir:
    os.makedirs(state_dir, exist_ok=True)
  encoder = text_encoder.LookupEncoder(text_embeddings) if text_embeddings else None
  results, res = protocol.evaluate(cfg, params, clips, ec, state_dir, encoder=encoder)
  results.update(model_dir=model_dir, metadata=meta, device=jax.devices()[0].device_kind, tau_inf=cfg.tau_inf,
                 noise_scale=cfg.noise_scale)
  if out_dir:
    results["files"] = report.write(results, res, out_dir, title)
    if res.complete:
      shutil.rmtree(state_dir, ignore_errors=True)
  return results


def main(argv):
  del argv
  ec = eval_flags.eval_config(segment=_SEGMENT.value, seed=_SEED.value, render_workers=_RENDER_WORKERS.value,
                              checkpoint_every=_CHECKPOINT_EVERY.value, max_minutes=_MAX_MINUTES.value)
  results = evaluate_model_dir(_MODEL.value, _OUT.value, ec, manifest=eval_flags.MANIFEST.value, title=_TITLE.value,
                               tau_inf=_TAU_INF.value, noise_scale=_NOISE.value, text_embeddings=_TEXT.value)
  logging.info("wrote %s", results["files"])
  s = results["stream"]
  if not s["complete"]:
    logging.warning("stream stopped at frame %d of %d; run the same command again to continue", s["frames"],
                    s["planned_frames"])
  with open(results["files"]["markdown"]) as f:
    print(f.read())


if __name__ == "__main__":
  app.run(main)
