#!/usr/bin/env bash
# Pruning, distillation and their latency/quality measurements on the lent H100. Usage inside a
# device call (each stage fits a 10-minute command; see experiments/configs/distill.py):
#   bash scripts/gpu_distill.sh STAGE...   stages: env prune distill export latency eval drift report
# Needs the carried wheels (.whl) and clip library (.carry/library); writes under $OUT.
#   TEACHER   exported teacher (default the shipped model: checkpoints/lsd_small, or /tmp/teacher
#             where gpu_wheels.sh staged it)
#   PRUNED    where `prune` writes / later stages read the pruned model (default workdirs/pruned_small)
#   STUDENT   the distilled student's export (default workdirs/distill/export)
#   MODELS    labels the latency/eval/drift/report stages cover (default "teacher pruned student")
#   EXPORT    labels the export stage brings back in $OUT (default "student"; `distill` brings the
#             student back itself). Mind the 8 files a call returns: a model is 3-4 of them.
#   DRIFT_S   the S values of the drift stage (default "1 2 4"); LIB the clip library's manifest
#   STUDENT16 the unpruned student's export (distill.py:small_from_small_s16; label student16,
#             default workdirs/distill_s16/export)
#   DISTILL_CONFIG / DISTILL_WORKDIR / DISTILL_LABEL  which distillation the distill stage runs, where,
#             and the label it brings back as (pruned / workdirs/distill / student by default;
#             small_from_small_s16 / workdirs/distill_s16 / student16 for the unpruned student).
#             Two distillations can run at once (each with its own DECODED_DIR).
#   DISTILL_MIN  the distillation's --config.max_minutes (default 5). It counts from the training
#             loop's start, so the first step's compile and, on a fresh machine, decoding the
#             library into DECODED_DIR come out of it: 2026-11-27 a 4-minute run beside an eval
#             trained only ~75 s (1,500 steps) after ~2.6 minutes of decoding and compiling.
#   PAR       how many eval/drift runs the evaldrift stage runs at once on the one GPU (default 4)
set -uo pipefail
source scripts/gpu_wheels.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" workdirs
LIB=${LIB:-$LIBRARY}
DECODED=--config.data.sources.library.decoded_cache=${DECODED_DIR:-/tmp/lsd_decoded}  # decode the library once
TEACHER=${TEACHER:-$SHIPPED}; PRUNED=${PRUNED:-workdirs/pruned_small}
STUDENT=${STUDENT:-workdirs/distill/export}; STUDENT16=${STUDENT16:-workdirs/distill_s16/export}
MODELS=${MODELS:-teacher pruned student}
DISTILL_WORKDIR=${DISTILL_WORKDIR:-workdirs/distill}; DISTILL_LABEL=${DISTILL_LABEL:-student}; PAR=${PAR:-4}
DISTILL_MIN=${DISTILL_MIN:-5}; DISTILL_CONFIG=${DISTILL_CONFIG:-pruned}
DISTILL_EXTRA=${DISTILL_EXTRA:-}  # more --config.x=y overrides (e.g. --config.prune.tile=64)
LAT_IMPLS=${LAT_IMPLS:-xla}; FID_CLIPS=${FID_CLIPS:-2}; DRIFT_FRAMES=${DRIFT_FRAMES:-2000}
EFFECTS=${EFFECTS:-sepia,cartoon,thermal,pencil_sketch,snowfall,rain,echo,fireflies}
QUIET="orbax|Renaming|async|save_finalize|Finalize|ocdbt|tensorstore|ArrayMetadata|checkpoint_manager|Deleted step|deletion"
# Two JAX processes at once (e.g. an eval beside a stream) each preallocate 75% of the GPU and the
# second dies of CUDA_ERROR_OUT_OF_MEMORY (seen on 2026-11-27); eval and drift allocate on demand.
ONDEMAND=XLA_PYTHON_CLIENT_PREALLOCATE=false
# A model folder into $OUT/<label>/ (config, prune.json, params in 15 MB parts: at most 16 MB per
# file comes back; rejoin with cat params.part_* > params.safetensors).
export_model() { local d; d=$(folder "$1"); [ -f "$d/config.json" ] || { echo "no $1 model at $d"; return 0; }
  mkdir -p "$OUT/$1"; cp "$d/config.json" "$OUT/$1/"; [ -f "$d/prune.json" ] && cp "$d/prune.json" "$OUT/$1/"
  split -b ${PART_MB:-15}m "$d/params.safetensors" "$OUT/$1/params.part_"; }
# The two evaluations of a model (folder $2, label $1), as experiments/ scripts and their flags:
# held-out fidelity, and the procedural stream at S = $3 (drift ratio, stream PSNR, flicker).
fid_job() { echo "eval_fidelity.py --model=$2 --manifest=$LIB --clips=$FID_CLIPS --frames=24 --steps=1,2,4 --out=$OUT/$1/fidelity"; }
drift_job() { echo "evaluate.py --model=$2 --steps=$3 --clips=0 --stream_frames=$DRIFT_FRAMES --switch_every=125 --chunk=250 --effects=$EFFECTS --out=$OUT/$1/eval_s$3"; }
folder() { case "$1" in teacher) echo "$TEACHER" ;; pruned) echo "$PRUNED" ;; student) echo "$STUDENT" ;;
  student16) echo "$STUDENT16" ;; *) echo "$1" ;; esac; }
for stage in "$@"; do
  case "$stage" in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
         python3 -m experiments.device_tools versions ;;
    prune) timeout 300 python3 experiments/prune.py --config=experiments/configs/distill.py:pruned --model=$TEACHER \
             --out=$PRUNED --config.data.sources.library.manifest=$LIB --config.data.worker_count=12 $DISTILL_EXTRA \
             2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -15
           cp $PRUNED/prune.json "$OUT/prune.json" ;;
    distill) timeout $(awk "BEGIN {print int(60 * $DISTILL_MIN + 240)}") python3 experiments/main.py \
             --config=experiments/configs/distill.py:$DISTILL_CONFIG --workdir=$DISTILL_WORKDIR \
             --config.distill.teacher=$TEACHER --config.init_from=$( [ "$DISTILL_CONFIG" = pruned ] && echo $PRUNED || echo $TEACHER ) \
             --config.data.sources.library.manifest=$LIB --config.max_minutes=$DISTILL_MIN --config.data.worker_count=${DISTILL_WORKERS:-14} $DECODED \
             $DISTILL_EXTRA 2>&1 | grep -v -E "$QUIET" | tee -a $DISTILL_WORKDIR.log | grep -E "step [0-9]*0 |done|Error|error" | tail -40
             cp $DISTILL_WORKDIR/train_metrics.jsonl "$OUT/${DISTILL_LABEL}_metrics.jsonl"; cp $DISTILL_WORKDIR/train_curves.png "$OUT/${DISTILL_LABEL}_curves.png"
             [ "${DISTILL_NO_EXPORT:-}" = 1 ] || export_model $DISTILL_LABEL ;;  # at once: a lease that ends before the next call takes the workdir with it
    export) for m in ${EXPORT:-student}; do export_model $m; done ;;
    latency) for m in $MODELS; do d=$(folder $m); [ -f $d/config.json ] || { echo "no $m model at $d"; continue; }
               timeout 240 python3 experiments/benchmark_latency.py --model=$d --label=$m --resolutions=256x256 \
                 --steps=1,2,4 --impls=$LAT_IMPLS --out_dir="$OUT/latency" 2>&1 | grep -E "^\||Error" ; done ;;
    eval) for m in $MODELS; do d=$(folder $m); [ -f $d/config.json ] || { echo "no $m model at $d"; continue; }
            env $ONDEMAND timeout ${FID_TIMEOUT:-180} python3 experiments/$(fid_job $m $d) 2>&1 | grep -E "mean|Error" ; echo "$m fidelity: exit ${PIPESTATUS[0]} (124: timed out)" ; done ;;
    drift) for m in $MODELS; do d=$(folder $m); [ -f $d/config.json ] || { echo "no $m model at $d"; continue; }
             for s in ${DRIFT_S:-1 2 4}; do env $ONDEMAND timeout ${DRIFT_TIMEOUT:-150} python3 experiments/$(drift_job $m $d $s) \
               2>&1 | grep -E -i "drift|ratio|Error" | head -3; done; done ;;
    # eval and drift of every model at once, PAR runs at a time on the one GPU (each allocates on
    # demand): fidelity of EVAL_MODELS (default MODELS), drift of MODELS x DRIFT_S. Runs share the
    # GPU, so this stage measures quality, never latency.
    evaldrift) jobs=(); for m in ${EVAL_MODELS:-$MODELS}; do d=$(folder $m); [ -f $d/config.json ] || { echo "no $m model at $d"; continue; }
                 jobs+=("$(fid_job $m $d)"); done
               for m in $MODELS; do d=$(folder $m); [ -f $d/config.json ] || continue; for s in ${DRIFT_S:-1 2 4}; do
                 jobs+=("$(drift_job $m $d $s)"); done; done
               for j in "${jobs[@]}"; do
                 while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do wait -n; done
                 o=${j##*--out=}; mkdir -p "$o"
                 ( env $ONDEMAND timeout ${JOB_TIMEOUT:-300} python3 experiments/$j > "$o/log.txt" 2>&1; echo "exit $? (124: timed out): $o" ) &
               done; wait
               python3 -m experiments.device_tools frontier "$OUT" $MODELS ;;
    report) args=""; for m in $MODELS; do d=$(folder $m); [ -f $d/config.json ] && args="$args,$m=$d"; done
            python3 experiments/distill_prune_report.py --models=${args#,} --results="$OUT" --out="$OUT/distill_prune.md" \
              2>&1 | grep -v -E "^[IW][0-9]{4}" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
