#!/usr/bin/env bash
# What a device call carries, and room for it: a call's working tree plus its carry may hold at most
# 64 MiB, and the tracked tree alone is about 63 MB (the shipped model 38 of it). Run here, not there.
#   bash scripts/gpu_carry.sh build          .carry/av (PyAV's wheel, 34 MB), .carry/wheels (grain,
#                                            array_record, ml_collections, portpicker: 4 MB) and
#                                            .carry/library (the clip library at 272 px short side, 11 MB)
#   bash scripts/gpu_carry.sh out [nomodel]  move reports/ notebooks/ docs/ data/samples/ (no device stage
#                                            reads them) and, with nomodel, checkpoints/lsd_small/ out of
#                                            the tree into $LSD_STASH (default ../lsd_stash)
#   bash scripts/gpu_carry.sh in             move them back; never commit while they are out
#   bash scripts/gpu_carry.sh model          copy the shipped model to .carry/model/lsd_small: with the tree
#                                            out (`out nomodel`) a call can carry it alone, so the calls
#                                            after `setup cache` need no local step (V2_DIR=.carry/model/lsd_small
#                                            for gpu_v3.sh; stretch 12)
#   bash scripts/gpu_carry.sh join AT RUN DIR  a model collect_runs brought back (its parts under AT/RUN and its
#                                            config in AT/runs.tgz) as the model folder DIR
#   bash scripts/gpu_carry.sh size           the tree (tracked files present, untracked not ignored) and
#                                            .carry, in MiB
# Stretch 7's calls (scripts/gpu_v3.sh): `out nomodel`, then carry .carry/av .carry/library
# .carry/wheels for `setup cache mfu`; `in` for the model, then the later calls carry nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${LSD_STASH:-../lsd_stash}
AWAY="reports notebooks docs data/samples"
PY=${PY:-.venv/bin/python}
case "${1:-}" in
  build)
    mkdir -p .carry/av .carry/wheels
    get() { "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
              --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
              -d "$1" "$2"; }
    pin() { grep -i "^$1==" requirements/lock.txt | head -1; }
    get .carry/av "$(pin av)"
    for p in grain array_record ml_collections portpicker; do get .carry/wheels "$(pin "$p")"; done
    # the library's packages are cached in data/library/cache (prepare_library.py fetches them there)
    [ -d data/library/cache ] || "$PY" data/prepare_library.py
    rm -rf .carry/library.build && mkdir -p .carry/library.build && cp -r data/library/cache .carry/library.build/
    "$PY" data/prepare_library.py --out=.carry/library.build --max_short_side=272
    rm -rf .carry/library && mkdir -p .carry/library
    mv .carry/library.build/clips .carry/library.build/manifest.json .carry/library/ && rm -rf .carry/library.build
    du -sh .carry/* ;;
  out)
    if [ -e "$STASH" ]; then echo "$STASH exists: bring it back first (gpu_carry.sh in)"; exit 1; fi
    mkdir -p "$STASH"
    for p in $AWAY; do if [ -e "$p" ]; then mkdir -p "$STASH/$(dirname "$p")"; mv "$p" "$STASH/$p"; fi; done
    if [ "${2:-}" = nomodel ]; then mkdir -p "$STASH/checkpoints"; mv checkpoints/lsd_small "$STASH/checkpoints/"; fi
    echo "moved out to $STASH: $(cd "$STASH" && find . -mindepth 1 -maxdepth 1 | sort | tr '\n' ' ')" ;;
  in)
    if [ ! -d "$STASH" ]; then echo "nothing to bring back ($STASH absent)"; exit 0; fi
    for p in $AWAY checkpoints/lsd_small; do
      if [ -e "$STASH/$p" ]; then
        if [ -e "$p" ]; then echo "$p is back in the tree already; $STASH/$p left as it is"; exit 1; fi
        mkdir -p "$(dirname "$p")"; mv "$STASH/$p" "$p"; fi
    done
    find "$STASH" -depth -type d -empty -delete
    if [ -e "$STASH" ]; then echo "$STASH still holds files: $(find "$STASH" -type f | head -3)"; exit 1; fi
    git status --short | head -5 ;;
  model)
    src=checkpoints/lsd_small; [ -d "$src" ] || src=$STASH/checkpoints/lsd_small
    rm -rf .carry/model && mkdir -p .carry/model && cp -r "$src" .carry/model/ && du -sh .carry/model ;;
  join)  # join FILES_AT RUN DIR: a model that gpu_v3.sh collect_runs brought back (FILES_AT/RUN/params.part_*
         # and RUN/export_config.json inside FILES_AT/runs.tgz) as the model folder DIR
    at=${2:?usage: gpu_carry.sh join FILES_AT RUN DIR}; run=${3:?run name}; dest=${4:?model folder}
    parts=$(ls "$at/$run"/params.part_* 2>/dev/null | sort || true)
    [ -n "$parts" ] || { echo "no $at/$run/params.part_*"; exit 1; }
    mkdir -p "$dest"
    tar xzf "$at/runs.tgz" -O "$run/export_config.json" > "$dest/config.json" || { echo "no $run/export_config.json in $at/runs.tgz"; exit 1; }
    cat $parts > "$dest/params.safetensors"
    echo "$dest: $(echo "$parts" | wc -l) parts, $(du -h "$dest/params.safetensors" | cut -f1)" ;;
  size)
    tree=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | while IFS= read -r -d '' f; do
              [ -f "$f" ] && stat -c %s "$f"; done | awk '{s += $1} END {print s + 0}')
    carry=0; if [ -d .carry ]; then carry=$(find .carry -type f -exec stat -c %s {} + | awk '{s += $1} END {print s + 0}'); fi
    awk -v t="$tree" -v c="$carry" 'BEGIN {printf "tree %.1f MiB, .carry %.1f MiB, together %.1f of 64 MiB\n", t / 2^20, c / 2^20, (t + c) / 2^20}' ;;
  *) echo "usage: gpu_carry.sh build | out [nomodel] | in | model | join AT RUN DIR | size"; exit 2 ;;
esac
