"""Smoke test of benchmarks/bench_train.py: every mode runs, passes its loss check, and the
report holds the speedups and per-mode costs a reader compares; bad sizes are refused up front;
a run says what it will measure and prints (and writes) each mode as soon as it is measured."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from superthoughts_ext import bench_cli, cli
from superthoughts_ext.bench_cli import load_benchmark


# A few seconds' run of the tiny shape, one thread.
TINY_RUN = ("--shapes", "tiny", "--batch-size", "2", "--seq-len", "48", "--prompt-len", "8", "--warmup", "3",
            "--rho-max", "0.25", "--threads", "1")


def _bench_and_parser():
    """bench_train's module and a parser of its options."""
    bench = load_benchmark("train")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench, parser


def test_bench_train_smoke_both_mtp_types(tmp_path: Path, monkeypatch, capsys) -> None:
    bench, parser = _bench_and_parser()
    out = tmp_path / "train.json"
    args = parser.parse_args([*TINY_RUN, "--min-time", "0.2", "--rounds", "2", "--mtp-types", "decoder", "mlp",
                              "--output", str(out)])
    timings = []  # per timed round of a mode: (modes in the JSON, output printed) just before it
    real_time_cpu = bench.time_cpu

    def time_cpu(step, min_time):
        written = json.loads(out.read_text())["shapes"]["tiny"] if out.exists() else {}
        timings.append((list(written), capsys.readouterr().out))
        return real_time_cpu(step, min_time)

    monkeypatch.setattr(bench, "time_cpu", time_cpu)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that asking for 1 changes something on any machine
    try:
        assert bench.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    printed = "".join(text for _, text in timings) + capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["complete"] and report["threads"] == 1
    in_order = list(bench.mode_table(args))
    # It says up front what it will measure; each mode is built and warmed up before any timing.
    assert printed.startswith(f"bench train: shapes tiny; modes {' '.join(in_order)}; batch 2 x 48 tokens; "
                              "precision fp32; 3 warmup steps, then 2 alternating round(s) of >= 0.1 s per mode "
                              "(--min-time 0.2 s in all), 1 threads\n"), printed
    for mode in in_order:
        assert re.search(rf"tiny +{re.escape(mode)}: built, loss \S+ -> \S+ over 3 warmup steps", timings[0][1])
    # In the last round each mode is printed and written once timed, before the next one's timing.
    assert [written for written, _ in timings] == [[]] * len(in_order) + [in_order[:k] for k in range(len(in_order))]
    for k, mode in enumerate(in_order):
        shown = timings[len(in_order) + k + 1][1] if k + 1 < len(in_order) else printed
        speedup = "" if mode == "baseline" else r"  speedup \d+\.\d\dx"
        assert re.search(rf"tiny +{re.escape(mode)}: +\d+\.\d tok/s +\d+\.\d ms/step .*GFLOP{speedup}\n", shown), shown
    row = report["shapes"]["tiny"]
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
    assert (report["precision"], report["dtype"], report["autocast"]) == ("fp32", "float32", None)


def test_bench_train_bf16_autocast_trains_float32_weights_under_autocast(tmp_path: Path, monkeypatch) -> None:
    # `train --bf16`: float32 weights, the forward (loss included) under bfloat16 autocast, backward
    # and AdamW outside it; the loss must still fall over the warmup.
    bench, parser = _bench_and_parser()
    out = tmp_path / "train.json"
    args = parser.parse_args([*TINY_RUN, "--min-time", "0.1", "--rounds", "1", "--precision", "bf16-autocast",
                              "--output", str(out)])
    seen = []  # (weight dtype, autocast on) at each forward
    real_make_step = bench.make_step

    def make_step(model, batch, lr, autocast=False):
        forward = model.forward

        def watched(*a, **k):
            seen.append((next(model.parameters()).dtype, torch.is_autocast_enabled("cpu")))
            return forward(*a, **k)

        model.forward = watched
        return real_make_step(model, batch, lr, autocast)

    monkeypatch.setattr(bench, "make_step", make_step)
    threads = torch.get_num_threads()
    try:
        assert bench.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert (report["precision"], report["dtype"], report["autocast"]) == ("bf16-autocast", "float32", "bfloat16")
    assert seen and set(seen) == {(torch.float32, True)}
    for mode, r in report["shapes"]["tiny"].items():
        if isinstance(r, dict):
            assert r["warmup_loss"][-1] < r["warmup_loss"][0] and r["response_tokens_per_s"] > 0, mode


def test_bad_sizes_are_refused_before_any_model_is_built(capsys) -> None:
    bench, parser = _bench_and_parser()
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


def test_threads_below_one_are_refused_at_parse_time(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "train", "--threads", "0"])
    assert exited.value.code == 2
    assert "argument --threads: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("options, expected", [(["--threads", "1"], 1), ([], 3)])
def test_threads_reach_the_run_through_the_console_script(tmp_path: Path, monkeypatch, capsys, options,
                                                          expected) -> None:
    # Without --threads the run keeps torch's count (3 here: an odd one, which a count the run
    # set itself would change).
    bench = load_benchmark("train")

    def bench_shape(shape, args, device, measured):
        row = {}
        for mode, tokens_per_s in (("baseline", 100.0), ("baseline_chunked_ce", 125.0),
                                   ("superthoughts_rho0.25", 250.0)):
            row[mode] = {"response_tokens_per_step": 1, "response_tokens_per_s": tokens_per_s,
                         "step_ms": 1e3 / tokens_per_s}
            measured(mode, row)
        return row

    monkeypatch.setattr(bench, "bench_shape", bench_shape)
    monkeypatch.setattr(bench_cli, "load_benchmark", lambda area: bench)
    out = tmp_path / "train.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert cli.main(["bench", "train", "--shapes", "tiny", "--rho-max", "0.25", *options,
                         "--output", str(out)]) == 0
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert used == expected and json.loads(out.read_text())["threads"] == expected
    printed = capsys.readouterr().out
    assert f"(--min-time 12 s in all), {expected} threads\n" in printed
    # The speedup over the baseline is known as soon as the baseline is measured.
    assert re.search(r"tiny +baseline: +100\.0 tok/s +10\.0 ms/step +\(FLOPs not counted\)\n", printed)
    assert re.search(r"tiny +superthoughts_rho0\.25: +250\.0 tok/s +4\.0 ms/step +\(FLOPs not counted\)"
                     r"  speedup 2\.50x\n", printed)


def test_ratios_skip_modes_that_ran_out_of_memory() -> None:
    bench = load_benchmark("train")
    row = {
        "baseline": {"response_tokens_per_step": 1, "response_tokens_per_s": 100.0, "step_ms": 10.0, "matmul_gflop_per_step": 8.0},
        "baseline_chunked_ce": {"response_tokens_per_step": 1, "response_tokens_per_s": 125.0, "step_ms": 8.0, "matmul_gflop_per_step": 8.0},
        "superthoughts_rho0.25": {"response_tokens_per_step": 1, "response_tokens_per_s": 250.0, "step_ms": 4.0, "matmul_gflop_per_step": 5.0},
        "superthoughts_rho0": {"error": "out of memory: CUDA out of memory"},
    }
    # The line printed as each mode is measured (before add_ratios): a mode that ran out of
    # memory has no speedup to show.
    assert bench.progress("7b", "superthoughts_rho0.25", row).endswith("GFLOP  speedup 2.50x")
    assert bench.progress("7b", "superthoughts_rho0", row).endswith(": out of memory: CUDA out of memory")
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


def test_ratios_come_from_the_step_times_not_the_rounded_throughputs() -> None:
    bench = load_benchmark("train")
    # 10 tokens per step: 60.4 and 72.2 tok/s as recorded (rounded to 0.1), a ratio of 1.195.
    row = {"baseline": {"response_tokens_per_step": 10, "step_ms": 165.55, "response_tokens_per_s": 60.4},
           "baseline_chunked_ce": {"response_tokens_per_step": 10, "step_ms": 138.576, "response_tokens_per_s": 72.2}}
    assert bench.progress("tiny", "baseline_chunked_ce", row).endswith("speedup 1.19x")  # 1.20x from 72.2 / 60.4
    bench.add_ratios(row)
    assert row["baseline_chunked_ce"]["speedup"] == round(165.55 / 138.576, 3) == 1.195


def test_a_loss_that_does_not_fall_stops_the_run_naming_the_mode(tmp_path: Path) -> None:
    bench, parser = _bench_and_parser()
    args = parser.parse_args(["--shapes", "tiny", "--batch-size", "1", "--seq-len", "16", "--prompt-len", "4",
                              "--warmup", "2", "--lr", "100", "--output", str(tmp_path / "t.json")])
    with pytest.raises(SystemExit, match=r"bench train: tiny baseline: the loss did not fall over the 2 warmup "
                                         r"steps \(.*\); try a smaller --lr \(got 100\)"):
        bench.main(args)


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 1215488000000 bytes.\nmore"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.2 TiB"),
])
def test_sizes_past_the_memory_are_one_line(monkeypatch, capsys, error) -> None:
    # A typo's extra zeros (--batch 1000000) ended in an allocator traceback.
    bench = load_benchmark("step")

    def out_of_memory(args):
        raise error

    monkeypatch.setattr(bench, "main", out_of_memory)
    monkeypatch.setattr(bench_cli, "load_benchmark", lambda area: bench)
    assert cli.main(["bench", "step"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("superthoughts bench step: out of memory (") and str(error).splitlines()[0] in err
    assert "ask for smaller sizes" in err and err.count("\n") == 1


def test_other_runtime_errors_of_a_benchmark_still_raise(monkeypatch) -> None:
    bench = load_benchmark("step")
    monkeypatch.setattr(bench, "main", lambda args: (_ for _ in ()).throw(RuntimeError("a kernel differs")))
    monkeypatch.setattr(bench_cli, "load_benchmark", lambda area: bench)
    with pytest.raises(RuntimeError, match="a kernel differs"):
        cli.main(["bench", "step"])


def test_an_out_of_memory_error_without_a_message_is_named_by_its_type(monkeypatch, capsys) -> None:
    bench = load_benchmark("step")
    monkeypatch.setattr(bench, "main", lambda args: (_ for _ in ()).throw(torch.OutOfMemoryError()))
    monkeypatch.setattr(bench_cli, "load_benchmark", lambda area: bench)
    assert cli.main(["bench", "step"]) == 1
    assert "out of memory (OutOfMemoryError)" in capsys.readouterr().err
