"""Evaluation benchmarks: registry, loading (local JSONL/JSON/CSV or the hub) and prompts.

Every benchmark row becomes a `Problem`: the text shown to the model and the reference
answer (a LaTeX/number string, or the correct letter A-D for GPQA-Diamond). The prompt is
Qwen2.5-Math's chain-of-thought prompt rendered through the checkpoint's chat template.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

GPQA_INSTRUCTION = (
    "Answer with the letter of the correct choice (A, B, C or D) in \\boxed{}, e.g. \\boxed{A}."
)


@dataclass(frozen=True)
class BenchSpec:
    """Where a benchmark lives and which columns hold its problem and answer.

    Field tuples are tried in order (the hub and common local copies name them differently).
    """

    name: str
    problem_fields: tuple[str, ...]
    answer_fields: tuple[str, ...]
    hub_path: str
    hub_config: str | None
    hub_split: str
    # GPQA-style multiple choice: the answer field holds the correct option's text.
    distractor_fields: tuple[str, ...] = ()
    id_fields: tuple[str, ...] = ("unique_id", "id", "Record ID")

    @property
    def multiple_choice(self) -> bool:
        return bool(self.distractor_fields)


BENCHES: dict[str, BenchSpec] = {
    "math500": BenchSpec("math500", ("problem",), ("answer",), "HuggingFaceH4/MATH-500", None, "test"),
    "amc23": BenchSpec("amc23", ("problem", "question"), ("answer",), "math-ai/amc23", None, "test"),
    "olympiadbench": BenchSpec(
        "olympiadbench",
        ("question", "problem"),
        ("final_answer", "answer"),
        "Hothan/OlympiadBench",
        "OE_TO_maths_en_COMP",
        "train",
    ),
    "gpqa_diamond": BenchSpec(
        "gpqa_diamond",
        ("Question",),
        ("Correct Answer",),
        "Idavidrein/gpqa",
        "gpqa_diamond",
        "train",
        distractor_fields=("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"),
    ),
}


@dataclass(frozen=True)
class Problem:
    """One benchmark item.

    ``question`` is the user message (for GPQA it already lists the lettered choices);
    ``answer`` is the reference answer (for GPQA the correct letter); ``options`` are GPQA's
    option texts in letter order A-D (empty for other benchmarks), so that an answer boxed as
    an option's text can be graded as that option's letter.
    """

    id: str
    question: str
    answer: str
    options: tuple[str, ...] = ()


def get_bench(name: str) -> BenchSpec:
    """The registry entry for ``name``; ValueError listing the known benchmarks otherwise."""
    if name not in BENCHES:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHES))}")
    return BENCHES[name]


def json_lines(text: str) -> list[str]:
    """The lines of a JSON Lines text: split at "\\n" alone, a trailing "\\r" dropped. Not
    `str.splitlines`, which also splits at U+2028, U+2029, U+0085...: JSON strings may hold those
    raw, and json.dumps(ensure_ascii=False) writes them so."""
    lines = text.split("\n")
    if lines[-1] == "":  # the newline ending the last line
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _json_lines(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(json_lines(text), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}, column {error.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _json_list(path: Path, text: str) -> list[dict[str, Any]]:
    """A list of objects, one object (one row: JSON Lines of a single row read so too), or JSON
    Lines: objects one after another, as `datasets`' to_json writes them under any suffix."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        # Only objects follow one another in JSON Lines; a list followed by more is broken JSON.
        if error.msg == "Extra data" and text.lstrip().startswith("{"):
            return _json_lines(path, text)
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from None
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: expected a JSON list of objects (or JSON Lines)")
    return rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (a list of objects, or JSON Lines) or ``.csv``
    file. A UTF-8 byte order mark (Excel, pandas' utf-8-sig) is skipped: it would otherwise
    become part of the first column's name. Parse errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    if suffix == ".json":
        return _json_list(path, path.read_text(encoding="utf-8-sig"))
    if suffix == ".jsonl":
        return _json_lines(path, path.read_text(encoding="utf-8-sig"))
    raise ValueError(f"{path}: unsupported data format {suffix!r} (use .jsonl, .json or .csv)")


def load_hub_rows(spec: BenchSpec) -> list[dict[str, Any]]:
    """Download a benchmark with `datasets`; a clear error when the hub is unreachable."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(spec.hub_path, spec.hub_config, split=spec.hub_split)
    except Exception as error:
        raise RuntimeError(
            f"could not load {spec.name} from the Hugging Face hub "
            f"({spec.hub_path}, config {spec.hub_config}, split {spec.hub_split}): {error}. "
            "When offline, pass --data FILE with a local JSONL/JSON/CSV copy."
        ) from error
    return [dict(row) for row in dataset]


def cell_text(value: Any) -> str | None:
    """A data cell as text: 27.0 -> "27", 1e-05 -> "0.00001", ["3"] -> "3", ["1", "2"] -> "1, 2";
    None for a missing or empty cell. Questions and GPQA options keep their LaTeX as written."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN: pandas/CSV exports write missing cells this way
            return None
        # Positional digits: repr writes 1e-05, which math-verify does not read as a number.
        return str(int(value)) if value.is_integer() else format(Decimal(repr(value)), "f")
    if isinstance(value, (list, tuple)):
        parts = [part for part in (cell_text(item) for item in value) if part]
        return ", ".join(parts) or None
    return str(value).strip() or None


def format_answer(value: Any) -> str | None:
    """A reference answer as `cell_text`, one enclosing math span unwrapped: "$4$" -> "4".

    Only a single span ("$" at both ends and nowhere else): "$a$ and $b$" stays as it is, since
    stripping its outer "$" would turn the math inside out.
    """
    text = cell_text(value)
    if text is not None and len(text) > 2 and text.count("$") == 2 and text[0] == text[-1] == "$":
        text = text[1:-1].strip()
    return text or None


def gpqa_options(question: str, correct: str, incorrect: Iterable[str], seed: int = 0) -> tuple[tuple[str, ...], str]:
    """The four options of a GPQA question in a shuffled, reproducible order, and the correct
    one's letter: ``(options in letter order A-D, correct_letter)``.

    The order is seeded by the question text (and ``seed``), so every run and every model
    sees the same letters.
    """
    options = [correct.strip(), *(text.strip() for text in incorrect)]
    if len(options) != 4:
        raise ValueError(f"GPQA needs one correct and three incorrect answers, got {len(options)}")
    digest = hashlib.sha256(f"{seed}:{question}".encode()).digest()
    order = list(range(4))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return tuple(options[index] for index in order), "ABCD"[order.index(0)]


def gpqa_question(question: str, correct: str, incorrect: Iterable[str], seed: int = 0) -> tuple[str, str]:
    """A GPQA user message with the four options in `gpqa_options`' order.

    Returns ``(message, correct_letter)``:

        <question>

        A) <option>
        B) <option>
        C) <option>
        D) <option>

        Answer with the letter of the correct choice (A, B, C or D) in \\boxed{}, e.g. \\boxed{A}.
    """
    options, letter = gpqa_options(question, correct, incorrect, seed)
    return gpqa_message(question, options), letter


def gpqa_message(question: str, options: tuple[str, ...]) -> str:
    """The user message of `gpqa_question` for options already in letter order."""
    lines = [f"{name}) {option}" for name, option in zip("ABCD", options)]
    return f"{question.strip()}\n\n" + "\n".join(lines) + f"\n\n{GPQA_INSTRUCTION}"


def _pick_field(rows: list[dict[str, Any]], fields: tuple[str, ...], what: str, bench: str) -> str:
    columns = sorted({key for row in rows for key in row})
    for field in fields:
        if field in columns:
            return field
    raise ValueError(
        f"{bench}: no {what} column {' / '.join(fields)} in the data; columns: {', '.join(columns)} "
        f"(set it with --{what}-field)"
    )


def check_limit(limit: int | None) -> None:
    """ValueError unless ``limit`` is None or >= 1 (0 would still take one problem, a negative
    one would drop problems from the end)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or left out for every problem), got {limit}")


def _unique_id_field(rows: list[dict[str, Any]], spec: BenchSpec) -> str | None:
    """The registry's id column when every row has one and no two share it (ids match problems
    across runs in compare()); None means row numbers serve as ids."""
    field = next((f for f in spec.id_fields if all(f in row for row in rows)), None)
    if field is not None and len({str(row[field]) for row in rows}) != len(rows):
        return None
    return field


def _problem_from_row(row: dict[str, Any], problem_id: str, spec: BenchSpec, p_field: str, a_field: str) -> Problem | None:
    """One row as a `Problem`; None when its problem, answer or a GPQA option is missing."""
    question = cell_text(row.get(p_field))
    # A GPQA answer is one of the options and must read exactly like the others.
    answer = (cell_text if spec.multiple_choice else format_answer)(row.get(a_field))
    distractors = [cell_text(row.get(field)) for field in spec.distractor_fields]
    if question is None or answer is None or None in distractors:
        return None
    if not spec.multiple_choice:
        return Problem(problem_id, question, answer)
    options, letter = gpqa_options(question, answer, distractors)  # type: ignore[arg-type]
    return Problem(problem_id, gpqa_message(question, options), letter, options)


def _warn_skipped(bench: str, skipped: list[str]) -> None:
    if not skipped:
        return
    shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    warnings.warn(f"{bench}: skipped {len(skipped)} row(s) without a problem or answer (ids {shown})",
                  stacklevel=3)


def load_problems(
    bench: str,
    data: str | Path | None = None,
    *,
    problem_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Load a benchmark as `Problem`s, from ``data`` if given, else from the hub.

    Rows whose answer (or GPQA option) is missing or empty are skipped, with one warning
    giving their count and ids; a missing column is a ValueError naming the columns present.
    ``problem_field`` / ``answer_field`` override the registry's column names.
    """
    spec = get_bench(bench)
    check_limit(limit)
    rows = read_rows(data) if data is not None else load_hub_rows(spec)
    if not rows:
        raise ValueError(f"{bench}: no rows in {data or spec.hub_path}")
    p_field = _pick_field(rows, (problem_field,) if problem_field else spec.problem_fields, "problem", bench)
    a_field = _pick_field(rows, (answer_field,) if answer_field else spec.answer_fields, "answer", bench)
    id_field = _unique_id_field(rows, spec)

    problems: list[Problem] = []
    skipped: list[str] = []
    for index, row in enumerate(rows):
        problem_id = str(row[id_field]) if id_field is not None else str(index)
        problem = _problem_from_row(row, problem_id, spec, p_field, a_field)
        if problem is None:
            skipped.append(problem_id)
            continue
        problems.append(problem)
        if limit is not None and len(problems) >= limit:
            break
    _warn_skipped(bench, skipped)
    if not problems:
        raise ValueError(f"{bench}: every row lacks a problem or an answer")
    return problems


def build_prompt(tokenizer: Any, question: str) -> str:
    """Qwen2.5-Math CoT prompt through the tokenizer's own chat template.

    system: "Please reason step by step, and put your final answer within \\boxed{}."
    user: the problem; the assistant turn is opened (``add_generation_prompt=True``).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; evaluation needs a chat model checkpoint")
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
