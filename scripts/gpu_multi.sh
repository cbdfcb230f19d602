#!/usr/bin/env bash
# Several GPUs of one host (issue 20): tensor-parallel streaming of the large model, many streams
# at once, and training that scales. Kind: nvidia-h200-x8 (TP = 1, 2, 4, 8; training on 1, 4 and 8
# GPUs), or -x4 / -x2 for what fits (every stage keeps to the GPUs the machine has: GPUS).
# Usage inside a device call (repo root), each call at most 9 minutes:
#   bash scripts/gpu_multi.sh STAGE...
# No stage has run yet: how long each takes is unmeasured. Every benchmark is capped at STAGE_S
# seconds (default 500) and the latency stages resume, so a stage cut off by the cap is run again
# in the next call (with the tree's reports/multi_gpu/ carried back, see below).
#   env        GPUs, their NVLink topology, jax's devices
#   check      the split with the kernel path on the GPUs against one GPU (base at 256x256, model:2/4;
#              tests/models/test_parallel.py -m gpu)
#   tp         large at 832x480, S = 2, kernel path (auto): the step and the whole frame, p50/p99 for
#              TP = 1, 2, 4, 8 with a CUPTI profile each (NCCL share, exposed-communication bound);
#              the 12 heads are zero-padded to 16 for TP = 8 (--tp_pad_heads)
#   tp_xla     the same on the XLA path
#   overlap_chunks overlap_f32 overlap_lhs overlap_sync
#              TP = 4 (or the most GPUs there are, up to 4) variants of the same frame: the reductions
#              in 2 token chunks; f32 partial sums; XLA's latency-hiding scheduler on; async
#              all-reduces off (every collective exposed: the reference for how much is hidden)
#   streams    the throughput mode: GPUS streams of large 832x480 S = 2 at once, split as GPUS x TP=1
#              (one stream per GPU), GPUS/2 x TP=2, GPUS/4 x TP=4, 1 x TP=GPUS; frames/s in all,
#              synchronised and pipelined
#   train      benchmark_train, base at 256x256, the step alone on a device-resident batch on 1, 4
#              and 8 GPUs (data parallel), 16 samples per GPU: samples/s per GPU, scaling efficiency,
#              MFU (needs the carried wheels: scripts/gpu_wheels.sh)
#   train_loop the real loop (experiments/main.py, base, random autoencoder) with the input pipeline
#              on the host's cores and the decoded clip cache, LOOP_MIN minutes on each of
#              LOOP_COUNTS GPUs (default "1 4 8"; CUDA_VISIBLE_DEVICES), steps/s from its metrics
#              (needs the wheels, PyAV and the clip library: see gpu_wheels.sh)
# The latency stages write reports/multi_gpu/latency_<label>.{json,md,png} (+ _kernels.md) and copy
# them to $OUT; carried back into the tree (copy $OUT's files to reports/multi_gpu/ and commit after
# each call), a stage resumes where its last call stopped, on a fresh machine too. At most 8 files
# come back from one call: run at most two latency labels per call.
# DRY=1 prints the commands instead of running them (tests/scripts/test_gpu_scripts.py).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
RESULTS=${RESULTS:-reports/multi_gpu}
STAGE_S=${STAGE_S:-500}  # seconds a benchmark may run in one call (a cut-off one resumes next call)
LOOP_MIN=${LOOP_MIN:-1.5}; LOOP_COUNTS=${LOOP_COUNTS:-1 4 8}
QUIET="^[IW][0-9]{4}|orbax|Renaming|async|save_finalize|Finalize|ocdbt|tensorstore|ArrayMetadata|checkpoint_manager"

gpus() { echo "${GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')}"; }
# Powers of two up to the GPU count (or up to $1), as a comma list: 1,2,4,8.
upto() { local n=$(gpus) m=${1:-1024} out="" k=1; while [ $k -le $n ] && [ $k -le $m ]; do out+="${out:+,}$k"; k=$((k * 2)); done; echo "$out"; }
run() { if [ "${DRY:-}" = 1 ]; then echo "$*"; else "$@"; fi; }
wheels() { [ "${DRY:-}" = 1 ] || source scripts/gpu_wheels.sh || exit 1; }
# Data workers for a loop on $1 GPUs: 12 a GPU (what one GPU's training uses), at most the cores but 4.
workers() { local w=$((12 * $1)) c=$(( $(nproc) > 5 ? $(nproc) - 4 : 1 )); echo $(( w < c ? w : c )); }

# benchmark_latency on the large model at 832x480, S = 2, into $RESULTS, resumed; then to $OUT.
large() {
  local label=$1; shift
  mkdir -p "$RESULTS"
  run timeout "$STAGE_S" python3 experiments/benchmark_latency.py --sizes=large --resolutions=832x480 \
    --steps=2 --frame_only=large:832x480:2 --iters=100 --hbm_tbps=4.8 --tp_pad_heads --resume \
    --out_dir="$RESULTS" --label="$label" "$@" 2>&1 | grep -v -E "$QUIET" | tail -30
  [ "${DRY:-}" = 1 ] || cp "$RESULTS"/latency_"$label".* "$RESULTS"/latency_"$label"_kernels.md "$OUT"/ 2>/dev/null
  true
}

for stage in "$@"; do
  case "$stage" in
    env) run nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
         run nvidia-smi topo -m
         run python3 -m experiments.device_tools versions ;;
    check) run env JAX_PLATFORMS=cuda timeout 300 python3 -m pytest -q -rs -m gpu -p no:cacheprovider \
             tests/models/test_parallel.py -k gpus 2>&1 | tail -15 ;;
    tp) large tp_auto --impls=auto --tp="$(upto)" --profile ;;
    tp_xla) large tp_xla --impls=xla --tp="$(upto)" --profile ;;
    overlap_chunks) large tp4_chunks2 --impls=auto --tp="$(upto 4 | sed 's/.*,//')" --tp_chunks=2 --profile ;;
    overlap_f32) large tp4_f32 --impls=auto --tp="$(upto 4 | sed 's/.*,//')" --tp_reduce=float32 --profile ;;
    overlap_lhs) XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true" \
                   large tp4_lhs --impls=auto --tp="$(upto 4 | sed 's/.*,//')" --profile ;;
    overlap_sync) XLA_FLAGS="--xla_gpu_disable_async_collectives=allreduce" \
                    large tp4_sync --impls=auto --tp="$(upto 4 | sed 's/.*,//')" --profile ;;
    streams) large streams --impls=auto --tp="$(upto)" --streams="$(gpus)" ;;
    train) wheels
           counts=$(upto | tr , '\n' | grep -x -E '1|4|8' | paste -sd,)
           run timeout 520 python3 experiments/benchmark_train.py --config=experiments/configs/lsd.py:base \
             --device_counts="$counts" --per_device_batch=16 --iters=20 --repeats=5 --out_dir="$OUT" \
             --label=base_scaling 2>&1 | grep -v -E "$QUIET" | tail -12 ;;
    train_loop) wheels
           lib=${LIBRARY:-/tmp/library/manifest.json}
           run python3 -m experiments.device_tools random_autoencoder base /tmp/ae_base
           run python3 -m experiments.device_tools decode_cache "$lib" /tmp/lsd_decoded train  # before the loops time it
           for n in $LOOP_COUNTS; do
             [ "$n" -le "$(gpus)" ] || continue
             rm -rf "/tmp/loop_$n"
             run env CUDA_VISIBLE_DEVICES="$(seq -s, 0 $((n - 1)))" timeout 240 python3 experiments/main.py \
               --config=experiments/configs/lsd.py:base --workdir="/tmp/loop_$n" --config.autoencoder_dir=/tmp/ae_base \
               --config.data.sources.library.manifest="$lib" \
               --config.data.sources.library.decoded_cache=/tmp/lsd_decoded \
               --config.data.global_batch_size=$((16 * n)) --config.data.worker_count=$(workers "$n") \
               --config.max_minutes="$LOOP_MIN" --config.log_every=10 --config.checkpoint_every=1000000 \
               --config.export_on_stop=False 2>&1 | grep -v -E "$QUIET" | tail -4
             run python3 -m experiments.device_tools loop_rate "/tmp/loop_$n" "$n" $((16 * n)) /tmp/train_loop.jsonl
           done
           run python3 -m experiments.device_tools loop_scaling /tmp/train_loop.jsonl "$OUT/train_loop.json" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
