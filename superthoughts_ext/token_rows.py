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

import operator
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

_INT32 = np.iinfo(np.int32)


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
    """

    def __init__(self, ids: np.ndarray, bounds: np.ndarray, *, where: str, unit: str,
                 numbers: Iterable[int], dropped: Iterable[str] = ()) -> None:
        self.ids, self.bounds = ids, bounds
        self.where, self.unit, self.numbers = where, unit, list(numbers)
        self.dropped = list(dropped)
        if len(self.numbers) != len(bounds):
            raise ValueError(f"Examples: {len(self.numbers)} numbers for {len(bounds)} features")

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
            return Examples(self.ids, self.bounds[index], where=self.where, unit=self.unit,
                            numbers=self.numbers[index], dropped=self.dropped)
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
        return Examples(self.ids, self.bounds[keep], where=self.where, unit=self.unit,
                        numbers=[number for number, kept in zip(self.numbers, keep) if kept], dropped=self.dropped)

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

    def build(self, *, where: str, unit: str, numbers: Iterable[int], dropped: Iterable[str] = ()) -> Examples:
        """The rows added, as `Examples` numbered by `numbers` (one per row); `dropped` names the
        rows the caller left out (`Examples.dropped`)."""
        self._ids.resize(self._size, refcheck=False)  # the spare room back, in place
        ids, self._ids = self._ids, None  # the Examples own it now: no further row may resize it
        bounds = np.array(self._bounds, dtype=np.int64).reshape(-1, 3)
        return Examples(ids, bounds, where=where, unit=unit, numbers=numbers, dropped=dropped)
