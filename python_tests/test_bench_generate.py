"""benchmarks/bench_generate.py's options: a bad count or threshold is refused at parse time,
with argparse's one-line usage error, before any model is built (it was a traceback from
deep inside the run: `max()` of no batch sizes, generate's threshold check)."""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch

from superthoughts_ext.bench_cli import load_benchmark


@pytest.mark.parametrize("options, message", [
    (["--batch", "1", "0"], "argument --batch: must be >= 1, got 0"),
    (["--new-tokens", "0"], "argument --new-tokens: must be >= 1, got 0"),
    (["--prompt-len", "0"], "argument --prompt-len: must be >= 1, got 0"),
    (["--graph-windows", "0"], "argument --graph-windows: must be >= 1, got 0"),
    (["--thresholds", "0.9", "1.5"], r"argument --thresholds: must lie in \[0, 1\], got 1.5"),
    (["--thresholds", "nan"], r"argument --thresholds: must lie in \[0, 1\], got nan"),
    (["--mtp-logit-std", "-1"], "argument --mtp-logit-std: must be a finite number >= 0, got -1"),
    (["--mtp-logit-std", "nan"], "argument --mtp-logit-std: must be a finite number >= 0, got nan"),
])
def test_bad_options_are_refused_at_parse_time(capsys, options: list[str], message: str) -> None:
    parser = argparse.ArgumentParser()
    load_benchmark("generate").add_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(options)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_good_options_parse() -> None:
    parser = argparse.ArgumentParser()
    load_benchmark("generate").add_arguments(parser)
    args = parser.parse_args(["--batch", "1", "8", "--thresholds", "0", "0.99", "1"])
    assert args.batch == [1, 8] and args.thresholds == [0.0, 0.99, 1.0]


def test_unknown_methods_and_devices_are_refused_before_any_model_is_built(monkeypatch, tmp_path) -> None:
    bench = load_benchmark("generate")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)

    def build_models(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(bench, "build_models", build_models)
    out = ["--output", str(tmp_path / "g.json")]
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['standrd'\]; known with these --thresholds: .*'st@0.9'"):
        bench.main(parser.parse_args(["--methods", "standrd", "pairs", "--thresholds", "0.9", *out]))
    with pytest.raises(SystemExit, match="--device 'gpu0'"):
        bench.main(parser.parse_args(["--device", "gpu0", *out]))
    if not torch.cuda.is_available():  # was an AssertionError from inside transformers' model build
        with pytest.raises(SystemExit, match="bench generate: --device cuda: this torch sees no GPU"):
            bench.main(parser.parse_args(["--device", "cuda", *out]))
    # The plot goes beside the JSON as .png: a .png --output was overwritten by it.
    with pytest.raises(SystemExit, match=r"--output .*g\.png names the plot; give the JSON path"):
        bench.main(parser.parse_args(["--output", str(tmp_path / "g.png")]))
    # --no-hf-compile leaves that method out: asking for it too is a contradiction, said up front.
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['hf_static_compile'\]"):
        bench.main(parser.parse_args(["--methods", "hf_static_compile", "--no-hf-compile", *out]))


def test_a_recorded_run_is_replaced_only_on_request(tmp_path) -> None:
    # Without --output a benchmark writes benchmarks/results/, which docs/benchmarks.md quotes.
    from superthoughts_ext.run_info import results_file

    recorded = tmp_path / "step_cpu.json"
    assert results_file(None, recorded, overwrite=False) == recorded  # nothing there yet
    recorded.write_text("{}")
    with pytest.raises(SystemExit, match="step_cpu.json holds a recorded run; give --output PATH"):
        results_file(None, recorded, overwrite=False)
    assert results_file(None, recorded, overwrite=True) == recorded
    assert results_file(tmp_path / "mine.json", recorded, overwrite=False) == tmp_path / "mine.json"


def test_an_output_path_that_cannot_be_written_is_refused_before_measuring(tmp_path) -> None:
    # Found out at the first write before: a traceback minutes into the run.
    from superthoughts_ext.run_info import results_file

    default = tmp_path / "unused.json"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write the results to .*afile/x\.json: .*afile is a file, not a folder"):
        results_file(tmp_path / "afile" / "x.json", default, overwrite=False)
    with pytest.raises(SystemExit, match=r"--output .* is a directory; give the JSON file's path"):
        results_file(tmp_path, default, overwrite=False)
    if Path("/sys").is_dir():  # sysfs: no file can be made there, whatever the permission bits say
        with pytest.raises(SystemExit, match=r"cannot write the results to /sys/x\.json: "):
            results_file(Path("/sys/x.json"), default, overwrite=False)
    # Its folders are made; the probe leaves no file behind, and an existing file untouched.
    nested = tmp_path / "a" / "b" / "run.json"
    assert results_file(nested, default, overwrite=False) == nested and nested.parent.is_dir() and not nested.exists()
    (tmp_path / "old.json").write_text("{}")
    results_file(tmp_path / "old.json", default, overwrite=False)
    assert (tmp_path / "old.json").read_text() == "{}"
    # A link to a file still to be written stays a link (the check removed it and left its target).
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    results_file(tmp_path / "link.json", default, overwrite=False)
    assert (tmp_path / "link.json").is_symlink() and not (tmp_path / "target.json").exists()
    os.mkfifo(tmp_path / "fifo.json")  # open() would wait for a reader
    with pytest.raises(SystemExit, match="fifo.json is not a regular file"):
        results_file(tmp_path / "fifo.json", default, overwrite=False)


@pytest.mark.parametrize("area, argv, message", [
    ("generate", ["--batch", "1", "8", "1"], "argument --batch: 1 given more than once"),
    ("generate", ["--methods", "pairs", "pairs"], "argument --methods: pairs given more than once"),
    ("step", ["--dtype", "fp32", "fp32"], "argument --dtype: fp32 given more than once"),
    ("train", ["--rho-max", "0.1", "0.1000001"], "argument --rho-max: 0.1 given more than once"),
    ("train", ["--shapes", "tiny", "tiny"], "argument --shapes: tiny given more than once"),
    ("step", ["--batch", "1.5"], r"argument --batch: invalid int value: '1\.5'"),
])
def test_repeated_or_non_integer_list_values_are_refused_at_parse_time(area, argv, message, capsys) -> None:
    # A repeat was measured twice and recorded under one name (the plot kept the last).
    parser = argparse.ArgumentParser()
    load_benchmark(area).add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_a_device_other_than_cpu_or_cuda_is_refused(tmp_path) -> None:
    bench = load_benchmark("generate")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SystemExit, match="--device meta: only cpu and cuda are measured"):
        bench.main(parser.parse_args(["--device", "meta", "--output", str(tmp_path / "g.json")]))


@pytest.mark.usefixtures("one_cpu_thread")
def test_the_correctness_checks_stop_the_benchmark_on_a_difference(monkeypatch) -> None:
    # The report's check.equal is written only once both checks pass: each must catch a
    # decode that differs (from transformers, from the reference step) and end the run.
    bench = load_benchmark("generate")
    device = torch.device("cpu")
    backbone, superthoughts = bench.build_models("tiny", torch.float32, device, 64)
    assert bench.check_standard(backbone, device)["tokens_compared"] > 0
    assert bench.check_fused_step(superthoughts, device, False, 0.9)["tokens_compared"] > 0
    real = bench.generate

    def off_by_one(*args, use_kernels=True, **kwargs):
        out = real(*args, use_kernels=use_kernels, **kwargs)
        if use_kernels:
            out.sequences = [[(seq[0] + 1) % 50, *seq[1:]] for seq in out.sequences]
        return out

    monkeypatch.setattr(bench, "generate", off_by_one)
    with pytest.raises(SystemExit, match="standard decoding differs from transformers"):
        bench.check_standard(backbone, device)
    with pytest.raises(SystemExit, match="standard sequences through the fused step differ from the reference step"):
        bench.check_fused_step(superthoughts, device, False, 0.9)


def test_throughput_plot_labels_every_bar_and_marks_what_was_not_run(tmp_path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    bench = load_benchmark("generate")
    rows = [{"method": method, "batch": batch, "tokens_per_s": tps, "pair_step_fraction": pairs}
            for method, batch, tps, pairs in (("hf_dynamic", 1, 35.0, 0.0), ("standard", 1, 217.0, 0.0),
                                              ("st@0.9", 1, 206.4, 0.66), ("hf_dynamic", 32, 838.0, 0.0),
                                              ("standard", 32, 3231.0, 0.0), ("st@0.9", 32, 7354.0, 0.71),
                                              ("standard", 8, 1311.0, 0.0))]
    # A run JSON as the first versions wrote it: no compile, mtp_logit_std or complete keys.
    report = {"shape": "qwen2.5-math-1.5b", "dtype": "bfloat16", "device": "NVIDIA H100 80GB HBM3",
              "prompt_len": 128, "new_tokens": 512}
    title = bench.plot_title(report)
    assert title == ("greedy decode throughput: random-weight qwen2.5-math-1.5b bfloat16\non NVIDIA H100 80GB HBM3\n"
                     "prompt 128, 512 new tokens")
    assert "our step compiled, MTP logit std 30, INCOMPLETE run" in bench.plot_title(
        {**report, "compile": True, "mtp_logit_std": 30.0, "complete": False})
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    bench.plot(rows, tmp_path / "g.png", title)
    fig = closed[0]
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    # A label per measured bar (st@T with its share of pair steps), "not run" where a cell is missing.
    assert sorted(texts) == sorted(["35", "217", "206, 66% pairs", "838", "3231", "7354, 71% pairs", "1311",
                                    "not run", "not run"])
    assert ax.get_xlabel().startswith("batch size") and "log scale" in ax.get_ylabel() and ax.get_yscale() == "log"
    # Inside the axes: the label of the tallest bar is not cut off at the top.
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    assert all(box.y0 <= t.get_window_extent(renderer).y0 and t.get_window_extent(renderer).y1 <= box.y1
               for t in ax.texts)
    # Told apart in greyscale: every method has its own hatch (plain for one of them at most).
    hatches = {container.get_label(): container.patches[0].get_hatch() for container in ax.containers}
    assert len(set(hatches.values())) == len(hatches) == 3
    # The legend is under the axes, where it covers no bar.
    assert ax.get_legend().get_window_extent(renderer).y1 < box.y0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_mini_shape_is_bench_trains() -> None:
    # docs/benchmarks.md profiles decoding on `--shape 1.5b-mini` as bench train's model of that name.
    parser = argparse.ArgumentParser()
    bench = load_benchmark("generate")
    bench.add_arguments(parser)
    assert parser.parse_args(["--shape", "1.5b-mini"]).shape == "1.5b-mini"
    assert bench.SHAPES["1.5b-mini"] == load_benchmark("train").SHAPES["1.5b-mini"]


def test_mtp_input_next_token_is_measured_and_recorded(tmp_path) -> None:
    # A next_token model decodes through its own stepper (two lm_head GEMMs, two op launches a
    # step): bench generate builds one on request, checks it as the default model and says so.
    parser = argparse.ArgumentParser()
    bench = load_benchmark("generate")
    bench.add_arguments(parser)
    assert parser.parse_args([]).mtp_input == "unit"
    with pytest.raises(SystemExit):
        parser.parse_args(["--mtp-input", "token"])
    out = tmp_path / "g.json"
    args = parser.parse_args(["--mtp-input", "next_token", "--shape", "tiny", "--batch", "2", "--new-tokens", "6",
                              "--prompt-len", "8", "--methods", "pairs", "st@0.9", "--thresholds", "0.9",
                              "--repeats", "1", "--threads", "1", "--output", str(out)])
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert report["mtp_input"] == "next_token" and report["check"]["equal"]
    assert [row["method"] for row in report["results"]] == ["pairs", "st@0.9"]
    assert "MTP input next_token" in bench.plot_title(report)
    assert "MTP input" not in bench.plot_title({**report, "mtp_input": "unit"})
