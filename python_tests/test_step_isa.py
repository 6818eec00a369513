"""The CPU step kernel under every vector instruction set this CPU can run.

The kernel picks the fastest variant (AVX-512, AVX2+FMA, AVX+FMA, baseline x86-64) once per
process, so the main suite only exercises one of them. Each other variant reruns the step
tests that reach the vector code (reduction, argmax search, merge projection, sampling, NaN)
in a subprocess with SUPERTHOUGHTS_CPU_ISA set, and the randomised cases of test_step_fuzz.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import superthoughts_ext

VARIANTS = ["avx512", "avx2_fma", "avx_fma", "baseline"]
VECTOR_TESTS = ("cpu and (greedy_matches_reference or merge_odd_sizes or nan_and_inf or far_below_the_max or strided "
                "or sampling_matches_reference or thresholds or random_case or widens_every_float16)")
STEP_TESTS = [str(Path(__file__).with_name(name)) for name in ("test_step.py", "test_step_fuzz.py")]


def run_with_isa(isa: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUPERTHOUGHTS_CPU_ISA": isa}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


def chosen_isa(isa: str) -> subprocess.CompletedProcess:
    return run_with_isa(isa, "-c", "import superthoughts_ext; print(superthoughts_ext.build_info()['cpu_vector_isa'])")


@pytest.mark.parametrize("isa", VARIANTS)
def test_step_kernel_under_each_vector_isa(isa):
    if isa == superthoughts_ext.build_info()["cpu_vector_isa"]:
        pytest.skip(f"{isa} is this process's variant: the main step tests cover it")
    probe = chosen_isa(isa)
    if "is not a vector kernel variant this CPU can run" in probe.stderr:
        pytest.skip(f"this CPU cannot run {isa}")
    assert probe.returncode == 0 and probe.stdout.strip() == isa, probe.stderr[-2000:]
    result = run_with_isa(isa, "-m", "pytest", "-q", "-p", "no:cacheprovider", *STEP_TESTS, "-k", VECTOR_TESTS)
    assert result.returncode == 0, f"step tests failed under SUPERTHOUGHTS_CPU_ISA={isa}:\n{result.stdout[-4000:]}"


def test_unknown_isa_override_is_a_clear_error():
    code = (
        "import torch, superthoughts_ext.ops as ops\n"
        "ops.superthoughts_step(torch.zeros(2, 1, 7), torch.zeros(7, 4), None, None, "
        "torch.zeros(1, dtype=torch.bool), 0, 1, 0.5, 0.0, 0.0, 0, 0)\n"
    )
    result = run_with_isa("sse9", "-c", code)
    assert result.returncode != 0
    assert "SUPERTHOUGHTS_CPU_ISA=sse9" in result.stderr and "baseline" in result.stderr
