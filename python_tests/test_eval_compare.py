"""compare / compare_runs safety checks: files of other benchmarks, repeated ids, other
budgets, outputs cut off by max_new_tokens. (The comparisons themselves: test_evaluation.py.)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from superthoughts_ext.eval_compare import compare, compare_runs, format_comparison, format_runs


def write_records(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"correct": True, "tokens": 10, "steps": 10, **row}) + "\n" for row in rows))
    return path


def test_compare_refuses_other_benches_and_repeated_ids(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "bench": "amc23"} for i in range(4)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "bench": "olympiadbench"} for i in range(4)])
    c = write_records(tmp_path / "c.jsonl", [{"id": str(i), "bench": "amc23"} for i in range(4)])
    with pytest.raises(ValueError, match="different benchmarks .*b.jsonl: olympiadbench"):
        compare(a, b)
    with pytest.raises(ValueError, match="different benchmarks"):
        compare_runs(a, [c, b])
    twice = write_records(tmp_path / "twice.jsonl", [{"id": "0"}, {"id": "1"}, {"id": "0", "correct": False}])
    with pytest.raises(ValueError, match=r"twice.jsonl:3: problem id '0' appears twice"):
        compare(a, twice)


def test_compare_warns_on_other_system_prompts(tmp_path: Path) -> None:
    # Another prompt asks another question: it went by without a word.
    long = "Please reason step by step, and put your final answer within \\boxed{}."
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "system_prompt": long} for i in range(4)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "system_prompt": "Be brief."} for i in range(4)])
    with pytest.warns(UserWarning, match=r"different system_prompt \(.*a.jsonl: 'Please reason step by step, and put "
                                         r"y\.\.\.', .*b.jsonl: 'Be brief.'\); accuracy and lengths are not like"):
        compare(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(a, write_records(tmp_path / "c.jsonl", [{"id": str(i), "system_prompt": long} for i in range(4)]))
    # Prompts alike for their first 40 characters are shown up to past where they differ.
    other = long.replace("boxed", "fbox")
    d = write_records(tmp_path / "d.jsonl", [{"id": str(i), "system_prompt": other} for i in range(4)])
    with pytest.warns(UserWarning) as caught:
        compare(a, d)
    assert "within \\\\boxed" in str(caught[0].message) and "within \\\\fbox" in str(caught[0].message)


def test_compare_warns_on_other_budgets_and_counts_cut_off_outputs(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "max_new_tokens": 512, "hit_limit": i < 3}
                                             for i in range(4)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "max_new_tokens": 4096, "hit_limit": i < 1}
                                             for i in range(4)])
    with pytest.warns(UserWarning, match="different max_new_tokens .*a.jsonl: 512, .*b.jsonl: 4096"):
        result = compare(a, b)
    assert (result["hit_limit_a"], result["hit_limit_b"]) == (3, 1)
    lines = format_comparison(result).splitlines()
    row = next(line for line in lines if line.startswith("cut off (token budget or context)"))
    assert row.split()[-2:] == ["3", "1"]
    same = write_records(tmp_path / "same.jsonl", [{"id": str(i), "max_new_tokens": 512} for i in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = compare_runs(a, [same])
    lines = format_runs(results).splitlines()
    assert lines[1].split()[-2:] == ["cut", "off"] and lines[2].split()[-1] == "3" and lines[3].split()[-1] == "0"
    assert lines[4].endswith("cut off = outputs without a stop token (token budget or context)")  # under the table


def test_compare_names_the_file_and_line_of_a_broken_record(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i)} for i in range(3)])
    # An interrupted run's file: its last record cut off mid-write is left out, with a warning.
    text = (tmp_path / "a.jsonl").read_text()
    torn = tmp_path / "torn.jsonl"
    torn.write_text(text[: text.rindex("\n", 0, -1) + 1] + text.splitlines()[-1][:20])
    with pytest.warns(UserWarning, match=r"torn.jsonl:3 is an unfinished record"):
        assert compare(a, torn)["n"] == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text(text.replace('"id": "1"', '"id": 1,,'))
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not a JSON record"):
        compare(a, broken)
    summary = tmp_path / "a.summary.json"
    summary.write_text(json.dumps({"bench": "math500", "accuracy": 0.5}, indent=2) + "\n")
    with pytest.raises(ValueError, match=r"a.summary.json:1: not a JSON record"):
        compare_runs(a, [summary])
    listed = tmp_path / "list.jsonl"
    listed.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"list.jsonl:1: expected a JSON object per line, got list"):
        compare(a, listed)


def test_plot_of_runs_at_one_accuracy_keeps_a_readable_axis(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from superthoughts_ext.eval_compare import plot_tradeoff

    base = write_records(tmp_path / "base.jsonl", [{"id": str(i), "correct": False} for i in range(4)])
    runs = [write_records(tmp_path / f"st{k}.jsonl", [{"id": str(i), "correct": False, "steps": 5 + k}
                                                      for i in range(4)]) for k in range(2)]
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_tradeoff(compare_runs(base, runs), tmp_path / "flat.png")
    low, high = closed[0].axes[0].get_ylim()
    assert low == -1.0 and high == 2.0  # not matplotlib's +-1e-17 around a zero spread


def test_plot_places_the_baseline_at_its_own_decode_steps(tmp_path: Path, monkeypatch) -> None:
    # The x axis is decode steps as a share of the baseline's tokens: a baseline that decoded pairs
    # (10 tokens in 6 steps) sits at 60%, not at 100%.
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from superthoughts_ext.eval_compare import plot_tradeoff

    base = write_records(tmp_path / "base.jsonl", [{"id": str(i), "steps": 6} for i in range(4)])
    run = write_records(tmp_path / "st.jsonl", [{"id": str(i), "steps": 8} for i in range(4)])
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_tradeoff(compare_runs(base, [run]), tmp_path / "pairs-baseline.png")
    points = {line.get_label(): list(line.get_xdata()) for line in closed[0].axes[0].get_lines()}
    assert points["A: base"] == [pytest.approx(60.0)] and points["st"] == [pytest.approx(80.0)]


def test_run_labels_survive_a_torn_summary_and_tell_same_named_runs_apart(tmp_path: Path) -> None:
    base = write_records(tmp_path / "sft.jsonl", [{"id": str(i), "steps": 10} for i in range(4)])
    runs = []
    for folder, accuracy in (("run1", 0.5), ("run2", 0.9)):
        (tmp_path / folder).mkdir()
        run = write_records(tmp_path / folder / "st.jsonl", [{"id": str(i), "steps": 6} for i in range(4)])
        (tmp_path / folder / "st.summary.json").write_text(json.dumps({"mode": "superthoughts", "threshold": 0.9,
                                                                       "accuracy": accuracy}))
        runs.append(run)
    labels = [r["label_b"] for r in compare_runs(base, runs)]
    assert labels == [f"{(tmp_path / 'run1').as_posix()}/st [superthoughts 0.9]",
                      f"{(tmp_path / 'run2').as_posix()}/st [superthoughts 0.9]"]
    # A summary torn by a kill mid-write: the records suffice, the label is the bare name.
    (tmp_path / "sft.summary.json").write_text('{\n  "mode": "stand')
    with pytest.warns(UserWarning, match=r"sft.summary.json: not a summary JSON object .*labelling the run 'sft'"):
        assert compare_runs(base, runs[:1])[0]["label_a"] == "sft"
    (tmp_path / "sft.summary.json").write_text("[]")
    with pytest.warns(UserWarning, match="not a summary JSON object"):
        assert compare_runs(base, runs[:1])[0]["label_a"] == "sft"


def test_plot_names_every_run_in_a_legend_under_the_axes(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from superthoughts_ext.eval_compare import plot_tradeoff

    base = write_records(tmp_path / "base.jsonl", [{"id": str(i), "correct": i == 0} for i in range(4)])
    long_name = "qwen2.5-math-1.5b-superthoughts-threshold-0.999-run-of-the-sixth-of-december"
    runs = [write_records(tmp_path / f"{long_name}-{k}.jsonl", [{"id": str(i), "correct": i <= k, "steps": 5 + k}
                                                               for i in range(4)]) for k in range(3)]
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_tradeoff(compare_runs(base, runs), tmp_path / "long.png")
    ax = closed[0].axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["A: base"] + [f"{long_name}-{k}" for k in range(3)]
    # Below the axes, so it hides no point (the baseline, worst here, sat under it at lower right).
    renderer = closed[0].canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0


def test_compare_a_corrupt_last_line_ending_in_a_newline_is_an_error(tmp_path: Path) -> None:
    # Only a last line without its newline is a record still being written; one that ends in a
    # newline was written whole, so a broken one is a broken file, not a record to drop.
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i)} for i in range(2)])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"id": "0", "correct": True, "tokens": 10, "steps": 10}) + '\n{"id": "1", "corr\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"broken.jsonl:2: not a JSON record"):
            compare(a, broken)


def test_compare_checks_references_only_where_both_runs_record_them(tmp_path: Path) -> None:
    # Runs on other problem sets under the same ids are refused (compare and compare_runs); a
    # run whose records hold no reference (an older format) is compared as before.
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "reference": str(i)} for i in range(3)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "reference": str(i + 10)} for i in range(3)])
    with pytest.raises(ValueError, match=r"3 of the 3 problems matched by id have other reference answers"):
        compare(a, b)
    with pytest.raises(ValueError, match=r"other reference answers in .*b\.jsonl than in .*a\.jsonl"):
        compare_runs(a, [b])
    old = write_records(tmp_path / "old.jsonl", [{"id": str(i)} for i in range(3)])
    assert compare(a, old)["n"] == compare(old, b)["n"] == 3


def test_compare_tells_apart_settings_that_are_lists(tmp_path: Path) -> None:
    # A hand-edited file's list-valued setting ended in "unhashable type: 'list'".
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "system_prompt": ["x"]} for i in range(3)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "system_prompt": "y"} for i in range(3)])
    with pytest.warns(UserWarning, match=r"different system_prompt \(.*a.jsonl: '\[\"x\"\]', .*b.jsonl: 'y'\)"):
        compare(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same list in both: no difference
        compare(a, write_records(tmp_path / "c.jsonl", [{"id": str(i), "system_prompt": ["x"]} for i in range(3)]))


def test_compare_takes_objects_of_another_key_order_for_the_same_setting(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "system_prompt": {"a": 1, "b": 2}} for i in range(3)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "system_prompt": {"b": 2, "a": 1}} for i in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(a, b)


def test_plot_names_the_bench_and_labels_every_point_with_its_numbers(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from superthoughts_ext.eval_compare import plot_tradeoff

    common = {"bench": "amc23", "max_new_tokens": 4096}
    base = write_records(tmp_path / "base.jsonl", [{"id": str(i), "correct": i < 3, **common} for i in range(4)])
    runs = [write_records(tmp_path / f"st{k}.jsonl", [{"id": str(i), "correct": i < 2 + k, "steps": 6 + k, **common}
                                                      for i in range(4)]) for k in range(2)]
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_tradeoff(compare_runs(base, runs), tmp_path / "named.png")
    fig = closed[0]
    ax = fig.axes[0]
    assert ax.get_title() == "accuracy vs chain-of-thought length\namc23, 4 problems, max 4096 new tokens"
    # The baseline, then each run: accuracy, and how much shorter than the baseline's tokens.
    assert [t.get_text() for t in ax.texts] == ["75.0%", "50.0%, 40.0% shorter", "75.0%, 30.0% shorter"]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    box = ax.get_window_extent(renderer)
    assert all(box.x0 <= b.x0 and b.x1 <= box.x1 and box.y0 <= b.y0 and b.y1 <= box.y1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert "reduction" in ax.child_axes[0].get_xlabel()  # the top axis: 100 - the bottom one
    # Runs on other budgets: the title names only what every point shares.
    other = write_records(tmp_path / "other.jsonl", [{"id": str(i), "bench": "amc23", "max_new_tokens": 512}
                                                     for i in range(4)])
    with pytest.warns(UserWarning, match="different max_new_tokens"):
        plot_tradeoff(compare_runs(base, [other]), tmp_path / "mixed.png")
    assert closed[1].axes[0].get_title() == "accuracy vs chain-of-thought length\namc23, 4 problems"


def test_plot_labels_keep_off_the_error_bars_of_sampled_runs(tmp_path: Path, monkeypatch) -> None:
    # Sampled runs at 80% and 83% of the baseline's tokens: the first one's label, right of its
    # point by default, lay over the second one's long error bar; it goes above on the left now
    # (straight left it would cover the label of the run at 55%).
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from superthoughts_ext.eval_compare import plot_tradeoff

    def sampled(path: Path, correct: list[list[bool]], steps: float) -> Path:
        rows = [{"id": str(i), "sample": k, "temperature": 0.6, "samples": 2, "correct": c, "steps": steps}
                for i, by_sample in enumerate(correct) for k, c in enumerate(by_sample)]
        return write_records(path, rows)

    base = sampled(tmp_path / "base.jsonl", [[True, True]] * 4, 10)
    # Per-sample accuracies 2/4 and 1/4 (a bar of +-18 points); 4/4 and 1/4 (+-53 points).
    few = [[True, True], [True, False], [False, False], [False, False]]
    runs = [sampled(tmp_path / "far.jsonl", few, 5.5), sampled(tmp_path / "near.jsonl", few, 8),
            sampled(tmp_path / "wide.jsonl", [[True, True], [True, False], [True, False], [True, False]], 8.3)]
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_tradeoff(compare_runs(base, runs), tmp_path / "bars.png")
    fig = closed[0]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    bars = []
    for collection in ax.collections:  # each errorbar's vertical line, in pixels
        for segment in collection.get_segments():
            (x0, y0), (x1, y1) = ax.transData.transform(segment)
            if x0 == x1 and y0 != y1:
                bars.append((x0, min(y0, y1), max(y0, y1)))
    assert len(bars) == 3  # the sampled runs'; the baseline's std is 0, a bar of no length
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    for text, box in zip(ax.texts, boxes):
        assert not any(box.x0 < x < box.x1 and box.y0 < high and low < box.y1 for x, low, high in bars), text.get_text()
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
