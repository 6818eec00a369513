"""Smoke test of benchmarks/bench_step.py on the CPU: the correctness check passes, no row
finishes during timing (the timed calls do not reset `finished`), and the report holds the
times and speedups a reader compares, and the thread count they were timed on (--threads)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from superthoughts_ext.bench_cli import load_benchmark
from superthoughts_ext.ops import superthoughts_step


def step_parser() -> tuple[object, argparse.ArgumentParser]:
    """benchmarks/bench_step.py loaded, and the parser its options make."""
    bench = load_benchmark("step")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return bench, parser


def measured_row(batch: int, hidden: int, dtype: torch.dtype, **extra) -> dict:
    """What bench_config returns for a configuration, with every time 1 s: for tests that check
    what main() does with the rows, not the timing."""
    return {"batch": batch, "hidden": hidden, "dtype": str(dtype), "bytes": 1, "fused_s": 1.0, "fused_gb_s": 1.0,
            "eager_s": 1.0, "speedup_vs_eager": 1.0, **extra}


def test_vocab_must_hold_the_masked_eos(capsys) -> None:
    bench, parser = step_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--vocab", str(bench.EOS)])
    assert f"argument --vocab: must be >= {bench.EOS + 1}" in capsys.readouterr().err


def test_bench_step_smoke(tmp_path: Path, monkeypatch) -> None:
    bench, parser = step_parser()
    out = tmp_path / "step.json"
    args = parser.parse_args(["--batch", "1", "3", "--vocab", "1000", "--hidden", "64", "--dtype", "bf16",
                              "--no-compile", "--output", str(out)])
    written = []
    real_config = bench.bench_config

    def bench_config(*a, **kw):
        # The file already holds every configuration measured before this one.
        written.append(len(json.loads(out.read_text())["rows"]) if out.exists() else 0)
        return real_config(*a, **kw)

    monkeypatch.setattr(bench, "bench_config", bench_config)
    bench.main(args)
    assert written == [0, 1]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "step" and report["build"]["version"] and report["complete"]
    assert [(r["batch"], r["dtype"]) for r in report["rows"]] == [(1, "bfloat16"), (3, "bfloat16")]
    for row in report["rows"]:
        assert row["fused_s"] > 0 and row["eager_s"] > 0 and row["speedup_vs_eager"] > 0
        assert row["bytes"] == bench.step_bytes(row["batch"], 1000, 64, bench.DTYPES["bf16"])


def test_bench_step_measures_the_first_hidden_size_in_every_dtype_first(tmp_path: Path, monkeypatch) -> None:
    # A GPU stage's time limit cut the run after the fp32 rows, leaving bf16 unmeasured.
    bench, parser = step_parser()
    args = parser.parse_args(["--batch", "1", "2", "--vocab", "100", "--hidden", "16", "8", "--dtype", "fp32",
                              "bf16", "--no-compile", "--output", str(tmp_path / "step.json")])
    order = []
    monkeypatch.setattr(bench, "bench_config", lambda batch, vocab, hidden, dtype, *rest: order.append(
        (hidden, dtype, batch)) or measured_row(batch, hidden, dtype))
    bench.main(args)
    f32, bf16 = torch.float32, torch.bfloat16
    assert order == [(16, f32, 1), (16, f32, 2), (16, bf16, 1), (16, bf16, 2),
                     (8, f32, 1), (8, f32, 2), (8, bf16, 1), (8, bf16, 2)]


def test_a_results_file_that_meets_a_full_disk_keeps_the_rows_written_before(tmp_path: Path, monkeypatch, capsys,
                                                                           file_size_limit) -> None:
    # The JSON was rewritten in place after every configuration (so that a run cut off keeps
    # them): a full disk, or a kill mid-write, truncated it and every row measured was lost.
    from superthoughts_ext import bench_cli

    bench, parser = step_parser()
    out = tmp_path / "step.json"
    args = parser.parse_args(["--batch", "1", "2", "--vocab", "100", "--hidden", "16", "--dtype", "fp32",
                              "--no-compile", "--output", str(out)])
    args.area = "step"
    monkeypatch.setattr(bench, "bench_config", lambda batch, vocab, hidden, dtype, *rest:
                        measured_row(batch, hidden, dtype, padding="x" * 3000))
    monkeypatch.setattr(bench, "copy_bandwidth", lambda device: None)
    monkeypatch.setattr(bench, "git_commit", lambda: "unknown")  # git is killed past the limit (conftest)
    monkeypatch.setattr(bench_cli, "load_benchmark", lambda area: bench)
    with file_size_limit(5000):  # one row's report fits, two rows' do not
        assert bench_cli.run(args) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"superthoughts bench step: cannot write {out}: File too large (")
    assert [row["batch"] for row in json.loads(out.read_text())["rows"]] == [1]


def test_bench_step_correctness_check_covers_sampling_and_finished() -> None:
    bench = load_benchmark("step")
    inputs = bench.make_inputs(4, 1000, 16, torch.float32, torch.device("cpu"))
    bench.check_correct(inputs, torch.float32)

    def greedy_only(*args):
        # The op with its temperature ignored: the check must sample too to see it.
        return superthoughts_step(*args[:9], 0.0, *args[10:])

    with pytest.raises(AssertionError, match=r"tokens of the checked step != the reference \(B=4, H=16, "
                                             r"float32, threshold 0.9, temperature 1.0\)"):
        bench.check_correct(inputs, torch.float32, greedy_only)

    def marks_finished(logits, embed, weight, bias, finished, *args):
        out = superthoughts_step(logits, embed, weight, bias, finished, *args)
        finished[0] = True
        return out

    with pytest.raises(AssertionError, match=r"finished of the checked step != the reference \(B=4, H=16, "
                                             r"float32, threshold 0.9, temperature 0.0\)"):
        bench.check_correct(inputs, torch.float32, marks_finished)

    def never_pairs(*args):
        # The op with its threshold replaced by 1.0: at B = 1 the timed threshold accepts no pair
        # either, so only the check at threshold 0 sees it.
        return superthoughts_step(*args[:7], 1.0, *args[8:])

    single = bench.make_inputs(1, 1000, 16, torch.float32, torch.device("cpu"))
    with pytest.raises(AssertionError, match=r"tokens of the checked step != the reference \(B=1, H=16, "
                                             r"float32, threshold 0.0, temperature 0.0\)"):
        bench.check_correct(single, torch.float32, never_pairs)

    calls = []

    def conf_off_once(*args):
        # A one-off conf error: the report must say the step did not repeat it, and which side
        # is off from a float64 softmax.
        tokens, n_new, conf, next_in = superthoughts_step(*args)
        calls.append(1)
        return tokens, n_new, conf + (1e-3 if len(calls) == 1 else 0.0), next_in

    with pytest.raises(AssertionError, match=r"conf of the checked step(.|\n)*rerun: the checked step repeats its "
                                             r"outputs: False, the reference: True; max \|conf - float64 softmax "
                                             r"max\|: checked step 0.001"):
        bench.check_correct(inputs, torch.float32, conf_off_once)


def test_graph_replay_sets_share_the_embedding_but_pick_other_rows() -> None:
    bench = load_benchmark("step")
    inputs = bench.make_inputs(3, 1000, 16, torch.float32, torch.device("cpu"))
    copy = bench.rotated_copy(inputs, 1)
    assert copy[1] is inputs[1]  # the table is shared: a step gathers only 2B of its rows
    for ours, theirs in zip(copy[2:], inputs[2:]):  # weight, bias, finished: own storage
        assert ours.data_ptr() != theirs.data_ptr() and torch.equal(ours, theirs)
    assert bool((copy[0][:, :, bench.EOS] == -1e4).all())
    args = (bench.PAD, bench.EOS, bench.THRESHOLD, 0.0, 0.0, 0, 0)
    first = superthoughts_step(*inputs, *args)
    second = superthoughts_step(*copy, *args)
    assert not torch.equal(first[0], second[0])  # other tokens, so other embedding rows
    assert not bool(copy[4].any())


@pytest.mark.parametrize("option,value", [("--batch", "0"), ("--hidden", "-1")])  # --vocab: below
def test_bench_step_refuses_empty_shapes(option, value, capsys) -> None:
    # A B = 0 run would time nothing, print absurd bandwidths and overwrite the results file.
    _, parser = step_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([option, value])
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "must be >= 1" in err


def test_threads_below_one_are_refused_at_parse_time(capsys) -> None:
    from superthoughts_ext import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "step", "--threads", "0"])
    assert exited.value.code == 2
    assert "argument --threads: must be >= 1, got 0" in capsys.readouterr().err


def test_threads_reach_the_timed_run_through_the_console_script(tmp_path: Path) -> None:
    # docs/benchmarks.md's CPU figures ran on 2 threads; a busy machine's user asks for the count.
    from superthoughts_ext import cli

    out = tmp_path / "step.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # so that asking for 1 changes something on any machine
    try:
        cli.main(["bench", "step", "--batch", "1", "--vocab", "100", "--hidden", "8", "--dtype", "fp32",
                  "--no-compile", "--threads", "1", "--output", str(out)])
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert used == 1 and report["threads"] == 1 and report["device"].endswith(", 1 torch threads)")
    assert report["complete"] and report["rows"][0]["fused_s"] > 0


def test_without_threads_torch_keeps_its_count(tmp_path: Path, monkeypatch) -> None:
    bench, parser = step_parser()
    out = tmp_path / "step.json"
    args = parser.parse_args(["--batch", "1", "--hidden", "8", "--dtype", "fp32", "--no-compile", "--output", str(out)])
    assert args.threads is None
    monkeypatch.setattr(bench, "bench_config", lambda batch, vocab, hidden, dtype, *rest: measured_row(batch, hidden, dtype))
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # an odd count: one the run set itself would show
    try:
        bench.main(args)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert used == 3 and json.loads(out.read_text())["threads"] == 3


def test_the_input_recipe_loads_without_the_compiled_core() -> None:
    # benchmarks/gpu/phase_probe.py takes bench_step's inputs also where the CUDA build failed
    # (it then builds its own probe library): importing bench_step must not load the op.
    import subprocess
    import sys

    code = ("import sys; from superthoughts_ext.bench_cli import load_benchmark; load_benchmark('step'); "
            "print('superthoughts_ext.ops' in sys.modules, 'superthoughts_ext._C' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("area", ["step", "generate", "train"])
def test_a_results_file_another_run_is_writing_is_refused(tmp_path: Path, area: str, monkeypatch) -> None:
    # Both runs rewrote the JSON after every measurement: the one finishing last left its rows
    # alone, the other's lost without a word.
    from superthoughts_ext.run_info import output_lock

    bench = load_benchmark(area)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / f"{area}.json"
    args = parser.parse_args(["--output", str(out)])
    measured = []
    monkeypatch.setattr(bench, "measure", lambda *a: measured.append(a) or 0)
    with output_lock(out, f"bench {area}"):  # another run's (flock locks conflict per open file)
        with pytest.raises(SystemExit, match=rf"bench {area}: '{re.escape(str(out))}' is being written by pid \d+ on "
                                             r".*; wait for it to finish"):
            bench.main(args)
    assert measured == [] and not out.exists()
    bench.main(args)  # once it has finished
    assert measured[0][2] == out


def test_the_recorded_default_is_held_while_a_run_writes_it(tmp_path: Path) -> None:
    # Two runs without --output both found benchmarks/results/<bench>_<device>.json free (nothing
    # recorded yet) and both wrote it: the default is held as a given --output is.
    from superthoughts_ext.run_info import held_results_file, output_lock

    default = tmp_path / "results" / "step_cpu.json"
    with output_lock(default, "bench step"):  # another run's
        with pytest.raises(SystemExit, match=r"bench step: '.*step_cpu.json' is being written by pid \d+"):
            with held_results_file(None, default, False, "bench step"):
                pytest.fail("measured")
    with held_results_file(None, default, False, "bench step") as out:
        assert out == default and (tmp_path / "results" / ".step_cpu.json.lock").is_file()
    assert not (tmp_path / "results" / ".step_cpu.json.lock").exists()  # let go at the end
