#!/usr/bin/env bash
# The fine-tune ablation on the lent H100 (experiments/sweep.py's docstring): every arm of ABLATION
# warm-starts from the shipped model and trains FT_STEPS steps with its own settings, all arms at
# once on the one GPU (one process per arm, a shared workdir); then every arm is evaluated with one
# protocol on held-out clips and a long procedural stream. Usage inside a device call, after
# gpu_wheels.sh has staged the wheels, the model and the library (see its header):
#   bash scripts/gpu_ablation.sh STAGE...   stages: train eval
#   train   ABLATION (default history_augmentation) arms ARMS (default: that ablation's), FT_STEPS
#           (default 2000) each, FT_BATCH (default 32), FT_WORKERS data workers each (default 4),
#           into WORKDIR (default workdirs/sweep_ft); FT_CONFIG the lsd.py config (default small; the
#           shipped model's);
#           FT_KILL_S caps the stage (default 540: a run it stops resumes from its last checkpoint
#           when the stage runs again on the same warm machine). Logs under $OUT/train_<arm>.log.
#   eval    the sweep's evaluation of what `train` made: S = 2, FT_CLIPS held-out clips (default 4),
#           FT_FRAMES procedural frames (default 20000, switch every 500 frames through 8 effects,
#           drift per 4,000-frame cycle); report and plots to $OUT/ablations/ (tar it to bring back).
#           Every arm streams at its export's tau_inf, the training config's 0.1 (not the shipped
#           model's 0.5): the level where the shipped model collapses under a held prompt, and the
#           fairest to the arm trained without history noise; the hold ratio is the number to read.
set -uo pipefail
source scripts/gpu_wheels.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ABLATION=${ABLATION:-history_augmentation}; WORKDIR=${WORKDIR:-workdirs/sweep_ft}
FT_STEPS=${FT_STEPS:-2000}; FT_BATCH=${FT_BATCH:-32}; FT_KILL_S=${FT_KILL_S:-540}
FT_CLIPS=${FT_CLIPS:-4}; FT_FRAMES=${FT_FRAMES:-20000}
EFFECTS=${EFFECTS:-sepia,cartoon,thermal,pencil_sketch,snowfall,rain,echo,fireflies}
LIB=${LIB:-$LIBRARY}; MODEL=${MODEL:-$SHIPPED}
# Several JAX processes share the GPU: each allocates on demand (75% preallocation would OOM the second).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
QUIET="orbax|Renaming|async|save_finalize|Finalize|ocdbt|tensorstore|ArrayMetadata|checkpoint_manager|Deleted step|deletion"
common() {
  echo --config=experiments/configs/lsd.py:${FT_CONFIG:-small} --config.init_from=$MODEL --autoencoder_dir=$MODEL \
    --config.total_steps=$FT_STEPS --config.max_minutes=0 --config.data.global_batch_size=$FT_BATCH \
    --config.data.sources.library.manifest=$LIB --config.data.sources.library.decoded_cache=/tmp/lsd_decoded \
    --ablations=$ABLATION --workdir=$WORKDIR --manifest=$LIB
}
arms() {  # the ablation's arm labels, one per line
  python3 -m experiments.device_tools arms "$ABLATION"
}
for stage in "$@"; do
  case "$stage" in
    train) mkdir -p "$WORKDIR"
           n=0; while IFS= read -r arm; do
             [ -n "${ARMS:-}" ] && ! grep -qxF "$arm" <<< "$(tr ',' '\n' <<< "$ARMS")" && continue
             log="$OUT/train_$(tr ' ' '_' <<< "$arm").log"
             ( timeout "$FT_KILL_S" python3 experiments/sweep.py $(common) --arms="$arm" --train_only \
                 --config.data.worker_count=${FT_WORKERS:-4} 2>&1 | grep -v -E "$QUIET" > "$log"
               echo "arm $arm: exit ${PIPESTATUS[0]} (124: stopped by FT_KILL_S, resumable)"; tail -2 "$log" ) &
             n=$((n + 1)); sleep 20  # the first arm decodes the library cache (atomic files); the rest reuse it
           done <<< "$(arms)"
           wait; echo "trained $n arms of $ABLATION into $WORKDIR" ;;
    eval) python3 experiments/sweep.py $(common) --steps=2 --clips=$FT_CLIPS --clip_frames=32 \
            --stream_frames=$FT_FRAMES --switch_every=500 --chunk=500 --effects=$EFFECTS \
            --report="$OUT/ablations/ablations.md" 2>&1 | grep -v -E "$QUIET|^I[0-9]{4}" | tail -20 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
