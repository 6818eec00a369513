#!/usr/bin/env bash
# Compile-checks the CUDA sources on a machine without a GPU (and with a CPU-only torch):
#   1. csrc/cuda/*.cu against the headers of a CUDA build of torch, unpacked from a wheel on
#      disk into a cache folder (never installed: the shared venv keeps its CPU torch);
#   2. every csrc/kernels/*.cuh alone in a tiny translation unit without torch on the include
#      path, which proves the device headers are self-contained and torch-free;
#   3. benchmarks/gpu/*.cu (the phase probe, which includes the kernel headers);
#   4. CMakeLists.txt's CUDA configuration with its default archs (see step 4 below).
# Target: sm_90a (H100), C++20, warnings are errors. Nothing is linked or run.
# Env: NVCC (default: nvcc on PATH), TORCH_CUDA_WHEEL (default: newest torch-*.whl under
# /opt/pypi-more/files), PYTHON (default: python3), SUPERTHOUGHTS_CI_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
PYTHON=${PYTHON:-python3}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 2
fi
WHEEL=${TORCH_CUDA_WHEEL:-$(ls -1 /opt/pypi-more/files/torch-*-manylinux*_x86_64.whl 2>/dev/null | sort -V | tail -n 1 || true)}
if [[ -z "$WHEEL" || ! -f "$WHEEL" ]]; then
  echo "check_cuda: no CUDA torch wheel found (set TORCH_CUDA_WHEEL=/path/to/torch-*.whl)" >&2
  exit 2
fi

CACHE=${SUPERTHOUGHTS_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/superthoughts_ci}
HEADERS="$CACHE/torch-cuda-headers/$(basename "$WHEEL" .whl)"
if [[ ! -f "$HEADERS/.complete" ]]; then
  echo "check_cuda: unpacking torch/include from $(basename "$WHEEL") into $HEADERS"
  rm -rf "$HEADERS"
  mkdir -p "$HEADERS"
  "$PYTHON" - "$WHEEL" "$HEADERS" <<'EOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    zf.extractall(dest, [n for n in zf.namelist() if n.startswith("torch/include/")])
EOF
  touch "$HEADERS/.complete"
fi

PY_INCLUDE=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Same device flags as CMakeLists.txt (no --use_fast_math: the Gumbel noise and the softmax
# sums must track the CPU kernel). -Werror all-warnings turns nvcc and device-side warnings
# into errors; -Werror for the host compiler does the same for the glue. The host pass sees
# philox.h's device-only `#pragma unroll` (guarded by __CUDACC__), hence -Wno-unknown-pragmas.
COMMON=(-std=c++20 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
        -Werror all-warnings
        -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Wno-unknown-pragmas,-Werror
        -Icsrc)
TORCH_FLAGS=(-isystem "$HEADERS/torch/include"
             -isystem "$HEADERS/torch/include/torch/csrc/api/include"
             -isystem "$PY_INCLUDE"
             # What find_package(Torch) hands the CMake build; no __CUDA_NO_HALF_* defines
             # there, so none here (the device code uses explicit conversions either way).
             -D_GLIBCXX_USE_CXX11_ABI=1 -DSUPERTHOUGHTS_WITH_CUDA)

# The checks are independent; they run side by side (step.cu alone takes ~80 s of nvcc on the
# 2-core CI machine, the whole list ~160 s one after another). Each job's output is printed
# after all of them finish, in the order they were started.
jobs=()
start_job() {  # start_job NAME COMMAND...: runs COMMAND in the background, output to $WORK/job<n>.log
  local n=${#jobs[@]}
  jobs+=("$1")
  (set +e; "${@:2}" >"$WORK/job$n.log" 2>&1; echo $? >"$WORK/job$n.rc") &  # +e: the status is recorded
}

for cu in csrc/cuda/*.cu; do
  [[ -e "$cu" ]] || continue
  echo "check_cuda: nvcc $cu (torch $(basename "$HEADERS"))"
  start_job "$cu" "$NVCC" "${COMMON[@]}" "${TORCH_FLAGS[@]}" -c "$cu" -o "$WORK/$(basename "$cu").o"
done
for cuh in csrc/kernels/*.cuh; do
  [[ -e "$cuh" ]] || continue
  tu="$WORK/$(basename "$cuh").cu"
  printf '#include "%s"\n' "$PWD/$cuh" >"$tu"
  echo "check_cuda: nvcc $cuh alone (no torch headers)"
  start_job "$cuh" "$NVCC" "${COMMON[@]}" -c "$tu" -o "$tu.o"
done
# The GPU session's phase probe includes the kernel headers: it must build on the first try.
for cu in benchmarks/gpu/*.cu; do
  [[ -e "$cu" ]] || continue
  echo "check_cuda: nvcc $cu (GPU-session probe, no torch headers)"
  start_job "$cu" "$NVCC" "${COMMON[@]}" -c "$cu" -o "$WORK/$(basename "$cu").o"
done
# 4. CMake's own compile lines of a CUDA build with the default archs ("80;90a"), which the GPU
#    session (one arch) never uses: configured against PYTHON's torch (CPU here) with the CUDA
#    language on, then only the always-built C++ file compiled; the arch list reaches it as a
#    -D define (split at its ";" once, which broke every default CUDA build). Needs a PYTHON
#    with torch, cmake and ninja (the venv's; `make test` passes it).
cmake_default_archs() {
  local tools
  tools=$("$PYTHON" -c 'import cmake, ninja, sys, torch.utils, pathlib
print(pathlib.Path(cmake.CMAKE_BIN_DIR) / "cmake", pathlib.Path(ninja.BIN_DIR) / "ninja", torch.utils.cmake_prefix_path,
      sys.executable)')
  read -r CMAKE NINJA PREFIX PYTHON_PATH <<<"$tools"  # PYTHON may be relative; CMake wants a full path
  "$CMAKE" -S . -B "$WORK/cmake" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DPython3_EXECUTABLE="$PYTHON_PATH" -DSUPERTHOUGHTS_WITH_CUDA=ON \
    -DCMAKE_CUDA_COMPILER="$(command -v "$NVCC")" \
  && "$CMAKE" --build "$WORK/cmake" --target CMakeFiles/_C.dir/csrc/torch_bindings.cpp.o
}
if "$PYTHON" -c "import torch, cmake, ninja" 2>/dev/null; then
  echo "check_cuda: CMake CUDA build with the default archs (configure + csrc/torch_bindings.cpp)"
  start_job "CMakeLists.txt (default archs)" cmake_default_archs
else
  echo "check_cuda: skipping the CMake CUDA configure ($PYTHON lacks torch, cmake or ninja)"
fi
wait

status=0
checked=()
for n in "${!jobs[@]}"; do
  if [[ "$(cat "$WORK/job$n.rc" 2>/dev/null)" == 0 ]]; then
    checked+=("${jobs[$n]}")
  else
    echo "check_cuda: ${jobs[$n]} FAILED:" >&2
    tail -n 40 "$WORK/job$n.log" >&2
    status=1
  fi
done
if [[ ${#checked[@]} -eq 0 && $status -eq 0 ]]; then
  echo "check_cuda: nothing to check under csrc/cuda or csrc/kernels" >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "check_cuda: FAILED" >&2
  exit 1
fi
echo "check_cuda: OK (sm_90a): ${checked[*]}"
