"""The `superthoughts` command as a whole (each subcommand's behaviour is tested in its area)."""
from __future__ import annotations

import warnings

import pytest

from superthoughts_ext import cli


def test_cli_help_documents_every_option(capsys) -> None:
    """Every option of the commands has a help line, and set defaults are shown in it."""
    for command in ("train", "export", "generate", "eval", "demo", "bench step", "bench generate", "bench train"):
        with pytest.raises(SystemExit) as exited:
            cli.main([*command.split(), "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        lines = text.splitlines()
        for i, line in enumerate(lines):
            # An option line with no help text on it or on the next, indented, line.
            if line.startswith("  -") and len(line.split("  ")) < 3:
                assert i + 1 < len(lines) and lines[i + 1].startswith(" " * 20), f"{command}: {line}"
        if command == "train":
            assert "peak learning rate (default: 1e-05)" in text
            assert "AdamW weight decay (default: 0.0)" in text  # a zero default is still shown
            assert "--baseline            plain SFT of the backbone, no compression\n" in text  # flags: none
        if command == "demo":
            # A flag storing False: "(default: True)" would read as progress hidden by default.
            assert "hide progress bars\n" in text



def test_cli_help_fits_80_columns(capsys, monkeypatch) -> None:
    # argparse keeps a group of exclusive options (--system-prompt SYSTEM_PROMPT | --template-system-prompt)
    # and a choice list repeated per nargs on one usage line, whatever the width.
    monkeypatch.setenv("COLUMNS", "80")
    for command in ("train", "export", "generate", "eval", "demo", "bench step", "bench generate", "bench train"):
        with pytest.raises(SystemExit):
            cli.main([*command.split(), "--help"])
        long = [line for line in capsys.readouterr().out.splitlines() if len(line) > 80]
        assert not long, f"{command}: {long}"


def test_cli_warnings_do_not_echo_source_lines(tmp_path) -> None:
    # A command's warnings print as "file:line: Category: message", without the line of
    # library source Python echoes below them by default.
    import subprocess
    import sys

    (tmp_path / "fake_area.py").write_text(
        "import warnings\n"
        "def add_arguments(parser):\n"
        "    pass\n"
        "def run(args):\n"
        "    warnings.warn('train: dropped 1 row(s) with an empty solution')\n"
        "    return 0\n"
    )
    script = ("import sys\n"
              "from superthoughts_ext import cli\n"
              "cli.COMMANDS['fake'] = ('fake_area', 'a command that warns')\n"
              "sys.exit(cli.main(['fake']))\n")
    # The package from this checkout also where it is not installed (the newest-releases venv).
    import os
    from pathlib import Path

    import superthoughts_ext

    checkout = str(Path(superthoughts_ext.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([checkout, str(tmp_path)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("fake_area.py:5: UserWarning: train: dropped 1 row(s) with an empty solution\n"), \
        done.stderr
    assert "warnings.warn(" not in done.stderr


def test_a_warning_from_the_package_shows_no_place_in_its_code() -> None:
    # "…/eval_cli.py:86: UserWarning: compare: …" pointed the user at our code, not their input.
    from superthoughts_ext import cli, eval_cli

    assert cli.format_warning("compare: left out", UserWarning, eval_cli.__file__, 86) == "UserWarning: compare: left out\n"
    assert cli.format_warning("x", FutureWarning, "/elsewhere/lib.py", 3) == "/elsewhere/lib.py:3: FutureWarning: x\n"


def test_build_parser_gives_options_to_the_named_subcommands_only() -> None:
    # main() names only the chosen subcommand, so `superthoughts eval ...` never imports train's
    # module; the docs test names them all.
    import argparse

    def options(parser: argparse.ArgumentParser, command: str) -> set[str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        return {flag for action in sub._actions for flag in action.option_strings} - {"-h", "--help"}

    one = cli.build_parser(["export"])
    assert options(one, "export") == {"--checkpoint", "--output", "--model", "--dtype"}
    assert all(not options(one, command) for command in cli.COMMANDS if command != "export")
    every = cli.build_parser(cli.COMMANDS)
    assert all(options(every, command) for command in cli.COMMANDS if command != "bench")  # its areas hold them
    assert every.parse_args(["export", "--checkpoint", "c", "--output", "o"]).checkpoint == "c"

def test_a_command_formats_warnings_only_while_it_runs(monkeypatch) -> None:
    # main() is also called in-process: it left its formatter installed for the caller's process.
    from superthoughts_ext import eval_cli, train

    seen = []

    def record_formatter(args):
        seen.append(warnings.formatwarning)
        return 0

    def callers_formatter(message, category, filename, lineno, line=None):
        return "caller\n"

    monkeypatch.setattr(warnings, "formatwarning", callers_formatter)
    monkeypatch.setattr(eval_cli, "run", record_formatter)
    monkeypatch.setattr(train, "run", record_formatter)
    assert cli.main(["eval", "--compare", "a.jsonl", "b.jsonl"]) == 0
    assert train.main(["--model", "m", "--data", "d.jsonl", "--output", "o"]) == 0
    assert seen == [cli.format_warning, cli.format_warning]
    assert warnings.formatwarning is callers_formatter


def test_ctrl_c_ends_a_command_with_one_line(monkeypatch, capsys, tmp_path) -> None:
    from superthoughts_ext import eval_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_cli, "run", interrupted)
    assert cli.main(["eval", "--compare", "a.jsonl", "b.jsonl"]) == 130
    assert capsys.readouterr().err == "superthoughts eval: interrupted\n"
    # A run that can be continued says how.
    model = tmp_path / "m"
    model.mkdir()
    argv = ["eval", "--model", str(model), "--bench", "amc23", "--output", str(tmp_path / "o.jsonl")]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == ("superthoughts eval: interrupted; the same command with --resume continues it, "
                                       "keeping the records written so far\n")
    assert cli.main([*argv, "--overwrite"]) == 130  # --resume and --overwrite are refused together
    assert "the same command with --resume in place of --overwrite continues it" in capsys.readouterr().err
    # python -m superthoughts_ext.train, which torchrun and accelerate launch run: a traceback per rank.
    from superthoughts_ext import train

    monkeypatch.setattr(train, "run", interrupted)
    try:
        status = train.main(["--model", "m", "--data", "d.jsonl", "--output", "o"])
    except KeyboardInterrupt:  # would end the test session
        pytest.fail("python -m superthoughts_ext.train let Ctrl-C through")
    assert status == 130
    assert capsys.readouterr().err == ("superthoughts train: interrupted; the same command with --resume continues "
                                       "from the last checkpoint in --output, if one was saved\n")


def test_the_closing_line_is_one_write_so_ranks_sharing_a_log_do_not_run_together(monkeypatch) -> None:
    # torchrun's ranks share one stderr; print()'s text and newline, written apart, interleaved as
    # "...saved in 'out'superthoughts train: ..." (two ranks' lines on one, the second's newline after).
    import io
    import sys

    from superthoughts_ext import train

    class Writes(io.StringIO):
        calls: list[str] = []

        def write(self, text: str) -> int:
            self.calls.append(text)
            return super().write(text)

    def interrupted(args):
        raise cli.Terminated("checkpoint-3 saved")

    run = train.run
    monkeypatch.setattr(sys, "stderr", Writes())
    monkeypatch.setattr(train, "run", interrupted)
    assert train.main(["--model", "m", "--data", "d.jsonl", "--output", "o"]) == 143
    monkeypatch.setattr(train, "run", run)
    monkeypatch.setattr(train, "options_from_args", lambda args: (_ for _ in ()).throw(ValueError("bad --data")))
    assert train.main(["--model", "m", "--data", "d.jsonl", "--output", "o"]) == 2
    assert [call.count("\n") for call in Writes.calls] == [1, 1] and all(c.endswith("\n") for c in Writes.calls)
    assert Writes.calls[0].startswith("superthoughts train: terminated (SIGTERM): checkpoint-3 saved")
    assert Writes.calls[1] == "error: bad --data\n"


def test_sigterm_ends_a_command_as_ctrl_c_does_letting_go_of_its_lock(monkeypatch, capsys, tmp_path) -> None:
    # SIGTERM (SLURM preemption, kill) ended the process on the spot: no line in the log, and the
    # output's lock file and a replace_text temporary being written were left behind.
    import os
    import signal
    import time

    from superthoughts_ext import eval_cli
    from superthoughts_ext.run_info import output_lock

    output = tmp_path / "o.jsonl"

    def terminated(args):
        with output_lock(output, "evaluate"):
            assert (tmp_path / ".o.jsonl.lock").exists()
            # Else the signal would end the test session itself.
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "no SIGTERM handler while it runs"
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(eval_cli, "run", terminated)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    model = tmp_path / "m"
    model.mkdir()
    argv = ["eval", "--model", str(model), "--bench", "amc23", "--output", str(output)]
    assert cli.main(argv) == 143
    assert capsys.readouterr().err == ("superthoughts eval: terminated (SIGTERM); the same command with --resume "
                                       "continues it, keeping the records written so far\n")
    assert list(tmp_path.iterdir()) == [model]  # no lock file left
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's handling back

    # A caller that handles SIGTERM itself keeps its handler while the command runs.
    def callers_handler(signum, frame):
        raise AssertionError("not expected to run")

    def sees_handler(args):
        assert signal.getsignal(signal.SIGTERM) is callers_handler
        return 0

    monkeypatch.setattr(eval_cli, "run", sees_handler)
    previous = signal.signal(signal.SIGTERM, callers_handler)
    try:
        assert cli.main(argv) == 0
        assert signal.getsignal(signal.SIGTERM) is callers_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_bench_without_the_checkout_says_why_whatever_the_options(monkeypatch, tmp_path) -> None:
    # A non-editable install has no benchmarks/: `bench step --output x` said only
    # "unrecognized arguments".
    from superthoughts_ext import bench_cli

    monkeypatch.setattr(bench_cli, "BENCH_DIR", tmp_path / "benchmarks")
    # Named alike for every area and for `bench --help` (each said "bench step: bench_step.py").
    for argv in (["bench", "step", "--output", str(tmp_path / "x.json")], ["bench", "train"], ["bench", "--help"]):
        with pytest.raises(SystemExit, match=r"superthoughts bench: .*benchmarks not found; the benchmarks ship with "
                                             r"the source checkout, not with an installed package"):
            cli.main(argv)


@pytest.mark.parametrize("argv", [["generate", "--model", "m", "caf\udce9 x"],
                                  ["generate", "--model", "m", "--system-prompt", "r\udce9sum\udce9", "x"],
                                  ["eval", "--model", "m", "--system-prompt", "\udce9"],
                                  ["train", "--model", "m", "--data", "d", "--output", "o", "--system-prompt", "\udce9"]])
def test_text_that_is_not_utf8_is_named_before_any_work(argv, capsys) -> None:
    # Bytes that are not UTF-8 reach argv as lone surrogates (PEP 383); the tokenizer refused them
    # with a TypeError traceback, after the model had loaded.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "not valid UTF-8 text (byte 0xe9 after" in capsys.readouterr().err


def test_help_works_with_docstrings_stripped() -> None:
    # python -OO (PYTHONOPTIMIZE=2) drops docstrings: the parser's description came from one.
    import subprocess
    import sys

    for command in ([], ["generate"], ["eval"], ["bench", "step"]):
        done = subprocess.run([sys.executable, "-OO", "-m", "superthoughts_ext.cli", *command, "--help"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.startswith("usage: superthoughts"), command


def test_typed_options_are_what_the_command_line_gave_defaults_included() -> None:
    import argparse

    parser = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    cli.record_typed_options(parser)
    parser.add_argument("--size", type=int, default=8, help="rows")
    parser.add_argument("--names", nargs="+", choices=("a", "b"))
    parser.add_argument("--quiet", action="store_true", help="no bar")
    parser.add_argument("--off", action="store_const", const=None, default="x", dest="text", help="no text")
    parser.add_argument("--compile", action=cli.TypedBooleanOptional, default=None, help="compile")
    args = parser.parse_args([])
    assert cli.typed_options(args) == {} and (args.size, args.names, args.quiet, args.text) == (8, None, False, "x")
    # The default typed (--size 8) and a falsy value (--no-compile) count, as typed, in command-line order.
    args = parser.parse_args(["--no-compile", "--size", "8", "--quiet", "--off", "--names", "a", "b"])
    assert cli.typed_options(args) == {"compile": "--no-compile", "size": "--size", "quiet": "--quiet",
                                       "text": "--off", "names": "--names"}
    assert (args.compile, args.size, args.quiet, args.text, args.names) == (False, 8, True, None, ["a", "b"])
    assert "rows (default: 8)" in parser.format_help() and "no bar\n" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--names", "c"])  # choices and nargs still checked
    assert cli.typed_options(argparse.Namespace(size=8)) == {}  # another parser's namespace: nothing noted


def test_every_eval_option_notes_when_it_is_typed() -> None:
    # --table and --regrade refuse the options they would ignore from what was typed: an option
    # whose action notes nothing (argparse's own store_false, append, count...) would be let
    # through beside them, and ignored, as --batch-size 8 was.
    import argparse

    from superthoughts_ext import eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        for option in action.option_strings:
            value = [] if action.nargs == 0 else [str((action.choices and sorted(action.choices)[0]) or 1)]
            args = parser.parse_args([option, *value])
            assert cli.typed_options(args) == {action.dest: option}, option
