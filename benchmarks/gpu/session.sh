#!/usr/bin/env bash
# One GPU session in one command: build with CUDA, then the stages named on the command line.
#   bash benchmarks/gpu/session.sh test sanitize bench_step bench_generate bench_train
# DEADLINE (seconds, default 580) caps one call; the device allows 600 s per command. A task
# now gets 15 minutes of device time in all, the machine's start included: plan ONE call that
# checks the kernels first and measures second, then give the machine back, e.g.
#   DEADLINE=540 bash benchmarks/gpu/session.sh test bench_step sanitize phase_probe
# (test: the CUDA step op and generate against the reference, incl. the confidence rule of
# csrc/kernels/confidence.h that no GPU has run yet, near one-hot rows in test_step_fuzz.py;
# bench_step: the issue's step targets).
# With more time, the longer plan of earlier sessions (the device's copy of .git is the one
# from the session start, so results carry that commit):
#   DEADLINE=580 bash benchmarks/gpu/session.sh phase_probe diag test errors
#   DEADLINE=580 bash benchmarks/gpu/session.sh bench_step phase_probe_mma phase_probe_grid sanitize
#   DEADLINE=580 bash benchmarks/gpu/session.sh phase_probe_knobs   (unroll / batch macros, 5 builds)
#   DEADLINE=580 bash benchmarks/gpu/session.sh bench_generate_ab folded_gqa
#   DEADLINE=580 bash benchmarks/gpu/session.sh graph_windows_ab   (graphed windows: 4 vs 1)
#   DEADLINE=580 bash benchmarks/gpu/session.sh bench_train bench_train_7b
#   DEADLINE=580 bash benchmarks/gpu/session.sh bench_train_autocast bench_train   (train --bf16 vs bf16 weights)
# phase_probe (~1-2 min; builds its own .so, compares with the op when the build worked) goes
# first: where the fixed ~30 us of each launch go is the open question, and stages run in the
# order given until DEADLINE. diag follows: Nsight Compute's warp stall reasons (WarpStateStats)
# and the source lines where warps stall (SourceCounters; the build has -lineinfo) at B = 1 and 64
# tell a memory stall from an instruction-fetch stall (a 255 KB kernel) or a barrier wait.
# Result JSON goes to $OUT (default ./gpu_out), stage logs to $OUT/logs.tgz (the device tool
# brings back at most 8 files). Each stage has its own time limit so that one hang does not
# eat the others; a failing stage is reported and the next one runs.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
summary() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

stage() {  # stage NAME SECONDS COMMAND...; never runs past DEADLINE seconds after the start
  local name=$1 limit=$2; shift 2
  # -k: a stage stuck in a CUDA call (a hung kernel) never runs Python's SIGTERM handler; it is
  # killed 10 s later, so the stages after it and the summary still fit before DEADLINE.
  local left=$(( ${DEADLINE:-580} - SECONDS - 10 ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then summary "skip $name (no time left)"; return; fi
  summary "start $name"
  timeout -k 10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  local rc=$?
  summary "end $name rc=$rc"
  tail -n 15 "$OUT/logs/$name.log"
}

nvidia-smi -L | tee -a "$OUT/summary.txt"
# setuptools too: setup.py gives the license as an SPDX expression from 77 on, as free text before.
python3 -c "import torch, transformers, setuptools, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'setuptools', setuptools.__version__)" | tee -a "$OUT/summary.txt"
# Build in place for the H100/H200 only: one arch keeps the build short.
SUPERTHOUGHTS_CUDA_ARCHS=${SUPERTHOUGHTS_CUDA_ARCHS:-90a} MAX_JOBS=16 \
  stage build 400 python3 setup.py build_ext --inplace
python3 -c "import superthoughts_ext as s; print(s.build_info())" 2>&1 | tee -a "$OUT/summary.txt"

for what in "$@"; do
  case $what in
    test) stage test 400 python3 -m pytest -q -p no:cacheprovider python_tests/test_step.py python_tests/test_step_fuzz.py \
            python_tests/test_step_row_seeds.py python_tests/test_step_cuda_host.py python_tests/test_generate_io.py python_tests/test_generate.py python_tests/test_generate_edge_cases.py \
            python_tests/test_generate_cli.py python_tests/test_mtp_next_token.py \
            -k "not bad_input and not mixed_devices and not emulated" ;;  # the CPU emulation runs in CI
    errors)  # the op's error path (a C++ exception through the dispatcher), with a backtrace on a crash
      stage errors 120 cuda-gdb -q -batch -ex run -ex bt --args python3 -m pytest -q -p no:cacheprovider \
        python_tests/test_step_inputs.py -k "bad_input or mixed_devices" ;;
    phase_probe)  # where one launch's time goes: globaltimer stamps per phase + ablation kernels
      stage phase_probe 200 python3 benchmarks/gpu/phase_probe.py --output "$OUT/phase_probe.json"
      [ -f "$OUT/logs/phase_probe.log" ] && sed -n '/^== summary/,$p' "$OUT/logs/phase_probe.log" ;;
    phase_probe_mma)  # the same with the tensor-core merge forced at small B (the planner uses a GEMV up to B = 16)
      stage phase_probe_mma 150 python3 benchmarks/gpu/phase_probe.py --batch 1 8 16 --merge-path mma \
        --output "$OUT/phase_probe_mma.json"
      [ -f "$OUT/logs/phase_probe_mma.log" ] && sed -n '/^== summary/,$p' "$OUT/logs/phase_probe_mma.log" ;;
    phase_probe_grid)  # fewer blocks than the planner's (every resident one) at small and mid B: fewer
      # partials per row and fewer blocks at the barrier against less phase-1 bandwidth
      stage phase_probe_grid 200 python3 benchmarks/gpu/phase_probe.py --batch 1 8 64 --dtype bf16 \
        --hidden 1536 --grid 0 132 66 33 --iters 20 --max-seconds 150 --output "$OUT/phase_probe_grid.json"
      [ -f "$OUT/logs/phase_probe_grid.log" ] && sed -n '/^== summary/,$p' "$OUT/logs/phase_probe_grid.log" ;;
    phase_probe_knobs)  # the kernel's tuning macros (step_vocab.cuh) against their defaults, one build each
      for knob in DEFAULTS SUPERTHOUGHTS_LOGIT_UNROLL=2 SUPERTHOUGHTS_LOGIT_UNROLL=8 SUPERTHOUGHTS_PARTIAL_BATCH=8 \
          SUPERTHOUGHTS_GEMV_CHUNKS=2; do
        define=(); [ $knob != DEFAULTS ] && define=(--define $knob)
        name=${knob#SUPERTHOUGHTS_}; name=${name//=/_}  # the device brings back [A-Za-z0-9._-] names only
        stage "knob_$name" 110 python3 benchmarks/gpu/phase_probe.py --batch 1 64 256 --dtype bf16 --hidden 1536 \
          --iters 20 --max-seconds 50 "${define[@]}" --output "$OUT/phase_probe_knob_$name.json"
      done ;;
    profile) stage profile 200 ncu --kernel-name regex:superthoughts_step --section SpeedOfLight \
        --section LaunchStats --section Occupancy python3 benchmarks/gpu/profile_step.py ;;
    sanitize)
      for tool in memcheck racecheck synccheck; do
        small=""; [ $tool != memcheck ] && small=--small
        stage "sanitize_$tool" 300 compute-sanitizer --tool $tool --error-exitcode 9 \
          python3 benchmarks/gpu/sanitize_step.py $small
      done ;;
    bench_step) stage bench_step 400 python3 benchmarks/bench_step.py --output "$OUT/step_cuda.json" ;;
    bench_generate) stage bench_generate 580 python3 benchmarks/bench_generate.py \
        --repeats 2 --output "$OUT/generate_cuda.json" ${GENERATE_ARGS:-} ;;
    bench_generate_ab)  # generate's compiled decode step against the uncompiled one (batch 1 and 32)
      stage bench_generate_compile 330 python3 benchmarks/bench_generate.py --repeats 2 --batch 1 32 \
        --methods hf_static_compile standard pairs st@0.9 --thresholds 0.9 --compile \
        --output "$OUT/generate_cuda_compile.json"
      stage bench_generate_no_compile 200 python3 benchmarks/bench_generate.py --repeats 2 --batch 1 32 \
        --methods standard pairs --no-compile --output "$OUT/generate_cuda_no_compile.json" ;;
    graph_windows_ab)  # graphed steps attending over quarters of the cache vs over all of it, long outputs
      for windows in 4 1; do
        stage graph_windows_$windows 240 python3 benchmarks/bench_generate.py --repeats 2 --batch 32 \
          --new-tokens 2048 --methods standard st@0.9 --thresholds 0.9 --graph-windows $windows \
          --output "$OUT/generate_cuda_graph_windows_$windows.json"
      done ;;
    folded_gqa)  # generate's folded grouped-query decode attention on the GPU: token agreement, then speed
      # test_generate_io.py holds the tests that decode on the GPU (the others build CPU models)
      SUPERTHOUGHTS_FOLDED_GQA=1 stage folded_gqa_test 200 python3 -m pytest -q -p no:cacheprovider \
        python_tests/test_generate_io.py python_tests/test_generate.py python_tests/test_generate_edge_cases.py \
        python_tests/test_attention.py -k "not emulated"
      SUPERTHOUGHTS_FOLDED_GQA=1 stage folded_gqa_bench 300 python3 benchmarks/bench_generate.py --repeats 2 \
        --batch 1 32 --methods standard pairs --no-compile --output "$OUT/generate_cuda_folded_gqa.json" ;;
    bench_train) stage bench_train 400 python3 benchmarks/bench_train.py --shapes 1.5b --output "$OUT/train_cuda.json" ;;
    bench_train_autocast)  # float32 weights under bf16 autocast, as `train --bf16` trains (never timed on a GPU):
      # the chunked CE's in-place grad_weight addmm_ escapes autocast and runs in float32
      # (head_losses._add_chunk_grads). head_gemm_dtypes times that GEMM against bf16 (seconds);
      # the step's own time is to be set against bench_train's (bf16 weights) on the same shape.
      stage head_gemm_dtypes 60 python3 benchmarks/gpu/head_gemm_dtypes.py --output "$OUT/head_gemm_dtypes.json"
      stage bench_train_autocast 400 python3 benchmarks/bench_train.py --shapes 1.5b --rho-max 0.25 \
        --precision bf16-autocast --output "$OUT/train_cuda_autocast.json" ;;
    bench_train_7b) stage bench_train_7b 400 python3 benchmarks/bench_train.py --shapes 7b --rho-max 0.25 \
        --output "$OUT/train_cuda_7b.json" ;;
    diag)  # which C++ runtime the module links, and where the B = 1 kernel's time goes
      stage diag 120 bash -c 'which -a g++; g++ --version | head -1; g++ -v 2>&1 | grep -o "with-static[^ ]*";
        ldd superthoughts_ext/_C*.so | grep -i "stdc\|gcc";
        echo "locale symbols defined in _C: $(nm -C --defined-only superthoughts_ext/_C*.so | grep -c "std::locale::")";
        ncu --kernel-name regex:superthoughts_step --section SpeedOfLight --section WarpStateStats \
          --section MemoryWorkloadAnalysis --section SchedulerStats --section SourceCounters \
          python3 benchmarks/gpu/profile_step.py 1:1536:bf16 64:1536:bf16' ;;
    dynamic_libstdcxx)  # CPU-only rebuild linking the shared libstdc++ first, then the error-path tests
      LDFLAGS="-Wl,--no-as-needed -lstdc++" SUPERTHOUGHTS_WITH_CUDA=0 MAX_JOBS=16 \
        stage rebuild_cpu 200 python3 setup.py build_ext --inplace -b /tmp/b2 -t /tmp/t2
      stage errors_dynamic 120 bash -c 'echo "locale symbols defined in _C: $(nm -C --defined-only superthoughts_ext/_C*.so | grep -c "std::locale::")";
        python3 -m pytest -q -p no:cacheprovider python_tests/test_step_inputs.py -k "bad_input"' ;;
    *) summary "unknown stage $what" ;;
  esac
done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -r "$OUT/logs"
cat "$OUT/summary.txt"
