"""Reading benchmark data files: local ``.jsonl``, ``.json`` and ``.csv`` rows as dicts
(`read_rows`), with errors that name the file and line, and the JSON Lines splitting that the
eval records share (`json_lines`)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any


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


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local ``.jsonl``, ``.json`` (a list of objects, or JSON Lines) or ``.csv``
    file in UTF-8 (see `_read_text`). Parse errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"benchmark data {path} is a directory (a `datasets` save_to_disk folder?); --data takes "
                         "one .jsonl, .json or .csv file: write one with `Dataset.to_json(path)` (JSONL)")
    if not path.is_file():
        raise FileNotFoundError(f"benchmark data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl"):
        raise ValueError(f"{path}: unsupported data format {suffix!r} (use .jsonl, .json or .csv)")
    text = _read_text(path)
    if suffix == ".csv":
        return _csv_rows(path, text)
    return _json_list(path, text) if suffix == ".json" else _json_lines(path, text)
