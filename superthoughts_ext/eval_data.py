"""Evaluation benchmarks: registry, loading (local JSONL/JSON/CSV/parquet or the hub) and prompts.

Every benchmark row becomes a `Problem`: the text shown to the model and the reference
answer (a LaTeX/number string, or the correct letter A-D for GPQA-Diamond). The prompt is
Qwen2.5-Math's chain-of-thought prompt rendered through the checkpoint's chat template.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import random
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from superthoughts_ext.data_jsonl import template_errors
from superthoughts_ext.eval_files import read_rows

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
    an option's text can be graded as that option's letter; ``option_order`` numbers the
    order they were shuffled into (`load_problems`' option_orders; None for other benchmarks).
    """

    id: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    option_order: int | None = None


def get_bench(name: str) -> BenchSpec:
    """The registry entry for ``name``; ValueError listing the known benchmarks otherwise."""
    if name not in BENCHES:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHES))}")
    return BENCHES[name]


def load_hub_rows(spec: BenchSpec) -> list[dict[str, Any]]:
    """Download a benchmark with `datasets`; a clear error when the hub is unreachable."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(spec.hub_path, spec.hub_config, split=spec.hub_split)
    except Exception as error:
        raise RuntimeError(
            f"could not load {spec.name} from the Hugging Face hub "
            f"({spec.hub_path}, config {spec.hub_config}, split {spec.hub_split}): {error}. "
            "When offline, pass --data FILE with a local JSONL/JSON/CSV/parquet copy."
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


# A number as pandas' to_csv writes a float cell in scientific notation (1e-05).
_SCIENTIFIC = re.compile(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+")
# ... and a whole float cell: "7.0", which the JSON float 7.0 gives as "7".
_WHOLE_DECIMAL = re.compile(r"[+-]?\d+\.0+")


def format_answer(value: Any) -> str | None:
    """A reference answer as `cell_text`, one enclosing math span unwrapped: "$4$" -> "4".
    Text in scientific notation or a whole decimal reads as the float cell a CSV lost:
    "1e-05" -> "0.00001", "7.0" -> "7".

    Only a single span ("$" at both ends and nowhere else): "$a$ and $b$" stays as it is, since
    stripping its outer "$" would turn the math inside out.
    """
    text = cell_text(value)
    if text is not None and _SCIENTIFIC.fullmatch(text):
        text = cell_text(float(text))
    if text is not None and _WHOLE_DECIMAL.fullmatch(text):  # one reference whatever the file format
        text = str(int(Decimal(text)))
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


MAX_OPTION_ORDERS = 24  # 4! orders of four options


def _check_order_count(count: int) -> None:
    if not 1 <= count <= MAX_OPTION_ORDERS:
        raise ValueError(f"option_orders must be in [1, {MAX_OPTION_ORDERS}] (four options have 24 orders), got {count}")


def gpqa_option_orders(question: str, correct: str, incorrect: Iterable[str],
                       count: int) -> list[tuple[tuple[str, ...], str]]:
    """``count`` distinct orders of a GPQA question's options, as `gpqa_options` returns them.

    Order 0 is `gpqa_options`' own; orders 1-3 rotate it, so that with four orders the correct
    option stands once under each letter (a model's favourite letter then shows in the
    per-order accuracies); orders 4-23 are the other permutations in an order seeded by the
    question. Distinct: a greedy model answers a repeated prompt alike, which would count it twice.
    """
    _check_order_count(count)
    incorrect = list(incorrect)
    first, _ = gpqa_options(question, correct, incorrect)
    rotations = [first[-k:] + first[:-k] if k else first for k in range(4)]
    others = sorted(set(itertools.permutations(first)) - set(rotations))
    digest = hashlib.sha256(f"orders:{question}".encode()).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(others)
    right = correct.strip()
    return [(options, "ABCD"[options.index(right)]) for options in (rotations + others)[:count]]


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


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({key for row in rows for key in row})


def _pick_field(rows: list[dict[str, Any]], fields: tuple[str, ...], what: str, bench: str) -> str:
    columns = _columns(rows)
    for field in fields:
        if field in columns:
            return field
    raise ValueError(
        f"{bench}: no {what} column {' / '.join(fields)} in the data; columns: {', '.join(columns)} "
        f"(set it with --{what}-field)"
    )


def _check_distractor_fields(rows: list[dict[str, Any]], spec: BenchSpec) -> None:
    """The GPQA option columns, which no flag renames, must be present: without them every row
    would be skipped as one missing an option."""
    columns = _columns(rows)
    missing = [field for field in spec.distractor_fields if field not in columns]
    if missing:
        raise ValueError(f"{spec.name}: no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} in the data; "
                         f"columns: {', '.join(columns)}")


def _check_text_cells(row: dict[str, Any], fields: Iterable[str], bench: str, number: int) -> None:
    """Refuses an object or a list of objects (chat messages, say), or bytes (a parquet binary
    column), where text belongs: `cell_text` would print it as a Python repr and the model would be
    asked that. Refuses an unpaired UTF-16
    surrogate (a JSON "\\ud83d" cut from its pair), which the tokenizer and the records file
    cannot take (a TypeError at tokenising, or a failed write after decoding)."""
    for field in fields:
        value = row.get(field)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"{bench}: row {number}, column {field!r} holds an unpaired UTF-16 surrogate "
                                 f"({value[error.start]!r} at character {error.start})") from None
        if isinstance(value, dict) or (isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value)):
            kind = "an object" if isinstance(value, dict) else "a list of objects"
            raise ValueError(f"{bench}: row {number}, column {field!r}: {kind}, not text ({value!r:.60}); "
                             "point --problem-field / --answer-field at a text column")
        if isinstance(value, (bytes, bytearray)):
            raise ValueError(f"{bench}: row {number}, column {field!r}: bytes, not text ({value!r:.60}); a binary "
                             "column (a parquet file written without string types?): store the text as strings")


def check_limit(limit: int | None) -> None:
    """ValueError unless ``limit`` is None or >= 1 (0 would still take one problem, a negative
    one would drop problems from the end)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (or left out for every problem), got {limit}")


# Rows are counted from 1 in messages, as in an editor; ids keep the 0-based index of earlier runs.
_ROW_IDS = "the problems are numbered by their rows instead (ids from 0: row 1 is id '0')"


def _unique_id_field(rows: list[dict[str, Any]], spec: BenchSpec) -> str | None:
    """The registry's id column when every row has one and no two share it (ids match problems
    across runs in compare()); None means row indices (from 0) serve as ids, with a warning
    when an id column exists but fails one of the two."""
    field = next((f for f in spec.id_fields if all(f in row for row in rows)), None)
    partial = next((f for f in spec.id_fields if any(f in row for row in rows)), None)
    if field is None and partial is not None:
        # Said, as for repeated ids: every problem's id changes, and compare / regrade against a
        # run on a clean copy would find other problems under the same ids.
        missing = [index + 1 for index, row in enumerate(rows) if partial not in row]
        warnings.warn(f"{spec.name}: rows {missing[:5]}{' ...' if len(missing) > 5 else ''} have no {partial!r} "
                      f"column ({len(missing)} of {len(rows)}); {_ROW_IDS}", stacklevel=4)
        return None
    if field is not None and len({str(row[field]) for row in rows}) != len(rows):
        counts = collections.Counter(str(row[field]) for row in rows)
        repeated = [i for i, n in counts.items() if n > 1]
        # Said: the records' ids then differ from a run on a clean copy, which compare and
        # regrade could no longer match.
        at = [index + 1 for index, row in enumerate(rows) if str(row[field]) in repeated]
        warnings.warn(f"{spec.name}: the {field!r} column repeats {repeated[:5]} (rows {at[:10]}"
                      f"{' ...' if len(at) > 10 else ''}); {_ROW_IDS}", stacklevel=4)
        return None
    return field


def option_order_id(problem_id: str, order: int) -> str:
    """The id of a question's problem in option order ``order``: order 0 keeps the question's
    own id, so a run of one order and a run of several share (and `compare` matches) it."""
    return problem_id if order == 0 else f"{problem_id}#order{order}"


def _problems_from_row(row: dict[str, Any], problem_id: str, spec: BenchSpec, p_field: str, a_field: str,
                       option_orders: int) -> list[Problem]:
    """One row as `Problem`s (one per option order for a multiple-choice bench, else one);
    none when its problem, answer or a GPQA option is missing."""
    question = cell_text(row.get(p_field))
    # A GPQA answer is one of the options and must read exactly like the others.
    answer = (cell_text if spec.multiple_choice else format_answer)(row.get(a_field))
    distractors = [cell_text(row.get(field)) for field in spec.distractor_fields]
    if question is None or answer is None or None in distractors:
        return []
    if not spec.multiple_choice:
        return [Problem(problem_id, question, answer)]
    orders = gpqa_option_orders(question, answer, distractors, option_orders)  # type: ignore[arg-type]
    return [Problem(option_order_id(problem_id, order), gpqa_message(question, options), letter, options,
                    option_order=order) for order, (options, letter) in enumerate(orders)]


def check_option_orders(bench: str, option_orders: int) -> None:
    """ValueError unless ``option_orders`` is in [1, 24], and 1 for a benchmark without options."""
    _check_order_count(option_orders)
    if option_orders > 1 and not get_bench(bench).multiple_choice:
        choice = ", ".join(name for name, spec in sorted(BENCHES.items()) if spec.multiple_choice)
        raise ValueError(f"{bench} has no answer options to shuffle; option orders apply to {choice}")


def _warn_skipped(bench: str, skipped: list[str], why: str) -> None:
    """One warning for the rows skipped for `why`; `skipped` names them ("id x" or "row N")."""
    if not skipped:
        return
    shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    warnings.warn(f"{bench}: skipped {len(skipped)} row(s) {why} ({shown})", stacklevel=3)


def _repeats_an_option(row: dict[str, Any], spec: BenchSpec, a_field: str) -> bool:
    """A multiple-choice row two of whose options read alike: its letters would not name one
    answer each (a right answer graded wrong), and its orders would repeat."""
    texts = [text for text in (cell_text(row.get(f)) for f in (a_field, *spec.distractor_fields)) if text]
    return spec.multiple_choice and len(set(texts)) < len(texts)


def load_problems(
    bench: str,
    data: str | Path | None = None,
    *,
    problem_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
    option_orders: int = 1,
) -> list[Problem]:
    """Load a benchmark as `Problem`s, from ``data`` if given, else from the hub.

    Rows whose answer (or GPQA option) is missing or empty are skipped, with one warning
    giving their count and ids; a missing column is a ValueError naming the columns present, an
    object (chat messages, say) where text belongs one naming the row and column.
    ``problem_field`` / ``answer_field`` override the registry's column names.

    ``option_orders`` (multiple-choice benchmarks, 1-24): each question becomes that many
    problems, its options in distinct orders (`gpqa_option_orders`: order 0 is the
    single-order run's, under the question's own id, order k > 0 under "<id>#order<k>"), so
    that the accuracy averages over option orders. ``limit`` counts questions.
    """
    spec = get_bench(bench)
    check_limit(limit)
    check_option_orders(bench, option_orders)
    rows = read_rows(data) if data is not None else load_hub_rows(spec)
    if not rows:
        raise ValueError(f"{bench}: no rows in {data or spec.hub_path}")
    p_field = _pick_field(rows, (problem_field,) if problem_field else spec.problem_fields, "problem", bench)
    a_field = _pick_field(rows, (answer_field,) if answer_field else spec.answer_fields, "answer", bench)
    _check_distractor_fields(rows, spec)
    id_field = _unique_id_field(rows, spec)

    problems: list[Problem] = []
    questions = 0
    skipped: list[str] = []
    repeated: list[str] = []
    for index, row in enumerate(rows):
        problem_id = str(row[id_field]) if id_field is not None else str(index)
        # Rows as _check_text_cells counts them (from 1), ids where the data has them.
        named = f"id {problem_id}" if id_field is not None else f"row {index + 1} (id {problem_id})"
        _check_text_cells(row, (p_field, a_field, *spec.distractor_fields), bench, index + 1)
        if _repeats_an_option(row, spec, a_field):
            repeated.append(named)
            continue
        row_problems = _problems_from_row(row, problem_id, spec, p_field, a_field, option_orders)
        if not row_problems:
            skipped.append(named)
            continue
        problems += row_problems
        questions += 1
        if limit is not None and questions >= limit:
            break
    _warn_skipped(bench, skipped, "without a problem, answer or option")
    _warn_skipped(bench, repeated, "whose options repeat one another")
    if not problems:
        raise ValueError(f"{bench}: every row lacks a problem, answer or option")
    return problems


def build_prompt(tokenizer: Any, question: str, system_prompt: str | None = SYSTEM_PROMPT) -> str:
    """Qwen2.5-Math CoT prompt through the tokenizer's own chat template.

    system: ``system_prompt``, by default "Please reason step by step, and put your final answer
    within \\boxed{}." (None: no system message of ours, the template writes its default, as
    train's --template-system-prompt); user: the problem; the assistant turn is opened
    (``add_generation_prompt=True``).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; evaluation needs a chat model checkpoint")
    system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages = [*system, {"role": "user", "content": question}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except template_errors() as error:
        raise ValueError(f"the chat template refuses the prompt's messages ({error}); a template without a system "
                         "turn needs --template-system-prompt (in training too)") from error
