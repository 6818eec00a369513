"""Tokenised training rows held compactly (`Examples`) and packed as they are read (`RowsBuilder`):
every row's prompt and response ids in one flat int32 array (int64 once an id needs it), not as
lists of Python ints.

A list of Python ints costs up to 36 bytes a token (an int object and a pointer). The loaders
used to tokenise a whole file into such lists and pack them afterwards, so the lists of every row
were alive at once: 768 MB above the process's size for 10k chain-of-thought rows of ~2.7k Qwen
tokens, to keep 106 MB, in each process of a node. Packing each row as soon as it is tokenised
keeps the peak near the array itself: 131 MB for the same rows, whose array (the dropped rows'
ids included) is 111 MB.
"""
from __future__ import annotations

import bisect
import operator
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from superthoughts_ext.parquet_rows import ROW_INDEX

_INT32 = np.iinfo(np.int32)


def _plural(unit: str) -> str:
    return "row indices" if unit == ROW_INDEX else f"{unit}s"


def rows_named(numbers: Sequence[int], unit: str, why: str) -> str:
    """"N row(s) `why` (`unit`s [the first ten numbers])": how warnings and errors name rows."""
    return f"{len(numbers)} row(s) {why} ({_plural(unit)} {list(numbers[:10])})"


class Examples(Sequence):
    """Features {"prompt_ids", "response_ids"} (lists of ints, made as a row is read: what the
    collator and Trainer read) that remember where they were read: example i is `unit` ("line" or
    "row") `numbers[i]` of `where`, so rows dropped after loading (train_data.drop_beyond_context)
    are named as the loader names its own drops. `dropped` says which rows the loader itself
    dropped, and why ("2 row(s) with an empty 'solution' (lines [3, 9])"): an error about a file
    left with no row names them, not just the warnings printed before it.

    Held as `ids`, one flat array, and `bounds` [n, 3] int64: row i's prompt is
    ids[bounds[i, 0]:bounds[i, 1]] and its response ids[bounds[i, 1]:bounds[i, 2]]. `select` keeps
    rows by indexing the bounds, sharing the ids (a dropped row's ids stay in the array): dropping
    rows never holds the ids twice. Compares equal to a sequence of the same feature dicts, as the
    list it replaced did.

    Rows read from several files (`files`: each file's path and offset, in order) are numbered
    offset + their line (or row index) in their file: the numbers of file k start past those of
    the files before it (its offset is their lines, or rows, together), so that every row has its
    own number, the one it would have in the files written one after the other. `locate` gives a
    number's file and its number there; `row_name` and `rows_named` name rows so.
    """

    def __init__(self, ids: np.ndarray, bounds: np.ndarray, *, where: str, unit: str,
                 numbers: Iterable[int], dropped: Iterable[str] = (),
                 files: Sequence[tuple[str, int]] = ()) -> None:
        self.ids, self.bounds = ids, bounds
        self.where, self.unit, self.numbers = where, unit, list(numbers)
        self.dropped = list(dropped)
        self.files = tuple(files)
        if len(self.numbers) != len(bounds):
            raise ValueError(f"Examples: {len(self.numbers)} numbers for {len(bounds)} features")

    def _like(self, bounds: np.ndarray, numbers: Iterable[int]) -> Examples:
        """These examples' rows at `bounds`, numbered `numbers` (the same ids, file and drops)."""
        return Examples(self.ids, bounds, where=self.where, unit=self.unit, numbers=numbers, dropped=self.dropped,
                        files=self.files)

    def locate(self, number: int) -> tuple[str, int]:
        """(file, number in that file) of a row's `number`: (`where`, `number`) for one file."""
        if not self.files:
            return self.where, number
        # A line number is offset + 1 at least, a row index offset + 0: an empty file's offset
        # equals the next file's, and bisect_right then picks the later, non-empty one.
        at = bisect.bisect_right([offset for _, offset in self.files], number - (self.unit == "line")) - 1
        path, offset = self.files[max(at, 0)]
        return path, number - offset

    def row_name(self, index: int) -> str:
        """"FILE: line 3" (or "row index 2", "row 3") naming example `index`."""
        where, number = self.locate(self.numbers[index])
        return f"{where}: {self.unit} {number}"

    def rows_named(self, numbers: Sequence[int], why: str) -> str:
        """"N row(s) `why` (lines [the first ten])"; for several files each file's numbers after
        its name ("(a.jsonl: lines [3]; b.jsonl: lines [1, 9])")."""
        if not self.files:
            return rows_named(numbers, self.unit, why)
        units = _plural(self.unit)
        by_file: dict[str, list[int]] = {}
        for number in numbers[:10]:
            where, local = self.locate(number)
            by_file.setdefault(where, []).append(local)
        named = "; ".join(f"{where}: {units} {local}" for where, local in by_file.items())
        return f"{len(numbers)} row(s) {why} ({named}{'; ...' if len(numbers) > 10 else ''})"

    @classmethod
    def of(cls, features: Iterable[Mapping[str, Any]], *, where: str, unit: str,
           numbers: Iterable[int]) -> Examples:
        """From feature dicts already in memory (a caller's list of rows). OverflowError for an id
        past int64."""
        builder = RowsBuilder()
        for feature in features:
            builder.add(feature["prompt_ids"], feature["response_ids"])
        return builder.build(where=where, unit=unit, numbers=numbers)

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, index: int | slice) -> dict[str, list[int]] | Examples:  # type: ignore[override]
        if isinstance(index, slice):  # `examples[:100]`, as of the list this class replaced
            return self._like(self.bounds[index], self.numbers[index])
        prompt, response = self.spans(index)
        return {"prompt_ids": prompt.tolist(), "response_ids": response.tolist()}

    def spans(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Row `index`'s (prompt ids, response ids) as views of the array: checks over every row
        read them without making lists."""
        start, middle, end = self.bounds[operator.index(index)].tolist()
        return self.ids[start:middle], self.ids[middle:end]

    def select(self, keep: Sequence[bool]) -> Examples:
        """The rows where `keep` is true, in order, with their numbers."""
        keep = np.asarray(keep, dtype=bool)
        return self._like(self.bounds[keep], [number for number, kept in zip(self.numbers, keep) if kept])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # compares by value, as a list


class RowsBuilder:
    """Rows appended one at a time into one array that grows in place; `build` (once) makes them
    `Examples`. Only the row being added exists as a second copy."""

    def __init__(self) -> None:
        self._ids = np.zeros(0, dtype=np.int32)
        self._size = 0  # ids written; the array is longer, with room for the next rows
        self._bounds = array("q")  # start, middle, end of each row

    def add(self, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> None:
        """Appends a row. OverflowError for an id past int64, before anything is appended."""
        prompt, response = np.array(prompt_ids, dtype=np.int64), np.array(response_ids, dtype=np.int64)
        start = self._size
        self._write(prompt)
        self._write(response)
        self._bounds.extend((start, start + len(prompt), self._size))

    def extend(self, examples: Examples) -> None:
        """Appends every row of `examples` (a file's, when several are read one after the other):
        its ids in one copy, after which the caller can let them go."""
        start = self._size
        self._write(examples.ids)
        self._bounds.extend((examples.bounds + start).ravel().tolist())

    def _write(self, span: np.ndarray) -> None:
        end = self._size + len(span)
        if len(span) and self._ids.dtype == np.int32 and (span.max() > _INT32.max or span.min() < _INT32.min):
            self._ids = self._ids.astype(np.int64)  # an id past int32 (no real vocabulary's): widened once
        if end > len(self._ids):
            # In place: ndarray.resize reallocs, and glibc moves a large block by remapping
            # its pages, not by copying them, so the rows are never held twice. A quarter more each
            # time, not double: resize zero-fills the new room, which then counts as resident memory.
            # refcheck=False: no view of the array is alive before `build` hands it out.
            self._ids.resize(max(end, len(self._ids) * 5 // 4 + 65536), refcheck=False)
        self._ids[self._size:end] = span
        self._size = end

    def build(self, *, where: str, unit: str, numbers: Iterable[int], dropped: Iterable[str] = (),
              files: Sequence[tuple[str, int]] = ()) -> Examples:
        """The rows added, as `Examples` numbered by `numbers` (one per row); `dropped` names the
        rows the caller left out (`Examples.dropped`), `files` where they were read (`Examples`)."""
        self._ids.resize(self._size, refcheck=False)  # the spare room back, in place
        ids, self._ids = self._ids, None  # the Examples own it now: no further row may resize it
        bounds = np.array(self._bounds, dtype=np.int64).reshape(-1, 3)
        return Examples(ids, bounds, where=where, unit=unit, numbers=numbers, dropped=dropped, files=files)
