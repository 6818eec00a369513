"""The examples `superthoughts_ext.train` trains on, and those it evaluates on (--eval-data): JSONL
or parquet files (one, several, a directory of shards: data_files.py) or in-memory rows, raw text
(problem/solution or chat messages) or pre-tokenised, checked up front so that errors name the
row, and dropped when longer than --max-length or the model's context.
"""
from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from superthoughts_ext import data_files, parquet_rows
from superthoughts_ext.data import _response_with_eos, layout_length
from superthoughts_ext.data_jsonl import (_warn_dropped, encode_rows, line_count, load_jsonl_examples,
                                          load_parquet_examples)
from superthoughts_ext.token_rows import Examples, RowsBuilder
from superthoughts_ext.train_utils import pad_and_eos_ids


def check_data_files(data: str | os.PathLike | Sequence[str | os.PathLike], *,
                     held_out: bool = False, training: Any = None) -> list[Path]:
    """The files `data` names (a file, several, directories of shards: `data_files.data_files`),
    refused unless each is a regular file (a missing path, a pipe: train reads its data more than
    once), or for parquet files without pyarrow to read them, a file named twice, JSON Lines mixed
    with parquet; `held_out` names them "eval data" in the errors. Held-out files that are also
    among the files `training` (the --data, when it names files) names are warned about: their
    loss is that of rows the model trains on, not a held-out one."""
    files = data_files.data_files(data, name="eval data" if held_out else "data")
    if held_out and data_files.is_paths(training):
        trained = {os.path.realpath(path) for path in data_files.data_files(training)}
        shared = [os.fspath(path) for path in files if os.path.realpath(path) in trained]
        if shared:
            warnings.warn(f"--eval-data {', '.join(shared)}: also in --data; its eval_loss scores rows the model "
                          "trains on, not held-out ones", stacklevel=2)
    return files


def load_examples(
    data: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    problem_field: str,
    solution_field: str,
    system_prompt: str | None,
    max_length: int | None,
    progress: bool = False,
    text_options: Sequence[str] = (),
    held_out: bool = False,
    messages_field: str | None = None,
) -> Examples:
    """Tokenised features {"prompt_ids", "response_ids"} from JSONL or parquet files or rows, each
    with its line (or row, or parquet row index) number for `drop_beyond_context`, packed into one
    array as each row is read (`Examples`). `data` names files as a path or a list of paths, a
    directory standing for its data files (`data_files.data_files`); several files are read one
    after the other, their rows named by file (`Examples.files`).

    Rows may be raw ({problem_field, solution_field}: text; with `messages_field`, a list of chat
    messages there: `chat_rows.exchange`) or already tokenised ({"prompt_ids", "response_ids"}:
    lists of ids, checked by `tokenised_rows`). A file is parquet by its suffix or its first bytes
    (`parquet_rows.is_parquet`), else JSON Lines. Errors name the file and line (or row number, or
    row index); an empty dataset is an error. `progress` shows a bar while text rows are tokenised.
    `text_options` names the options the caller set that only text rows read (problem_field, ...):
    refused with tokenised rows, not dropped. `held_out`: the rows of --eval-data, named so in
    errors ("eval data", "eval_data: row 2").
    """
    name, kind = ("eval data", "evaluation") if held_out else ("data", "training")
    if data_files.is_paths(data):
        files = check_data_files(data, held_out=held_out)
        read = dict(problem_field=problem_field, solution_field=solution_field, messages_field=messages_field,
                    system_prompt=system_prompt, max_length=max_length, progress=progress)
        examples = _load_files(files, data, tokenizer, read)
        where = examples.where
    else:
        rows = list(data)
        where = "eval_data" if held_out else "train"
        # One row with token ids makes them all tokenised rows: a typo in a later row's field is
        # then named there, not blamed on row 1 as a missing "problem".
        if any(isinstance(r, Mapping) and ("prompt_ids" in r or "response_ids" in r) for r in rows):
            if text_options:
                raise ValueError(f"train: {', '.join(text_options)} {'apply' if len(text_options) > 1 else 'applies'} "
                                 "to text rows; these rows are already tokenised (prompt_ids / response_ids)")
            examples = tokenised_rows(rows, pad_and_eos_ids(tokenizer)[1], where=where, max_length=max_length)
        else:
            examples = _encode_rows(
                rows, tokenizer, problem_field=problem_field, solution_field=solution_field,
                messages_field=messages_field, system_prompt=system_prompt, max_length=max_length,
                progress=progress, where=where,
            )
        where = "the given eval_data rows" if held_out else "the given rows"
    if not examples:
        # The warnings said so already; the error repeats it, since it is what the user reads last.
        what = f": every row was dropped, {'; '.join(examples.dropped)}" if examples.dropped else " (no rows)"
        raise ValueError(f"train: no {kind} examples in {where}{what}")
    return examples


def _load_file(path: Path, tokenizer: PreTrainedTokenizerBase, read: dict[str, Any]) -> Examples:
    """The examples of one file, parquet or JSON Lines (`read`: the keyword arguments of both loaders)."""
    load = load_parquet_examples if parquet_rows.is_parquet(path) else load_jsonl_examples
    return load(os.fspath(path), tokenizer, **read)


def _load_files(files: list[Path], data: Any, tokenizer: PreTrainedTokenizerBase, read: dict[str, Any]) -> Examples:
    """The examples of `files` (one format: `data_files`), one after the other, each file's rows
    numbered past the previous files' (`Examples.files`); one file's as `_load_file` reads them.
    Each file's ids are appended to the whole as soon as it is read, then let go: the peak holds
    the whole and one file's, not both twice."""
    if len(files) == 1:
        return _load_file(files[0], tokenizer, read)
    rows = RowsBuilder()
    numbers: list[int] = []
    dropped: list[str] = []
    spans: list[tuple[str, int]] = []
    offset = 0
    unit = "line"
    for path in files:
        part = _load_file(path, tokenizer, read)
        rows.extend(part)
        numbers += [offset + number for number in part.numbers]
        dropped += [f"{os.fspath(path)}: {text}" for text in part.dropped]
        spans.append((os.fspath(path), offset))
        unit = part.unit
        offset += parquet_rows.row_count(path) if unit == parquet_rows.ROW_INDEX else line_count(path)
        del part
    return rows.build(where=data_files.describe(files, data), unit=unit, numbers=numbers, dropped=dropped,
                      files=spans)


def _encode_rows(rows: list[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, *, problem_field: str,
                 solution_field: str, messages_field: str | None, system_prompt: str | None,
                 max_length: int | None, progress: bool, where: str) -> Examples:
    """In-memory twin of `data.load_jsonl_examples`: same checks and tokenisation, rows numbered from 1."""
    return encode_rows(enumerate(rows, start=1), tokenizer, where=where, unit="row",
                       problem_field=problem_field, solution_field=solution_field, messages_field=messages_field,
                       system_prompt=system_prompt, max_length=max_length, progress=progress, total=len(rows))


def _token_ids(values: Any, at: str, name: str) -> list[int]:
    try:
        if isinstance(values, (str, bytes, bytearray, memoryview)):
            raise TypeError  # text, or bytes that iterate to ints
        values = values.tolist() if hasattr(values, "tolist") else values  # a tensor / array of ids
        if any(isinstance(t, bool) for t in values):
            raise TypeError  # operator.index takes True as 1
        ids = [operator.index(t) for t in values]
    except TypeError:
        raise ValueError(f"{at}: {name} must be a list of int token ids, got {values!r:.80}") from None
    if ids and min(ids) < 0:
        raise ValueError(f"{at}: {name} holds the negative token id {min(ids)}")
    return ids


def tokenised_rows(rows: Sequence[Mapping[str, Any]], eos_id: int, *, where: str,
                   max_length: int | None = None) -> Examples:
    """Features from pre-tokenised rows {"prompt_ids", "response_ids"}; errors say `where: row number`
    (rows numbered from 1), warnings start with `where`.

    The checks `build_units` makes at collate time, made up front so that they name the row:
    ids are non-negative ints, the prompt is not empty, EOS only closes the response. Rows
    longer than `max_length` tokens (prompt + response with its EOS) are dropped with a
    warning, as `encode_rows` drops text rows. An id past int64 is refused there too: the rows
    are packed into an int64 array at most.
    """
    packed = RowsBuilder()
    kept: list[int] = []
    too_long: list[int] = []
    for number, row in enumerate(rows, start=1):
        at = f"{where}: row {number}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{at}: expected a mapping with prompt_ids and response_ids, got {type(row).__name__}")
        for name in ("prompt_ids", "response_ids"):
            if name not in row:
                raise ValueError(f"{at}: no field {name!r}; the row has {', '.join(map(repr, row)) or 'none'} "
                                 "(tokenised rows need prompt_ids and response_ids)")
        prompt = _token_ids(row["prompt_ids"], at, "prompt_ids")
        response = _token_ids(row["response_ids"], at, "response_ids")
        if not prompt:
            raise ValueError(f"{at}: empty prompt_ids; the last prompt position is what predicts the first unit")
        try:
            length = len(prompt) + len(_response_with_eos(response, eos_id))
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from exc
        if max_length is not None and length > max_length:
            too_long.append(number)
            continue
        try:
            packed.add(prompt, response)
        except OverflowError:
            raise ValueError(f"{at}: a token id does not fit in int64") from None
        kept.append(number)
    dropped = _warn_dropped(where, too_long, "row", f"longer than max_length={max_length} tokens")
    return packed.build(where=where, unit="row", numbers=kept, dropped=dropped)


def drop_beyond_context(examples: Sequence[Mapping[str, Any]], context: int | None, eos_id: int,
                        split_fraction: float, kind: str = "training") -> Examples:
    """`examples` without the rows that need more than `context` positions (the backbone's
    max_position_embeddings; None = no limit), with a warning naming them: past it the
    position embeddings leave the range the model was trained on, silently.

    A row takes at most its prompt plus its units with `split_fraction` of its pairs split,
    rounded up (`data.layout_length`, the bound over every pad-split draw): rho_max, the
    largest rho the collator draws, or 1.0 (one position per token) for the baseline and the
    distillation teacher. Below 1.0 it also warns about the kept rows that a baseline run
    would drop. Rows are named by the numbers `Examples` carries (JSONL lines as
    `load_examples` read them); a plain list is named "train", rows numbered from 1. With no row
    left the error names them, and the rows the loader dropped before; it calls them `kind`
    examples ("evaluation" for --eval-data).
    """
    if not isinstance(examples, Examples):
        examples = Examples.of(examples, where="train", unit="row", numbers=range(1, len(examples) + 1))
    if context is None:
        return examples
    lengths = [layout_length(*examples.spans(i), eos_id, split_fraction) for i in range(len(examples))]
    fits = [n <= context for n in lengths]
    kept = examples.select(fits)
    over = [number for number, fit in zip(examples.numbers, fits) if not fit]
    if over:
        why = f"longer than the model's context, max_position_embeddings={context}, up to {max(lengths)} positions"
        if not kept:
            earlier = "".join(f"; dropped on loading: {text}" for text in examples.dropped)
            raise ValueError(f"{examples.where}: no {kind} examples left: {examples.rows_named(over, why)}{earlier}")
        warnings.warn(f"{examples.where}: dropped {examples.rows_named(over, why)}", stacklevel=2)
    if split_fraction < 1.0:
        _warn_baseline_drops(kept, context, eos_id)
    return kept


def _warn_baseline_drops(kept: Examples, context: int, eos_id: int) -> None:
    """Compressed rows can fit a context that the same rows at one position per token do not: a
    --baseline run of the data would drop those, and the two runs would not train on the same rows."""
    over = [number for i, number in enumerate(kept.numbers) if layout_length(*kept.spans(i), eos_id, 1.0) > context]
    if over:
        why = f"fit the model's context (max_position_embeddings={context}) only compressed"
        rows = kept.rows_named(over, why)
        warnings.warn(f"{kept.where}: {rows}: a --baseline run of this data drops them; --max-length {context} "
                      f"keeps both runs to the same rows", stacklevel=3)


def warn_pad_in_responses(examples: Examples, pad_id: int, eos_id: int) -> None:
    """SuperThoughts runs: warns about, and names, rows whose response holds the pad id.

    A pair (x, PAD) made of a real pad token enters the backbone exactly like the single unit
    (x, PAD) of a decoding fallback, yet the next main target differs (the token after the pad
    vs PAD itself), so such rows teach the model two answers to one input. They are kept (the
    text is the data's to decide); a pad equal to EOS is no such case (EOS ends the response).
    """
    if pad_id == eos_id:
        return
    rows = [number for i, number in enumerate(examples.numbers) if pad_id in examples.spans(i)[1]]
    if rows:
        why = f"with the pad token id {pad_id} inside the response"
        warnings.warn(f"{examples.where}: {examples.rows_named(rows, why)}: a pair ending in the pad reads "
                      f"like a decoding fallback's single unit; remove the pad token from the text or give the "
                      f"tokenizer another pad token", stacklevel=3)


class TrainRows(Sequence):
    """The Trainer's dataset: example i as {"prompt_ids", "response_ids", "row": i} (lists of
    ints, the features the collator reads; "row" keys its pad-split draws), read from the ids
    of `Examples` (one flat int32 array, int64 for ids past it), shared, not copied.

    A list of Python ints costs up to 36 bytes a token (an int object and a pointer): several GB a
    process for a 100k-row chain-of-thought dataset, in each of the 8 processes of a node, and the
    DataLoader workers --num-workers forks copy the pages that reading the rows touches (reference
    counts). Here a token costs 4 bytes and reading a row writes none of the array's pages.
    """

    def __init__(self, examples: Sequence[Mapping[str, Any]]) -> None:
        if not isinstance(examples, Examples):  # a plain list of feature dicts
            try:
                examples = Examples.of(examples, where="train", unit="row", numbers=range(1, len(examples) + 1))
            except OverflowError:  # not a token id (check_vocab refuses ids past the vocabulary first)
                raise ValueError("TrainRows: a token id does not fit in int64") from None
        self._examples = examples

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        i = self._index(index)
        return {**self._examples[i], "row": i}

    def _index(self, index: int) -> int:
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{type(self).__name__}: row {index} out of range for {len(self)} rows")
        return i


class EvalRows(TrainRows):
    """The Trainer's eval dataset (--eval-data): example i as {"prompt_ids", "response_ids",
    "eval_row": its line (or row) number}. "eval_row" gives the row one fixed pad-split layout
    (`data.SuperThoughtsCollator`); the number, not the index, so that a row keeps its layout when
    other rows of the file are dropped (another --max-length, another model's context). A parquet
    row index counts from 0: it is taken + 1, so that the same rows as JSON Lines (without blank
    lines), parquet or in memory are scored on the same layouts."""

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        i = self._index(index)
        number = self._examples.numbers[i] + (self._examples.unit == parquet_rows.ROW_INDEX)
        return {**self._examples[i], "eval_row": number}
