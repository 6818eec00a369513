"""The CUDA step kernel's memory accesses, checked without a GPU.

Reruns the emulated step tests (device cuda_emulated in test_step.py, the random shapes,
strides and grids of test_step_fuzz.py, the per-row seeds of test_step_row_seeds.py) in a subprocess whose
emulated kernel is built with AddressSanitizer and UBSan (python_tests/cuda_emulation.py):
a read or write past any input, output or workspace buffer, or undefined behaviour in the
kernel's index arithmetic, aborts that run. compute-sanitizer's memcheck on a GPU covers the
same ground for the compiled kernel (benchmarks/gpu/session.sh sanitize).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_emulation

STEP_TESTS = [Path(__file__).with_name(name) for name in ("test_step.py", "test_step_fuzz.py", "test_step_row_seeds.py")]


def address_sanitizer_runtime() -> str | None:
    cxx = os.environ.get("CXX", "g++")
    try:
        found = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


def test_emulated_cuda_kernel_under_address_sanitizer():
    if cuda_emulation.cuda_include_dir() is None:
        pytest.skip("the CUDA emulation needs the CUDA toolkit's headers")
    runtime = address_sanitizer_runtime()
    if runtime is None:
        pytest.skip("the C++ compiler has no AddressSanitizer runtime (libasan.so)")
    env = {
        **os.environ,
        "LD_PRELOAD": runtime,  # ASan must come first; the sanitized library is loaded later by ctypes
        "ASAN_OPTIONS": "detect_leaks=0",  # Python and torch keep allocations until exit by design
        "SUPERTHOUGHTS_EMULATION_SANITIZE": "1",
    }
    # Every emulated case, the largest (B = 64 at V = 151936, the 2048-row noise check) included:
    # 100 s on the 2-core CI machine, the library's build included.
    selection = "emulated"
    # --capture=sys: ASan writes its report to file descriptor 2 and exits; pytest's default
    # capture holds that descriptor in a temporary file that is lost with the process.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", *map(str, STEP_TESTS),
               "-k", selection]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=2700)
    report = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"emulated kernel under AddressSanitizer/UBSan failed:\n{report}"
    assert " passed" in result.stdout and "AddressSanitizer: " not in result.stderr, report
