#!/usr/bin/env bash
# Model v3 on the lent H200 (reports/model_v3/README.md says what each stage found).
#   bash scripts/gpu_v3.sh STAGE...
# Stages, in the order one stretch of device calls runs them (calls chained on one warm machine;
# everything lives in /tmp/w between calls):
#   setup    install the carried wheels (.carry/av, .carry/wheels) into /tmp/site; stage a carried
#            clip library (.carry/library) in /tmp (the teacher autoencoder is checkpoints/ae_small_conv)
#   cache    decode the library once into /tmp/lsd_decoded, detached (it outlives the call)
#   sweep    the light autoencoder (distilled from the teacher's latent space) beside three
#            thermal-only capacity runs from scratch (baseline recipe, its history changed, the
#            v3 recipe); once the autoencoder is done, its evaluation and the v3 run (all effects)
#   sweep2   the second stretch's: the light autoencoder continued beside a thermal pair that isolates
#            the x0 loss weighting, then the v3 run
#   v3       continue (or start) the v3 run alone, until END seconds after the stage starts
# The next stretch (reports/model_v3/README.md, "the plan"), each stage bounded by END:
#   ae       the light autoencoder alone for AE_MIN minutes from checkpoints/ae_small_light, then
#            its PSNR and its time with the weights on the device (the teacher's beside it)
#   capacity thermal from scratch with CONFIG (default v3b), at strength 1.0 only and at all three
#   run      the all-effects CONFIG run (INIT_FROM: warm start), beside the capacity runs
#   mfu      the train step alone (device-resident batch) at MFU_BATCHES host clips, and the effect
#            render inside it (RENDER_N samples) timed apart: what batch to train at, what the step lacks
#   anneal   for each run in ANNEAL_FROM (default run_$CONFIG), once its export is there: a run
#            <run>_anneal from that export with ANNEAL_CONFIG (default v3d: no prompt noise), lr
#            ANNEAL_LR (5e-5), ANNEAL_STEPS (2,500) on a cosine, at most ANNEAL_MIN (4) minutes
#            (stretch 13: v3g then this gave model v3.6; in one chain, no local step)
#   wait     until every started run ends; diagnose: diagnose.py (+ eval_fidelity) on each export;
#            anchored: eval_fidelity --anchor_prompts on each all-effects export and the warm start;
#            particles: experiments/evaluate.py on the four particle effects of each all-effects export
#            protocol: eval_fidelity raw and anchored (--prompts=both) on each all-effects export at once
#   collect_runs  metrics, the autoencoder and the all-effects run's weights into $OUT
#   eval     export, held-out fidelity at S = 1, 2, 4, autoencoder PSNR at 256x256 and 832x480
#   latency  the light autoencoder's and the v3 frame's latency, train-step MFU
#   collect  metrics, curves, logs and the v3 export into $OUT (at most 8 files)
# Knobs: RUNS (diagnose, anchored, particles: which runs, a glob inside $W, e.g. "run_*_anneal"), END (seconds a training stage may use), AB_EXTRA (start: a second arm), COLLECT (collect_runs), FID_EXTRA (eval_fidelity flags, e.g.
# --prompts=both), V3_EXTRA (more --config.x=y for the v3 run), ALL_EXTRA (for every run: a CPU
# dry run passes a small resolution).
set -uo pipefail
OUT=${OUT:-/tmp/out}; W=${W:-/tmp/w}; mkdir -p "$OUT" "$W"  # W: the runs' folder (a test points it elsewhere)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache TF_CPP_MIN_LOG_LEVEL=1
LIB=/tmp/library/manifest.json; TEACHER=${TEACHER:-$PWD/checkpoints/ae_small_conv}; AE=$W/ae_light
DEC=--config.data.sources.library.decoded_cache=/tmp/lsd_decoded
END=${END:-520}
# the prompts' recorded embeddings, for a per-prompt noise scale's reading (the image lacks MiniLM)
TEXT=.carry/text/anchor_texts.npz; TEXT_FLAG=""; [ -f "$TEXT" ] && TEXT_FLAG=--text_embeddings=$TEXT
T0=$(date +%s)
left() { echo $(( END - ($(date +%s) - T0) )); }  # seconds left in this stage's budget
minutes() { python3 -m experiments.device_tools minutes "$(( $1 ))"; }
quiet() { grep -v -E "orbax|Renaming|async|save_finalize|Finalize|ocdbt|tensorstore|ArrayMetadata|checkpoint_manager|Deleted step|deletion|^W1201|jax_cuda|TfrtCpu"; }
train() {  # train NAME CONFIG ARGS...: one run in the background, its log in $W/NAME.log; detached
  # (setsid), so it outlives the call that started it and a later call on the warm machine waits on it
  local name=$1 config=$2; shift 2
  setsid nohup python3 -m experiments.main --config="$config" --workdir="$W/$name" \
    --config.data.sources.library.manifest=$LIB $DEC "$@" ${ALL_EXTRA:-} > "$W/$name.raw" 2>&1 < /dev/null &
  echo $! > "$W/$name.pid"
}
progress() {  # the last held-out and rate lines of every run
  for r in "$W"/*.raw; do [ -f "$r" ] || continue; n=$(basename "$r" .raw); quiet < "$r" > "$W/$n.log"
    echo "-- $n $(kill -0 "$(cat "$W/$n.pid")" 2>/dev/null && echo running || echo ended)"
    grep -E "held-out PSNR|steps/s|Error|error:" "$W/$n.log" | tail -2 | cut -c1-220; done
}
runs_in() {  # runs_in PATTERNS: the folders of $W matching RUNS (if set) or PATTERNS, globbed inside $W
  (cd "$W" && for p in ${RUNS:-$1}; do [ -d "$p" ] && echo "$W/$p"; done)
}
wait_run() { while kill -0 "$(cat "$W/$1.pid")" 2>/dev/null; do sleep 2; done; quiet < "$W/$1.raw" > "$W/$1.log"; }
thermal() {  # a thermal-only capacity run from scratch
  local name=$1 config=$2; shift 2
  train "$name" experiments/configs/lsd.py:$config --config.data.effects=thermal \
    --config.model.tau_inf=0.5 --config.heldout.every=250 --config.total_steps=20000 \
    --config.autoencoder_dir=$TEACHER --config.export_on_stop=False --config.data.worker_count=3 \
    --config.max_minutes="$(minutes "$(left) - 40")" "$@"
}
v3() {
  local init=""
  if [ ! -d "$W/v3/checkpoints" ] && [ -f .carry/v3_export/config.json ]; then init=--config.init_from=.carry/v3_export; fi
  train v3 experiments/configs/lsd.py:v3 --config.autoencoder_dir=$AE --config.data.worker_count=${V3_WORKERS:-8} \
    --config.max_minutes="$(minutes "$(left) - ${V3_TAIL:-45}")" $init ${V3_EXTRA:-}
}
for stage in "$@"; do
  echo "== $stage ($(( $(date +%s) - T0 )) s)"
  case "$stage" in
    setup)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader; nproc
      # each wheel once (a later call on the warm machine may still see an earlier call's carry)
      whl=$(for f in .carry/av/*.whl .carry/wheels*/*.whl; do [ -f "$f" ] && [ ! -f "/tmp/site/.done_$(basename "$f")" ] && echo "$f"; done)
      if [ -n "$whl" ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $whl || exit 1
        for f in $whl; do touch "/tmp/site/.done_$(basename "$f")"; done; fi
      # staged once: a second copy would pull the library from under the cache being decoded
      for d in library teacher_ae ae_light_init; do if [ -d ".carry/$d" ] && [ ! -d "/tmp/$d" ]; then cp -r ".carry/$d" "/tmp/$d"; fi; done
      python3 -m experiments.device_tools versions grain ml_collections av skimage ;;
    cache)
      setsid nohup python3 -m experiments.device_tools decode_cache $LIB /tmp/lsd_decoded train heldout \
        > "$W/cache.log" 2>&1 < /dev/null & ;;
    sweep)
      for _ in $(seq 90); do grep -q "cache ready" "$W/cache.log" 2>/dev/null && break; sleep 2; done
      grep -q "cache ready" "$W/cache.log" || { echo "no decoded cache after 180 s:"; tail -5 "$W/cache.log"; }
      train ae_light experiments/configs/autoencoder.py:small_light --config.teacher_autoencoder=$TEACHER \
        --config.data.worker_count=4 --config.max_minutes=${AE_MIN:-2.6}
      thermal t0_baseline small
      thermal t1_history small --config.train.tau_max=0.9 --config.train.p_stream_start=0.25
      thermal t2_v3 v3 --config.train.prompt_repeats=1
      wait_run ae_light
      tail -3 "$W/ae_light.log"
      (for hw in 256x256 480x832; do h=${hw%x*}; w=${hw#*x}
         python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE --manifest=$LIB --height=$h --width=$w --clips=32 \
           --out="$W/ae_eval_${hw}.json" 2>&1 | tail -1; done
       python3 experiments/eval_autoencoder.py --autoencoder_dir=$TEACHER --manifest=$LIB --clips=32 \
         --out="$W/ae_eval_teacher_256x256.json" 2>&1 | tail -1) > "$W/ae_eval.log" 2>&1 &
      V3_TAIL=30 v3
      for r in t0_baseline t1_history t2_v3 v3; do wait_run $r; done
      cat "$W/ae_eval.log" | cut -c1-300
      for r in t0_baseline t1_history t2_v3 v3; do echo "-- $r"; grep -E "held-out PSNR|steps/s" "$W/$r.log" | tail -2 | cut -c1-220; done ;;
    sweep2)  # the second stretch: the light autoencoder continued (from /tmp/ae_light_init) beside the
             # thermal capacity pair (v3 recipe with the x0 weighting, and without: velocity loss), then v3
      for _ in $(seq 90); do grep -q "cache ready" "$W/cache.log" 2>/dev/null && break; sleep 2; done
      init=""; [ -f /tmp/ae_light_init/autoencoder/meta.json ] && init=--config.init_from=/tmp/ae_light_init
      train ae_light experiments/configs/autoencoder.py:small_light --config.teacher_autoencoder=$TEACHER \
        --config.data.worker_count=5 --config.max_minutes=${AE_MIN:-2.0} $init
      thermal t3_x0 v3 --config.train.prompt_repeats=1 --config.data.worker_count=2
      thermal t4_velocity v3 --config.train.prompt_repeats=1 --config.train.loss_weight=velocity --config.data.worker_count=2
      wait_run ae_light
      tail -2 "$W/ae_light.log" | cut -c1-250
      (for hw in 256x256 480x832; do h=${hw%x*}; w=${hw#*x}
         python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE --manifest=$LIB --height=$h --width=$w --clips=32 \
           --out="$W/ae_eval_${hw}.json" 2>&1 | tail -1; done) > "$W/ae_eval.log" 2>&1 &
      V3_TAIL=50 v3
      for r in t3_x0 t4_velocity v3; do wait_run $r; done
      cut -c1-120 "$W/ae_eval.log"
      for r in t3_x0 t4_velocity v3; do echo "-- $r"; grep -E "held-out PSNR|steps/s" "$W/$r.log" | tail -2 | cut -c1-200; done ;;
    ae)  # the light autoencoder alone on the GPU, from the committed one (or this machine's), then its
         # held-out PSNR at 256x256 and 832x480 and its time with the weights on the device
      from=checkpoints/ae_small_light; [ -f "$AE/autoencoder/meta.json" ] && from=$AE
      rm -rf "$W/ae_from" && cp -r "$from" "$W/ae_from" && rm -rf "$AE"
      train ae_light experiments/configs/autoencoder.py:small_light --config.teacher_autoencoder=$TEACHER \
        --config.data.worker_count=12 --config.max_minutes=${AE_MIN:-3.0} --config.init_from=$W/ae_from
      wait_run ae_light; tail -1 "$W/ae_light.log" | cut -c1-200; mkdir -p "$W/latency"
      for hw in 256x256 480x832; do h=${hw%x*}; w=${hw#*x}
        python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE --manifest=$LIB --height=$h --width=$w --clips=32 \
          --time_iters=${TIME_ITERS:-2000} --out="$W/latency/ae_light_${hw}.json" 2>&1 | tail -1 | cut -c1-220; done
      python3 experiments/eval_autoencoder.py --autoencoder_dir=$TEACHER --manifest=$LIB --clips=32 --time_iters=${TIME_ITERS:-2000} \
        --out="$W/latency/ae_teacher_256x256.json" 2>&1 | tail -1 | cut -c1-220 ;;
    capacity)  # thermal from scratch with CONFIG's recipe (default v3b), at one strength and at all three, kept
      c=${CONFIG:-v3b}
      thermal cap_${c}_strong $c --config.train.prompt_repeats=1 --config.data.strengths=1.0 --config.export_on_stop=True
      thermal cap_${c}_all $c --config.train.prompt_repeats=1 --config.export_on_stop=True ;;
    run)  # the all-effects run of CONFIG (default v3b) on the light autoencoder, beside whatever runs
      c=${CONFIG:-v3b}; init=""; [ -n "${INIT_FROM:-}" ] && init=--config.init_from=$INIT_FROM
      train run_$c experiments/configs/lsd.py:$c --config.autoencoder_dir=$AE --config.data.worker_count=${RUN_WORKERS:-8} \
        --config.max_minutes="$(minutes "$(left) - ${RUN_TAIL:-60}")" $init ${RUN_EXTRA:-} ;;
    v2)  # the warm start: the shipped model in the tree (model v2 in stretch 3; V2_DIR: another folder)
      rm -rf /tmp/v2 /tmp/ae_committed && cp -r ${V2_DIR:-checkpoints/lsd_small} /tmp/v2 && cp -r checkpoints/ae_small_light /tmp/ae_committed
      ls -la /tmp/v2 ;;
    start)  # the third stretch's runs, detached, each bounded by its own minutes (one run per purpose):
            # the all-effects v3b run warm-started from the shipped model (v2 then; v3 now) on the
            # committed light autoencoder, the v3b thermal capacity check (CAP_STRENGTHS), and the light
            # autoencoder continued (AE_MIN=0: not); the next stretch: CAP_STRENGTHS=all AE_MIN=0
      run_c=${CONFIG:-v3b}
      for _ in $(seq 120); do grep -q "cache ready" "$W/cache.log" 2>/dev/null && break; sleep 2; done
      grep -q "cache ready" "$W/cache.log" || { echo "no decoded cache after 240 s:"; tail -5 "$W/cache.log"; }
      # AB_EXTRA (set, even empty): a second arm run_${run_c}_b beside the first, the same flags plus
      # AB_EXTRA (an A/B of one change on the same GPU at the same time; RUN_WORKERS each)
      # RUN_MIN=0: no all-effects run (e.g. the capacity run alone)
      for arm in a b; do [ "${RUN_MIN:-16}" = 0 ] && break; [ $arm = b ] && [ -z "${AB_EXTRA+x}" ] && break
        name=run_$run_c; ab=""; [ $arm = b ] && name=run_${run_c}_b && ab=${AB_EXTRA:-}
        train $name experiments/configs/lsd.py:$run_c --config.autoencoder_dir=/tmp/ae_committed \
          --config.init_from=${INIT_FROM:-/tmp/v2} --config.data.worker_count=${RUN_WORKERS:-8} \
          --config.max_minutes=${RUN_MIN:-16} ${RUN_EXTRA:-} $ab; done
      # CAP_STRENGTHS: the capacity run's prompt strengths (default 1.0; "all" for all three)
      cap_s=${CAP_STRENGTHS:-1.0}; cap_name=strong; [ "$cap_s" = all ] && cap_s="" && cap_name=all
      # CAP_EFFECT: the capacity run's one effect (default thermal; identity separates capacity from the sampler;
      # identity has no strength-1.0 prompt, so it needs CAP_STRENGTHS=all). The capacity run drops
      # CONFIG's effect_weights: they name effects outside its one-effect table (stretch 8 lost its run to that)
      # (a comma list trains those effects alone, e.g. pixel_art,posterize,pencil_sketch). CAP_AE: its
      # autoencoder folder (default the teacher; /tmp/ae_committed: the shipped model's light one).
      # CAP_AB_EXTRA (set, even empty): a second capacity arm cap_..._b beside it with those flags too
      # (e.g. --config.model.patch=1: 4x the tokens on the same blocks)
      for arm in a b; do [ "${CAP_MIN:-6}" = 0 ] && break; [ $arm = b ] && [ -z "${CAP_AB_EXTRA+x}" ] && break
        name=cap_${run_c}_$cap_name; ab=""; [ $arm = b ] && name=${name}_b && ab=${CAP_AB_EXTRA:-}
        train $name experiments/configs/lsd.py:$run_c --config.data.effects=${CAP_EFFECT:-thermal} \
          --config.model.tau_inf=0.5 --config.heldout.every=${CAP_EVERY:-250} --config.total_steps=${CAP_STEPS:-6000} \
          --config.autoencoder_dir=${CAP_AE:-$TEACHER} --config.data.worker_count=${CAP_WORKERS:-3} --config.train.prompt_repeats=1 \
          --config.data.strengths="$cap_s" --config.data.effect_weights= --config.max_minutes=${CAP_MIN:-6} $ab; done
      if [ "${AE_MIN:-3}" != 0 ]; then rm -rf "$W/ae_from" && cp -r /tmp/ae_committed "$W/ae_from" && rm -rf "$AE"
        train ae_light experiments/configs/autoencoder.py:small_light --config.teacher_autoencoder=$TEACHER \
          --config.data.worker_count=3 --config.max_minutes=${AE_MIN:-3} --config.init_from=$W/ae_from; fi
      sleep ${START_SETTLE:-5}; progress ;;  # START_SETTLE: seconds before the first progress report
    watch)  # report progress every 60 s until END seconds into the call or every run has ended
      while [ "$(left)" -gt 0 ]; do alive=0
        for p in "$W"/*.pid; do kill -0 "$(cat "$p")" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break; sleep $(( $(left) < 60 ? ($(left) > 0 ? $(left) : 1) : 60 ))
        echo "[$(( $(date +%s) - T0 )) s]"; progress; done ;;
    ae_eval)  # the light autoencoder's held-out PSNR (256x256, 832x480), beside the teacher's
      for hw in 256x256 480x832; do h=${hw%x*}; w=${hw#*x}
        python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE --manifest=$LIB --height=$h --width=$w --clips=32 \
          --out="$W/ae_eval_${hw}.json" 2>&1 | tail -1 | cut -c1-220; done
      python3 experiments/eval_autoencoder.py --autoencoder_dir=$TEACHER --manifest=$LIB --clips=32 \
        --out="$W/ae_eval_teacher_256x256.json" 2>&1 | tail -1 | cut -c1-220 ;;
    ae_time)  # on a quiet GPU: encode + decode time with the weights on the device, light and teacher
      mkdir -p "$W/latency"
      for hw in 256x256 480x832; do h=${hw%x*}; w=${hw#*x}
        python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE --manifest=$LIB --height=$h --width=$w --clips=2 \
          --time_iters=${TIME_ITERS:-2000} --out="$W/latency/ae_light_${hw}.json" 2>&1 | tail -1 | cut -c1-220; done
      python3 experiments/eval_autoencoder.py --autoencoder_dir=$TEACHER --manifest=$LIB --clips=2 --time_iters=${TIME_ITERS:-2000} \
        --out="$W/latency/ae_teacher_256x256.json" 2>&1 | tail -1 | cut -c1-220 ;;
    mfu)  # the GPU otherwise idle (the cache decodes on the CPUs): step rate per batch, the render's share
      mkdir -p "$W/mfu"
      python3 -m experiments.device_tools render_time ${RENDER_N:-128} ${RENDER_T:-6} 2>&1 | tail -1
      timeout ${MFU_TIMEOUT:-300} python3 experiments/benchmark_train.py --config=experiments/configs/lsd.py:${CONFIG:-v3b} \
        --config.autoencoder_dir=$PWD/checkpoints/ae_small_light --batch_sizes=${MFU_BATCHES:-32} --iters=10 --repeats=3 \
        --out_dir="$W/mfu" 2>&1 | grep -v -E "^[IW][0-9]{4}" | grep "|" | tail -4 ;;
    anneal)  # each ANNEAL_FROM run's export continued without CONFIG's extras (stretch 13's model v3.6)
      for from in ${ANNEAL_FROM:-run_${CONFIG:-v3b}}; do
        [ -f "$W/$from.pid" ] && wait_run "$from"
        if [ ! -f "$W/$from/export/params.safetensors" ]; then echo "anneal: $from has no export; not annealed"; continue; fi
        train "${from}_anneal" experiments/configs/lsd.py:${ANNEAL_CONFIG:-v3d} --config.autoencoder_dir=/tmp/ae_committed \
          --config.init_from="$W/$from/export" --config.data.worker_count=${RUN_WORKERS:-8} \
          --config.total_steps=${ANNEAL_STEPS:-2500} --config.optim.lr=${ANNEAL_LR:-5e-5} --config.optim.warmup_steps=50 \
          --config.max_minutes=${ANNEAL_MIN:-4} ${ANNEAL_EXTRA:-}; done
      sleep ${START_SETTLE:-5}; progress ;;
    wait) for p in "$W"/*.pid; do wait_run "$(basename "$p" .pid)"; done
          for l in "$W"/cap_*.log "$W"/run_*.log; do [ -f "$l" ] || continue; echo "-- $(basename "$l")"
            grep -E "held-out PSNR|steps/s" "$l" | tail -2 | cut -c1-200; done ;;
    diagnose)  # every finished run's export: the three-condition diagnosis and, for all-effects runs, eval_fidelity
      for d in $(runs_in "cap_* run_*"); do [ -f "$d/export/config.json" ] || continue; n=$(basename "$d")
        e=${CAP_EFFECT:-thermal}; case $n in run_*) e=thermal,grayscale,negative,identity,cartoon,pencil_sketch;; esac
        python3 experiments/diagnose.py --model="$d/export" --manifest=$LIB --effects=$e --clips=2 --frames=8 \
          --out="$W/diagnose_$n" 2>&1 | grep "^| \*\*mean\|^| thermal"
        case $n in run_*) python3 experiments/eval_fidelity.py --model="$d/export" --manifest=$LIB --clips=4 --frames=24 \
          $TEXT_FLAG --out="$W/fidelity_$n" ${FID_EXTRA:-} 2>&1 | grep "mean";; esac; done ;;
    anchored)  # every all-effects run's export and the warm start (/tmp/v2) on the anchored protocol (what
               # lsd-stream and lsd-serve do); the image lacks the MiniLM package, so the texts' embeddings
               # come recorded (eval_fidelity.py --save_text_embeddings=.carry/text/anchor_texts.npz)
      # a run's folder holds its training config.json too: a model folder is known by its weights
      # ANCHOR_WARM=0: not the warm start (/tmp/v2, or WARM_DIR; measured already, e.g. the shipped model)
      warm=${WARM_DIR:-/tmp/v2}; [ "${ANCHOR_WARM:-1}" = 0 ] && warm=""
      for d in $(runs_in "run_*") $warm; do [ -f "$d/export/params.safetensors" ] || [ -f "$d/params.safetensors" ] || continue
        m=$d/export; [ -f "$m/params.safetensors" ] || m=$d; n=$(basename "$d")
        python3 experiments/eval_fidelity.py --model="$m" --manifest=$LIB --clips=4 --frames=24 \
          --anchor_prompts --text_embeddings=.carry/text/anchor_texts.npz ${FID_EXTRA:-} \
          --out="$W/fidelity_anchored_$n" 2>&1 | grep -E "mean|holds|needed|Error"; done ;;
    protocol)  # every all-effects run's export (RUNS: others) on the whole protocol at once: the raw val
               # wording and anchored, each with the train twins (the paraphrase gap), all in the
               # background and waited for by pid (a `pgrep -f` on the output name matched the calling
               # shell's own command line and never returned: stretch 17 lost a call's end to it)
      pids=""
      for d in $(runs_in "run_*"); do [ -f "$d/export/params.safetensors" ] || continue; n=$(basename "$d")
        for a in raw anchored; do flag=$TEXT_FLAG; o="$W/fidelity_$n"
          [ $a = anchored ] && flag="--anchor_prompts --text_embeddings=$TEXT" && o="$W/fidelity_anchored_$n"
          python3 experiments/eval_fidelity.py --model="$d/export" --manifest=$LIB --clips=4 --frames=24 --prompts=both \
            $flag ${FID_EXTRA:-} --out="$o" > "$o.log" 2>&1 &
          pids="$pids $!"; done; done
      for p in $pids; do wait "$p"; done
      for l in "$W"/fidelity_*.log; do [ -f "$l" ] || continue; echo "-- $(basename "$l" .log)"
        grep -E "^\| \*\*mean|mean of the 16|within 1.0 dB of the train|Error" "$l" | tail -4 | cut -c1-200; done ;;
    particles)  # every all-effects run's export (RUNS: others): the particle effects (PARTICLE_EFFECTS) through experiments/evaluate.py
                # (the CPU protocol of reports/eval_particles_v3.1_tracked_cpu_2026-12-01: do they move?)
      for d in $(runs_in "run_*"); do [ -f "$d/export/config.json" ] || continue; n=$(basename "$d")
        python3 experiments/evaluate.py --model="$d/export" --manifest=$LIB --steps=2 --effects=${PARTICLE_EFFECTS:-snowfall,rain,fireflies,bubbles} \
          --clips=4 --clip_frames=32 --stream_frames=1000 --switch_every=125 --chunk=125 $TEXT_FLAG \
          --title="$n: particle statistics" --out="$W/particles_$n" 2>&1 | quiet | tail -2
        grep "Particle bar" "$W/particles_$n/eval.md" | cut -c1-400; done ;;
    collect_runs)  # metrics of everything, the light autoencoder and the all-effects run's weights
      # COLLECT: the runs whose weights come back (default every run_*). Each one's config rides in
      # runs.tgz (<run>/export_config.json), so a model is its parts alone (3 at 15 MB for the small
      # one): runs.tgz and two models are 7 files of the 8 a call brings back (stretch 17 lost a
      # model's third part to a ninth file). Rejoin here: `bash scripts/gpu_carry.sh join FILES_AT RUN DIR`.
      for d in "$W"/${COLLECT:-run_*}; do [ -f "$d/export/params.safetensors" ] || continue
        cp "$d/export/config.json" "$d/export_config.json"; done
      (cd "$W" && tar czf "$OUT/runs.tgz" --exclude='checkpoints' --exclude='export' --exclude='*.pid' \
         $(ls -d */ *.log *.json 2>/dev/null) 2>/dev/null)
      for d in "$W"/${COLLECT:-run_*}; do [ -f "$d/export/params.safetensors" ] || continue; n=$(basename "$d"); mkdir -p "$OUT/$n"
        split -b ${PART_MB:-15}m "$d/export/params.safetensors" "$OUT/$n/params.part_"; done
      [ -d "$AE/autoencoder" ] && tar czf "$OUT/ae_light.tgz" -C "$W" ae_light/autoencoder
      nf=$(find "$OUT" -type f | wc -l); echo "$nf files in $OUT"; du -sh "$OUT"
      if [ "$nf" -gt 8 ]; then echo "WARNING: $nf files; a call brings back 8: set COLLECT to fewer runs"; fi ;;
    v3) v3; wait_run v3; grep -E "held-out PSNR|steps/s" "$W/v3.log" | tail -3 | cut -c1-220 ;;
    eval)
      python3 experiments/eval_fidelity.py --model=$W/v3/export --manifest=$LIB --clips=4 --frames=24 \
        --out="$W/fidelity" 2>&1 | grep "^|" | tail -25 ;;
    latency)  # the GPU otherwise idle: the light and the teacher autoencoder alone, the v3 frame, the train step
      mkdir -p "$W/latency"
      for hw in 256x256 480x832; do h=${hw%x*}; w=${hw#*x}
        python3 experiments/eval_autoencoder.py --autoencoder_dir=$AE --manifest=$LIB --height=$h --width=$w --clips=4 \
          --time_iters=${TIME_ITERS:-2000} --out="$W/latency/ae_light_${hw}.json" 2>&1 | tail -1 | cut -c1-160; done
      python3 experiments/eval_autoencoder.py --autoencoder_dir=$TEACHER --manifest=$LIB --clips=4 --time_iters=2000 \
        --out="$W/latency/ae_teacher_256x256.json" 2>&1 | tail -1 | cut -c1-160
      python3 experiments/benchmark_stream.py --checkpoint=$W/v3/export --sizes=small --soak_size= --iters=2000 \
        --out_dir="$W/latency" 2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -8
      timeout 200 python3 experiments/benchmark_train.py --config=experiments/configs/lsd.py:v3 \
        --config.autoencoder_dir=$AE --batch_sizes=${MFU_BATCHES:-32} --out_dir="$W/mfu" 2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -6 ;;
    collect)
      (cd "$W" && tar czf "$OUT/runs.tgz" --exclude='checkpoints' --exclude='export' --exclude='*.pid' \
         $(ls -d */ *.log *.json 2>/dev/null) 2>/dev/null)
      if [ -f "$W/v3/export/params.safetensors" ]; then
        mkdir -p "$OUT/v3"; cp "$W/v3/export/config.json" "$OUT/v3/"; split -b ${PART_MB:-15}m "$W/v3/export/params.safetensors" "$OUT/v3/params.part_"; fi
      if [ -d "$AE/autoencoder" ]; then tar czf "$OUT/ae_light.tgz" -C "$W" ae_light/autoencoder; fi
      find "$OUT" -type f | wc -l; du -sh "$OUT" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "== done ($(( $(date +%s) - T0 )) s)"
