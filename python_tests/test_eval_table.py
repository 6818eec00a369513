"""`superthoughts eval --table`: runs of several benches in one table (eval_table.py), the numbers
checked against hand computation, from hand-written records files (as test_eval_compare.py).
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import pytest

from superthoughts_ext.eval_table import build_table, format_markdown, output_format, write_table
from superthoughts_ext.eval_table_labels import checkpoint_of, model_names

SFT, ST = "/ckpt/sft", "/ckpt/st"


def write_run(path: Path, bench: str, model: str, mode: str, rows: list[tuple], threshold: float | None = None,
              **settings) -> Path:
    """A records file as `evaluate` writes it: rows of (correct, tokens, steps), or of (correct,
    tokens, steps, sample) for a sampled run (its problems are numbered by the row // samples)."""
    samples = settings.get("samples", 1)
    lines = []
    for index, row in enumerate(rows):
        record = {"id": str(index // samples), "bench": bench, "model": model, "mode": mode, "threshold": threshold,
                  "max_new_tokens": 2048, "reference": str(index // samples), "correct": row[0], "tokens": row[1],
                  "steps": row[2], **settings}
        if len(row) == 4:
            record["sample"] = row[3]
        lines.append(json.dumps(record) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def greedy(correct: list[bool], tokens: list[int], steps: list[int] | None = None) -> list[tuple]:
    return list(zip(correct, tokens, steps or tokens))


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """MATH500 (greedy, 4 problems): sft, st at 0.999 and st in pairs mode; AMC23 (avg@2 at
    T=0.6, 2 problems): sft and st at 0.999 alone, so `st [pairs]` misses a bench."""
    sampled = {"temperature": 0.6, "samples": 2, "seed": 0}
    return {
        "math-sft": write_run(tmp_path / "math500" / "sft.jsonl", "math500", SFT, "standard",
                              greedy([True, True, False, True], [100, 200, 300, 400])),
        "math-st": write_run(tmp_path / "math500" / "st.jsonl", "math500", ST, "superthoughts",
                             greedy([True, False, False, True], [100, 200, 300, 400], [60, 150, 240, 300]),
                             threshold=0.999),
        "math-pairs": write_run(tmp_path / "math500" / "pairs.jsonl", "math500", ST, "pairs",
                                greedy([False, False, False, True], [100, 200, 300, 400], [50, 100, 150, 200])),
        # Problem 0: samples right/wrong (100, 300 tokens), problem 1: right twice (200, 200).
        "amc-sft": write_run(tmp_path / "amc23" / "sft.jsonl", "amc23", SFT, "standard",
                             [(True, 100, 100, 0), (False, 300, 300, 1), (True, 200, 200, 0), (True, 200, 200, 1)],
                             **sampled),
        "amc-st": write_run(tmp_path / "amc23" / "st.jsonl", "amc23", ST, "superthoughts",
                            [(False, 180, 100, 0), (False, 180, 100, 1), (True, 300, 150, 0), (True, 300, 150, 1)],
                            threshold=0.999, **sampled),
    }


def test_table_numbers_match_a_hand_computation(runs: dict[str, Path]) -> None:
    table = build_table(list(runs.values()))
    assert table.baseline == "sft [standard]"  # the one method decoding in standard mode everywhere
    assert table.methods == ["sft [standard]", "st [superthoughts 0.999]", "st [pairs]"]
    assert [(c.bench, c.n) for c in table.benches] == [("math500", 4), ("amc23", 2)]
    cells = table.cells
    # MATH500: 3/4 right; st 2/4 in 750 steps for the baseline's 1000 tokens, pairs 1/4 in 500.
    assert cells["sft [standard]", "math500"].accuracy == 0.75
    assert cells["sft [standard]", "math500"].cot_reduction is None
    assert cells["st [superthoughts 0.999]", "math500"].cot_reduction == pytest.approx(1 - 750 / 1000)
    assert cells["st [pairs]", "math500"].accuracy == 0.25
    assert cells["st [pairs]", "math500"].cot_reduction == pytest.approx(0.5)
    # AMC23, avg@2: problem shares 0.5 and 1 -> 0.75; per-sample accuracies 1.0 and 0.5 -> std
    # 0.3536; the baseline's mean tokens per problem 200 + 200, st's steps 100 + 150.
    base = cells["sft [standard]", "amc23"]
    assert (base.accuracy, base.samples) == (0.75, 2)
    assert base.accuracy_std == pytest.approx(0.5 ** 0.5 / 2)
    st = cells["st [superthoughts 0.999]", "amc23"]
    assert (st.accuracy, st.accuracy_std) == (0.5, 0.0)
    assert st.cot_reduction == pytest.approx(1 - 250 / 400)
    assert table.average("sft [standard]") == (0.75, None)
    accuracy, reduction = table.average("st [superthoughts 0.999]")
    assert accuracy == 0.5 and reduction == pytest.approx((0.25 + 0.375) / 2)
    text = format_markdown(table)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "method", "math500 acc", "math500 CoT red.", "amc23 acc", "amc23 CoT red.", "avg acc", "avg CoT red."]
    assert lines[1].startswith("| ---") and lines[1].endswith(": |")  # numbers aligned right
    cells_of = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:5]}
    assert cells_of["sft [standard] (baseline)"] == ["75.0", "-", "75.0 ± 35.4", "-", "75.0", "-"]
    assert cells_of["st [superthoughts 0.999]"] == ["50.0", "25.0", "50.0 ± 0.0", "37.5", "50.0", "31.2"]
    assert "sampled runs (amc23 N=2): acc = mean over the samples" in text
    assert "problems: math500 4, amc23 2" in text


def test_a_method_missing_on_a_bench_has_empty_cells_and_no_average(runs: dict[str, Path]) -> None:
    table = build_table(list(runs.values()))
    assert table.missing("st [pairs]") == ["amc23"] and table.average("st [pairs]") == (None, None)
    row = next(line for line in format_markdown(table).splitlines() if line.startswith("| st [pairs]"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["25.0", "50.0", "", "", "", ""]
    assert format_markdown(table).splitlines()[-1] == ("avg: mean over the 2 benches; empty for methods without a "
                                                       "run on every bench: st [pairs] (no amc23)")


def test_the_average_of_sampled_benches_has_the_std_of_a_mean_of_independent_benches(
        tmp_path: Path, runs: dict[str, Path]) -> None:
    # MATH500 avg@3 over 3 problems: problem 0 right 3/3, problem 1 2/3, problem 2 1/3, so the
    # per-sample accuracies are 2/3, 1/3, 1 -> std 1/3. AMC23 avg@2 (the fixture): std sqrt(2)/4.
    rows = [(correct, 100, 100, sample) for correct, sample in zip([1, 1, 1, 1, 0, 1, 0, 0, 1], [0, 1, 2] * 3)]
    math = write_run(tmp_path / "m3" / "sft.jsonl", "math500", SFT, "standard", rows,
                     temperature=0.6, samples=3, seed=0)
    table = build_table([math, runs["amc-sft"]])
    assert table.cells["sft [standard]", "math500"].accuracy_std == pytest.approx(1 / 3)
    # sqrt(1/9 + 1/8) / 2 = 0.2430; the plain mean of the stds, (1/3 + 0.3536) / 2 = 0.3434, is not it.
    assert table.average_accuracy_std("sft [standard]") == pytest.approx((1 / 9 + 1 / 8) ** 0.5 / 2)
    row = next(line for line in format_markdown(table).splitlines() if line.startswith("| sft"))
    assert [c.strip() for c in row.split("|")[2:-1]][-2:] == ["70.8 ± 24.3", "-"]  # (2/3 + 3/4) / 2
    assert "avg acc ± = sqrt(sum of the benches' std^2) / the number of benches" in format_markdown(table)
    data = json.loads(write_table(table, tmp_path / "t.json").read_text())
    assert data["rows"][0]["avg_accuracy_std"] == pytest.approx(0.2430, abs=1e-4)
    # A greedy bench has no std over samples: the average then has none, and no note explains one.
    mixed = build_table(list(runs.values()))
    assert [mixed.average_accuracy_std(method) for method in mixed.methods] == [None, None, None]
    assert "avg acc ±" not in format_markdown(mixed)


def test_a_bench_with_the_baseline_alone_and_problems_not_in_every_file(tmp_path: Path, runs: dict[str, Path]) -> None:
    olympiad = write_run(tmp_path / "ob" / "sft.jsonl", "olympiadbench", SFT, "standard", greedy([True, False], [5, 5]))
    # st's MATH500 run lacks problem 3: the bench's numbers are over problems 0-2 for every run.
    short = write_run(tmp_path / "math500" / "st-short.jsonl", "math500", ST, "superthoughts",
                      greedy([True, False, False], [100, 200, 300], [60, 150, 240]), threshold=0.999)
    table = build_table([runs["math-sft"], short, olympiad])
    assert [(c.bench, c.n) for c in table.benches] == [("math500", 3), ("olympiadbench", 2)]
    assert table.cells["sft [standard]", "math500"].accuracy == pytest.approx(2 / 3)
    assert table.cells["st [superthoughts 0.999]", "math500"].cot_reduction == pytest.approx(1 - 450 / 600)
    assert table.cells["sft [standard]", "olympiadbench"].accuracy == 0.5
    assert table.missing("st [superthoughts 0.999]") == ["olympiadbench"]
    assert f"math500: left out (not in every file of the bench): {runs['math-sft']}: 1" in format_markdown(table)


def test_a_table_of_one_bench_says_its_average_is_over_1_bench(runs: dict[str, Path]) -> None:
    table = build_table([runs["math-sft"], runs["math-st"]])
    assert format_markdown(table).splitlines()[-1] == "avg: mean over the 1 bench"


def test_ambiguous_or_missing_baselines_and_labels_are_refused(tmp_path: Path, runs: dict[str, Path]) -> None:
    other = write_run(tmp_path / "math500" / "base.jsonl", "math500", "/ckpt/base", "standard",
                      greedy([True] * 4, [100] * 4))
    paths = [*runs.values(), other]
    # base runs on MATH500 alone: sft, the one standard method on every bench, is the baseline.
    assert build_table(paths).baseline == "sft [standard]"
    other_amc = write_run(tmp_path / "amc23" / "base.jsonl", "amc23", "/ckpt/base", "standard",
                          greedy([True] * 2, [100] * 2))
    with pytest.raises(ValueError, match=r"2 methods decode in standard mode on every bench \(sft \[standard\]: "
                                         r".*math500/sft.jsonl, .*amc23/sft.jsonl; base \[standard\]: .*math500/base"
                                         r".jsonl, .*amc23/base.jsonl\); name the baseline"):
        build_table([*paths, other_amc])
    # A third standard method on one bench alone is not one of those on every bench: not named.
    with pytest.raises(ValueError, match=r"2 methods decode in standard mode on every bench \(sft \[standard\]: "
                                         r"[^;]*; base \[standard\]: [^;]*\); name the baseline"):
        build_table([*paths, other_amc, write_run(tmp_path / "math500" / "third.jsonl", "math500", "/ckpt/third",
                                                  "standard", greedy([True] * 4, [100] * 4))])
    with pytest.raises(ValueError, match=r"2 methods decode in standard mode \(sft \[standard\]: .*math500/sft.jsonl; "
                                         r"base \[standard\]: .*amc23/base.jsonl\), none of them on every bench "
                                         r"\(math500, amc23\); name the baseline"):
        build_table([runs["math-sft"], runs["math-st"], other_amc, runs["amc-st"]])
    with pytest.raises(ValueError, match=r"the baseline 'base \[standard\]' has no run on amc23 \(files: "
                                         r".*amc23/sft.jsonl, .*amc23/st.jsonl\)"):
        build_table(paths, baseline="base [standard]")
    assert build_table(paths, baseline="sft [standard]").methods[-1] == "base [standard]"
    with pytest.raises(ValueError, match=r"--table-baseline 'sft' names no method \(methods: sft \[standard\], "):
        build_table(paths, baseline="sft")
    with pytest.raises(ValueError, match="no method decodes in standard mode on every bench"):
        build_table([runs["math-st"], runs["amc-st"]])
    # Two runs of one checkpoint and mode on one bench (another dtype, say): which is the row?
    again = write_run(tmp_path / "math500" / "st-bf16.jsonl", "math500", ST, "superthoughts",
                      greedy([True] * 4, [100] * 4), threshold=0.999)
    with pytest.raises(ValueError, match=r"math500/st.jsonl and .*st-bf16.jsonl are both 'st \[superthoughts "
                                         r"0.999\]' on math500; give each run .* --table-labels"):
        build_table([runs["math-sft"], runs["math-st"], again])
    labelled = build_table([runs["math-sft"], runs["math-st"], again], labels=["sft", "st fp32", "st bf16"],
                           baseline="sft")
    assert labelled.methods == ["sft", "st fp32", "st bf16"]
    with pytest.raises(ValueError, match="2 labels for 3 result files"):
        build_table([runs["math-sft"], runs["math-st"], again], labels=["a", "b"])


def test_files_without_one_bench_or_of_other_problems_are_refused(tmp_path: Path, runs: dict[str, Path]) -> None:
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"id": "0", "correct": True, "tokens": 1, "steps": 1}) + "\n")
    with pytest.raises(ValueError, match=r"bare.jsonl has no bench in its records; --table sets each run"):
        build_table([runs["math-sft"], bare])
    moved = write_run(tmp_path / "other.jsonl", "math500", ST, "pairs", greedy([True] * 4, [10] * 4))
    moved.write_text(moved.read_text().replace('"reference": "0"', '"reference": "7"'))
    with pytest.raises(ValueError, match=r"table: math500: compare: 1 of the 4 problems matched by id have other "
                                         r"reference answers"):
        build_table([runs["math-sft"], moved])


def test_other_budgets_within_a_bench_warn_naming_it_not_across_benches(tmp_path: Path,
                                                                         runs: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # math500 at 2048 and amc23 at 4096 tokens: nothing to warn of
        amc = [write_run(tmp_path / "amc" / f"{name}.jsonl", "amc23", model, mode, greedy([True], [10]),
                       threshold=threshold, max_new_tokens=4096)
               for name, model, mode, threshold in (("sft", SFT, "standard", None), ("st", ST, "pairs", None))]
        build_table([runs["math-sft"], runs["math-pairs"], *amc])
    long = write_run(tmp_path / "math500" / "pairs-4k.jsonl", "math500", ST, "pairs",
                     greedy([True] * 4, [100] * 4), max_new_tokens=4096)
    with pytest.warns(UserWarning, match=r"table: math500: compare: the runs had different max_new_tokens "
                                         r"\(.*sft.jsonl: 2048, .*pairs-4k.jsonl: 4096\)"):
        build_table([runs["math-sft"], long])


def test_csv_and_json_files_read_back_as_the_table(tmp_path: Path, runs: dict[str, Path]) -> None:
    table = build_table(list(runs.values()))
    assert output_format("t.CSV") == "csv" and output_format("t.json") == "json" and output_format("t.md") == "markdown"
    assert output_format("t.csv", "json") == "json"
    rows = list(csv.DictReader(io.StringIO(write_table(table, tmp_path / "t.csv").read_text())))
    assert [row["method"] for row in rows] == table.methods
    assert [row["baseline"] for row in rows] == ["true", "false", "false"]
    for row in rows:
        for column in table.benches:
            cell = table.cells.get((row["method"], column.bench))
            for field in ("accuracy", "accuracy_std", "cot_reduction"):
                value = None if cell is None else getattr(cell, field)
                assert row[f"{column.bench}_{field}"] == ("" if value is None else repr(value))
        expected = (*table.average(row["method"]), table.average_accuracy_std(row["method"]))
        assert (row["avg_accuracy"], row["avg_cot_reduction"], row["avg_accuracy_std"]) == tuple(
            "" if v is None else repr(v) for v in expected)
    data = json.loads(write_table(table, tmp_path / "t.txt", "json").read_text())
    assert data["baseline"] == table.baseline
    assert data["benches"][1] == {"bench": "amc23", "n": 2, "baseline_file": str(runs["amc-sft"]), "left_out": {}}
    for row in data["rows"]:
        for column in table.benches:
            cell = table.cells.get((row["method"], column.bench))
            assert row["cells"][column.bench] == (None if cell is None else {**vars(cell)})
        assert (row["avg_accuracy"], row["avg_cot_reduction"]) == table.average(row["method"])
        assert row["avg_accuracy_std"] == table.average_accuracy_std(row["method"])
    assert data["notes"][-1].startswith("avg: mean over the 2 benches")
    markdown = write_table(table, tmp_path / "t.md").read_text()
    assert markdown == format_markdown(table) + "\n"


def test_model_names_keep_as_many_folders_as_tell_checkpoints_apart() -> None:
    assert model_names(["/a/run1/final", "/a/run2/final", "/b/sft", "/a/run1/final"]) == {
        "/a/run1/final": "run1/final", "/a/run2/final": "run2/final", "/b/sft": "sft"}
    # A name that needs the whole of one path is that path as written ("/a/st", not "//a/st");
    # one checkpoint written with a trailing slash is one checkpoint, named as briefly as another.
    assert model_names(["/a/st", "/b/a/st"]) == {"/a/st": "/a/st", "/b/a/st": "b/a/st"}
    assert model_names(["/ckpt/st", "/ckpt/st/", "/ckpt/sft"]) == {"/ckpt/st": "st", "/ckpt/st/": "st",
                                                                   "/ckpt/sft": "sft"}
    # A checkpoint from the Hugging Face cache is recorded as org/name@<commit>: its row shows 7 digits.
    commit_a, commit_b = "8a9b0c1" + "d" * 33, "0123456" + "e" * 33
    assert model_names([f"Qwen/Math-1.5B@{commit_a}", f"Qwen/Math-1.5B@{commit_b}", "Qwen/Math-1.5B@v1"]) == {
        f"Qwen/Math-1.5B@{commit_a}": "Math-1.5B@8a9b0c1", f"Qwen/Math-1.5B@{commit_b}": "Math-1.5B@0123456",
        "Qwen/Math-1.5B@v1": "Math-1.5B@v1"}


def test_a_relative_checkpoint_of_older_records_shares_the_row_of_its_absolute_path(
        tmp_path: Path, runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Older versions recorded --model as typed: "ckpt/st" from /ckpt, beside today's "/ckpt/st".
    # Neither exists here, so the relative path is read as the one absolute path ending with it.
    monkeypatch.chdir(tmp_path)
    old = write_run(tmp_path / "old" / "math500" / "st.jsonl", "math500", "ckpt/st/", "superthoughts",
                    greedy([True, False, False, True], [100, 200, 300, 400], [60, 150, 240, 300]), threshold=0.999)
    table = build_table([runs["math-sft"], old, runs["amc-sft"], runs["amc-st"]])
    assert table.methods == ["sft [standard]", "st [superthoughts 0.999]"]
    assert table.missing("st [superthoughts 0.999]") == []


def test_a_relative_checkpoint_is_read_from_the_folders_it_exists_in_else_left_as_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("proj/out/st", "run1/final", "run2/final", "elsewhere"):
        (tmp_path / folder).mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    real = str((tmp_path / "proj" / "out" / "st").resolve())
    # The run was started in /proj (a folder above its records): the directory there is the one.
    assert checkpoint_of("out/st", tmp_path / "proj" / "eval" / "math500" / "st.jsonl", []) == real
    assert checkpoint_of("./out/st/", tmp_path / "proj" / "eval" / "st.jsonl", ["/x/out/st"]) == real
    monkeypatch.chdir(tmp_path / "proj")  # or the directory the table is made in
    assert checkpoint_of("out/st", "/results/st.jsonl", []) == real
    # run1's records name "final": run1/final, not the run2/final of the newer records that ends alike.
    run2 = str((tmp_path / "run2" / "final").resolve())
    assert checkpoint_of("final", tmp_path / "run1" / "eval" / "a.jsonl", [run2]) == str(
        (tmp_path / "run1" / "final").resolve())
    assert model_names([checkpoint_of("final", tmp_path / "run1" / "a.jsonl", [run2]), run2]) == {
        str((tmp_path / "run1" / "final").resolve()): "run1/final", run2: "run2/final"}
    absolute = str(tmp_path / "proj" / "out" / "st")
    assert checkpoint_of(absolute, "/results/st.jsonl", []) == absolute  # newer records: as recorded
    # Directories of that name both here and above the records, or several absolute paths ending
    # with it: which one the old run meant is unknown; it keeps its recorded name, with a warning.
    (tmp_path / "proj" / "final").mkdir()
    with pytest.warns(UserWarning, match=r"names its checkpoint 'final', a path relative to where an older "
                                         r"version's run was started \(not recorded\); it may be .*proj/final or "
                                         r".*run1/final, .* --table-labels"):
        assert checkpoint_of("final", tmp_path / "run1" / "a.jsonl", []) == "final"
    with pytest.warns(UserWarning, match=r"it may be /a/st or /b/st"):
        assert checkpoint_of("st", "/results/st.jsonl", ["/a/st", "/b/st"]) == "st"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint_of("nowhere/st", "/results/st.jsonl", ["/a/st"]) == "nowhere/st"
        assert checkpoint_of("../st", "/results/st.jsonl", ["/a/st"]) == "../st"
        # "." and ".." name the directory the old run started in and nothing more: every folder
        # above the records exists, so none of them is it.
        assert checkpoint_of(".", tmp_path / "run1" / "a.jsonl", ["/a/st"]) == "."
        assert checkpoint_of("../..", tmp_path / "run1" / "a.jsonl", []) == "../.."


def test_cli_table(tmp_path: Path, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.cli import main

    out = tmp_path / "out" / "table.csv"
    assert main(["eval", "--table", *map(str, runs.values()), "--table-output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| method") and "| sft [standard] (baseline)" in printed
    assert printed.splitlines()[-1] == f"table: {out}" and out.read_text().startswith("method,baseline,math500_")
    assert main(["eval", "--table", str(runs["math-sft"]), "--table-output", str(out), "--table-format", "json"]) == 0
    assert json.loads(out.read_text())["baseline"] == "sft [standard]"
    assert main(["eval", "--table", str(runs["math-sft"]), "--no-progress"]) == 0  # read by every command
    for argv, error in (
            (["--table", str(runs["math-sft"]), "--table-format", "csv"], "--table-format goes with --table-output"),
            (["--compare", str(runs["math-sft"]), str(runs["math-st"]), "--table-baseline", "sft"],
             "--table-baseline goes with --table"),
            (["--table", str(runs["math-sft"]), "--compare", str(runs["math-st"])],
             "--table does not go with --compare"),
            (["--table", str(runs["math-st"])], "no method decodes in standard mode"),
            (["--table", str(runs["math-sft"]), "--table-output", str(tmp_path)], "cannot be written"),
            # Options of a decoding run were ignored: --output wrote no table, --bench kept every bench.
            (["--table", str(runs["math-sft"]), "--output", str(tmp_path / "t.csv")],
             "--table does not go with --output (--table-output FILE writes the table)"),
            (["--table", str(runs["math-sft"]), "--bench", "amc23", "--resume", "--overwrite", "--limit", "1"],
             "--table does not go with --bench, --resume, --overwrite, --limit"),
            (["--table", str(runs["math-sft"]), "--threshold", "0.9", "--mode", "pairs", "--temperature", "0.6"],
             "--table does not go with --threshold, --mode, --temperature"),
            # Options with a value default were let through, typed or not: their values could not tell.
            (["--table", str(runs["math-sft"]), "--batch-size", "8", "--max-new-tokens", "512", "--dtype", "auto"],
             "--table does not go with --batch-size, --max-new-tokens, --dtype"),
            (["--table", str(runs["math-sft"]), "--no-compile", "--seed", "0", "--option-orders", "1"],
             "--table does not go with --no-compile, --seed, --option-orders"),
            (["--table", str(runs["math-sft"]), "--system-prompt", "x", "--device", "cpu"],
             "--table does not go with --system-prompt, --device")):
        assert main(["eval", *argv]) == 2
        assert error in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_an_interrupted_table_is_not_told_to_resume() -> None:
    # Ctrl-C prints resume_hint: a table reads finished files, there is nothing to continue.
    from argparse import Namespace

    from superthoughts_ext.cli import resume_hint

    assert resume_hint("eval", Namespace(table=["a.jsonl"])) == ""
    assert "--resume" in resume_hint("eval", Namespace(table=None))


def test_a_table_file_in_a_folder_that_is_not_writable_is_refused_before_the_table(
        tmp_path: Path, runs: dict[str, Path], capsys: pytest.CaptureFixture[str], unwritable) -> None:
    # write_table replaces the file through a new one in its folder: appending to the existing
    # file was all the check tried, and the write failed after the table had been printed.
    from superthoughts_ext.cli import main

    out = tmp_path / "tables" / "main.csv"
    out.parent.mkdir()
    out.write_text("old\n")
    unwritable(out.parent)
    assert main(["eval", "--table", str(runs["math-sft"]), "--table-output", str(out)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and out.read_text() == "old\n"
    assert f"--table-output {out} cannot be written: Permission denied (the folder {out.parent}" in printed.err


def test_a_run_with_unequal_samples_per_problem_is_refused_naming_it(tmp_path: Path, runs: dict[str, Path]) -> None:
    # st's AMC23 run cut off before problem 1's second sample: its accuracy averaged problem 0's
    # two samples, its ± was over sample 0 alone (none: one pass), and the note said N=2.
    cut = tmp_path / "amc23" / "st-cut.jsonl"
    cut.write_text("".join(runs["amc-st"].read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(ValueError, match=r"table: amc23: .*st-cut.jsonl has 2 samples of some problems and 1 of "
                                         r"others \(problem '1': 1\); .* --resume, or keep its samples below 1"):
        build_table([runs["amc-sft"], cut])
    # Only the problems of every file of the bench count: a problem the others lack is left out.
    extra = tmp_path / "amc23" / "st-extra.jsonl"
    record = {**json.loads(runs["amc-st"].read_text().splitlines()[0]), "id": "9", "reference": "9"}
    extra.write_text(runs["amc-st"].read_text() + json.dumps(record) + "\n")
    assert build_table([runs["amc-sft"], extra]).cells["st [superthoughts 0.999]", "amc23"].accuracy_std == 0.0
