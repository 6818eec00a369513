"""`superthoughts eval --table`: the paper's main table over several benchmarks, from result files.

Each records file is one method's run on the bench its records name. A method is named by a
label: the one `--table-labels` gives its file, else `eval_table_labels.method_labels` (the
checkpoint's name and how it decoded), so that one model's runs on MATH500, AMC23, ... fall into
one row whatever their files are called. The baseline is one method (`--table-baseline`, else the only method
whose every run decodes in standard mode, or the only one of those with a run on every bench)
and needs a run on every bench.

Each bench is `eval_compare.compare_runs(its baseline run, its other runs)`, the table of
`--compare`: the same checks (one bench, the same reference answers under an id; a warning for
another token budget, system prompt or temperature), over the problems present in every file of
that bench. A cell holds a run's accuracy (avg@N ± the std over samples for a sampled run) and
its CoT length reduction against that bench's baseline. A sampled run with more samples of some
of the bench's problems than of others (cut off) is refused: sample k is one pass only where every
problem has it, so its ± would be over fewer samples than its accuracy. A row's average is the
plain mean over the benches, left empty for a method without a run on every bench (a mean over
other benches does not rank against the rest). Its ± (`Table.average_accuracy_std`) combines the
cells' own: the benches are sampled independently, so the std of a mean over k of them is
sqrt(sum of their std^2) / k, whatever their N; a method with a greedy cell (no ±) has none.
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from superthoughts_ext.eval_compare import compare_runs, read_records
from superthoughts_ext.eval_table_labels import method_labels
from superthoughts_ext.file_writes import replace_text

TABLE_FORMATS = ("markdown", "csv", "json")
_SUFFIX_FORMATS = {".csv": "csv", ".json": "json"}  # any other suffix: markdown


@dataclass(frozen=True)
class Cell:
    """One method on one bench: its run against the bench's baseline (`compare_runs`' numbers)."""

    path: str
    accuracy: float  # share of the matched problems solved; avg@N for a sampled run
    accuracy_std: float | None  # std of a sampled run's per-sample accuracies; None for greedy
    samples: int  # samples per problem, 1 for greedy
    cot_reduction: float | None  # 1 - its mean steps / the baseline's mean tokens; None for the baseline


@dataclass(frozen=True)
class BenchColumn:
    """One bench: its baseline's file, the problems present in every file of it and the files
    that had problems beyond those (file -> how many)."""

    bench: str
    baseline_path: str
    n: int
    left_out: dict[str, int]


@dataclass(frozen=True)
class Table:
    """Methods (rows; the baseline first, then in the order the files were given) by benches
    (columns, in the order the files were given); ``cells[(method, bench)]`` is absent where the
    method has no run on the bench."""

    baseline: str
    methods: list[str]
    benches: list[BenchColumn]
    cells: dict[tuple[str, str], Cell]

    def missing(self, method: str) -> list[str]:
        """The benches ``method`` has no run on."""
        return [column.bench for column in self.benches if (method, column.bench) not in self.cells]

    def average(self, method: str) -> tuple[float | None, float | None]:
        """(mean accuracy, mean CoT reduction) over the benches, each bench weighing the same;
        (None, None) for a method without a run on every bench, a None reduction for the baseline."""
        if self.missing(method):
            return None, None
        cells = [self.cells[method, column.bench] for column in self.benches]
        accuracy = sum(cell.accuracy for cell in cells) / len(cells)
        if method == self.baseline:
            return accuracy, None
        return accuracy, sum(float(cell.cot_reduction or 0.0) for cell in cells) / len(cells)

    def average_accuracy_std(self, method: str) -> float | None:
        """The ± of ``method``'s mean accuracy: sqrt(sum over the k benches of their cells' std^2) / k.
        Each bench's runs are sampled apart from the others', so their per-sample accuracies vary
        independently and the variance of an unweighted mean is the sum of the variances over k^2
        (not the mean of the stds, which would overstate it by up to sqrt(k)); this holds for
        benches of other sizes and other N alike, each cell's std being over its own samples.
        None where the average is (a bench missing) and where a cell has no std (a greedy run,
        or one sample): a bench of unknown spread leaves the mean's unknown."""
        if self.missing(method):
            return None
        stds = [self.cells[method, column.bench].accuracy_std for column in self.benches]
        if any(std is None for std in stds):
            return None
        return math.sqrt(sum(float(std) ** 2 for std in stds)) / len(stds)


def _bench_of(path: str | Path, records: dict[str, dict[str, Any]]) -> str:
    benches = {str(record["bench"]) for record in records.values() if record.get("bench") is not None}
    if len(benches) != 1:
        which = (f"records of several benchmarks ({', '.join(sorted(benches))})" if benches
                 else "no bench in its records")
        raise ValueError(f"table: {path} has {which}; --table sets each run under the one bench its records name")
    return benches.pop()


def _default_baseline(methods: dict[str, list[tuple[str, str]]], modes: dict[str, str | None],
                      benches: Sequence[str]) -> str:
    """The method whose every run decodes in standard mode: the only one, else the only one of
    them with a run on every bench (a base model run on one bench beside the SFT model run on all
    does not make the baseline ambiguous). ValueError naming the candidates and their files (or
    every method) where that leaves not exactly one."""
    standard = [method for method, runs in methods.items() if all(modes[path] == "standard" for _, path in runs)]
    if not standard:
        raise ValueError("table: no method decodes in standard mode on every bench, so none is the baseline by "
                         f"default; name it with --table-baseline LABEL (methods: {', '.join(methods)})")
    complete = [method for method in standard if {bench for bench, _ in methods[method]} >= set(benches)]
    if len(standard) == 1:
        return standard[0]
    if len(complete) == 1:
        return complete[0]
    def which(candidates: list[str]) -> str:
        return "; ".join(f"{method}: {', '.join(path for _, path in methods[method])}" for method in candidates)

    if not complete:
        raise ValueError(f"table: {len(standard)} methods decode in standard mode ({which(standard)}), none of them "
                         f"on every bench ({', '.join(benches)}); name the baseline with --table-baseline LABEL, or "
                         "give the runs of one checkpoint one label with --table-labels")
    raise ValueError(f"table: {len(complete)} methods decode in standard mode on every bench ({which(complete)}); "
                     "name the baseline with --table-baseline LABEL")


def build_table(paths: Sequence[str | Path], labels: Sequence[str] | None = None,
                baseline: str | None = None) -> Table:
    """The table of the runs in ``paths`` (records files of `evaluate`), grouped by bench.

    ``labels``: one method label per path (default `method_labels`); ``baseline``: the label of
    the baseline method (default `_default_baseline`: the method whose every run is in standard
    mode, the one on every bench where there are several). Two runs of one method on one bench,
    a baseline that is not there or lacks a bench, a sampled run with unequal samples per problem
    (`_check_equal_samples`) and whatever `compare_runs` refuses are ValueErrors naming the
    files; `compare_runs`' warnings come out with their bench in front."""
    paths = [str(path) for path in paths]
    if not paths:
        raise ValueError("table: give at least one result file")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"table: {len(labels)} labels for {len(paths)} result files; give one label per file")
    with warnings.catch_warnings():  # a torn last line: compare_runs reads the file again and says so
        warnings.simplefilter("ignore")
        runs = [read_records(path) for path in paths]
    labels = list(labels) if labels is not None else method_labels(paths, runs)
    modes = {path: next(iter(records.values()), {}).get("mode") for path, records in zip(paths, runs)}
    by_bench: dict[str, dict[str, str]] = {}  # bench -> method -> file
    methods: dict[str, list[tuple[str, str]]] = {}  # method -> (bench, file)
    for path, records, label in zip(paths, runs, labels):
        bench = _bench_of(path, records)
        if label in by_bench.setdefault(bench, {}):
            raise ValueError(f"table: {by_bench[bench][label]} and {path} are both {label!r} on {bench}; give each "
                             "run of a bench its own label with --table-labels")
        by_bench[bench][label] = path
        methods.setdefault(label, []).append((bench, path))
    if baseline is None:
        baseline = _default_baseline(methods, modes, list(by_bench))
    elif baseline not in methods:
        raise ValueError(f"table: --table-baseline {baseline!r} names no method (methods: {', '.join(methods)})")
    lacking = [bench for bench, runs_of in by_bench.items() if baseline not in runs_of]
    if lacking:
        raise ValueError(f"table: the baseline {baseline!r} has no run on {', '.join(lacking)} (files: "
                         + "; ".join(", ".join(by_bench[bench].values()) for bench in lacking) + ")")
    records_of = dict(zip(paths, runs))
    columns, cells = [], {}
    for bench, runs_of in by_bench.items():
        _check_equal_samples(bench, [(path, records_of[path]) for path in runs_of.values()])
        column, bench_cells = _bench_column(bench, runs_of, baseline)
        columns.append(column)
        cells.update({(label, bench): cell for label, cell in bench_cells.items()})
    return Table(baseline, [baseline, *(method for method in methods if method != baseline)], columns, cells)


def _check_equal_samples(bench: str, runs_of: list[tuple[str, dict[str, dict[str, Any]]]]) -> None:
    """ValueError naming the file, the bench and a problem when a run has more samples of some of
    the bench's matched problems than of others (a sampled run cut off, or a resume that grew
    --samples cut off). Its avg@N ± the std over samples would be over other samples than its
    accuracy: sample k is a pass over every problem only when every problem has sample k."""
    common = set.intersection(*(set(records) for _, records in runs_of))
    for path, records in runs_of:
        counts = {key: int(records[key].get("n_samples", 1)) for key in records if key in common}
        if len(set(counts.values())) > 1:
            fewest = min(counts, key=counts.__getitem__)
            low, high = counts[fewest], max(counts.values())
            raise ValueError(f"table: {bench}: {path} has {high} samples of some problems and {low} of others "
                             f"(problem {fewest!r}: {low}); avg@N ± its std over the samples needs every problem "
                             f"sampled N times: finish the run with --resume, or keep its samples below {low} "
                             f"(jq -c 'select(.sample < {low})') in a file of their own")


def _bench_column(bench: str, runs_of: dict[str, str], baseline: str) -> tuple[BenchColumn, dict[str, Cell]]:
    """`compare_runs` of one bench: its column and a cell per method (label -> cell)."""
    base_path = runs_of[baseline]
    others = {label: path for label, path in runs_of.items() if label != baseline}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # A bench with the baseline alone: compared with itself, which gives its accuracy.
            results = compare_runs(base_path, list(others.values()) or [base_path])
        except ValueError as error:
            raise ValueError(f"table: {bench}: {error}") from None
    for warning in caught:
        warnings.warn(f"table: {bench}: {warning.message}", warning.category, stacklevel=3)
    first = results[0]
    cells = {baseline: Cell(base_path, first["accuracy_a"], first["accuracy_std_a"], first["samples_a"], None)}
    for label, result in zip(others, results if others else []):
        cells[label] = Cell(result["b"], result["accuracy_b"], result["accuracy_std_b"], result["samples_b"],
                            result["cot_reduction"])
    left_out = {base_path: first["dropped_a"]} if first["dropped_a"] else {}
    left_out.update({r["b"]: r["dropped_b"] for r in results if others and r["dropped_b"]})
    return BenchColumn(bench, base_path, first["n"], left_out), cells


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _markdown_cells(table: Table, method: str) -> list[str]:
    row = [method.replace("|", "\\|") + (" (baseline)" if method == table.baseline else "")]
    for column in table.benches:
        cell = table.cells.get((method, column.bench))
        if cell is None:
            row += ["", ""]
            continue
        std = f" ± {100 * cell.accuracy_std:.1f}" if cell.accuracy_std is not None else ""
        row += [_percent(cell.accuracy) + std, "-" if method == table.baseline else _percent(cell.cot_reduction)]
    accuracy, reduction = table.average(method)
    average_std = table.average_accuracy_std(method)
    std = f" ± {100 * average_std:.1f}" if average_std is not None else ""
    return row + [_percent(accuracy) + std, "-" if method == table.baseline else _percent(reduction)]


def table_notes(table: Table) -> list[str]:
    """The lines under the Markdown table: what the numbers are, each bench's problem count and
    left-out files, and the methods whose average is left empty."""
    notes = [f"acc: accuracy (%); CoT red.: CoT length reduction (%) = 1 - mean decode steps of the run / mean "
             f"tokens of the baseline ({table.baseline}) on that bench, over the problems present in every file "
             "of the bench"]
    sampled = {column.bench: sorted({cell.samples for (_, bench), cell in table.cells.items()
                                     if bench == column.bench and cell.samples > 1}) for column in table.benches}
    if any(sampled.values()):
        which = ", ".join(f"{bench} N={'/'.join(map(str, counts))}" for bench, counts in sampled.items() if counts)
        notes.append(f"sampled runs ({which}): acc = mean over the samples of each problem (avg@N) ± the std of the "
                     "per-sample accuracies")
    notes.append("problems: " + ", ".join(f"{column.bench} {column.n}" for column in table.benches))
    notes += [f"{column.bench}: left out (not in every file of the bench): "
              + ", ".join(f"{path}: {count}" for path, count in column.left_out.items())
              for column in table.benches if column.left_out]
    partial = [f"{method} (no {', '.join(table.missing(method))})" for method in table.methods if table.missing(method)]
    benches = f"{len(table.benches)} bench{'' if len(table.benches) == 1 else 'es'}"
    notes.append(f"avg: mean over the {benches}"
                 + (f"; empty for methods without a run on every bench: {'; '.join(partial)}" if partial else ""))
    if any(table.average_accuracy_std(method) is not None for method in table.methods):
        notes.append("avg acc ± = sqrt(sum of the benches' std^2) / the number of benches (benches sampled "
                     "independently); none for a method with a greedy bench")
    return notes


def format_markdown(table: Table) -> str:
    """The table in Markdown (numbers in %, one decimal), then `table_notes`."""
    header = ["method"] + [f"{column.bench} {what}" for column in table.benches for what in ("acc", "CoT red.")]
    header += ["avg acc", "avg CoT red."]
    rows = [header] + [_markdown_cells(table, method) for method in table.methods]
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), rule, *map(line, rows[1:]), ""] + table_notes(table))


def table_dict(table: Table) -> dict[str, Any]:
    """The table as JSON-ready data, in fractions (not %): ``baseline``, ``benches`` (bench, n,
    baseline file, left out), ``rows`` (method, baseline, ``cells`` per bench: None where the
    method has no run, its average and the average accuracy's std) and ``notes``."""
    rows = []
    for method in table.methods:
        accuracy, reduction = table.average(method)
        cells = {column.bench: None if (cell := table.cells.get((method, column.bench))) is None else asdict(cell)
                 for column in table.benches}
        rows.append({"method": method, "baseline": method == table.baseline, "cells": cells,
                     "avg_accuracy": accuracy, "avg_accuracy_std": table.average_accuracy_std(method),
                     "avg_cot_reduction": reduction})
    benches = [{"bench": c.bench, "n": c.n, "baseline_file": c.baseline_path, "left_out": c.left_out}
               for c in table.benches]
    return {"baseline": table.baseline, "benches": benches, "rows": rows, "notes": table_notes(table)}


CSV_FIELDS = ("accuracy", "accuracy_std", "samples", "cot_reduction")


def format_csv(table: Table) -> str:
    """One row per method: method, baseline (true/false), per bench ``<bench>_accuracy``,
    ``_accuracy_std``, ``_samples``, ``_cot_reduction`` (fractions, empty where there is none),
    then ``avg_accuracy``, ``avg_accuracy_std`` and ``avg_cot_reduction``."""
    header = ["method", "baseline"] + [f"{c.bench}_{field}" for c in table.benches for field in CSV_FIELDS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header + ["avg_accuracy", "avg_accuracy_std", "avg_cot_reduction"])
    for row in table_dict(table)["rows"]:
        values = [row["method"], "true" if row["baseline"] else "false"]
        for column in table.benches:
            cell = row["cells"][column.bench] or {}
            values += [cell.get(field) for field in CSV_FIELDS]
        values += [row["avg_accuracy"], row["avg_accuracy_std"], row["avg_cot_reduction"]]
        writer.writerow(["" if value is None else value for value in values])
    return out.getvalue()


def output_format(path: str | Path, table_format: str | None = None) -> str:
    """The format a table file is written in: ``table_format``, else by the file's suffix (.csv,
    .json, anything else Markdown)."""
    if table_format is not None:
        if table_format not in TABLE_FORMATS:
            raise ValueError(f"table format {table_format!r}: expected one of {', '.join(TABLE_FORMATS)}")
        return table_format
    return _SUFFIX_FORMATS.get(Path(path).suffix.lower(), "markdown")


def format_table(table: Table, table_format: str) -> str:
    """The table as a file's text in ``table_format`` (one of `TABLE_FORMATS`)."""
    if table_format == "csv":
        return format_csv(table)
    if table_format == "json":
        return json.dumps(table_dict(table), indent=2, ensure_ascii=False) + "\n"
    return format_markdown(table) + "\n"


def write_table(table: Table, path: str | Path, table_format: str | None = None) -> Path:
    """Writes ``table`` to ``path`` (whole or not at all, `WriteFailed` when it cannot be) in
    `output_format`; returns the path."""
    replace_text(path, format_table(table, output_format(path, table_format)))
    return Path(path)
