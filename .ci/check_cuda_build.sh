#!/usr/bin/env bash
# A whole CUDA build of the extension on a machine without a GPU: configure against a CUDA
# torch, compile, link, import, and check that the CUDA kernel is registered. check_cuda.sh
# compiles the sources only; this also runs torch's CMake config (which once stopped at a
# toolkit without libnvrtc) and the link against libtorch_cuda. Not part of `make test`: the
# CUDA torch takes several GB in its own virtualenv ($CUDA_VENV) and minutes to install.
# The module is built outside the checkout (the in-place one is the CPU build of the main
# venv); CMake's objects stay in build/cmake/<python>-<torch>-cuda/ for the next run.
# Env: CUDA_VENV (default .venv-cuda), CUDA_TORCH_VERSION (default 2.14.1, on the CPU machines'
# disk), SUPERTHOUGHTS_CUDA_ARCHS (default 90a: one arch keeps it short), PYTHON, CUDA_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CUDA_VENV=${CUDA_VENV:-.venv-cuda}
CUDA_TORCH_VERSION=${CUDA_TORCH_VERSION:-2.14.1}
PY="$CUDA_VENV/bin/python"
STAMP="$CUDA_VENV/.deps-installed-$CUDA_TORCH_VERSION"
if [[ ! -f "$STAMP" ]]; then
  "$PYTHON" -m venv "$CUDA_VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch==$CUDA_TORCH_VERSION"
  # Only what the build needs: the versions pinned for CI.
  "$PY" -m pip install -q $(grep -E '^(numpy|cmake|ninja|setuptools|wheel)\b' requirements-ci.txt)
  touch "$STAMP"
fi
if ! "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  echo "check_cuda_build: $CUDA_VENV has torch $("$PY" -c 'import torch; print(torch.__version__)'), a CPU-only build" >&2
  exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/lib"
cp -r superthoughts_ext "$WORK/lib/"
rm -f "$WORK"/lib/superthoughts_ext/_C*.so
echo "check_cuda_build: building with torch $("$PY" -c 'import torch; print(torch.__version__)') (archs ${SUPERTHOUGHTS_CUDA_ARCHS:-90a})"
SUPERTHOUGHTS_CUDA_ARCHS=${SUPERTHOUGHTS_CUDA_ARCHS:-90a} "$PY" setup.py -q build_ext -b "$WORK/lib" -t "$WORK/tmp"

cd "$WORK/lib"
"$PY" - <<'EOF'
import torch

import superthoughts_ext
import superthoughts_ext.ops  # noqa: F401  (loads the core and registers the op's Python side)

info = superthoughts_ext.build_info()
print("check_cuda_build: build_info", info)
assert info["with_cuda"], info
assert info["torch_version"] == torch.__version__.split("+")[0], (info, torch.__version__)
for key in ("CPU", "CUDA"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("superthoughts_ext::superthoughts_step", key), \
        f"no {key} kernel registered for superthoughts_ext::superthoughts_step"
print("check_cuda_build: OK: the CUDA build links, imports and registers CPU and CUDA kernels")
EOF
