"""Shortcut distillation from a many-step teacher, and structured pruning (DESIGN.md section 2).

The student learns the teacher's trajectory: at d = 0 the teacher's velocity, at d > 0 the
teacher's average velocity over [t - d, t] sampled with `distill.teacher_steps` fixed steps
(lsd_jax/diffusion/distill.py). Its architecture is `init_from`'s (warm start) or the
teacher's; it uses the teacher's autoencoder.

  # the small model distilled from itself sampled with 16 steps (better S = 1, 2 at equal cost)
  python -m experiments.main --config=experiments/configs/distill.py:small_from_small_s16 \
      --workdir=workdirs/distill_s16 --config.data.sources.library.manifest=data/library/manifest.json

  # prune the small model (Taylor importance, widths in 128-wide tiles), then fine-tune by distillation
  python -m experiments.prune --config=experiments/configs/distill.py:pruned \
      --model=checkpoints/lsd_small --out=workdirs/pruned_small
  python -m experiments.main --config=experiments/configs/distill.py:pruned \
      --workdir=workdirs/distill_pruned --config.init_from=workdirs/pruned_small

  # CPU smoke (tiny model at 32x32; a tiny exported teacher is needed, see tests/distill)
  python -m experiments.main --config=experiments/configs/distill.py:smoke \
      --config.distill.teacher=/tmp/teacher --workdir=/tmp/distill_smoke

What it should give: `pruned` keeps 4 of 6 heads and half the MLP in every block of `small`
(denoiser 17.8M -> 13.1M parameters, 6.08 -> 3.46 GFLOPs per denoiser step at 256x256; the
autoencoder's ~25 GFLOPs per frame are untouched, so a whole frame drops less); right after pruning
its fidelity drops, and a few thousand distillation steps should bring it back to within about
1 dB PSNR of the teacher at the same S (scripts/gpu_distill.sh measures it; the result goes to
reports/distill_prune.md). `small_from_small_s16` should lift S = 1 and 2 towards the teacher's
own 16-step quality. `loss` falls as the student matches the teacher; `teacher_flow_err` is the
teacher's own flow-matching error (a constant, not trained).

Cost: the bootstrap quarter of each batch runs `teacher_steps` teacher forward passes, the rest
one, so a step costs about 2.3x an `lsd` step at teacher_steps = 16.
"""

import ml_collections

from experiments.configs import defaults, lsd

TEACHER = "checkpoints/lsd_small"


def get_config(arg: str = "pruned"):
  c = defaults.base("distill")
  c.name = f"distill:{arg}"
  c.data.num_frames = lsd.WARMUP_FRAMES + c.model.history_len + 1
  c.distill = ml_collections.ConfigDict({"teacher": TEACHER, "teacher_steps": 16, "data_weight": 0.0})
  # Used by experiments/prune.py: widths kept, in tiles of `tile` (the H100 matmul tile).
  c.prune = ml_collections.ConfigDict({"keep_heads": 2 / 3, "keep_mlp": 0.5, "tile": 128, "allocation": "uniform",
                                       "calib_batches": 8})
  if arg in ("small_from_small_s16", "pruned"):
    c.data.global_batch_size = 32
    c.data.worker_count = 12
    c.total_steps = 4_000
    c.optim.lr = 1e-4  # a fine-tune of a trained model
    c.optim.warmup_steps = 100
    c.init_from = TEACHER if arg == "small_from_small_s16" else "workdirs/pruned_small"
  elif arg == "smoke":
    defaults.smoke(c)
    c.distill.teacher = ""  # give a tiny exported model
    c.distill.teacher_steps = 4
    c.prune.tile = 32  # tiny: width 64, 2 heads of 32, MLP 256
    c.prune.calib_batches = 2
  else:
    raise ValueError(f"unknown distill config {arg!r}")
  return c
