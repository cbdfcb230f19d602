#!/bin/bash
# One GPU session: check the kernels at the model's shapes, time them, then the latency benchmark.
# Usage (on the device machine, repo root): bash pallas_kernels/gpu_session.sh STAGE...
# (tests/conftest.py defaults JAX_PLATFORMS to cpu, hence JAX_PLATFORMS=cuda for the tests.)
# The kernels' benchmark main()s report through absl logging; the stages keep those lines.
# Stages: tests (the Mosaic kernels' GPU tests; the Triton and mega-kernel ones have their own
# stages, each a call's worth), kernels, bench_small_base, bench_large, bench_cmdbuf, triton (= triton_tests,
# triton_kernels), megablock, megastep, megastep_bench, grid, profile, gemm, gemm_step, ae_conv, timeline. Logs
# and results go to $OUT.
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# A persistent compilation cache in /tmp, kept on a warm machine between calls (grid, profile).
persistent_cache() { export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1; }
# Packs the launch timeline's folder $1 into two files under $OUT, each under TL_MAX_MB (15) MiB:
# timeline_traces.tgz (the perfetto traces and XSpaces; where too large, without the XSpaces, then
# only the perfetto traces under 3 MiB) and timeline_report.tgz (timeline.json, .md, the logs, and
# traces_left_out.txt naming what the traces' file lacks).
pack_timeline() {
  local dir=$1 max=$((${TL_MAX_MB:-15} * 1048576)) tr="$OUT/timeline_traces.tgz"
  local size=0 level; mkdir -p "$dir/traces"  # none when every run failed: an empty folder, still packed
  for level in all no_xplane small_perfetto; do
    case $level in
      all) tar czf "$tr" -C "$dir" --exclude='*.trace.json.gz' traces;;
      no_xplane) tar czf "$tr" -C "$dir" --exclude='*.trace.json.gz' --exclude='*.xplane.pb' traces;;
      small_perfetto) (cd "$dir" && find traces -name perfetto_trace.json.gz -size -3M -print0 \
                       | tar czf "$tr" --null -T -);;
    esac
    size=$(stat -c %s "$tr"); [ "$size" -le "$max" ] && break
  done
  [ "$size" -le "$max" ] || rm -f "$tr"
  (cd "$dir" && find traces -type f ! -name '*.trace.json.gz' | sort > all_traces.txt
   { tar tzf "$tr" 2>/dev/null || true; } | grep -v '/$' | sort | comm -23 all_traces.txt - > traces_left_out.txt
   rm all_traces.txt)
  tar czf "$OUT/timeline_report.tgz" -C "$dir" --exclude=traces .
  echo "timeline: packed at level $level; $(wc -l < "$dir/traces_left_out.txt") trace files left out"
}
for stage in "$@"; do
  case $stage in
    tests) JAX_PLATFORMS=cuda timeout 150 python3 -m pytest -q -rs -m gpu -k "not triton" tests/pallas_kernels/test_kernels.py 2>&1 | tail -40 > "$OUT/tests.log"; tail -5 "$OUT/tests.log";;
    kernels) for k in attention_mgpu ln_modulate_linear_mgpu mlp_mgpu; do
               timeout 100 python3 -m pallas_kernels.$k 2>&1 | grep -E "\] +(L=|xla:)|Error" | sed -E 's/^.*\] //' ; done 2>&1 | tee "$OUT/kernels.log";;
    bench_small_base) timeout 300 python3 experiments/benchmark_latency.py --sizes=small,base \
        --resolutions=256x256,512x512,832x480 --steps=1,2,4 --impls=xla,mosaic --iters=50 \
        --out_dir="$OUT" --label=small_base 2>&1 | grep -v "^I" | tail -30;;
    # The large config (1.3B) at 832x480, S = 2, one process per implementation so that a time-out
    # keeps the first (both took 5 minutes together on an H100, 2026-11-27).
    bench_large) for impl in xla mosaic; do timeout 270 python3 experiments/benchmark_latency.py --sizes=large \
        --resolutions=832x480 --steps=2 --impls=$impl --iters=50 --out_dir="$OUT" --label=large832_$impl 2>&1 \
        | grep -v -E "^[IW][0-9]{4}" | tail -8; done;;
    bench_cmdbuf) for flags in "--xla_gpu_enable_command_buffer=" "--xla_gpu_graph_min_graph_size=1"; do
        label=$([ "$flags" = "--xla_gpu_enable_command_buffer=" ] && echo cmdbuf_off || echo graph_min1)
        XLA_FLAGS="$flags" timeout 200 python3 experiments/benchmark_latency.py --sizes=small,base \
        --resolutions=256x256 --steps=2 --impls=xla,mosaic --iters=50 --out_dir="$OUT" \
        --label="$label" 2>&1 | grep -v "^I" | tail -8; done;;
    # Triton path: its GPU tests, then each Triton kernel's main() (configs vs XLA, and vs the
    # Mosaic kernel on a Hopper). `triton` runs both; their timeouts add up to 690 s, so where one
    # call may take at most 600 s, run `triton_tests` and `triton_kernels` as two calls.
    triton) OUT="$OUT" bash "$0" triton_tests triton_kernels;;
    triton_tests) JAX_PLATFORMS=cuda timeout 240 python3 -m pytest -q -rs -m gpu \
        -k triton tests/pallas_kernels/test_kernels.py 2>&1 | tail -40 > "$OUT/triton_tests.log"
        tail -5 "$OUT/triton_tests.log";;
    triton_kernels) for k in attention_triton ln_modulate_linear_triton mlp_triton; do
          timeout 150 python3 -m pallas_kernels.$k 2>&1 | grep -E "\] +(L=|xla:|mosaic:)|Error" | sed -E 's/^.*\] //'; done \
        2>&1 | tee "$OUT/triton_kernels.log";;
    # megablock: the mega kernel (one DiT block per call). Its benchmark main (small and base at
    # 256 tokens, configs vs the XLA block; if all fail, the first phase that fails), then its
    # GPU tests; at most 440 s.
    megablock) timeout 240 python3 -m pallas_kernels.megablock_mgpu 2>&1 \
        | awk '!/^[IW][0-9]{4} / || /megablock_mgpu.py/' | tail -80 | tee "$OUT/megablock_bench.log"
      JAX_PLATFORMS=cuda timeout 200 python3 -m pytest -q -rs -m gpu \
        tests/pallas_kernels/test_megablock.py 2>&1 | tail -40 > "$OUT/megablock_tests.log"
      tail -5 "$OUT/megablock_tests.log";;
    # megastep: the whole-step mega kernel (one persistent call per denoiser step). Its benchmark
    # main (small and base trunks at 256 tokens: fused vs split vs XLA vs the f32 reference,
    # timings), then its GPU tests; at most 500 s.
    megastep) timeout ${MEGASTEP_S:-300} python3 -m pallas_kernels.megastep_mgpu 2>&1 \
        | awk '!/^[IW][0-9]{4} / || /megastep_mgpu.py/' | tail -80 | tee "$OUT/megastep_bench.log"
      JAX_PLATFORMS=cuda timeout ${MEGASTEP_TESTS_S:-200} python3 -m pytest -q -rs -m gpu \
        tests/pallas_kernels/test_megastep.py 2>&1 | tail -40 > "$OUT/megastep_tests.log"
      tail -5 "$OUT/megastep_tests.log";;
    # The whole step and frame of small and base at 256x256, XLA vs per-op kernels vs the mega kernel.
    megastep_bench) timeout ${BENCH_S:-250} python3 experiments/benchmark_latency.py --sizes=small,base \
        --resolutions=256x256 --steps=1,2 --impls=xla,mosaic,megastep --iters=200 --out_dir="$OUT" \
        --label=megastep 2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -16;;
    # The issue's whole latency grid (small, base, large x 256x256, 512x512, 832x480 x S = 1, 2, 4,
    # XLA vs the kernel path), longer than one call: it resumes from GRID_DIR (default /tmp/grid,
    # kept on a warm machine between calls; not reports/latency/grid/, whose finished H100 table a
    # resumed run would only render again), seeded once from GRID_FROM (a carried latency_grid.json
    # of an earlier stretch on the same GPU kind, e.g. .carry/grid/latency_grid.json), GRID_S seconds
    # a call. A persistent compilation cache in /tmp makes the resumed run's XLA reference, and a
    # cell cut off by the time-out, cheap to compile again.
    grid) D=${GRID_DIR:-/tmp/grid}; mkdir -p "$D"
      if [ -n "${GRID_FROM:-}" ] && [ ! -f "$D/latency_grid.json" ]; then cp "$GRID_FROM" "$D/latency_grid.json" || exit 1; fi
      persistent_cache
      timeout ${GRID_S:-540} python3 experiments/benchmark_latency.py --sizes=small,base,large \
        --resolutions=256x256,512x512,832x480 --steps=1,2,4 --impls=xla,auto --iters=100 \
        --out_dir="$D" --label=grid --resume 2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -12
      cp "$D"/latency_grid.* "$OUT/";;
    # Where the time goes: every GPU kernel (CUPTI: name, launches, ms, category) of the step and
    # the S = 2 frame, XLA vs the kernel path, small and large at 256x256 and 832x480 (the large
    # 832x480 frame is the issue's 16 ms target). Writes latency_profile{.json,.md,_kernels.md}.
    profile) persistent_cache
      timeout ${PROFILE_S:-500} python3 experiments/benchmark_latency.py --sizes=small,large \
        --resolutions=256x256,832x480 --steps=2 --impls=xla,auto --iters=50 --profile \
        --out_dir="$OUT" --label=profile 2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -12;;
    # gemm: the epilogue-fused GEMM (gemm_mgpu), the MLP on it (mlp_gemm_mgpu) and the FP8 path:
    # their GPU tests, then gemm_bench (XLA / bare cuBLAS / kernel / FP8 at the denoiser's GEMM
    # shapes, CUPTI p50/p99, rows in $OUT/gemm_bench.{jsonl,json,md} as they come); at most 300 s.
    gemm) JAX_PLATFORMS=cuda timeout ${GEMM_TESTS_S:-110} python3 -m pytest -q -rs -m gpu \
        tests/pallas_kernels/test_gemm.py 2>&1 | tail -40 > "$OUT/gemm_tests.log"; tail -5 "$OUT/gemm_tests.log"
      timeout ${GEMM_BENCH_S:-185} python3 -m pallas_kernels.gemm_bench --out_dir="$OUT" \
        --budget_s=${GEMM_BUDGET_S:-150} 2>&1 | grep -v -E "^[IW][0-9]{4}" | tail -70;;
    # gemm_step: what the GEMM MLP does to whole steps (S = 1; `--frame_only=none:0x0:0` skips the
    # frames): small at 256x256 and large at 832x480, the kernel path with attention only, then
    # with attention and mlp, one process each (a separate call: up to 4 x 130 s).
    gemm_step) persistent_cache
      for cell in small:256x256 large:832x480; do for ops in attention attention,mlp; do
        timeout ${GEMM_STEP_S:-130} python3 experiments/benchmark_latency.py --sizes=${cell%%:*} \
          --resolutions=${cell##*:} --steps=1 --impls=mosaic --kernel_ops=$ops --iters=50 \
          --frame_only=none:0x0:0 --out_dir="$OUT" --label=gemm_step_${cell%%:*}_${ops/,/_} 2>&1 \
          | grep -v -E "^[IW][0-9]{4}" | tail -6
      done; done;;
    # ae_conv (issue 17 item 4): the small frame host to host with the autoencoder's convolutions as
    # cuDNN calls (xla) and as im2col + GEMM (gemm), each with the weights as arguments and baked in
    # as constants (--bake_params), one benchmark_stream row each in one process, on the shipped
    # model (or AE_CHECKPOINT); at most AE_CONV_S (240) s. AE_CONV_CONVS: the convolutions' rows
    # (default xla,gemm); AE_CONV_IMPLS: denoiser implementations, a row each (default the model's
    # own; xla,megastep: the whole step as one kernel, one graph node a step instead of ~100, since
    # the frame's launch now costs about 2.5 us a node: NOTES.md).
    ae_conv) persistent_cache
      timeout ${AE_CONV_S:-240} python3 experiments/benchmark_stream.py --checkpoint=${AE_CHECKPOINT:-checkpoints/lsd_small} \
        --sizes=small --soak_size= --iters=${AE_CONV_ITERS:-2000} --ae_conv=${AE_CONV_CONVS:-xla,gemm} --bake_params=false,true \
        --kernel_impl=${AE_CONV_IMPLS:-} --out_dir="$OUT" 2>&1 \
        | grep -v -E "^[IW][0-9]{4}" | tail -8;;
    # timeline (issue 17 items 1 and 4): where a call's host-to-host time goes (experiments/launch_timeline.py:
    # jax.profiler traces, CUDA API calls, graph launches, memcpys, device gaps), XLA vs mosaic. A profiler
    # session makes XLA run its command buffers op by op unless --xla_enable_command_buffers_during_profiling,
    # so the first three runs trace with it (what an untraced call launches): small at 256x256 (the step,
    # then the shipped model's stream frame; random small weights where the model is in neither the tree
    # nor /tmp/teacher), the large step at 832x480 (S = 1) one process per implementation (its compile is
    # slow; a time-out keeps the variants before it); the last traces the small step in XLA's default
    # mode (op by op). The stream frame runs with each of TL_AE_CONV (xla,gemm: the autoencoder's
    # convolutions as cuDNN calls / as GEMMs), then (TL_BAKE=1) with its weights baked in. At most
    # TL_SMALL_S + TL_BAKE_S + 2 x TL_LARGE_S + TL_OPS_S = 385 s;
    # TL_SMALL / TL_LARGE (size:WxH), TL_IMPLS, TL_ITERS, TL_CHECKPOINT ('' : random weights) for other runs.
    timeline) persistent_cache
      tl=${TL_DIR:-/tmp/timeline}; rm -rf "$tl"; mkdir -p "$tl"
      small=${TL_SMALL:-small:256x256} large=${TL_LARGE:-large:832x480} impls=${TL_IMPLS:-xla,mosaic}
      if [ -n "${TL_CHECKPOINT+set}" ]; then ck=$TL_CHECKPOINT; else ck=
        for d in checkpoints/lsd_small /tmp/teacher; do [ -r "$d/params.safetensors" ] && { ck=$d; break; }; done
      fi
      tl_args=(--iters=${TL_ITERS:-20} --out_dir="$tl")
      graphs="${XLA_FLAGS:-} --xla_enable_command_buffers_during_profiling=true"
      XLA_FLAGS=$graphs timeout ${TL_SMALL_S:-140} python3 -m experiments.launch_timeline --impls="$impls" \
        --sizes=${small%%:*} --resolutions=${small##*:} --what=step,stream --checkpoint="$ck" \
        --ae_conv=${TL_AE_CONV:-xla,gemm} "${tl_args[@]}" \
        > "$tl/small.log" 2>&1; echo "timeline small: exit $?"
      # the stream frame again with its weights baked in (--bake_params), XLA: what the call-to-launch time loses
      if [ "${TL_BAKE:-1}" = 1 ]; then XLA_FLAGS=$graphs timeout ${TL_BAKE_S:-60} python3 -m experiments.launch_timeline \
        --impls=xla --sizes=${small%%:*} --resolutions=${small##*:} --what=stream --checkpoint="$ck" \
        --ae_conv=${TL_AE_CONV:-xla,gemm} --bake_params "${tl_args[@]}" > "$tl/small_baked.log" 2>&1
        echo "timeline small baked: exit $?"; fi
      for impl in ${impls//,/ }; do
        XLA_FLAGS=$graphs timeout ${TL_LARGE_S:-70} python3 -m experiments.launch_timeline --impls=$impl \
          --sizes=${large%%:*} --resolutions=${large##*:} --what=step "${tl_args[@]}" > "$tl/large_$impl.log" 2>&1
        echo "timeline large $impl: exit $?"
      done
      timeout ${TL_OPS_S:-45} python3 -m experiments.launch_timeline --impls="$impls" --sizes=${small%%:*} \
        --resolutions=${small##*:} --what=step "${tl_args[@]}" > "$tl/small_op_by_op.log" 2>&1
      echo "timeline small op by op: exit $?"
      pack_timeline "$tl"
      if [ -f "$tl/timeline.md" ]; then grep -v -E "^\| /(host|device)" "$tl/timeline.md" | head -150
      else tail -20 "$tl/small.log"; fi;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
