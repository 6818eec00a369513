"""benchmarks/bench_generate.py's options: a bad count or threshold is refused at parse time,
with argparse's one-line usage error, before any model is built (it was a traceback from
deep inside the run: `max()` of no batch sizes, generate's threshold check)."""
from __future__ import annotations

import argparse
import re

import pytest

from superthoughts_ext.bench_cli import load_benchmark


@pytest.mark.parametrize("options, message", [
    (["--batch", "1", "0"], "argument --batch: must be >= 1, got 0"),
    (["--new-tokens", "0"], "argument --new-tokens: must be >= 1, got 0"),
    (["--prompt-len", "0"], "argument --prompt-len: must be >= 1, got 0"),
    (["--graph-windows", "0"], "argument --graph-windows: must be >= 1, got 0"),
    (["--thresholds", "0.9", "1.5"], r"argument --thresholds: must lie in \[0, 1\], got 1.5"),
    (["--thresholds", "nan"], r"argument --thresholds: must lie in \[0, 1\], got nan"),
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
