"""benchmarks/bench_mtp_input.py's results file: checked and held before its hour of training."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_mtp_input", REPO / "benchmarks" / "bench_mtp_input.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_recorded_results_file_is_refused_before_any_training(tmp_path, monkeypatch) -> None:
    module = bench_module()
    monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    (tmp_path / "mtp_input_demo_cpu.json").write_text("{}")
    ran: list[Path | None] = []
    monkeypatch.setattr(module, "run", lambda args, path: ran.append(path) or 0)
    args = argparse.Namespace(only=None, output=None, overwrite=False)
    with pytest.raises(SystemExit, match="holds a recorded run; give --output PATH"):
        module.main(args)
    assert ran == []  # refused before training, not after it
    given = tmp_path / "mine.json"
    assert module.main(argparse.Namespace(only=None, output=given, overwrite=False)) == 0
    # A training phase alone writes no results, so needs no free results file.
    assert module.main(argparse.Namespace(only="unit", output=None, overwrite=False)) == 0
    assert ran == [given, None]
