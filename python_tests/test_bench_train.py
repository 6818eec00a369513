"""Smoke test of benchmarks/bench_train.py: every mode runs, passes its loss check, and the
report holds the speedups and per-mode costs a reader compares; bad sizes are refused up front."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from superthoughts_ext.bench_cli import load_benchmark


def test_bench_train_smoke_both_mtp_types(tmp_path: Path) -> None:
    bench = load_benchmark("train")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "train.json"
    args = parser.parse_args(["--shapes", "tiny", "--batch-size", "2", "--seq-len", "48", "--prompt-len", "8",
                              "--warmup", "3", "--min-time", "0.2", "--rounds", "1", "--rho-max", "0.25",
                              "--mtp-types", "decoder", "mlp", "--output", str(out)])
    assert bench.main(args) == 0
    assert json.loads(out.read_text())["complete"]
    row = json.loads(out.read_text())["shapes"]["tiny"]
    modes = {"baseline", "baseline_chunked_ce", "superthoughts_rho0.25", "superthoughts_mlp_rho0.25"}
    assert modes <= set(row)
    for mode in modes - {"baseline"}:
        assert row[mode]["speedup"] > 0 and row[mode]["response_tokens_per_s"] > 0
    for mode in ("superthoughts_rho0.25", "superthoughts_mlp_rho0.25"):
        # Two response tokens per unit: the backbone sees fewer positions than plain SFT.
        assert row[mode]["backbone_positions_per_step"] < row["baseline"]["backbone_positions_per_step"]
        assert row[mode]["speedup_same_loss"] > 0
    # The MLP MTP block has no attention and no cache: fewer parameters than a decoder layer.
    assert row["superthoughts_mlp_rho0.25"]["params"] < row["superthoughts_rho0.25"]["params"]


def test_bad_sizes_are_refused_before_any_model_is_built(capsys) -> None:
    bench = load_benchmark("train")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for options, message in ((["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
                             (["--rho-max", "0.25", "2"], r"argument --rho-max: must lie in \[0, 1\], got 2"),
                             (["--min-time", "-5"], "argument --min-time: must be a finite number > 0, got -5"),
                             (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan")):
        with pytest.raises(SystemExit):
            parser.parse_args(options)
        err = capsys.readouterr().err
        assert re.search(message, err), err
    # A prompt as long as the sequence left one-token responses, timed without a word.
    with pytest.raises(SystemExit, match=r"--prompt-len \(16\) must be below --seq-len \(8\)"):
        bench.main(parser.parse_args(["--seq-len", "8", "--prompt-len", "16"]))


def test_ratios_skip_modes_that_ran_out_of_memory() -> None:
    bench = load_benchmark("train")
    row = {
        "baseline": {"response_tokens_per_s": 100.0, "step_ms": 10.0, "matmul_gflop_per_step": 8.0},
        "baseline_chunked_ce": {"response_tokens_per_s": 125.0, "step_ms": 8.0, "matmul_gflop_per_step": 8.0},
        "superthoughts_rho0.25": {"response_tokens_per_s": 250.0, "step_ms": 4.0, "matmul_gflop_per_step": 5.0},
        "superthoughts_rho0": {"error": "out of memory: CUDA out of memory"},
    }
    bench.add_ratios(row)
    st = row["superthoughts_rho0.25"]
    assert (st["speedup"], st["flop_ratio"], st["speedup_same_loss"]) == (2.5, 1.6, 2.0)
    assert row["baseline_chunked_ce"]["speedup"] == 1.25 and "speedup_same_loss" not in row["baseline_chunked_ce"]
    assert "speedup" not in row["baseline"]
    assert row["superthoughts_rho0"] == {"error": "out of memory: CUDA out of memory"}
    assert bench.describe(row["superthoughts_rho0"]) == "out of memory: CUDA out of memory"
    assert bench.describe(st).endswith("speedup 2.50x (FLOPs 1.60x), 2.00x same loss")
    # A baseline that ran out of memory leaves nothing to compare against.
    row = {"baseline": {"error": "out of memory"}, "baseline_chunked_ce": {"error": "out of memory"},
           "superthoughts_rho0.25": {"response_tokens_per_s": 250.0, "step_ms": 4.0}}
    bench.add_ratios(row)
    assert set(row["superthoughts_rho0.25"]) == {"response_tokens_per_s", "step_ms"}
