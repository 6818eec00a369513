"""The CUDA emulation's fiber switch (csrc/emulation/fiber_switch.h).

x86-64 builds switch fibers by swapping stack pointers; other machines (and builds with
control-flow enforcement) fall back to ucontext. That fallback is built and run here with
SUPERTHOUGHTS_EMULATION_UCONTEXT=1, so it does not rot on CI's x86-64 machines.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cuda_emulation

pytestmark = pytest.mark.skipif(cuda_emulation.cuda_include_dir() is None,
                                reason="the CUDA emulation needs the CUDA toolkit's headers")


def test_default_build_switches_stacks_on_x86_64():
    kind = cuda_emulation.library().superthoughts_emulation_fiber_switch().decode()
    if os.environ.get("SUPERTHOUGHTS_EMULATION_UCONTEXT") == "1":
        assert kind == "ucontext"
    elif platform.machine() in ("x86_64", "AMD64"):
        assert kind in ("stack", "ucontext")  # ucontext under a compiler that enables CET shadow stacks
        cet = subprocess.run([os.environ.get("CXX", "g++"), "-dM", "-E", "-x", "c++", "/dev/null"],
                             capture_output=True, text=True).stdout
        if "__CET__" not in cet:
            assert kind == "stack"
    else:
        assert kind == "ucontext"


def test_ucontext_fibers_run_the_emulated_step_tests():
    # Grids of 1 to 80 blocks, shuffled thread orders, warp shuffles, mma tiles and sampling.
    selection = "emulated and (grid_sizes or keyed or eos_and_finished)"
    env = {**os.environ, "SUPERTHOUGHTS_EMULATION_UCONTEXT": "1"}
    tests = [str(Path(__file__).with_name("test_step.py")), str(Path(__file__))]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, "-k",
                             f"({selection}) or test_default_build_switches_stacks_on_x86_64"],
                            env=env, capture_output=True, text=True, timeout=900)
    report = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, report
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == 23, report  # 20 grid cases, 2 others, the switch kind
