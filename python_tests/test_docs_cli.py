"""README.md and docs/*.md against the real `superthoughts` parsers (`cli.build_parser`).

- every `--flag` the docs write (code spans and code blocks) exists in the parser of the subcommand
  whose command line or section it stands in, and a flag no parser has is an error wherever it stands
  (unless it is another tool's, listed in OTHER_TOOLS_FLAGS);
- every option of every subcommand is mentioned where that subcommand is documented;
- every `superthoughts ...` line of a ```bash block (and `-m superthoughts_ext.train ...` or `-m superthoughts_ext.eval_cli ...` under a
  launcher) parses with the real parser, so the examples cannot rot;
- a default written as "`--flag` (default X" equals the parser's default.
Nothing is run: the parsers are built and asked to parse, no more.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from superthoughts_ext import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
CODE_SPAN = re.compile(r"`([^`]+)`")
# "`--flag ARG` (default X" and "`--flag` (default: X": X ends at ; , ) or :.
STATED_DEFAULT = re.compile(r"`(--[a-z][\w-]*)[^`]*`\s*\(default:?\s+([^;,):]+)")

# Pages whose prose documents particular subcommands: a flag written there belongs to one of them.
# The other pages (README, install, step-op, layout) speak of the command line as a whole.
PAGE_COMMANDS: dict[str, tuple[str, ...]] = {
    "docs/training.md": ("train", "export"),
    "docs/models.md": ("train",),
    "docs/generation.md": ("generate",),
    "docs/evaluation.md": ("eval",),
    "docs/benchmarks.md": ("bench step", "bench generate", "bench train"),
    "docs/demo.md": ("demo",),
}

# Flags of other programs that the docs name, with the program. They are accepted only where a line
# is not a `superthoughts` command line.
OTHER_TOOLS_FLAGS: dict[str, str] = {
    "--no-build-isolation": "pip install",
    "--sdist": "python -m build",
    "--nproc_per_node": "torchrun",
    "--num_processes": "accelerate launch",
    "--multi_gpu": "accelerate launch",
    "--mixed_precision": "accelerate launch",
    "--use_fsdp": "accelerate launch",
    "--fsdp_version": "accelerate launch",
    "--fsdp_auto_wrap_policy": "accelerate launch",
    "--fsdp_transformer_layer_cls_to_wrap": "accelerate launch",
    "--fsdp_state_dict_type": "accelerate launch",
    "--fsdp_cpu_ram_efficient_loading": "accelerate launch",
    "--fsdp_sync_module_states": "accelerate launch",
    "--define": "benchmarks/gpu/phase_probe.py",
    "--requeue": "sbatch",
    "--signal": "sbatch",
    "--shutdown-timeout": "torchrun",
}

# Modules a launcher runs as `-m MODULE ARGS` (torchrun, accelerate launch): the subcommand they are.
LAUNCHED_MODULES = {"superthoughts_ext.train": "train", "superthoughts_ext.eval_cli": "eval"}

# Options no page mentions, each with the reason it stays undocumented. Empty: document instead.
UNDOCUMENTED: dict[tuple[str, str], str] = {}


@cache
def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """{"train": parser, ..., "bench step": parser, ...}: every (sub)subcommand's own parser."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub_parser in action.choices.items():
                    found[f"{prefix}{name}"] = sub_parser
                    walk(sub_parser, f"{prefix}{name} ")

    walk(cli.build_parser(cli.COMMANDS), "")
    return found


def option_actions(command: str) -> list[argparse.Action]:
    return [action for action in command_parsers()[command]._actions
            if action.option_strings and not isinstance(action, argparse._HelpAction)]


def flags_of(command: str) -> set[str]:
    return {flag for action in command_parsers()[command]._actions for flag in action.option_strings}


def command_named(words: list[str]) -> str | None:
    """The longest subcommand that `words` (the argv after `superthoughts`) starts with."""
    for length in (2, 1):
        if len(words) >= length and " ".join(words[:length]) in command_parsers():
            return " ".join(words[:length])
    return None


@dataclass(frozen=True)
class Mention:
    """One `--flag` written in the docs, and the subcommands it may belong to."""

    flag: str
    commands: tuple[str, ...]
    explicit: bool  # on a `superthoughts ...` command line, not only in a section about the commands
    where: str


@dataclass(frozen=True)
class CommandLine:
    """A ```bash line that runs our parser: `superthoughts ...` or `... -m superthoughts_ext.train ...`
    (`LAUNCHED_MODULES`)."""

    argv: tuple[str, ...]
    where: str


def logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined."""
    joined, start, parts = [], None, []
    for number, line in lines:
        start = number if start is None else start
        parts.append(line[:-1] if line.endswith("\\") else line)
        if not line.endswith("\\"):
            joined.append((start, " ".join(parts)))
            start, parts = None, []
    return joined


def shell_line(text: str, section: tuple[str, ...], where: str) -> tuple[list[Mention], CommandLine | None]:
    """The flags of one shell line, attributed to the program that reads them."""
    tokens = shlex.split(text, comments=True)
    argv, command = None, None
    if tokens[:1] == ["superthoughts"]:
        argv = tokens[1:]
    else:
        for module, command in LAUNCHED_MODULES.items():
            if module in tokens and tokens[tokens.index(module) - 1] == "-m":
                argv = [command, *tokens[tokens.index(module) + 1:]]
    if argv is not None:
        command = command_named(argv)
    ours = {token.split("=", 1)[0] for token in (argv or []) if FLAG.fullmatch(token.split("=", 1)[0])}
    mentions = [Mention(flag, (command,) if command else tuple(command_parsers()), True, where)
                for flag in sorted(ours)]
    # Launcher flags and flags in comments: the section's, or another tool's.
    mentions += [Mention(flag, section, False, where) for flag in FLAG.findall(text) if flag not in ours]
    # Parsed also without a known subcommand: a misspelt one is an error, `superthoughts --help` none.
    return mentions, None if argv is None else CommandLine(tuple(argv), where)


def span_mentions(span: str, section: tuple[str, ...], where: str) -> list[Mention]:
    """The flags of one prose code span: `superthoughts eval --samples` says its subcommand."""
    words = span.split()
    if words[:1] == ["superthoughts"] and (command := command_named(words[1:])):
        return [Mention(flag, (command,), True, where) for flag in FLAG.findall(span)]
    return [Mention(flag, section, False, where) for flag in FLAG.findall(span)]


def heading_commands(heading: str) -> tuple[str, ...] | None:
    """The subcommand a heading names ("### `superthoughts bench step`"), if it names one."""
    match = re.search(r"superthoughts ([a-z]+(?: [a-z]+)?)", heading)
    command = match and command_named(match.group(1).split())
    return (command,) if command else None


@dataclass(frozen=True)
class Part:
    """A piece of a page: a heading, a paragraph of prose (code spans may wrap across its lines) or
    a fenced code block (`lang` its info string, `lines` as (line number, text))."""

    kind: str  # "heading", "prose" or "code"
    start: int
    text: str = ""
    lang: str = ""
    lines: tuple[tuple[int, str], ...] = ()


def page_parts(page: Path) -> list[Part]:
    """The page's headings, paragraphs and code blocks in order."""
    parts, prose, code, fence = [], [], [], None
    lines = page.read_text().splitlines()

    def end_paragraph() -> None:
        if prose:
            parts.append(Part("prose", prose[0][0], "\n".join(text for _, text in prose)))
            prose.clear()

    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.startswith("```"):
                parts.append(Part("code", code[0][0] if code else number, lang=fence, lines=tuple(code)))
                fence = None
            else:
                code.append((number, line))
        elif line.startswith("```"):
            end_paragraph()
            fence, code = line[3:].strip(), []
        elif line.startswith("#") or not line.strip():
            end_paragraph()
            if line.startswith("#"):
                parts.append(Part("heading", number, line))
        else:
            prose.append((number, line))
    end_paragraph()
    assert fence is None, f"{page.name}: a code block is not closed"
    return parts


def line_of(name: str, part: Part, match: re.Match) -> str:
    """`page:line` of a match in a paragraph."""
    return f"{name}:{part.start + part.text.count(chr(10), 0, match.start())}"


@cache
def scan(page: Path) -> tuple[list[Mention], list[CommandLine], list[tuple[str, str, tuple[str, ...], str]]]:
    """(flag mentions, command lines to parse, stated defaults as (flag, value, commands, where))."""
    name = str(page.relative_to(ROOT))
    page_commands = PAGE_COMMANDS.get(name, tuple(command_parsers()))
    section = page_commands
    mentions, command_lines, defaults = [], [], []
    for part in page_parts(page):
        if part.kind == "heading":
            section = heading_commands(part.text) or page_commands
        elif part.kind == "code":
            for start, text in logical_lines(list(part.lines)):
                if part.lang in ("bash", "sh", "shell"):
                    found, command_line = shell_line(text, section, f"{name}:{start}")
                    mentions += found
                    command_lines += [command_line] if command_line else []
                else:
                    mentions += [Mention(flag, section, False, f"{name}:{start}") for flag in FLAG.findall(text)]
        else:
            for match in CODE_SPAN.finditer(part.text):
                mentions += span_mentions(match.group(1).replace("\n", " "), section, line_of(name, part, match))
            defaults += [(match.group(1), match.group(2).strip(), section, line_of(name, part, match))
                         for match in STATED_DEFAULT.finditer(part.text)]
    return mentions, command_lines, defaults


def all_mentions() -> list[Mention]:
    return [mention for page in PAGES for mention in scan(page)[0]]


def test_the_parsers_are_those_of_every_subcommand():
    # A subcommand added to cli.COMMANDS (or a bench area) is checked here without a change.
    assert {"train", "export", "generate", "eval", "demo", "bench step", "bench generate",
            "bench train"} <= set(command_parsers())
    assert all(option_actions(command) for command in cli.COMMANDS if command != "bench")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_flag_written_exists_where_it_is_written(page):
    wrong = []
    for mention in scan(page)[0]:
        if any(mention.flag in flags_of(command) for command in mention.commands):
            continue
        if mention.flag in OTHER_TOOLS_FLAGS and not mention.explicit:
            continue
        owners = [command for command in command_parsers() if mention.flag in flags_of(command)]
        wrong.append(f"{mention.where}: {mention.flag} is no option of {' / '.join(mention.commands)}"
                     + (f" (it is one of {', '.join(owners)})" if owners else " (nor of any subcommand)"))
    if wrong:
        pytest.fail("\n".join(wrong))


def test_the_flags_of_other_tools_are_named_in_those_tools():
    # The one entry that is a script of this repository: its parser must still take the flag.
    for flag, tool in OTHER_TOOLS_FLAGS.items():
        if tool.endswith(".py"):
            assert f'"{flag}"' in (ROOT / tool).read_text(), f"{tool} has no {flag}"
        assert not any(flag in flags_of(command) for command in command_parsers()), \
            f"{flag} is an option of ours now: take it out of OTHER_TOOLS_FLAGS"


def test_every_option_is_documented():
    stale = [key for key in UNDOCUMENTED if key[0] not in command_parsers() or key[1] not in flags_of(key[0])]
    assert not stale, f"UNDOCUMENTED names options that do not exist: {stale}"
    documented = {(command, mention.flag) for mention in all_mentions() for command in mention.commands
                  if command in command_parsers() and mention.flag in flags_of(command)}
    missing = []
    for command in command_parsers():
        for action in option_actions(command):
            names = action.option_strings
            key = (command, names[0])
            if any((command, flag) in documented for flag in names):
                assert key not in UNDOCUMENTED, f"{key} is documented now: take it out of UNDOCUMENTED"
            elif key not in UNDOCUMENTED:
                missing.append(f"superthoughts {command} {' / '.join(names)}: {action.help}")
    if missing:
        pytest.fail("options no page mentions:\n" + "\n".join(missing))


def command_lines() -> list[CommandLine]:
    return [line for page in PAGES for line in scan(page)[1]]


def test_the_docs_have_command_lines_to_parse():
    lines = command_lines()
    assert len(lines) >= 20
    assert {command_named(list(line.argv)) for line in lines} >= {
        "train", "export", "generate", "eval", "bench step", "bench generate", "bench train"}


@pytest.mark.parametrize("line", command_lines(), ids=lambda line: line.where)
def test_every_command_line_parses(line):
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.build_parser(cli.COMMANDS).parse_args(list(line.argv))
        except SystemExit:
            pass  # argparse's usage and error are in `errors`
    # The error line alone: the usage above it lists every option of the subcommand.
    said = errors.getvalue().strip().splitlines()
    if said:
        pytest.fail(f"{line.where}: superthoughts {shlex.join(line.argv)}: {said[-1]}")


HELP_DEFAULT = re.compile(r"default:?\s+([^;,)\s]+)")


def parser_default(action: argparse.Action) -> object:
    """The option's default: the parser's, or for one settled at run time (default None: `demo
    --train-steps` depends on `--quick`) the first one its help text states, if any."""
    if action.default is not None:
        return action.default
    stated = HELP_DEFAULT.search(action.help or "")
    return stated.group(1) if stated else None


def matches_default(stated: str, default: object) -> bool:
    """Whether the docs' `stated` default reads as `default`: numbers by value (30 is 30.0),
    anything else as written."""
    try:
        return float(stated) == float(default)
    except (TypeError, ValueError):
        return stated == str(default)


def test_stated_defaults_are_the_parsers():
    checked, wrong = 0, []
    for page in PAGES:
        for flag, value, commands, where in scan(page)[2]:
            value = value.strip("`")
            # Words ("the run's", "8 on a CPU"): a default that is no single value, or depends on the machine.
            if re.search(r"\s", value):
                continue
            defaults = {command: parser_default(action) for command in commands
                        for action in option_actions(command) if flag in action.option_strings}
            checked += 1
            if not any(matches_default(value, default) for default in defaults.values()):
                wrong.append(f"{where}: {flag} (default {value}), the parser's: {defaults}")
    if wrong:
        pytest.fail("\n".join(wrong))
    assert checked >= 4  # the pattern still finds the defaults the pages state
