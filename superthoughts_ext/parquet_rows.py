"""Parquet files as rows of Python values, for `superthoughts train --data/--eval-data` and
`superthoughts eval --data`: Hugging Face datasets (OpenR1-Math-220k, NuminaMath-CoT, AMC,
OlympiadBench...) ship as .parquet files, and converting them to JSON Lines first doubled the disk
and took a step people forgot.

A parquet file has no lines: its rows are named by their row index, counted from 0 as
`Dataset[i]`, pandas' `iloc[i]` and pyarrow's `Table.slice(i)` count them (`ROW_INDEX`).

Rows are read in record batches of `BATCH_ROWS`, and training reads only the columns it uses:
a whole file in memory as Python objects would hold every column (OpenR1-Math-220k keeps several
generations per problem beside the one it trains on) of every row at once, on top of the Arrow
table it came from, in each process of a node; a batch at a time keeps one batch of the columns
read (`numbered_rows`).

pyarrow is not a dependency of the package (the `data` extra brings it, with `datasets`): a
missing pyarrow is a ValueError saying `pip install pyarrow`, raised before anything is tokenised.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# How errors and warnings name a parquet row: its 0-based index in the file.
ROW_INDEX = "row index"
# The first and last four bytes of every parquet file.
PARQUET_MAGIC = b"PAR1"
# Rows a record batch holds: big enough that Arrow's per-batch costs vanish next to tokenising
# (ms a row), small enough that one batch of long chain-of-thought rows stays a few MB.
BATCH_ROWS = 1024
_GIT_LFS_POINTER = b"version https://git-lfs"


def is_parquet(path: str | os.PathLike) -> bool:
    """Whether `path` names a parquet file: a .parquet suffix, or the parquet magic bytes at its
    start under any name (a hub cache blob has none)."""
    if Path(path).suffix.lower() == ".parquet":
        return True
    try:
        with open(path, "rb") as file:
            return file.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    except OSError:
        return False


def require_pyarrow(path: str | os.PathLike) -> Any:
    """The `pyarrow.parquet` module; ValueError naming `path` and the install command when
    pyarrow is missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{os.fspath(path)}: reading a parquet file needs pyarrow, which is not installed: "
                         "pip install pyarrow (or convert the file to JSON Lines)") from None
    return pq


def _open(path: str | os.PathLike) -> Any:
    """A `pyarrow.parquet.ParquetFile`; ValueError naming `path` for a file pyarrow cannot read
    (a Git LFS pointer left by a clone without LFS is named as one)."""
    pq = require_pyarrow(path)
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        with open(path, "rb") as file:
            start = file.read(len(_GIT_LFS_POINTER))
        hint = ("; it is a Git LFS pointer, not the data: fetch the file with `git lfs pull`"
                if start == _GIT_LFS_POINTER else "")
        raise ValueError(f"{os.fspath(path)}: not a parquet file pyarrow can read ({exc}){hint}") from None


def column_names(path: str | os.PathLike) -> list[str]:
    """The top-level column names of the parquet file `path` (ValueError as `_open`)."""
    return list(_open(path).schema_arrow.names)


def row_count(path: str | os.PathLike) -> int:
    """The rows of the parquet file `path`, from its footer (nothing is decoded)."""
    return int(_open(path).metadata.num_rows)


def numbered_rows(path: str | os.PathLike,
                  columns: Sequence[str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, row) of the parquet file `path`, the row a dict of `columns` (None: every
    column) as Python values (strings, numbers, None, lists, dicts for structs, bytes for binary),
    read a record batch at a time. ValueError naming the file for a file pyarrow cannot read or a
    column it does not have, and naming the first row of the batch that cannot be decoded."""
    parquet = _open(path)  # first: it names a missing pyarrow
    import pyarrow as pa

    if columns is not None:
        missing = [name for name in columns if name not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(f"{os.fspath(path)}: no column {missing[0]!r}; the file has "
                             f"{', '.join(map(repr, parquet.schema_arrow.names)) or 'none'}")
        columns = list(dict.fromkeys(columns))  # a column named twice is read once
    index = 0
    batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:  # a corrupt page, a file cut short
            raise ValueError(f"{os.fspath(path)}: cannot read the rows from {ROW_INDEX} {index} on ({exc})") from None
        if batch is None:
            return
        for row in batch.to_pylist():
            yield index, row
            index += 1
