#!/usr/bin/env bash
# Training stages on the lent H100 (see BENCHMARKS.md). Usage inside a device call:
#   bash scripts/gpu_train.sh STAGE...   stages: env ae ae_out eval_ae lsd eval_fid export mfu
# Needs the carried wheels (.whl) and clip library (.carry/library); writes under $OUT.
set -uo pipefail
source scripts/gpu_wheels.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" workdirs
LIB=${LIB:-$LIBRARY}
AE_MIN=${AE_MIN:-3.5}; LSD_MIN=${LSD_MIN:-5}
AE_DIR=${AE_DIR:-workdirs/ae_small}  # an autoencoder run's workdir, or an exported model folder
LSD_CONFIG=${LSD_CONFIG:-small}; LSD_WORKERS=${LSD_WORKERS:-14}
LSD_EXTRA=${LSD_EXTRA:-}  # more --config.x=y overrides for the lsd stage (e.g. batch, init_from)
DECODED=--config.data.sources.library.decoded_cache=/tmp/lsd_decoded  # decode the library once
for stage in "$@"; do
  case "$stage" in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
         python3 -m experiments.device_tools versions orbax.checkpoint grain av ;;
    ae) python3 experiments/main.py --config=experiments/configs/autoencoder.py:small --workdir=workdirs/ae_small \
          --config.data.sources.library.manifest=$LIB --config.max_minutes=$AE_MIN --config.data.worker_count=12 $DECODED \
          2>&1 | grep -v -E "orbax|Renaming|async|save_finalize|Finalize|ocdbt|tensorstore|ArrayMetadata|checkpoint_manager|Deleted step|deletion" | tee -a workdirs/ae.log
        cp workdirs/ae_small/train_metrics.jsonl "$OUT/ae_metrics.jsonl"; cp workdirs/ae_small/train_curves.png "$OUT/ae_curves.png" ;;
    ae_out) mkdir -p "$OUT/autoencoder"; cp workdirs/ae_small/autoencoder/* "$OUT/autoencoder/" ;;
    eval_ae) python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE_DIR --manifest=$LIB \
          --out="$OUT/ae_eval.json" 2>&1 | tail -3 ;;
    lsd) python3 experiments/main.py --config=experiments/configs/lsd.py:$LSD_CONFIG --workdir=workdirs/lsd_small \
          --config.autoencoder_dir=$AE_DIR --config.data.sources.library.manifest=$LIB \
          --config.max_minutes=$LSD_MIN --config.data.worker_count=$LSD_WORKERS $DECODED $LSD_EXTRA \
          2>&1 | grep -v -E "orbax|Renaming|async|save_finalize|Finalize|ocdbt|tensorstore|ArrayMetadata|checkpoint_manager|Deleted step|deletion" | tee -a workdirs/lsd.log
         cp workdirs/lsd_small/train_metrics.jsonl "$OUT/lsd_metrics.jsonl"; cp workdirs/lsd_small/train_curves.png "$OUT/lsd_curves.png" ;;
    eval_fid) timeout ${FID_TIMEOUT:-150} python3 experiments/eval_fidelity.py --model=workdirs/lsd_small/export --manifest=$LIB \
          --clips=4 --frames=24 --out="$OUT/fidelity" 2>&1 | grep -v -E "^W1124|^I1124" | tail -30 ;;
    export) mkdir -p "$OUT/export"; cp workdirs/lsd_small/export/config.json "$OUT/export/";
            split -b ${PART_MB:-15}m workdirs/lsd_small/export/params.safetensors "$OUT/export/params.part_" ;;
    mfu) for c in small base; do timeout 240 python3 experiments/benchmark_train.py \
          --config=experiments/configs/lsd.py:$c --batch_sizes=${MFU_BATCHES:-32,64} --out_dir="$OUT" \
          2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -6; done ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
