"""Re-grade finished evaluation runs with the current grader, without decoding again.

A run's records keep each problem's decoded ``output``; the grader (`superthoughts_ext.grading`)
improves over time. `regrade_runs` re-extracts the answer of every stored output and grades it
exactly as `superthoughts_ext.evaluation.evaluate` now would (both call
`superthoughts_ext.eval_records.grade_output`), then rewrites the records' ``extracted``,
``reference`` and ``correct`` in place, and the summary's ``n_correct``, ``accuracy`` and
``n_no_box`` where the run has one. Every other key, and the order of the lines, stay as written.

    superthoughts eval --regrade st.jsonl baseline.jsonl --bench math500 --data math500.jsonl
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superthoughts_ext.eval_data import Problem, get_bench
from superthoughts_ext.eval_files import existing_summary, json_lines, read_records_text
from superthoughts_ext.eval_records import grade_fields, grade_output, record_line, replace_text
from superthoughts_ext.eval_sampling import record_key
from superthoughts_ext.run_info import output_lock

# Keys a record needs to be re-graded (and checked against the benchmark).
REQUIRED_KEYS = ("id", "bench", "output", "extracted", "correct")
SHOWN_IDS = 10  # changed ids printed per file


@dataclass
class RecordsFile:
    """One records file as read: its lines (None for a blank one) and their records, the
    problem of each record, and its summary and the summary's file (None when it has none)."""

    path: Path
    lines: list[str]
    records: list[dict[str, Any] | None]
    problems: list[Problem | None]
    summary: dict[str, Any] | None
    summary_file: Path | None = None


@dataclass(frozen=True)
class RegradeResult:
    """What re-grading one records file changed."""

    path: Path
    n: int
    accuracy_before: float
    accuracy_after: float
    changed_ids: list[str]  # records whose extracted, reference or correct changed (<id>#sample<k> if sampled)
    references_changed: int  # records whose reference differs from the data's current one
    summary_updated: bool


def stored_settings(paths: Sequence[str | Path], wanted: Sequence[str] = ("bench", "data")) -> dict[str, Any]:
    """What the records of ``paths`` say they were evaluated on, for the --regrade options left
    out: of ``wanted``, ``bench`` and ``data`` (the data file's absolute path, None for the hub),
    when every record that has it agrees (ValueError naming two files or lines that differ), and
    ``option_orders`` (1 + the highest option_order). Missing files and lines that are not JSON
    records are skipped here; `read_run` reports them."""
    seen: dict[str, tuple[Any, str]] = {}  # key -> (value, where it was read)
    orders = 0
    for path in paths:
        if not Path(path).is_file():
            continue  # read_run says so
        for number, line in enumerate(json_lines(read_records_text(path)), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict):
                continue
            for key in wanted:
                if key not in record:
                    continue
                where = f"{path}:{number}"
                value, first = seen.setdefault(key, (record[key], where))
                if record[key] != value:
                    # --data points every run at one copy of the data; runs of two benches can't share one.
                    hint = "; or give --data" if key == "data" else ""
                    raise ValueError(f"--regrade: {first} has {key} {value!r}, {where} has {record[key]!r}; "
                                     f"regrade runs of one {key} at a time{hint}")
            if isinstance(record.get("option_order"), int):
                orders = max(orders, record["option_order"] + 1)
    return {"bench": seen.get("bench", (None,))[0], "data": seen.get("data", (None,))[0],
            "option_orders": max(orders, 1)}


def _parse_line(path: Path, number: int, line: str, last: bool) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        if last:
            raise ValueError(f"{path}:{number}: unfinished record (the run was interrupted or is still writing); "
                             "finish the run with superthoughts eval --resume first") from None
        raise ValueError(f"{path}:{number}: not a JSON record ({error.msg}); give the .jsonl records "
                         "superthoughts eval wrote") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path}:{number}: record lacks {', '.join(missing)}")
    return record


def _check_record(path: Path, number: int, record: dict[str, Any], bench: str,
                  problems: dict[str, Problem], seen: dict[tuple[str, int], int]) -> Problem:
    """The problem of ``record``; ValueError unless it is a record of ``bench`` on one of
    ``problems``, not seen on an earlier line (a sampled run's: that problem's sample)."""
    key = str(record["id"])
    if record["bench"] != bench:
        raise ValueError(f"{path}:{number}: problem {key!r} was evaluated on {record['bench']!r}, not {bench!r}; "
                         "give the --bench the run was evaluated on")
    if key not in problems:
        orders = f", --option-orders at least {record['option_order'] + 1}" if record.get("option_order") else ""
        raise ValueError(f"{path}:{number}: problem {key!r} is not among the {len(problems)} problems of {bench} "
                         f"in this data; give the --data (and --problem-field / --answer-field{orders}) the run used")
    if isinstance(record.get("prompt"), str) and problems[key].question not in record["prompt"]:
        # Ids alone match across problem sets that number their rows ("0", "1", ...).
        raise ValueError(f"{path}:{number}: problem {key!r} of this data asks another question than the record's "
                         "prompt; give the --data the run used")
    if record_key(record) in seen:
        which = f" (sample {record['sample']})" if "sample" in record else ""
        raise ValueError(f"{path}:{number}: problem {key!r}{which} repeats line {seen[record_key(record)]}")
    if not isinstance(record["output"], str):
        raise ValueError(f"{path}:{number}: problem {key!r} has no output text to grade")
    seen[record_key(record)] = number
    return problems[key]


def _read_summary(path: Path, n: int) -> tuple[dict[str, Any], Path] | None:
    """The summary next to ``path`` (`existing_summary`: an older version's name too) and its
    file, None when there is none; ValueError unless it counts its ``n`` records."""
    where = existing_summary(path)
    if where is None:
        return None
    try:
        summary = json.loads(where.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not a JSON summary ({error.msg})") from None
    if not isinstance(summary, dict) or summary.get("n") != n:
        counted = summary.get("n") if isinstance(summary, dict) else None
        raise ValueError(f"{where} counts n={counted!r} records, {path} holds {n}: it is not the summary of "
                         "these records; move it away to re-grade them")
    return summary, where


def read_run(path: str | Path, bench: str, problems: Sequence[Problem]) -> RecordsFile:
    """A records file checked before anything is re-graded: every line a record of ``bench`` on
    one of ``problems``, each problem once (ValueError naming the file, line and id otherwise)."""
    path = Path(path)
    text = read_records_text(path)
    lines = json_lines(text)
    by_id = {problem.id: problem for problem in problems}
    run = RecordsFile(path, lines, [], [], None)
    seen: dict[tuple[str, int], int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            run.records.append(None)
            run.problems.append(None)
            continue
        last = number == len(lines) and not text.endswith("\n")
        record = _parse_line(path, number, line, last)
        run.problems.append(_check_record(path, number, record, bench, by_id, seen))
        run.records.append(record)
    if not seen:
        raise ValueError(f"{path}: no records to re-grade")
    run.summary, run.summary_file = _read_summary(path, len(seen)) or (None, None)
    return run


def _grade(run: RecordsFile, bench: str, bar: Any) -> tuple[list[str], int]:
    """Re-grade every record of ``run`` in place: the ids of the records that changed and the
    number whose reference changed. Lines of changed records are rewritten in ``run.lines``."""
    changed: list[str] = []
    references = 0
    for number, (record, problem) in enumerate(zip(run.records, run.problems)):
        if record is None or problem is None:
            continue
        graded = grade_output(record["output"], problem, bench)
        references += record.get("reference") != graded["reference"]
        if any(key not in record or record[key] != value for key, value in graded.items()):
            record.update(graded)  # the keys keep their places in the record
            run.lines[number] = record_line(record)
            changed.append(str(record["id"]) + (f"#sample{record['sample']}" if "sample" in record else ""))
        bar.update(1)
    return changed, references


def _update_summary(run: RecordsFile, records: list[dict[str, Any]]) -> bool:
    """Set the grade fields of the run's summary (if it has one) from ``records``; whether it
    changed on disk."""
    if run.summary is None or run.summary_file is None:
        return False
    grades = grade_fields(records)  # the other fields (timings, lengths...) stay
    if all(run.summary.get(key) == value for key, value in grades.items()):
        return False
    run.summary.update(grades)
    replace_text(run.summary_file, json.dumps(run.summary, indent=2) + "\n")  # where it was: an old name stays
    return True


def regrade_run(run: RecordsFile, bench: str, *, progress: bool = True) -> RegradeResult:
    """Re-grade one records file read by `read_run` and write back what changed."""
    from superthoughts_ext.progress import progress_bar

    records = [record for record in run.records if record is not None]
    before = grade_fields(records)["accuracy"]
    with progress_bar(total=len(records), desc=f"regrade {run.path.name}", disable=not progress) as bar:
        changed, references = _grade(run, bench, bar)
    if changed:
        replace_text(run.path, "".join(line + "\n" for line in run.lines))
    summary_updated = _update_summary(run, records)
    return RegradeResult(path=run.path, n=len(records), accuracy_before=before, accuracy_after=grade_fields(records)["accuracy"],
                         changed_ids=changed, references_changed=references, summary_updated=summary_updated)


def regrade_runs(paths: Sequence[str | Path], bench: str, problems: Sequence[Problem], *,
                 progress: bool = True) -> list[RegradeResult]:
    """Re-grade the records files ``paths`` of runs on ``bench`` against ``problems`` (from
    `superthoughts_ext.eval_data.load_problems`: the grader needs the questions and GPQA's
    options, which records do not store).

    Every file is read and checked first (ValueError naming the file, line and problem id for a
    line that is not a JSON record, a torn last line included, a record of another benchmark or
    of a problem not in ``problems``, a repeated problem, or a summary of other records), so a
    bad file leaves every file untouched. Each records file is then rewritten atomically, and
    only when a record changed; its summary (`existing_summary`) is updated where it exists.
    A file that an evaluation is writing (its `run_info.output_lock`) is refused, ValueError.
    """
    get_bench(bench)
    # The lock an evaluation holds on its output: a regrade replacing the file of a run still
    # appending to it would drop every record appended after the regrade read it.
    with contextlib.ExitStack() as locks:
        files: dict[Path, str | Path] = {}  # a file given twice (or by a link and its target): one lock
        for path in paths:
            if Path(path).is_file():  # else read_run names it; a lock would make a mistyped path's folder
                files.setdefault(Path(path).resolve(), path)
        for path in files.values():
            locks.enter_context(output_lock(path, "regrade"))
        runs = [read_run(path, bench, problems) for path in paths]
        return [regrade_run(run, bench, progress=progress) for run in runs]


def format_regrade(result: RegradeResult) -> str:
    """One line per file, as `superthoughts eval --regrade` prints it."""
    ids = ", ".join(result.changed_ids[:SHOWN_IDS])
    if len(result.changed_ids) > SHOWN_IDS:
        ids += f", ... ({len(result.changed_ids) - SHOWN_IDS} more)"
    count = len(result.changed_ids)
    changed = f"{count} record{'' if count == 1 else 's'} changed" + (f": ids [{ids}]" if count else "")
    return (f"{result.path}: accuracy {result.accuracy_before:.4f} -> {result.accuracy_after:.4f} "
            f"(n={result.n}; {changed}; references changed: {result.references_changed})")
