"""Compare evaluation result files, matched by problem id: a baseline A against one candidate
B (`compare`), or against several, e.g. a threshold sweep (`compare_runs`, `plot_tradeoff`).

The paper's chain-of-thought reduction of a SuperThoughts model is measured against its
token-by-token baseline: 1 - decode steps of B / generated tokens of A.

A sampled run (``--samples N``) counts each problem once, as the means over its samples
(`eval_sampling.per_problem`): its accuracy is avg@N over the matched problems, its lengths are
per-sample means, its "cut off" count is the expected number per pass, and its ``accuracy_std``
is the spread of its per-sample accuracies. Greedy files read as they always did.

Each run also gets its paired accuracy difference against A, problem by problem, with a standard
error, a 95% interval and, for two greedy runs, McNemar's exact p (`eval_paired`): whether the
difference is more than the noise of a bench of n problems.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from superthoughts_ext.eval_files import existing_summary, json_lines, read_records_text
from superthoughts_ext.eval_paired import paired_fields, paired_lines, paired_table
from superthoughts_ext.eval_sampling import accuracy_std, per_problem, record_key, sampling_of
from superthoughts_ext.plot_style import (ERROR_BAR_CAPSIZE, LABEL_FONT_SIZE, MARKERS, PALETTE, place_labels, pyplot,
                                          save_figure)


def read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """A records file's records by problem id, as `compare` matches them (a sampled run's
    samples of a problem merged by `eval_sampling.per_problem`); ValueError naming the file and
    line of a broken or repeated record, a warning for the torn last line of an unfinished run."""
    path = Path(path)
    text = read_records_text(path)
    lines = json_lines(text)
    records: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not text.endswith("\n"):
                # The line a run still writing (or killed mid-write) leaves; --resume drops it too.
                warnings.warn(f"compare: {path}:{number} is an unfinished record (the run was interrupted or "
                              "is still writing); left out", stacklevel=3)
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({error.msg}); give the .jsonl records "
                             "superthoughts eval wrote") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        missing = {"id", "correct", "tokens", "steps"} - record.keys()
        if missing:
            raise ValueError(f"{path}:{number}: record lacks {', '.join(sorted(missing))}")
        key = record_key(record)
        if key in seen:  # which of the two to compare? neither is safe to pick
            which = f" (sample {key[1]})" if "sample" in record else ""
            raise ValueError(f"{path}:{number}: problem id {key[0]!r}{which} appears twice in the file")
        seen.add(key)
        records.append(record)
    return per_problem(records)


def _check_settings(runs: list[tuple[str | Path, dict[str, dict[str, Any]]]]) -> None:
    """Records are matched by id alone, so the files must be runs of one benchmark (ids such as
    "0".."39" exist in several): ValueError otherwise. A different max_new_tokens or system
    prompt is a warning: a longer budget lets a run finish problems the other had cut off, and
    another prompt asks another question."""
    def values(records: dict[str, dict[str, Any]], key: str) -> set[Any]:
        if key == "temperature":  # a greedy record has none: temperature 0
            return {sampling_of(record).temperature for record in records.values()}
        # A list or object (a hand-edited file) as JSON text: it cannot go into a set.
        return {value if isinstance(value, (str, int, float, bool, type(None))) else json.dumps(value, sort_keys=True)
                for value in (record[key] for record in records.values() if key in record)}

    def shown(value: Any, width: int | None) -> str:  # a system prompt: its start, past where they differ
        if width is not None and isinstance(value, str):
            return repr(value if len(value) <= width else value[: width - 3] + "...")
        return str(value)

    for key in ("bench", "max_new_tokens", "system_prompt", "temperature"):
        seen = {str(path): values(records, key) for path, records in runs}
        distinct = set().union(*seen.values())
        if len(distinct) <= 1:
            continue
        texts = [value for value in distinct if isinstance(value, str)]
        width = max(40, len(os.path.commonprefix(texts)) + 15) if key == "system_prompt" and texts else None
        which = ", ".join(f"{path}: {' '.join(shown(value, width) for value in sorted(v, key=str))}"
                          for path, v in seen.items() if v)
        if key == "bench":
            raise ValueError(f"compare: the files are runs of different benchmarks ({which}); "
                             "their problem ids do not name the same problems")
        warnings.warn(f"compare: the runs had different {key} ({which}); accuracy and lengths "
                      "are not like for like", stacklevel=3)


RECORD_SUFFIXES = (".jsonl", ".json")  # of a records file; other dots belong to the run name


def record_suffix(path: str | Path) -> str:
    """A records file's suffix: ".jsonl" or ".json", "" for any other name (a file named just
    ".jsonl" included: it has no run name)."""
    name = Path(path).name
    return next((suffix for suffix in RECORD_SUFFIXES if name.endswith(suffix) and name != suffix), "")


def run_name(path: str | Path) -> str:
    """A records file's name without its `record_suffix`: ``qwen2.5-math-st.jsonl`` ->
    ``qwen2.5-math-st``. Not `Path.stem`, which would cut ``qwen2.5-math-st`` at its dot."""
    name = Path(path).name
    return name[: len(name) - len(record_suffix(path))]


def threshold_label(threshold: float) -> str:
    """A threshold as file names show it: short ("0.99", "1") when that reads back as the same
    float, else its full repr ("0.9999995"), so that two thresholds never share a file."""
    threshold = float(threshold) + 0.0  # -0.0 -> 0.0: the same threshold, the same name
    short = f"{threshold:g}"
    return short if float(short) == threshold else repr(threshold)


def compare(a_jsonl: str | Path, b_jsonl: str | Path) -> dict[str, Any]:
    """Compare two `evaluate` outputs (A = baseline, B = candidate) on their common problems.

    Returns n (matched problems), only_in_a / only_in_b (unmatched counts), accuracy_a,
    accuracy_b, accuracy_diff (B - A), wins_b / wins_a (problems only one of them solved; of
    sampled runs: problems one solved in a larger share of its samples), mean_tokens_a/b,
    mean_steps_a/b, hit_limit_a/b (outputs cut off: no stop token, the token budget or the
    model's context ended them; of a sampled run the mean per pass), samples_a/b (1 for greedy),
    accuracy_std_a/b (sampled runs: the std of the per-sample accuracies; None for greedy),
    cot_reduction = 1 - steps(B) / tokens(A): how much shorter B's decode is than A's
    token-by-token chain of thought, and the paired accuracy difference's accuracy_diff_se,
    accuracy_diff_ci ([low, high], 95%; both None for one problem) and mcnemar_p (exact, two
    runs of one pass per problem; None otherwise), see `eval_paired`.

    Records are matched by id: files of different benchmarks or with a repeated id are a
    ValueError, different max_new_tokens a warning.
    """
    a, b = read_records(a_jsonl), read_records(b_jsonl)
    _check_settings([(a_jsonl, a), (b_jsonl, b)])
    common = [key for key in a if key in b]
    if not common:
        raise ValueError(f"compare: {a_jsonl} and {b_jsonl} share no problem ids")
    _check_same_problems((a_jsonl, a), [(b_jsonl, b)], common)
    return _compare_records(a_jsonl, a, b_jsonl, b, common)


def _check_same_problems(baseline: tuple[str | Path, dict[str, dict[str, Any]]],
                         others: list[tuple[str | Path, dict[str, dict[str, Any]]]], common: list[str]) -> None:
    """ValueError when problems matched by id have other reference answers: runs of one
    benchmark on different problem sets (files that number their rows "0", "1", ...)."""
    base_path, base = baseline
    for path, records in others:
        differ = [key for key in common if "reference" in base[key] and "reference" in records[key]
                  and base[key]["reference"] != records[key]["reference"]]
        if differ:
            key = differ[0]
            raise ValueError(f"compare: {len(differ)} of the {len(common)} problems matched by id have other reference "
                             f"answers in {path} than in {base_path} (first: {key!r}, {records[key]['reference']!r} "
                             f"vs {base[key]['reference']!r}); the runs were evaluated on different problem sets")


def _compare_records(a_jsonl: str | Path, a: dict[str, dict[str, Any]], b_jsonl: str | Path,
                     b: dict[str, dict[str, Any]], common: list[str]) -> dict[str, Any]:
    n = len(common)

    def mean(records: dict[str, dict[str, Any]], field: str) -> float:
        return sum(float(records[key][field]) for key in common) / n

    tokens_a = sum(float(a[key]["tokens"]) for key in common)
    steps_b = sum(float(b[key]["steps"]) for key in common)
    return {
        "a": str(a_jsonl),
        "b": str(b_jsonl),
        "n": n,
        "only_in_a": len(a) - n,
        "only_in_b": len(b) - n,
        "accuracy_a": mean(a, "correct"),
        "accuracy_b": mean(b, "correct"),
        "accuracy_diff": mean(b, "correct") - mean(a, "correct"),
        # Greedy grades are 0 / 1, where "more" is "only this one solved it".
        "wins_a": sum(float(a[k]["correct"]) > float(b[k]["correct"]) for k in common),
        "wins_b": sum(float(b[k]["correct"]) > float(a[k]["correct"]) for k in common),
        "mean_tokens_a": mean(a, "tokens"),
        "mean_tokens_b": mean(b, "tokens"),
        "mean_steps_a": mean(a, "steps"),
        "mean_steps_b": mean(b, "steps"),
        # Outputs cut off (token budget or context): their lengths are a limit's, not the chain of thought's.
        "hit_limit_a": _cut_off(a, common),
        "hit_limit_b": _cut_off(b, common),
        "cot_reduction": 1.0 - steps_b / tokens_a if tokens_a else 0.0,
        "samples_a": _samples(a, common),
        "samples_b": _samples(b, common),
        "accuracy_std_a": accuracy_std(a, common),
        "accuracy_std_b": accuracy_std(b, common),
        **paired_fields(a, b, common, greedy=_samples(a, common) == _samples(b, common) == 1),
    }


def _cut_off(records: dict[str, dict[str, Any]], common: list[str]) -> int | float:
    """Outputs cut off among ``common``: a count for a greedy run, the mean per pass (the sum of
    each problem's share of cut-off samples) for a sampled one."""
    shares = [records[key].get("hit_limit") for key in common]
    if any(isinstance(share, float) for share in shares):
        return sum(float(share or 0) for share in shares)
    return sum(bool(share) for share in shares)


def _samples(records: dict[str, dict[str, Any]], common: list[str]) -> int:
    """Samples per problem of a run (the most any matched problem has; 1 for greedy)."""
    return max(int(records[key].get("n_samples", 1)) for key in common)


def _count(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _accuracy(result: dict[str, Any], side: str) -> str:
    """A run's accuracy in a table: avg@N with its std over samples for a sampled run."""
    text = f"{result['accuracy_' + side]:.4f}"
    std = result.get("accuracy_std_" + side)
    return text + (f" ± {std:.4f}" if std is not None else "")


def _sampled_note(results: list[dict[str, Any]]) -> list[str]:
    """The line saying what a table's numbers are for sampled runs (none when every run is greedy)."""
    if all(r["samples_a"] == 1 and r["samples_b"] == 1 for r in results):
        return []
    return ["sampled runs: accuracy = mean over the samples of each problem (avg@N) ± the std of the "
            "per-sample accuracies; lengths are per-sample means, cut off the mean per pass"]


def format_comparison(result: dict[str, Any]) -> str:
    """`compare`'s result as a plain-text table."""
    rows = [
        ("", "A", "B", "B - A"),
        ("accuracy", _accuracy(result, "a"), _accuracy(result, "b"), f"{result['accuracy_diff']:+.4f}"),
        ("solved only here" if not _sampled_note([result]) else "solved more often here", str(result["wins_a"]),
         str(result["wins_b"]), ""),
        ("mean tokens", f"{result['mean_tokens_a']:.1f}", f"{result['mean_tokens_b']:.1f}", ""),
        ("mean decode steps", f"{result['mean_steps_a']:.1f}", f"{result['mean_steps_b']:.1f}", ""),
        ("cut off (token budget or context)", _count(result["hit_limit_a"]), _count(result["hit_limit_b"]), ""),
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = [f"A: {result['a']}", f"B: {result['b']}", f"matched problems: {result['n']}"]
    if result["only_in_a"] or result["only_in_b"]:
        lines.append(f"unmatched: {result['only_in_a']} only in A, {result['only_in_b']} only in B")
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.append(f"CoT length reduction of B vs A (1 - steps_B / tokens_A): {result['cot_reduction']:.2%}")
    return "\n".join(lines + _sampled_note([result]) + paired_lines(result))


def run_label(path: str | Path, records: dict[str, dict[str, Any]] | None = None) -> str:
    """A run's name in tables and plots: the file stem, with the mode and threshold from its
    `.summary.json` (written by `evaluate`) when there is one, else from its first record (an
    interrupted run has no summary; every record keeps the run's settings)."""
    label = run_name(path)
    summary = existing_summary(path)
    if summary is not None:
        try:
            info = json.loads(summary.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            info = error
        if not isinstance(info, dict):  # the records suffice: label the run by its name alone
            warnings.warn(f"{summary}: not a summary JSON object ({info}); labelling the run {label!r}", stacklevel=2)
            return label
    else:
        info = next(iter((records or {}).values()), {})
    return label + settings_label(info)


def settings_label(info: dict[str, Any]) -> str:
    """How a run decoded, as labels show it after the run's name: `` [superthoughts 0.99]``,
    `` [pairs, avg@8 T=0.6]``; "" when ``info`` (a summary or a record) names no mode."""
    mode, threshold = info.get("mode"), info.get("threshold")
    sampling = sampling_of(info)
    sampled = f", avg@{sampling.samples} T={sampling.temperature:g}" if sampling.sampled else ""
    if mode == "superthoughts" and threshold is not None:
        return f" [{mode} {threshold_label(threshold)}{sampled}]"
    return f" [{mode}{sampled}]" if mode else ""


def compare_runs(baseline_jsonl: str | Path, candidates: list[str | Path]) -> list[dict[str, Any]]:
    """`compare(baseline, c)` for every candidate c, all over the same problems: those present in
    EVERY file, so that accuracies and lengths of different runs can be set side by side.
    Each result also carries `dropped_a` / `dropped_b` (problems of that file outside the common
    set), `label_a` / `label_b` (`run_label`), and `bench` / `max_new_tokens` (the value every
    record holds; None when they lack it or differ)."""
    if not candidates:
        raise ValueError("compare_runs: give at least one candidate besides the baseline")
    a = read_records(baseline_jsonl)
    runs = [read_records(c) for c in candidates]
    _check_settings([(baseline_jsonl, a), *zip(candidates, runs)])
    common = [key for key in a if all(key in run for run in runs)]
    if not common:
        names = ", ".join(str(p) for p in [baseline_jsonl, *candidates])
        raise ValueError(f"compare: no problem id is present in all of {names}")
    _check_same_problems((baseline_jsonl, a), list(zip(candidates, runs)), common)
    label_a, *labels = _distinct_labels([baseline_jsonl, *candidates], [a, *runs])
    shared = {key: _shared_value([a, *runs], key) for key in ("bench", "max_new_tokens")}
    results = []
    for path, b, label_b in zip(candidates, runs, labels):
        result = _compare_records(baseline_jsonl, a, path, b, common)
        result.update(dropped_a=len(a) - len(common), dropped_b=len(b) - len(common), label_a=label_a, label_b=label_b,
                      **shared)
        results.append(result)
    return results


def _shared_value(runs: list[dict[str, dict[str, Any]]], key: str) -> Any:
    """The one value of ``key`` in every record of every run (the benchmark, the token budget),
    None when records lack it or disagree: a plot title names only what holds for all its points."""
    values = {json.dumps(record.get(key)) for records in runs for record in records.values()}
    return json.loads(values.pop()) if len(values) == 1 else None


def _distinct_labels(paths: list[str | Path], records: list[dict[str, dict[str, Any]]]) -> list[str]:
    """`run_label` of each path (and its records); runs of one file name in different folders
    (run1/st.jsonl, run2/st.jsonl) get their folder in front, so no two rows or points look alike."""
    labels = [run_label(path, run) for path, run in zip(paths, records)]
    return [f"{Path(path).parent.as_posix()}/{label}" if labels.count(label) > 1 else label
            for path, label in zip(paths, labels)]


def format_runs(results: list[dict[str, Any]]) -> str:
    """`compare_runs`' results as one table: the baseline, then a row per candidate."""
    first = results[0]
    header = ("run", "accuracy", "vs A", "mean tokens", "mean steps", "CoT reduction", "cut off")
    rows = [header, (f"A: {first['label_a']}", _accuracy(first, "a"), "", f"{first['mean_tokens_a']:.1f}",
                     f"{first['mean_steps_a']:.1f}", "", _count(first["hit_limit_a"]))]
    for r in results:
        rows.append((r["label_b"], _accuracy(r, "b"), f"{r['accuracy_diff']:+.4f}", f"{r['mean_tokens_b']:.1f}",
                     f"{r['mean_steps_b']:.1f}", f"{r['cot_reduction']:.2%}", _count(r["hit_limit_b"])))
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [f"problems present in every file: {first['n']}"]
    dropped = [(first["label_a"], first["dropped_a"])] + [(r["label_b"], r["dropped_b"]) for r in results]
    left_out = [f"{label}: {count}" for label, count in dropped if count]
    if left_out:
        lines.append("left out (not in every file): " + ", ".join(left_out))
    lines += ["  ".join(cell.ljust(w) if col == 0 else cell.rjust(w) for col, (cell, w) in enumerate(zip(row, widths)))
              for row in rows]
    lines.append("CoT reduction = 1 - mean steps of the run / mean tokens of A; "
                 "cut off = outputs without a stop token (token budget or context)")
    return "\n".join(lines + _sampled_note(results) + paired_table(results))


def accuracy_limits(accuracies: list[float]) -> tuple[float, float]:
    """The accuracy axis (in %) of `plot_tradeoff`: the values with a margin of a tenth of their
    spread, at least 2 points, kept within a point of [0, 100]. Matplotlib's own margin of a zero
    spread (every run at the same accuracy, e.g. all 0 on a short run) is about 1e-17, an axis of
    rounding noise."""
    low, high = min(accuracies), max(accuracies)
    pad = max(2.0, 0.1 * (high - low))
    return max(low - pad, -1.0), min(high + pad, 101.0)


def _error_bar(ax: Any, x: float, y: float, std: float | None, color: str) -> None:
    """A sampled run's bar of +- the std of its per-sample accuracies (in points) through its
    point; none for a greedy run. Unlabelled: the point names the run in the legend."""
    if std is not None:
        ax.errorbar([x], [y], yerr=[100 * std], fmt="none", ecolor=color, capsize=ERROR_BAR_CAPSIZE)


def _point_label(accuracy: float, std: float | None, steps_share: float | None) -> str:
    """The numbers beside a point: accuracy (± std over samples), and how much shorter than the
    baseline's chain of thought the run decoded (none for the baseline itself)."""
    text = f"{100 * accuracy:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "")
    return text if steps_share is None else f"{text}, {100 - steps_share:.1f}% shorter"


def tradeoff_title(results: list[dict[str, Any]]) -> str:
    """`plot_tradeoff`'s default title: what is plotted, on which benchmark, how many problems and
    under which token budget (where the records name them)."""
    first = results[0]
    budget = first.get("max_new_tokens")
    context = ", ".join(part for part in (first.get("bench"), f"{first['n']} problems",
                                          f"max {budget} new tokens" if budget else None) if part)
    return f"accuracy vs chain-of-thought length\n{context}"


def plot_tradeoff(results: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Accuracy against decode length: each run at its mean decode steps as a share of the
    baseline's mean tokens (100% = the baseline's chain of thought; the top axis reads it as the
    CoT reduction), the baseline as a square (at its own steps: 100% when it decoded token by
    token). Every point is labelled with its accuracy and reduction. A sampled run is at its
    avg@N accuracy, with a bar of +- the std of its per-sample accuracies. The default title is
    `tradeoff_title`. Writes a PNG (or any format matplotlib knows from the suffix) and returns
    its path."""
    plt = pyplot()
    first = results[0]
    # The run names go in a legend under the axes, one line each: annotations beside the points
    # ran off the figure for long names and a legend inside the axes hid the baseline.
    fig, ax = plt.subplots(figsize=(7.0, 4.8 + 0.22 * (len(results) + 1)))
    # The baseline at its own decode steps: 100% only for a token-by-token (standard) baseline.
    base_x = 100 * first["mean_steps_a"] / first["mean_tokens_a"] if first["mean_tokens_a"] else 100.0
    base_y = 100 * first["accuracy_a"]
    # A hollow square drawn over the runs: a run at the baseline's point (a standard run of the
    # same model) shows inside it, where a filled one hid the other.
    ax.plot([base_x], [base_y], "s", color="black", markerfacecolor="none", markersize=11,
            zorder=3, label=f"A: {first['label_a']}")
    _error_bar(ax, base_x, base_y, first["accuracy_std_a"], "black")
    xs = [100 * (1 - r["cot_reduction"]) for r in results]
    ys = [100 * r["accuracy_b"] for r in results]
    for index, (x, y, r) in enumerate(zip(xs, ys, results)):
        color = PALETTE[index % len(PALETTE)]
        ax.plot([x], [y], MARKERS[index % len(MARKERS)], color=color, markersize=8, label=r["label_b"])
        _error_bar(ax, x, y, r["accuracy_std_b"], color)
    ax.axhline(base_y, color="black", linewidth=0.8, linestyle="--")
    ax.margins(x=0.12)
    spans = [(base_y, first["accuracy_std_a"])]
    spans += [(y, r["accuracy_std_b"]) for y, r in zip(ys, results)]
    ax.set_ylim(*accuracy_limits([y + sign * 100 * (std or 0.0) for y, std in spans for sign in (-1, 1)]))
    ax.set_xlabel("decode steps, % of the baseline's tokens")
    ax.set_ylabel("accuracy (%)" if not _sampled_note(results) else "accuracy (%; sampled: avg@N ± std over samples)")
    # The paper reports the reduction, 100 - the bottom axis: readable off the top one.
    top = ax.secondary_xaxis("top", functions=(lambda x: 100 - x, lambda r: 100 - r))
    top.set_xlabel("CoT reduction vs the baseline's tokens (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=LABEL_FONT_SIZE, frameon=False)
    ax.set_title(title or tradeoff_title(results), fontsize=11, pad=10)
    labels = [_point_label(first["accuracy_a"], first["accuracy_std_a"], None)]
    labels += [_point_label(r["accuracy_b"], r["accuracy_std_b"], x) for x, r in zip(xs, results)]
    # Labels keep off every sampled run's bar: one over a bar hid where it ends.
    bars = [(x, y - 100 * std, y + 100 * std) for (x, y), std in
            zip([(base_x, base_y), *zip(xs, ys)], [first["accuracy_std_a"], *(r["accuracy_std_b"] for r in results)])
            if std is not None]
    place_labels(ax, [(base_x, base_y), *zip(xs, ys)], labels, bars=bars)
    return save_figure(fig, path)
