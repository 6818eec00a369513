"""The `superthoughts` command: one subcommand per area, each owned by its module.

Every area module exposes `add_arguments(parser)` and `run(args) -> int`; modules are
imported lazily so that `superthoughts --help` stays fast and a missing optional
dependency of one area never breaks the others.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("superthoughts_ext.train", "fine-tune a SuperThoughts (or baseline SFT) model"),
    "generate": ("superthoughts_ext.generate_cli", "decode a prompt with a trained model"),
    "eval": ("superthoughts_ext.eval_cli", "evaluate on MATH500 / AMC23 / OlympiadBench / GPQA"),
    "demo": ("superthoughts_ext.demo.run", "train + evaluate the embedded synthetic task"),
    "export": ("superthoughts_ext.export", "merge a LoRA training checkpoint into a loadable model"),
    "bench": ("superthoughts_ext.bench_cli", "run a microbenchmark (step, generate, train)"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help line, unless the default is unset (None /
    False), the option is a flag that stores a constant (`--no-progress` stores False into a
    default of True: "(default: True)" would read as hidden by default), or the help text
    already says what happens by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        constant_flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if not action.option_strings or unset or constant_flag or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def utf8_text(value: str) -> str:
    """argparse type of the text options (prompts): bytes that are not UTF-8 reach Python as lone
    surrogates (PEP 383), which the tokenizer refuses with an unreadable TypeError."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(value[error.start])
        byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"code point U+{code:04X}"
        before = value[max(0, error.start - 40):error.start]
        raise argparse.ArgumentTypeError(f"not valid UTF-8 text ({byte} after {before!r}); "
                                         "pass the text in UTF-8") from None
    return value


# The Namespace attribute where `record_typed_options`' actions note what was typed.
TYPED_OPTIONS = "_typed_options"


def _note_typed(namespace: argparse.Namespace, dest: str, option_string: str | None) -> None:
    typed = getattr(namespace, TYPED_OPTIONS, None)
    if typed is None:
        typed = {}
        setattr(namespace, TYPED_OPTIONS, typed)
    typed[dest] = option_string


class TypedStore(argparse.Action):
    """argparse's ``store`` action that also notes its option as typed (see `typed_options`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        _note_typed(namespace, self.dest, option_string)


class TypedConst(argparse.Action):
    """argparse's ``store_const`` action (``store_true`` with const True, default False) that also
    notes its option as typed."""

    def __init__(self, option_strings, dest, const=None, default=None, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, const=const, default=default, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, self.const)
        _note_typed(namespace, self.dest, option_string)


class TypedTrue(TypedConst):
    def __init__(self, option_strings, dest, default=False, **kwargs) -> None:
        super().__init__(option_strings, dest, const=True, default=default, **kwargs)


class TypedBooleanOptional(argparse.BooleanOptionalAction):
    """``--flag / --no-flag`` that also notes the one typed."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _note_typed(namespace, self.dest, option_string)


def record_typed_options(parser: argparse.ArgumentParser) -> None:
    """Makes the options added to `parser` from now on (``store``, ``store_const`` and
    ``store_true`` actions; pass `TypedBooleanOptional` for ``--flag / --no-flag``) note what the
    command line typed, which `typed_options` reads: a default value (``--batch-size`` 8) says
    nothing of whether ``--batch-size 8`` was typed."""
    for name, action in ((None, TypedStore), ("store", TypedStore), ("store_const", TypedConst),
                         ("store_true", TypedTrue)):
        parser.register("action", name, action)


def typed_options(args: argparse.Namespace) -> dict[str, str]:
    """argparse dest -> the option as typed (``--no-compile``, ``--template-system-prompt``), in
    the order typed, of the options of a `record_typed_options` parser that the command line
    gave; empty for a namespace of another parser."""
    return dict(getattr(args, TYPED_OPTIONS, None) or {})


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as `Category: message`, or `file:line: Category: message` when it comes from
    outside this package: without the echoed source line, and without a place in our own code,
    which on a command line says nothing to the user ("eval_cli.py:86", "examples =
    load_jsonl_examples("). Installed by `command_warnings` around a command's run."""
    if Path(filename).resolve().is_relative_to(_PACKAGE):
        return f"{category.__name__}: {message}\n"
    return f"{filename}:{lineno}: {category.__name__}: {message}\n"


_PACKAGE = Path(__file__).resolve().parent


@contextlib.contextmanager
def command_warnings() -> Iterator[None]:
    """Warnings printed as `format_warning` says while a command runs, and the caller's own
    formatter back afterwards: `main()` is also called in-process (tests, notebooks, scripts)."""
    before = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = before


@contextlib.contextmanager
def transformers_progress_bars(shown: bool) -> Iterator[None]:
    """With `--no-progress`, transformers' bars (loading and saving weights) are hidden along
    with ours, which a log file would otherwise still collect; shown, they are drawn as ours are
    (`superthoughts_ext.progress`: whole lines in a log file). Both restored afterwards."""
    from transformers.utils import logging as transformers_logging

    from superthoughts_ext.progress import transformers_line_hook

    hide = not shown and transformers_logging.is_progress_bar_enabled()
    if hide:
        transformers_logging.disable_progress_bar()
    previous_hook = transformers_logging.set_tqdm_hook(transformers_line_hook)
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous_hook)
        if hide:
            transformers_logging.enable_progress_bar()


def build_parser(with_options: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The `superthoughts` parser. Only the subcommands named in `with_options` get their options
    (their modules imported); the others are there by name and help line alone, which is all that
    `superthoughts --help` and the choice of subcommand read. `build_parser(COMMANDS)` is the
    whole command line (the documentation tests check the docs against it)."""
    loaded = set(with_options)
    parser = argparse.ArgumentParser(prog="superthoughts", description=(__doc__ or "").partition("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, formatter_class=HelpFormatter)
        sub_parser.set_defaults(_module=module_name)
        if name in loaded:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's preemption or time limit, `kill`, `timeout`) raised where the
    command is, as Ctrl-C raises KeyboardInterrupt: its locks, temporary files and half-written
    checkpoints are let go of on the way out, which the default action (an immediate exit) left
    behind. A KeyboardInterrupt, so that no `except Exception` takes it for an error."""

    # False for a stop that came once the work was done (its message says so): no resume hint.
    continues = True


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` while a command runs, and the previous handler is back
    afterwards. Left alone where the caller handles SIGTERM itself (a handler of its own is
    installed) and off the main thread, where Python cannot install a handler."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_command(command: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], int | None]) -> int:
    """`run(args)` as `superthoughts COMMAND` runs it, returning its exit status: warnings as
    `command_warnings` prints them, and Ctrl-C or SIGTERM (`sigterm_as_interrupt`) ending it in
    one line with the resume hint, not a traceback through training or decoding. Also the entry
    of ``python -m superthoughts_ext.train``, which torchrun and accelerate launch run."""
    try:
        with command_warnings(), sigterm_as_interrupt():
            return int(run(args) or 0)
    except KeyboardInterrupt as stop:
        # 128 + the signal's number, as a shell reports a command the signal ended. A Terminated
        # with a message says what the command did first (training: the checkpoint it saved).
        what, status = ("terminated (SIGTERM)", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        what += f": {stop}" if str(stop) else ""
        hint = resume_hint(command, args) if getattr(stop, "continues", True) else ""
        stderr_line(f"superthoughts {command}: {what}{hint}")
        return status


def stderr_line(text: str) -> None:
    """`text` and its newline on stderr in one write: print() writes them apart, and stderr, not
    buffered past a line, passes each on, so the lines of processes sharing a log (torchrun's
    ranks) ran into each other ("...out'superthoughts train: ..."). A pipe keeps one write of up
    to 4096 bytes whole."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def module_main(command: str, doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int | None], argv: list[str] | None,
                parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> int:
    """``python -m superthoughts_ext.<module> ARGS`` (the module torchrun and accelerate launch run)
    as ``superthoughts COMMAND ARGS``: the command's own parser (a `parser_class`; `add_arguments`;
    `doc`'s first line its description) and `run_command`."""
    parser = parser_class(prog=f"superthoughts {command}", description=(doc or "").partition("\n")[0],
                          formatter_class=HelpFormatter)
    add_arguments(parser)
    return run_command(command, parser.parse_args(argv), run)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen subcommand's module is imported.
    args = build_parser(argv[:1]).parse_args(argv)
    return run_command(args.command, args, lambda parsed: importlib.import_module(parsed._module).run(parsed))


def resume_hint(command: str, args: argparse.Namespace) -> str:
    """How to continue the runs of subcommand `command` that can be continued: an evaluation (its
    records are written as it goes) and a training run (from its last checkpoint)."""
    if command == "eval" and not any(getattr(args, reader, None) for reader in ("compare", "regrade", "table")):
        instead = " in place of --overwrite" if getattr(args, "overwrite", False) else ""
        return f"; the same command with --resume{instead} continues it, keeping the records written so far"
    if command == "train":
        if getattr(args, "resume_from_checkpoint", None) == "auto":  # train_resume.RESUME_IF_ANY
            return "; the same command continues from the last checkpoint in --output, if one was saved"
        return "; the same command with --resume continues from the last checkpoint in --output, if one was saved"
    return ""


if __name__ == "__main__":
    sys.exit(main())
