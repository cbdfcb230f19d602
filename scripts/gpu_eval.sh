#!/usr/bin/env bash
# Evaluation stages on the lent H100 (see README "Evaluation"). Usage inside a device call:
#   [CKPT=dir] [DRIFT_STATE=dir] bash scripts/gpu_eval.sh STAGE...   stages: env drift fidelity
# Needs the carried wheels (.whl); `fidelity` also the clip library (.carry/library). Writes under $OUT.
#   drift     100,000 frames (DRIFT_FRAMES) of CKPT on the endless procedural stream, S=1, switching
#             every 1,250 frames through 4 per-frame and 4 temporal effects; drift curve per 10,000-frame
#             segment (one schedule cycle), overall and per effect, ratio last/first. Stops itself
#             after DRIFT_MIN minutes of streaming (saved, resumable) and is killed at DRIFT_KILL_S
#             seconds in any case (its last checkpoint, every 5,000 frames, survives). If it prints
#             PARTIAL, bring $OUT/drift back, carry it (e.g. as .carry/drift) and run the stage again
#             with DRIFT_STATE=.carry/drift: it continues where it stopped, with the same numbers.
#             DRIFT_TAU: stream at this history noise (--tau_inf; default the model's own);
#             DRIFT_NOISE: at this initial noise scale (--noise_scale; default the model's own);
#             DRIFT_DIR: where the run writes (default $OUT/drift; a folder outside $OUT survives
#             between calls on a warm machine, so the next call can resume it without carrying it).
#   fidelity  experiments/eval_fidelity.py on CKPT: held-out clips, every single effect, S = 1, 2, 4.
# Both stages allocate GPU memory on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false) so that they can
# run beside another JAX process: with the default 75% preallocation the second one dies of
# CUDA_ERROR_OUT_OF_MEMORY (a 100,000-frame drift run beside a fidelity run did, 2026-11-27).
set -uo pipefail
source scripts/gpu_wheels.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CKPT=${CKPT:-$SHIPPED}
LIB=${LIB:-$LIBRARY}
DRIFT_FRAMES=${DRIFT_FRAMES:-100000}; DRIFT_STEPS=${DRIFT_STEPS:-1}
DRIFT_MIN=${DRIFT_MIN:-7}; DRIFT_KILL_S=${DRIFT_KILL_S:-540}; DRIFT_CHUNK=${DRIFT_CHUNK:-1000}; DRIFT_WORKERS=${DRIFT_WORKERS:-12}
DRIFT_EFFECTS=${DRIFT_EFFECTS:-sepia,cartoon,thermal,pencil_sketch,snowfall,rain,echo,fireflies}
# the prompts' recorded embeddings (eval_fidelity.py --save_text_embeddings): a per-prompt noise scale
# reads the prompts with the text encoder, and the image lacks the MiniLM package
TEXT=${TEXT:-.carry/text/anchor_texts.npz}; TEXT_FLAG=""; [ -f "$TEXT" ] && TEXT_FLAG=--text_embeddings=$TEXT
QUIET="^W[0-9]{4}|^I[0-9]{4}.*(cpp|xla_bridge)|TfrtCpuClient"
for stage in "$@"; do
  case "$stage" in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
         python3 -m experiments.device_tools versions cv2 tqdm matplotlib ;;
    drift) D="${DRIFT_DIR:-$OUT/drift}"; mkdir -p "$D"
           if [ -n "${DRIFT_STATE:-}" ]; then cp -r "$DRIFT_STATE"/. "$D"/ || exit 1; fi
           XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s KILL "$DRIFT_KILL_S" python3 experiments/evaluate.py --model="$CKPT" --steps="$DRIFT_STEPS" \
             --stream_frames="$DRIFT_FRAMES" --switch_every=1250 --chunk="$DRIFT_CHUNK" --clips=0 --render_workers="$DRIFT_WORKERS" \
             --checkpoint_every=5000 --max_minutes="$DRIFT_MIN" --effects="$DRIFT_EFFECTS" --out="$D" ${DRIFT_TAU:+--tau_inf=$DRIFT_TAU} ${DRIFT_NOISE:+--noise_scale=$DRIFT_NOISE} \
             $TEXT_FLAG --title="Drift: $DRIFT_FRAMES frames of $CKPT${DRIFT_TAU:+, tau_inf $DRIFT_TAU}${DRIFT_NOISE:+, noise scale $DRIFT_NOISE}" 2>&1 | grep -v -E "$QUIET" | tee -a "$D/log.txt" | tail -40
           python3 -m experiments.device_tools drift_summary "$D/eval.json" || echo "drift: no report yet (killed before the first one); resume from $D/resume" ;;
    fidelity) F="$OUT/fidelity"; mkdir -p "$F"
              XLA_PYTHON_CLIENT_PREALLOCATE=false python3 experiments/eval_fidelity.py --model="$CKPT" --manifest="$LIB" --clips=4 --frames=24 \
                $TEXT_FLAG --out="$F" 2>&1 | grep -v -E "$QUIET" | tail -30 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
