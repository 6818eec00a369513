"""benchmarks/gpu/session.sh's pytest stages on a CPU: every test file a stage names exists, and
every name a stage selects with -k (not the ones it deselects) is a test in those files, so that
a test moved to another file fails here and not as a stage that collects nothing (pytest's exit
status 5) in a GPU session's one device call."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SESSION = REPO / "benchmarks" / "gpu" / "session.sh"


def pytest_commands() -> list[str]:
    """The session's pytest command lines, continuation lines joined."""
    text = SESSION.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if "-m pytest" in line and not line.lstrip().startswith("#")]


def selected_names(expression: str) -> list[str]:
    """The names a -k expression selects: its terms not preceded by `not`."""
    terms = re.findall(r"(not\s+)?(\w+)", expression)
    return [name for negated, name in terms if not negated and name not in ("and", "or", "not")]


def test_session_names_existing_test_files_and_tests() -> None:
    commands = pytest_commands()
    assert len(commands) >= 4, commands  # test, errors, folded_gqa, dynamic_libstdcxx
    for command in commands:
        files = re.findall(r"python_tests/\w+\.py", command)
        assert files, command
        missing = [f for f in files if not (REPO / f).is_file()]
        assert not missing, f"session.sh names missing test files {missing}: {command}"
        tests = set()
        for f in files:
            tests.update(re.findall(r"^def (test_\w+)", (REPO / f).read_text(), flags=re.M))
        k = re.search(r'-k "([^"]*)"', command)
        for name in selected_names(k.group(1)) if k else []:
            assert any(name in test for test in tests), (
                f"session.sh selects -k {name!r} in {files}, which hold no such test: {command}")


def test_selected_names_skip_the_deselected_ones() -> None:
    assert selected_names("bad_input or mixed_devices") == ["bad_input", "mixed_devices"]
    assert selected_names("not bad_input and not emulated") == []


def test_session_bench_train_stages_parse() -> None:
    # A renamed bench_train flag or --precision value fails here, not as a stage that exits 2
    # in a GPU session's one device call.
    import argparse
    import shlex

    from superthoughts_ext.bench_cli import load_benchmark

    bench = load_benchmark("train")
    text = SESSION.read_text().replace("\\\n", " ")
    commands = re.findall(r"benchmarks/bench_train\.py([^;\n]*)", text)
    assert any("--precision bf16-autocast" in c for c in commands), commands
    for command in commands:
        parser = argparse.ArgumentParser()
        bench.add_arguments(parser)
        parser.parse_args(shlex.split(command.replace('"$OUT', '"out')))
