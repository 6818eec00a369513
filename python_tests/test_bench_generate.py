"""benchmarks/bench_generate.py's options: a bad count or threshold is refused at parse time,
with argparse's one-line usage error, before any model is built (it was a traceback from
deep inside the run: `max()` of no batch sizes, generate's threshold check)."""
from __future__ import annotations

import argparse
import re

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
    # Without --output a benchmark writes benchmarks/results/, which the README quotes.
    from superthoughts_ext.run_info import results_file

    recorded = tmp_path / "step_cpu.json"
    assert results_file(None, recorded, overwrite=False) == recorded  # nothing there yet
    recorded.write_text("{}")
    with pytest.raises(SystemExit, match="step_cpu.json holds a recorded run; give --output PATH"):
        results_file(None, recorded, overwrite=False)
    assert results_file(None, recorded, overwrite=True) == recorded
    assert results_file(tmp_path / "mine.json", recorded, overwrite=False) == tmp_path / "mine.json"
