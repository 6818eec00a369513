"""benchmarks/gpu/phase_probe.py's --define (the GPU session's tuning sweep) on a CPU: the knob
names come from the kernel header, and a misspelt or non-positive knob is refused before the
probe spends a GPU build on it."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_probe():
    spec = importlib.util.spec_from_file_location("phase_probe", REPO / "benchmarks" / "gpu" / "phase_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_knobs_are_the_header_macros_the_kernel_uses() -> None:
    knobs = load_probe().tuning_knobs()
    assert set(knobs) == {"SUPERTHOUGHTS_LOGIT_UNROLL", "SUPERTHOUGHTS_PARTIAL_BATCH", "SUPERTHOUGHTS_GEMV_CHUNKS"}
    assert all(value > 0 for value in knobs.values())
    kernels = "".join(p.read_text() for p in (REPO / "csrc" / "kernels").glob("*.cuh"))
    for name in knobs:  # each macro feeds a constexpr, else --define would change nothing
        assert re.search(rf"constexpr int \w+ = {name};", kernels), name


def test_define_accepts_a_knob_and_refuses_the_rest(capsys) -> None:
    probe = load_probe()
    args = probe.parse_args(["--define", "SUPERTHOUGHTS_LOGIT_UNROLL=8", "--define", "SUPERTHOUGHTS_GEMV_CHUNKS=2"])
    assert args.define == ["SUPERTHOUGHTS_LOGIT_UNROLL=8", "SUPERTHOUGHTS_GEMV_CHUNKS=2"]
    for bad in ["SUPERTHOUGHTS_LOGIT_UNRO=8", "SUPERTHOUGHTS_LOGIT_UNROLL=0", "SUPERTHOUGHTS_LOGIT_UNROLL", "NDEBUG=1"]:
        with pytest.raises(SystemExit):
            probe.parse_args(["--define", bad])
        assert f"got '{bad}'" in capsys.readouterr().err
