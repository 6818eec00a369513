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
                "or sampling_matches_reference or thresholds or random_case or widens_every_float16 or tied_maxima "
                "or equal_terms)")
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


def cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


def test_16bit_matmul_follows_the_cpu_flags_and_the_variant():
    # The CPU kernel hands 16-bit merges to torch's GEMM only where the CPU multiplies that type
    # in hardware; a forced lesser variant (a stand-in for an older CPU) keeps them in the loop.
    info = superthoughts_ext.build_info()
    flags = cpu_flags()
    if flags is None or info["cpu_vector_isa"] != "avx512":
        pytest.skip("needs an AVX-512 x86 CPU with /proc/cpuinfo")
    expected = [name for name, flag in (("bfloat16", "avx512_bf16"), ("float16", "avx512_fp16")) if flag in flags]
    assert info["cpu_16bit_matmul"] == expected
    code = "import superthoughts_ext; print(superthoughts_ext.build_info()['cpu_16bit_matmul'])"
    forced = run_with_isa("avx2_fma", "-c", code)
    assert forced.returncode == 0 and forced.stdout.strip() == "[]", forced.stderr[-2000:]
