"""The files `superthoughts train --data / --eval-data` name: one JSON Lines or parquet file,
several, or a directory of shards (`data_files`).

Hugging Face sets download as a folder of shards (data/train-00000-of-00010.parquet, ...). A
directory stands for the .jsonl and .parquet files directly in it, in name order (the shard
numbers are zero-padded, so name order is shard order); hidden files and other suffixes (README.md,
.gitattributes) are not data. The mistakes a folder invites are refused rather than trained on:
- shards of several splits in one folder (NuminaMath-CoT keeps train-* and test-* side by side):
  the test rows would be trained on;
- a set of shards with some missing (a download cut short): a part of the data, silently;
- JSONL and parquet files together (anywhere in the list): most often one set and a converted
  copy of it, every row twice; one format per run;
- a file named twice (a directory and a file in it).
Files named one by one are taken as given, shards or not: a run on 2 of 10 shards is a choice.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from superthoughts_ext import parquet_rows

# The suffixes a directory's data files have (parquet files are also known by their bytes, but a
# directory's other files are not opened to find out).
DATA_SUFFIXES = (".jsonl", ".parquet")
# Hugging Face's shard names: {split}-{index:05d}-of-{count:05d}.{suffix}.
_SHARD = re.compile(r"(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.[a-z]+")
# The splits a folder's error suggests, by what the files are read for: never a test split as
# training data, as the first name in sorted order ("test" before "train") would be.
_SUGGESTED_SPLITS = {"data": ("train",), "eval data": ("validation", "valid", "val", "dev", "test")}
# What `datasets.save_to_disk` leaves in a folder (Arrow files and their metadata).
_SAVE_TO_DISK = ("state.json", "dataset_info.json")


def is_paths(data: Any) -> bool:
    """Whether `data` names files (a path, or a list of paths) rather than holding rows in memory."""
    if isinstance(data, (str, os.PathLike)):
        return True
    return (isinstance(data, Sequence) and bool(data)
            and all(isinstance(item, (str, os.PathLike)) for item in data))


def data_files(data: str | os.PathLike | Sequence[str | os.PathLike], *, name: str = "data") -> list[Path]:
    """The files `data` names, in order: a file as itself, a directory as its data files in name
    order (`directory_files`). ValueError (FileNotFoundError for a missing path) naming `name`
    ("data", "eval data") for what is no regular file (train reads its data more than once), a
    file named twice, JSONL files beside parquet ones, and parquet files without pyarrow."""
    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += directory_files(path, name=name)
        elif not path.exists():
            raise FileNotFoundError(f"train: {name} file {os.fspath(path)!r} does not exist")
        elif not path.is_file():
            raise ValueError(f"train: {name} {os.fspath(path)!r} is not a regular file (a pipe?); train reads "
                             "its data more than once: write it to a file first")
        else:
            files.append(path)
    _check_once_each(files, name)
    parquet = [path for path in files if parquet_rows.is_parquet(path)]
    if parquet and len(parquet) < len(files):
        jsonl = next(path for path in files if path not in parquet)
        raise ValueError(f"train: {name} mixes JSON Lines and parquet files ({os.fspath(jsonl)!r}, "
                         f"{os.fspath(parquet[0])!r}): one format a run, as a set and a converted copy of it "
                         "would give every row twice; pass the files of one")
    if parquet:
        parquet_rows.require_pyarrow(parquet[0])
    return files


def directory_files(directory: Path, *, name: str = "data") -> list[Path]:
    """The .jsonl / .parquet files directly in `directory`, in name order, hidden ones aside.
    ValueError for none (saying what the folder looks like: a `datasets` save_to_disk folder, a
    snapshot whose shards are in data/), for the shards of several splits, and for a set of shards
    with some missing."""
    entries = sorted(directory.iterdir())
    files = [path for path in entries if _data_file(path)]
    where = f"train: {name} directory {os.fspath(directory)!r}"
    if not files:
        names = {path.name for path in entries}
        if names & set(_SAVE_TO_DISK) or any(path.suffix == ".arrow" for path in entries):
            raise ValueError(f"{where} is a `datasets` save_to_disk folder (Arrow files); train reads JSON Lines "
                             "or parquet: write them with `Dataset.to_parquet(path)` or `Dataset.to_json(path)`")
        inner = [path for path in entries if path.is_dir() and any(_data_file(p) for p in path.iterdir())]
        hint = f"; its subfolder {inner[0].name!r} holds some: pass that" if inner else ""
        held = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
        raise ValueError(f"{where} holds no {' or '.join(DATA_SUFFIXES)} file (it holds {held}){hint}")
    _check_shards(files, where, name)
    return files


def _data_file(path: Path) -> bool:
    """Whether a directory's entry `path` is one of its data files."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in DATA_SUFFIXES


def _check_shards(files: list[Path], where: str, name: str) -> None:
    """Refuses the shards of several splits (suggesting the split that fits `name`: train for
    "data"), and a split whose shards are not all there."""
    splits: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for path in files:
        if (match := _SHARD.fullmatch(path.name)) is not None:
            splits[match["split"]].append((int(match["index"]), int(match["count"])))
    if len(splits) > 1:
        counts = ", ".join(f"{split} ({len(shards)} file(s))" for split, shards in sorted(splits.items()))
        fitting = [split for split in _SUGGESTED_SPLITS.get(name, ()) if split in splits]
        suggested = fitting[0] if fitting else sorted(splits)[0]
        raise ValueError(f"{where} holds the shards of several splits: {counts}; pass the files of one, e.g. "
                         f"{os.fspath(files[0].parent / suggested)}-*{files[0].suffix}")
    for split, shards in splits.items():
        count = max(total for _, total in shards)
        missing = sorted(set(range(count)) - {index for index, _ in shards})
        if missing:
            named = ", ".join(f"{index:05d}" for index in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise ValueError(f"{where} holds {len(shards)} of the {count} shards of {split!r}: {named} missing "
                             "(a download cut short?); fetch them, or name the files to train on one by one")


def _check_once_each(files: list[Path], name: str) -> None:
    seen: dict[Path, Path] = {}
    for path in files:
        key = path.resolve()
        if key in seen:
            raise ValueError(f"train: {name} names the file {os.fspath(path)!r} twice (as {os.fspath(seen[key])!r}): "
                             "its rows would be trained on twice")
        seen[key] = path


def describe(files: Sequence[Path], data: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """How messages name data read from `files` (what `data` named): the one file's path; one
    directory as "DIR (N files)"; else "FIRST ... LAST (N files)"."""
    if len(files) == 1:
        return os.fspath(files[0])
    given = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if len(given) == 1:
        return f"{os.fspath(given[0])} ({len(files)} files)"
    return f"{os.fspath(files[0])} ... {os.fspath(files[-1])} ({len(files)} files)"
