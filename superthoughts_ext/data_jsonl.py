"""From problem/solution rows to tokenised training examples: chat-template formatting, row
checks, JSONL and parquet reading.

A row {problem, solution} (or a row of chat messages: chat_rows.py) becomes the features
{"prompt_ids", "response_ids"} that the collator in data.py lays out in units: the prompt is the
chat template up to its generation prompt, the response the assistant turn cut right after EOS
(`format_example`). Rows are checked and tokenised by `encode_rows` (also used by train_data.py
for in-memory rows) and read from files by `load_jsonl_examples` and `load_parquet_examples`
(parquet_rows.py); the result is `Examples` (token_rows.py): the ids of every row packed into one
array as each row is tokenised, and each row's line or row number, so later drops can name them.
Kept apart from data.py because none of this depends on the unit layout, and the layout and
collator need no tokenizer.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from superthoughts_ext import parquet_rows
from superthoughts_ext.chat_rows import exchange
from superthoughts_ext.stop_tokens import CHAT_TURN_ENDS
from superthoughts_ext.token_rows import Examples, RowsBuilder, rows_named


def template_errors() -> tuple[type[Exception], ...]:
    """jinja2's TemplateError, which a template's raise_exception() raises (Gemma-style templates:
    "System role not supported"); none when jinja2 is absent, since then no template renders."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return ()
    return (TemplateError,)


def _chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except template_errors() as exc:
        if messages[0]["role"] == "system":
            raise ValueError(f"the chat template refuses a system message ({exc}); train with "
                             "--template-system-prompt (system_prompt=None) to send none") from exc
        raise ValueError(f"the chat template failed: {exc}") from exc


def _messages(problem: str, system_prompt: str | None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return system + [{"role": "user", "content": problem}]


def format_prompt(tokenizer: Any, problem: str, system_prompt: str | None = None) -> list[int]:
    """Prompt ids: the chat template over (system, user = problem) up to and including the
    generation prompt (e.g. "<|im_start|>assistant\\n"). system_prompt None = the template's default."""
    text = _chat(tokenizer, _messages(problem, system_prompt), add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _other_stop_ids(tokenizer: Any, eos_id: int) -> set[int]:
    """The ids other than EOS that decoding stops on (stop_token_ids: Qwen's <|endoftext|> beside
    <|im_end|>) that the tokenizer's vocabulary holds."""
    vocab = tokenizer.get_vocab()
    return {vocab[token] for token in CHAT_TURN_ENDS if token in vocab} - {eos_id}


def format_example(tokenizer: Any, problem: str, solution: str, system_prompt: str | None = None, *,
                   _other_stops: set[int] | None = None) -> dict[str, list[int]]:
    """{"prompt_ids", "response_ids"}: the response is the solution as the template writes the
    assistant turn, cut right after the tokenizer's EOS (ChatML: "...<|im_end|>", without the
    newline that follows); when the turn holds no EOS its trailing whitespace is dropped and
    EOS appended. A solution holding the EOS token before its end raises ValueError: the
    response would be cut there. `_other_stops`: `_other_stop_ids` of this tokenizer, computed
    once by a caller that formats many rows (`get_vocab` builds the whole vocabulary, ~150k
    entries for Qwen: tens of ms a call, most of a row's tokenising time)."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token; the response must end with one")
    ids = tokenizer(solution.rstrip(), add_special_tokens=False)["input_ids"]
    if eos_id in ids[:-1]:
        raise ValueError(f"the solution holds the EOS token {tokenizer.eos_token!r} before its end; "
                         f"the response would be cut there")
    # The other ids decoding stops on (stop_token_ids: Qwen's <|endoftext|> beside <|im_end|>),
    # anywhere: the model would learn to stop mid-answer.
    other_stops = _other_stop_ids(tokenizer, eos_id) if _other_stops is None else _other_stops
    if (stop := next((i for i in ids if i in other_stops), None)) is not None:
        raise ValueError(f"the solution holds the stop token {tokenizer.convert_ids_to_tokens(stop)!r}, on which "
                         "decoding ends; the model would learn to stop there")
    messages = _messages(problem, system_prompt)
    prompt_text = _chat(tokenizer, messages, add_generation_prompt=True)
    full_text = _chat(tokenizer, messages + [{"role": "assistant", "content": solution}], add_generation_prompt=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template's assistant turn does not extend its generation prompt; "
                         "cannot split prompt from response")
    if "".join(solution.split()) not in "".join(full_text[len(prompt_text):].split()):
        # E.g. a template that keeps only the text after "</think>": the reasoning, the part
        # SuperThoughts compresses, would be silently lost. Whitespace may be re-spaced.
        raise ValueError("the chat template rewrites the assistant turn (the solution's text is not in it, "
                         "e.g. it drops the <think> reasoning); pass a template that writes the solution as given")
    response = list(tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"])
    if eos_id in response:
        response = response[: response.index(eos_id) + 1]
    else:
        tail = full_text[len(prompt_text):].rstrip()
        response = list(tokenizer(tail, add_special_tokens=False)["input_ids"]) + [eos_id]
    return {"prompt_ids": list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"]), "response_ids": response}


def _warn_dropped(where: str, numbers: list[int], unit: str, why: str, stacklevel: int = 4) -> list[str]:
    """Warns "`where`: dropped N row(s) `why`", naming the first ten `unit` numbers; silent for none.
    Returns what it said was dropped ([] for none), for `Examples.dropped`."""
    if not numbers:
        return []
    warnings.warn(f"{where}: dropped {rows_named(numbers, unit, why)}", stacklevel=stacklevel)
    return [rows_named(numbers, unit, why)]


def encode_rows(numbered_rows: Iterable[tuple[int, Any]], tokenizer: Any, *, where: str, unit: str = "line",
                problem_field: str = "problem", solution_field: str = "solution",
                messages_field: str | None = None, system_prompt: str | None = None,
                max_length: int | None = None, progress: bool = False, total: int | None = None) -> Examples:
    """Tokenised features from (number, row) pairs; errors say `where:number` (unit "line") or
    `where: unit number` (unit "row", or "row index" for parquet), warnings start with `where`.

    A row's problem and solution are its `problem_field` and `solution_field` or, with
    `messages_field`, the user and the assistant turn of the chat messages that field holds
    (`chat_rows.exchange`: one exchange, a system turn only if it says `system_prompt`; the two
    fields are then not read). A row that is not a mapping, lacks a string field or whose solution
    holds EOS before its end raises ValueError. Rows whose solution is empty (or only whitespace)
    and rows longer than `max_length` tokens (prompt + response, uncompressed) are dropped with a
    warning naming them: never truncated. `progress` shows a progress bar
    (`superthoughts_ext.progress`) over the `total` rows (a few ms per row with a real BPE
    vocabulary: minutes for a large file, silent without it). The result keeps each example's
    number (`Examples`).
    """
    from superthoughts_ext.progress import progress_bar

    fields = _RowFields(problem_field, solution_field, messages_field, system_prompt)
    with progress_bar(numbered_rows, total=total, desc=f"tokenizing {where}", unit=unit.split()[0],
                      disable=not progress) as bar:
        examples, empty, too_long = _encode_each(bar, tokenizer, where, unit, fields, max_length)
    empty_what = "assistant turn" if messages_field is not None else repr(solution_field)
    examples.dropped = (_warn_dropped(where, empty, unit, f"with an empty {empty_what}")
                        + _warn_dropped(where, too_long, unit, f"longer than max_length={max_length} tokens"))
    return examples


@dataclass(frozen=True)
class _RowFields:
    """Where a row's texts are (`encode_rows`' arguments of that name)."""

    problem: str
    solution: str
    messages: str | None
    system_prompt: str | None

    def texts(self, row: Mapping[str, Any], at: str) -> tuple[str, str]:
        """(problem, solution) of `row`, checked: strings that UTF-8 can write. ValueError
        starting with `at` otherwise."""
        if self.messages is not None:
            if self.messages not in row:
                raise _no_field(row, self.messages, at, "--messages-field names another")
            problem, solution = exchange(row[self.messages], at=at, field=self.messages,
                                         system_prompt=self.system_prompt)
            named = {f"{self.messages} user turn": problem, f"{self.messages} assistant turn": solution}
        else:
            for field in (self.problem, self.solution):
                if field not in row:
                    raise _no_field(row, field, at, "--problem-field / --solution-field name others")
                if not isinstance(row[field], str):
                    hint = " (a binary parquet column: write the text as a string column)" if isinstance(
                        row[field], bytes) else ""
                    raise ValueError(f"{at}: field {field!r} is {type(row[field]).__name__}, not a string{hint}")
            problem, solution = row[self.problem], row[self.solution]
            named = {f"field {self.problem!r}": problem, f"field {self.solution!r}": solution}
        for name, text in named.items():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a JSON "\ud83d" escape: half an emoji, cut while scraping
                raise ValueError(f"{at}: {name} holds an unpaired UTF-16 surrogate "
                                 f"{text[exc.start]!r} at character {exc.start}") from None
        return problem, solution


def _no_field(row: Mapping[str, Any], field: str, at: str, hint: str) -> ValueError:
    """The error for a row without `field`, listing the fields it has."""
    if "prompt_ids" in row and "response_ids" in row:
        hint = "tokenised rows (prompt_ids / response_ids) are read from memory only: pass them to train() as a list"
    return ValueError(f"{at}: no field {field!r}; the row has {', '.join(map(repr, row)) or 'none'} ({hint})")


def _encode_each(numbered_rows: Iterable[tuple[int, Any]], tokenizer: Any, where: str, unit: str,
                 fields: _RowFields, max_length: int | None) -> tuple[Examples, list[int], list[int]]:
    """The loop of `encode_rows`: (examples, numbers of empty rows, numbers of too long rows). Each
    row is packed as soon as it is tokenised: its lists of Python ints are the only ones alive."""
    rows = RowsBuilder()
    kept: list[int] = []
    empty: list[int] = []
    too_long: list[int] = []
    # Once per file (format_example would read the whole vocabulary for every row); without an
    # EOS, format_example names that problem at the first row.
    eos_id = tokenizer.eos_token_id
    other_stops = _other_stop_ids(tokenizer, eos_id) if eos_id is not None else None
    for number, row in numbered_rows:
        at = f"{where}:{number}" if unit == "line" else f"{where}: {unit} {number}"
        if not isinstance(row, Mapping):
            # A one-line JSON array parses as one "row": a list.
            hint = "; expected JSON Lines, one object per line, not a JSON array" if isinstance(row, list) else ""
            raise ValueError(f"{at}: expected a JSON object, got {type(row).__name__}{hint}")
        problem, solution = fields.texts(row, at)
        if not solution.strip():
            empty.append(number)
            continue
        try:
            example = format_example(tokenizer, problem, solution, fields.system_prompt, _other_stops=other_stops)
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from exc
        if max_length is not None and len(example["prompt_ids"]) + len(example["response_ids"]) > max_length:
            too_long.append(number)
            continue
        rows.add(example["prompt_ids"], example["response_ids"])
        kept.append(number)
    return rows.build(where=where, unit=unit, numbers=kept), empty, too_long


def _not_utf8(path: str) -> ValueError:
    """The error for a file that is not UTF-8, naming the line of its first bad byte (a text-mode
    read names only an offset into its read buffer)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return ValueError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); the data must be JSON Lines "
                          "in UTF-8 or parquet, not another binary format such as arrow (convert with "
                          "`Dataset.to_parquet(path)` or `Dataset.to_json(path)`)")
    return ValueError(f"{path}: not UTF-8 text")  # the file changed since the read that failed


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, a byte order mark (Excel, pandas' utf-8-sig) skipped;
    ValueError naming the line for bytes that are not UTF-8 (`_not_utf8`)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def line_count(path: str | os.PathLike) -> int:
    """The lines of a UTF-8 file as `load_jsonl_examples` numbers them, blank ones included: the
    numbers its rows take, which the next file's rows follow when several are read together."""
    return sum(1 for _ in _text_lines(os.fspath(path)))


def load_jsonl_examples(path: str | os.PathLike, tokenizer: Any, problem_field: str = "problem",
                        solution_field: str = "solution", system_prompt: str | None = None,
                        max_length: int | None = None, progress: bool = False,
                        messages_field: str | None = None) -> Examples:
    """Tokenised features {"prompt_ids", "response_ids"} from a JSONL file, numbered by line
    (see `encode_rows`; `progress` shows a bar over its rows).

    Blank lines are skipped; a line that is not valid JSON raises ValueError naming the file and line.
    """
    where = os.fspath(path)

    def numbered_rows() -> Iterator[tuple[int, Any]]:
        for number, line in _text_lines(where):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                # A pretty-printed JSON array fails on its first line, "[", with a message about
                # JSON syntax that does not say what the file should look like.
                array = line.lstrip()[:1] == "["
                hint = "; expected JSON Lines, one object per line, not a JSON array" if array else ""
                if where.lower().endswith((".csv", ".tsv")):
                    hint = "; training data is JSON Lines (.jsonl), one object per line, or parquet"
                raise ValueError(f"{where}:{number}: not valid JSON: {exc}{hint}") from exc
            except (ValueError, RecursionError) as exc:  # an over-long integer, nesting too deep
                raise ValueError(f"{where}:{number}: JSON that Python cannot read: {exc}") from exc

    total = None
    if progress:
        total = sum(1 for _, line in _text_lines(where) if line.strip())
    return encode_rows(numbered_rows(), tokenizer, where=where, problem_field=problem_field,
                       solution_field=solution_field, messages_field=messages_field, system_prompt=system_prompt,
                       max_length=max_length, progress=progress, total=total)


def load_parquet_examples(path: str | os.PathLike, tokenizer: Any, problem_field: str = "problem",
                          solution_field: str = "solution", system_prompt: str | None = None,
                          max_length: int | None = None, progress: bool = False,
                          messages_field: str | None = None) -> Examples:
    """`load_jsonl_examples` for a parquet file: rows numbered by their 0-based row index
    ("row index 7"), only the columns read decoded, a record batch at a time
    (`parquet_rows.numbered_rows`). A column the file lacks is refused up front, naming the
    file's columns; a cell of another type (a list, a struct, binary) where text belongs is
    refused naming its row index and column. ValueError saying `pip install pyarrow` without
    pyarrow."""
    where = os.fspath(path)
    columns = [messages_field] if messages_field is not None else [problem_field, solution_field]
    names = parquet_rows.column_names(where)
    for column in columns:
        if column not in names:
            hint = ("--messages-field names another" if messages_field is not None
                    else "--problem-field / --solution-field name others")
            if {"prompt_ids", "response_ids"} <= set(names):
                hint = ("tokenised rows (prompt_ids / response_ids) are read from memory only: pass them to train() "
                        "as a list")
            raise ValueError(f"{where}: no column {column!r}; the file has {', '.join(map(repr, names)) or 'none'} "
                             f"({hint})")
    return encode_rows(parquet_rows.numbered_rows(where, columns), tokenizer, where=where,
                       unit=parquet_rows.ROW_INDEX, problem_field=problem_field, solution_field=solution_field,
                       messages_field=messages_field, system_prompt=system_prompt, max_length=max_length,
                       progress=progress, total=parquet_rows.row_count(where) if progress else None)
