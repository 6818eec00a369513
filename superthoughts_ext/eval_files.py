"""Reading benchmark data files: local ``.jsonl``, ``.json``, ``.csv`` and ``.parquet`` rows as
dicts (`read_rows`), with errors that name the file and line, the JSON Lines splitting that the
eval records share (`json_lines`), and where a records file's summary goes (`summary_path`) or
is found (`existing_summary`, an older version's included)."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from superthoughts_ext import parquet_rows


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
            # A pretty-printed JSON array under a .jsonl name fails on its first line, "[".
            hint = "; a JSON array is read from a .json file" if line.lstrip()[:1] == "[" else ""
            raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}, column {error.colno}){hint}") from None
        except (ValueError, RecursionError) as error:  # an over-long integer, nesting too deep
            raise ValueError(f"{path}:{number}: JSON that Python cannot read: {error}") from None
        if not isinstance(row, dict):
            hint = "; a JSON array is read from a .json file" if isinstance(row, list) else ""
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}{hint}")
        rows.append(row)
    return rows


def _json_list(path: Path, text: str) -> list[dict[str, Any]]:
    """A list of objects, one object (one row: JSON Lines of a single row read so too), or JSON
    Lines: objects one after another, as `datasets`' to_json writes them under any suffix.
    An object of objects (pandas' column or index layout) or of lists (columns) is refused: read
    as one row, it would become one problem made of every question."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        # Only objects follow one another in JSON Lines; a list followed by more is broken JSON.
        if error.msg == "Extra data" and text.lstrip().startswith("{"):
            return _json_lines(path, text)
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from None
    except (ValueError, RecursionError) as error:  # an over-long integer, nesting too deep
        raise ValueError(f"{path}: JSON that Python cannot read: {error}") from None
    if isinstance(rows, dict):
        # Objects of objects: pandas' DataFrame.to_json default; of lists: a dict of columns.
        for kind, name in ((dict, "objects"), (list, "lists")):
            if rows and all(isinstance(value, kind) for value in rows.values()):
                raise ValueError(f"{path}: a JSON object of {name} (keys {', '.join(list(rows)[:5])}), "
                                 "columns rather than a list of rows; write the file as JSON Lines, e.g. pandas' "
                                 "to_json(path, orient='records', lines=True)")
        rows = [rows]
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: expected a JSON list of objects (or JSON Lines)")
    return rows


def _csv_rows(path: Path, text: str) -> list[dict[str, Any]]:
    """CSV rows; a row with more fields than the header (an unquoted comma, say) is an error:
    DictReader would file its extra fields under the key None."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        if None in row:
            header = len(reader.fieldnames or ())
            raise ValueError(f"{path}:{reader.line_num}: {header + len(row[None])} fields, the header has {header} "
                             "(quote a field that holds a comma)")
        rows.append(row)
    return rows


def _read_text(path: Path, raw: bytes | None = None) -> str:
    """The file (or its bytes ``raw``) as UTF-8 text, a byte order mark (Excel, pandas' utf-8-sig)
    skipped: it would otherwise become part of the first column's name. Other bytes name the line
    they are on."""
    raw = path.read_bytes() if raw is None else raw
    try:
        # "utf-8", not "utf-8-sig": the latter counts error offsets from after the BOM.
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); "
                         "save the file as UTF-8") from None


def read_records_text(path: str | Path) -> str:
    """The text of a records file of `superthoughts eval` (FileNotFoundError when there is none,
    ValueError naming the line that is not UTF-8: another file given by mistake). A character cut
    off at the end of the file (a torn last line) is left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation results not found: {path}")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A run killed mid-write can cut its last line inside a character (records keep non-ASCII
        # text as is: "π", "≤"): that line is torn, as a resume expects (it drops it) and regrade
        # names (asking for a resume), not a file that is no UTF-8; the cut character goes.
        if exc.end == len(raw) and exc.reason == "unexpected end of data":
            raw = raw[: exc.start]
    return _read_text(path, raw)


def _directory_error(path: Path) -> str:
    """What --data naming a directory gets: the data files in it, where it holds some (a hub
    dataset's data/ folder of one-file splits), else a guess at what it is."""
    files = sorted(entry.name for entry in path.iterdir() if entry.is_file() and not entry.name.startswith(".")
                   and entry.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"))
    if files:
        shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
        return (f"benchmark data {path} is a directory, holding {shown}; --data takes one file (a bench's split is "
                f"one file on the hub): pass it, e.g. {path / files[0]}")
    return (f"benchmark data {path} is a directory (a `datasets` save_to_disk folder?); --data takes one .jsonl, "
            ".json, .csv or .parquet file: write one with `Dataset.to_parquet(path)` or `Dataset.to_json(path)` (JSONL)")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (a list of objects, or JSON Lines) or ``.csv``
    file in UTF-8 (see `_read_text`), or of a parquet file, known by its ``.parquet`` suffix or its
    first bytes (needs pyarrow; its cells as Python values: lists, dicts for structs, bytes for
    binary columns). Parse errors name the file and line. A bench is a few thousand rows at most:
    read whole, a record batch at a time."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(_directory_error(path))
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data file not found: {path}")
    suffix = path.suffix.lower()
    if parquet_rows.is_parquet(path):  # by its bytes too, as train: a hub cache blob has no suffix
        return [row for _, row in parquet_rows.numbered_rows(path)]
    if suffix not in (".csv", ".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported data format {suffix!r} (use .jsonl, .json, .csv or .parquet)")
    text = _read_text(path)
    if suffix == ".csv":
        return _csv_rows(path, text)
    return _json_list(path, text) if suffix == ".json" else _json_lines(path, text)


SUMMARY_SUFFIX = ".summary.json"


def _jsonl_stem(name: str) -> str | None:
    """``st`` of ``st.jsonl``; None for any other name (``.jsonl`` alone has no stem)."""
    return name[: -len(".jsonl")] if name.endswith(".jsonl") and name != ".jsonl" else None


def summary_path(output_jsonl: str | Path) -> Path:
    """Where the summary of a records file goes, beside it: ``st.jsonl`` -> ``st.summary.json``;
    any other name kept whole, ``st.json`` -> ``st.json.summary.json``, ``st`` -> ``st.summary.json``
    (versions before wrote ``st.json``'s to ``st.summary.json`` too, over ``st.jsonl``'s:
    `legacy_summary_path`). Only a records file and its `summary_twin` share one, which
    `summary_conflict` refuses."""
    path = Path(output_jsonl)
    stem = _jsonl_stem(path.name)
    return path.with_name((path.name if stem is None else stem) + SUMMARY_SUFFIX)


def summary_twin(output_jsonl: str | Path) -> Path:
    """The other records file whose `summary_path` is this one's: ``st`` of ``st.jsonl`` and back."""
    path = Path(output_jsonl)
    stem = _jsonl_stem(path.name)
    return path.with_name(path.name + ".jsonl" if stem is None else stem)


def legacy_summary_path(output_jsonl: str | Path) -> Path | None:
    """Where versions before `summary_path` kept a ``.json`` records file's summary: ``st.json``
    -> ``st.summary.json``; None for other names, whose summary has not moved."""
    path = Path(output_jsonl)
    if path.name.endswith(".json") and path.name != ".json":
        return path.with_name(path.name[: -len(".json")] + SUMMARY_SUFFIX)
    return None


def _records_named(summary: Path) -> str | None:
    """The name of the records file a summary says it describes (its ``records`` key, which every
    version wrote); None when it cannot be read or names none."""
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    records = data.get("records") if isinstance(data, dict) else None
    return Path(records).name if isinstance(records, str) else None


def _other_file(other: Path, path: Path) -> bool:
    """Whether ``other`` is a file and not ``path`` itself (``st`` a link to ``st.jsonl`` is that file)."""
    return other.is_file() and not (path.exists() and os.path.samefile(other, path))


def _owner_beside(summary: Path, path: Path) -> Path | None:
    """The other records file beside ``path`` whose summary ``summary`` is, None when it is no
    other's: one it names as its records that is there, and whose `summary_path` (the
    `summary_twin`) or `legacy_summary_path` (a ``st.json`` an older version wrote) it is."""
    named = _records_named(summary)
    if named is None or named == path.name:
        return None
    other = path.with_name(named)
    return other if _other_file(other, path) and summary in (summary_path(other), legacy_summary_path(other)) else None


def existing_summary(output_jsonl: str | Path) -> Path | None:
    """The summary of a records file on disk, None when there is none: its `summary_path`, unless
    that is another records file's beside it (`_owner_beside`: the `summary_twin`'s, or an older
    version's ``st.json``'s in ``st.summary.json``); else, for a run an older version wrote, its
    `legacy_summary_path` when that names this file (``st.summary.json`` beside ``st.json`` and
    ``st.jsonl`` is the summary of whichever run wrote it last)."""
    path = Path(output_jsonl)
    current = summary_path(path)
    if current.is_file() and _owner_beside(current, path) is None:
        return current
    legacy = legacy_summary_path(path)
    if legacy is not None and legacy.is_file() and _records_named(legacy) == path.name:
        return legacy
    return None


def remove_summaries(output_jsonl: str | Path) -> None:
    """Removes the summary of a records file whose run starts over (`existing_summary`, an older
    version's included): until the run writes its own, it would describe another run."""
    while (found := existing_summary(output_jsonl)) is not None:
        found.unlink()


def summary_conflict(output_jsonl: str | Path) -> str | None:
    """Why a run writing ``output_jsonl`` could not have a summary of its own (None when it can):
    a name ending in ``.summary.json``, another records file's summary, a `summary_twin` that is
    another file (``st`` beside ``st.jsonl``, not a link to it), whose summary would be replaced by this one's, a
    summary file that is a symlink to nothing, or one that holds an older version's summary of ``st.json``
    (`_owner_beside`)."""
    path = Path(output_jsonl)
    if path.name.endswith(SUMMARY_SUFFIX):
        return (f"{path} is named like a summary file (of {path.name[: -len(SUMMARY_SUFFIX)]}.jsonl); give the "
                f"records a name that does not end in {SUMMARY_SUFFIX}")
    twin = summary_twin(path)
    if _other_file(twin, path):
        return (f"{path} and {twin} would share the summary file {summary_path(path)}; give this run's records "
                "another name")
    current = summary_path(path)
    if current.is_symlink() and not current.exists():
        # The summary's name is the run's choice, not the user's: written through a link to
        # nothing (one planted in a folder unpacked from elsewhere), it created the file the link
        # names, and its folders, wherever that is. A link to a file is removed, not written through.
        return (f"{current}, where the summary of {path} goes, is a symlink to nothing ({os.readlink(current)}); "
                "remove it, or give this run's records another name")
    if current.is_file() and (owner := _owner_beside(current, path)) is not None:
        return (f"{current}, the summary file of {path}, holds the summary of {owner} (where versions before kept "
                f"it); move it to {summary_path(owner)}, or give this run's records another name")
    return None
