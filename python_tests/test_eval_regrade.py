"""Re-grading finished runs (`superthoughts eval --regrade`): the stored outputs graded again
with the current grader, records and summary rewritten in place, nothing decoded. (Runs are
made with test_evaluation.py's tiny tokenizer and fake generate; the CLI helpers are
test_eval_cli.py's.)
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_eval_cli import run_cli  # noqa: E402
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl  # noqa: E402

from superthoughts_ext.evaluation import summary_path  # noqa: E402
from superthoughts_ext.eval_data import load_problems  # noqa: E402
from superthoughts_ext.eval_regrade import format_regrade, regrade_runs  # noqa: E402
from superthoughts_ext.evaluation import evaluate  # noqa: E402

MIDPOINT = ("Find the midpoint of the line segment between $(-7,0)$ and $(5,12)$. "
            "Express your answer as an ordered pair.")


def write_data(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def math_data(path: Path, answers: dict[str, str] | None = None) -> Path:
    """PROBLEMS as a math500 data file; ``answers`` replaces some references (by id)."""
    return write_data(path, [{"id": p.id, "problem": p.question, "answer": (answers or {}).get(p.id, p.answer)}
                             for p in PROBLEMS])


def evaluated_run(tmp_path: Path) -> Path:
    """A run of the fake model on PROBLEMS (5 of 7 correct, one without a box), with its summary."""
    tokenizer = make_tokenizer()
    out = tmp_path / "runs" / "st.jsonl"
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="superthoughts", threshold=0.9,
             batch_size=3, output_jsonl=out, progress=False, generate_fn=fake_generate(tokenizer, []),
             metadata={"model": "fake"})
    return out


# The questions of the problems the hand-written records below answer (a record's prompt holds its question).
QUESTIONS = {**{p.id: p.question for p in PROBLEMS}, "mid": MIDPOINT, "sum": "what is 1 + 2"}


def hand_record(problem_id: str, output: str, extracted: str | None, reference: str, correct: bool,
                bench: str = "math500", question: str | None = None) -> dict:
    """A record as an older `evaluate` wrote it (the keys regrade does not read included)."""
    prompt = f"<|im_start|>user\n{QUESTIONS.get(problem_id, '') if question is None else question}<|im_end|>\n"
    return {"index": 0, "id": problem_id, "prompt": prompt, "output": output, "extracted": extracted,
            "reference": reference, "correct": correct, "tokens": 9, "steps": 5, "pair_steps": 4,
            "hit_limit": False, "time": 0.25, "bench": bench, "mode": "superthoughts", "threshold": 0.9}


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def regrade(paths: list[Path], data: Path, bench: str = "math500") -> list:
    return regrade_runs(paths, bench, load_problems(bench, data), progress=False)


# ---------------------------------------------------------------- what changes

def test_regrade_of_an_untouched_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl")
    records, summary = out.read_bytes(), summary_path(out).read_bytes()
    mtime = out.stat().st_mtime_ns
    [result] = regrade([out], data)
    assert result.changed_ids == [] and result.references_changed == 0 and not result.summary_updated
    assert result.accuracy_before == result.accuracy_after == pytest.approx(5 / 7) and result.n == 7
    assert out.read_bytes() == records and summary_path(out).read_bytes() == summary
    assert out.stat().st_mtime_ns == mtime  # not even rewritten
    assert run_cli(["--regrade", str(out), "--bench", "math500", "--data", str(data), "--no-progress"]) == 0
    assert capsys.readouterr().out == f"{out}: accuracy 0.7143 -> 0.7143 (n=7; 0 records changed; " \
                                      "references changed: 0)\n"
    assert out.read_bytes() == records and summary_path(out).read_bytes() == summary


def test_tampered_grades_are_restored_and_the_summary_recomputed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl")
    original, original_summary = out.read_bytes(), json.loads(summary_path(out).read_text())
    lines = out.read_text().splitlines()
    tampered = []
    for line in lines:
        record = json.loads(line)
        if record["id"] in ("p12", "p91"):  # one right answer marked wrong, one wrong marked right
            record["correct"] = not record["correct"]
        if record["id"] == "p81":  # the output without a box
            record["extracted"] = "9"
        tampered.append(record)
    write_records(out, tampered)
    os.chmod(out, 0o644)
    stale = {**original_summary, "n_correct": 5, "accuracy": 5 / 7, "n_no_box": 0}
    summary_path(out).write_text(json.dumps(stale, indent=2) + "\n")

    assert run_cli(["--regrade", str(out), "--bench", "math500", "--data", str(data), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: accuracy 0.7143 -> 0.7143 (n=7; 3 records changed: ids [")
    assert all(i in printed for i in ("p12", "p91", "p81")) and "references changed: 0)" in printed
    assert out.read_bytes() == original  # every key and line as evaluate wrote them
    assert json.loads(summary_path(out).read_text()) == original_summary  # timings untouched
    assert os.stat(out).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in out.parent.iterdir()) == ["st.jsonl", "st.summary.json"]  # no temp file left


def test_the_summary_an_older_version_named_is_regraded_in_place(tmp_path: Path) -> None:
    # Versions before kept st.json's summary in st.summary.json (st.jsonl's name): still its summary.
    out = evaluated_run(tmp_path).rename(tmp_path / "runs" / "st.json")
    legacy = summary_path(out).parent / "st.summary.json"
    summary = json.loads(legacy.read_text())
    legacy.write_text(json.dumps({**summary, "records": str(out), "n_correct": 0, "accuracy": 0.0}))
    [result] = regrade([out], math_data(tmp_path / "math.jsonl"))
    assert result.summary_updated and json.loads(legacy.read_text())["n_correct"] == 5
    assert not summary_path(out).exists()  # updated where it is


def test_a_changed_reference_is_counted_and_regraded(tmp_path: Path) -> None:
    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl", answers={"p91": "11"})  # the data's fixed answer
    [result] = regrade([out], data)
    assert result.changed_ids == ["p91"] and result.references_changed == 1 and result.summary_updated
    assert result.accuracy_after == pytest.approx(6 / 7)
    record = next(r for r in read_jsonl(out) if r["id"] == "p91")
    assert record["reference"] == "11" and record["correct"] is True
    saved = json.loads(summary_path(out).read_text())
    assert saved["n_correct"] == 6 and saved["accuracy"] == pytest.approx(6 / 7) and saved["n"] == 7
    assert "references changed: 1" in format_regrade(result)


def test_a_run_an_evaluation_is_writing_is_not_regraded(tmp_path: Path) -> None:
    # regrade replaces the records file whole: an evaluation still appending to it would lose
    # every record appended after the regrade read the file.
    from superthoughts_ext.run_info import output_lock

    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl", answers={"p91": "11"})  # a regrade would rewrite p91
    records = out.read_bytes()
    with output_lock(out, "evaluate"):
        with pytest.raises(ValueError, match=r"regrade: .*st\.jsonl' is being written by"):
            regrade([out], data)
    assert out.read_bytes() == records
    results = regrade([out, out], data)  # free again; a file named twice takes its lock once
    assert [result.changed_ids for result in results] == [["p91"], ["p91"]]
    assert next(r for r in read_jsonl(out) if r["id"] == "p91")["correct"] is True


def test_a_run_written_through_a_symlink_is_not_regraded_by_its_target(tmp_path: Path) -> None:
    # The lock went beside the path as given: an evaluation writing latest.jsonl (a link to
    # runs/st.jsonl) locked .latest.jsonl.lock, and a regrade of runs/st.jsonl did not see it.
    from superthoughts_ext.run_info import output_lock

    out = evaluated_run(tmp_path)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(out)
    data = math_data(tmp_path / "math.jsonl", answers={"p91": "11"})
    records = out.read_bytes()
    for held, regraded in ((link, out), (out, link)):
        with output_lock(held, "evaluate"):
            with pytest.raises(ValueError, match=f"regrade: '{re.escape(str(regraded))}' is being written by"):
                regrade([regraded], data)
    assert out.read_bytes() == records and sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.jsonl", "math.jsonl", "runs"]


def test_a_missing_file_is_named_and_its_folder_is_not_made(tmp_path: Path) -> None:
    # Taking the lock made the folder of a mistyped path (the lock file beside the records).
    data = math_data(tmp_path / "math.jsonl")
    with pytest.raises(FileNotFoundError, match="typo"):
        regrade([tmp_path / "typo" / "st.jsonl"], data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["math.jsonl"]


def test_an_inequality_for_a_point_question_flips_to_wrong(tmp_path: Path) -> None:
    data = write_data(tmp_path / "math.jsonl", [{"id": "mid", "problem": MIDPOINT, "answer": "(-1,6)"},
                                                {"id": "sum", "problem": "what is 1 + 2", "answer": "3"}])
    # An older grader read "-1<x<6" as the interval (-1, 6), equal to the reference pair.
    out = write_records(tmp_path / "old.jsonl", [
        hand_record("mid", "so the answer is \\boxed{-1<x<6}", "-1<x<6", "(-1,6)", True),
        hand_record("sum", "\\boxed{3}", "3", "3", True),
    ])
    [result] = regrade([out], data)
    assert result.changed_ids == ["mid"] and (result.accuracy_before, result.accuracy_after) == (1.0, 0.5)
    records = read_jsonl(out)
    assert [r["correct"] for r in records] == [False, True]
    assert list(records[0]) == list(hand_record("mid", "", None, "", False))  # keys in their places
    assert records[0]["time"] == 0.25 and records[0]["extracted"] == "-1<x<6"
    assert not summary_path(out).exists()  # a run without a summary gets none


def test_gpqa_answer_boxed_as_an_option_text(tmp_path: Path) -> None:
    data = write_data(tmp_path / "gpqa.jsonl", [
        {"Record ID": "q1", "Question": "what is 3 + 4", "Correct Answer": "7", "Incorrect Answer 1": "3",
         "Incorrect Answer 2": "12", "Incorrect Answer 3": "5"}])
    [problem] = load_problems("gpqa_diamond", data)
    # A grader that knew only letters found no answer in "\boxed{7}".
    out = write_records(tmp_path / "gpqa-run.jsonl", [
        hand_record("q1", "so \\boxed{7}", None, problem.answer, False, bench="gpqa_diamond", question=problem.question)])
    [result] = regrade([out], data, bench="gpqa_diamond")
    [record] = read_jsonl(out)
    assert record["extracted"] == problem.answer and record["correct"] is True
    assert result.accuracy_after == 1.0 and result.changed_ids == ["q1"]


# ---------------------------------------------------------------- what is refused

@pytest.mark.parametrize("line, message", [
    (json.dumps(hand_record("p99", "\\boxed{1}", "1", "1", True)), "problem 'p99' is not among the 7 problems"),
    (json.dumps(hand_record("p12", "\\boxed{3}", "3", "3", True, bench="amc23")),
     "problem 'p12' was evaluated on 'amc23', not 'math500'"),
    (json.dumps(hand_record("p12", "\\boxed{3}", "3", "3", True)), "problem 'p12' repeats line 1"),
    ('{"id": "p34", "output": "\\\\boxed{7}", "bench": "math500"', "not a JSON record"),
    ('{"id": "p34", "bench": "math500", "correct": true}', "record lacks output, extracted"),
    # The accuracy before is read from "extracted": without it the second file raised a KeyError
    # after the first had been rewritten.
    ('{"id": "p34", "output": "\\\\boxed{7}", "bench": "math500", "correct": true}', "record lacks extracted"),
])
def test_bad_records_are_refused_before_any_file_changes(tmp_path: Path, line: str, message: str) -> None:
    good = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl")
    write_records(good, [{**r, "correct": not r["correct"]} for r in read_jsonl(good)])
    before = good.read_bytes()
    bad = tmp_path / "bad.jsonl"
    first = hand_record("p12", "\\boxed{3}", "3", "3", False)
    bad.write_text(json.dumps(first) + "\n" + line + "\n" + json.dumps(first | {"id": "p34"}) + "\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}:2: .*{re.escape(message)}"):
        regrade([good, bad], data)
    assert good.read_bytes() == before  # checked first, then graded: the good file waits too


def test_a_torn_last_line_asks_for_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl")
    text = out.read_text()
    out.write_text(text + text.splitlines()[0][:40])  # killed mid-write
    argv = ["--regrade", str(out), "--bench", "math500", "--data", str(data), "--no-progress"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"superthoughts eval: error: {out}:8: unfinished record" in err and "--resume" in err


def test_a_line_torn_inside_a_character_asks_for_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Records keep non-ASCII text as is: a kill mid-write can cut the last line inside "π", which
    # was refused as a file that is no UTF-8 ("save the file as UTF-8"), --resume failing on it too.
    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl")
    out.write_bytes(out.read_bytes() + '{"id": "p00", "output": "so π'.encode()[:-1])
    argv = ["--regrade", str(out), "--bench", "math500", "--data", str(data), "--no-progress"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"superthoughts eval: error: {out}:8: unfinished record" in err and "--resume" in err


def test_a_record_holding_a_lone_surrogate_is_regraded(tmp_path: Path) -> None:
    # A file another tool wrote, its lone surrogate escaped ("\\ud800", as json.dumps does by
    # default): rewritten as is, UTF-8 could not encode it and the rewrite failed.
    data = write_data(tmp_path / "sum.jsonl", [{"id": "sum", "problem": "what is 1 + 2", "answer": "3"}])
    out = tmp_path / "st.jsonl"
    out.write_text(json.dumps(hand_record("sum", "so \\boxed{3}\ud800", None, "3", False)) + "\n", encoding="utf-8")
    [result] = regrade([out], data)
    assert result.changed_ids == ["sum"] and result.accuracy_after == 1.0
    [record] = read_jsonl(out)
    assert record["output"] == "so \\boxed{3}\ud800" and record["correct"] is True


def test_a_summary_of_other_records_is_refused(tmp_path: Path) -> None:
    out = evaluated_run(tmp_path)
    write_records(out, read_jsonl(out)[:3])  # the summary still counts 7
    with pytest.raises(ValueError, match="counts n=7 records, .* holds 3"):
        regrade([out], math_data(tmp_path / "math.jsonl"))


@pytest.mark.parametrize("extra, option", [
    (["--model", "ckpt"], "--model"), (["--compare", "a.jsonl", "b.jsonl"], "--compare"),
    (["--resume"], "--resume"), (["--threshold", "0.9"], "--threshold"), (["--plot", "x.png"], "--plot"),
    # Options with a value default, typed (at their default too): they were let through, ignored.
    (["--batch-size", "8"], "--batch-size"), (["--max-new-tokens", "512"], "--max-new-tokens"),
    (["--dtype", "auto"], "--dtype"), (["--no-compile"], "--no-compile"), (["--temperature", "0"], "--temperature"),
    (["--template-system-prompt"], "--template-system-prompt"), (["--device", "cpu"], "--device"),
])
def test_regrade_conflicting_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                     option: str) -> None:
    out = evaluated_run(tmp_path)
    before = out.read_bytes()
    argv = ["--regrade", str(out), "--bench", "math500", "--data", str(math_data(tmp_path / "m.jsonl"))]
    assert run_cli(argv + extra) == 2
    assert f"superthoughts eval: error: --regrade does not go with {option}" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_regrade_needs_the_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A file that is not there is named as such, with or without --bench (it was taken for one
    # whose records do not name their benchmark); so is one that is not text.
    for extra in ([], ["--bench", "math500", "--data", str(math_data(tmp_path / "m.jsonl"))]):
        assert run_cli(["--regrade", str(tmp_path / "run.jsonl"), *extra]) == 2
        assert "evaluation results not found" in capsys.readouterr().err
    (tmp_path / "image.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xef\xff")
    assert run_cli(["--regrade", str(tmp_path / "image.jsonl")]) == 2
    assert "image.jsonl:1: not UTF-8 text (byte 0x89)" in capsys.readouterr().err
    (tmp_path / "run.jsonl").write_text('{"id": "0", "output": "4"}\n')
    assert run_cli(["--regrade", str(tmp_path / "run.jsonl")]) == 2
    assert "--regrade needs --bench" in capsys.readouterr().err


def test_regrade_through_a_symlink_rewrites_the_run_it_names(tmp_path: Path) -> None:
    out = evaluated_run(tmp_path)
    data = math_data(tmp_path / "math.jsonl")
    write_records(out, [{**r, "correct": not r["correct"]} for r in read_jsonl(out)])
    latest = tmp_path / "latest.jsonl"
    latest.symlink_to(out)
    os.chmod(out, 0o640)
    [result] = regrade([latest], data)
    assert result.accuracy_after == pytest.approx(5 / 7)
    assert latest.is_symlink() and latest.resolve() == out.resolve()  # the link still names the run
    assert [r["correct"] for r in read_jsonl(out)].count(True) == 5
    assert os.stat(out).st_mode & 0o777 == 0o640  # the run's permissions kept


def test_regrade_takes_bench_and_data_from_the_records_unless_given(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.eval_regrade import stored_settings

    data = math_data(tmp_path / "math.jsonl")
    record = hand_record(PROBLEMS[0].id, "\\boxed{3}", "3", PROBLEMS[0].answer, True)
    a = write_records(tmp_path / "a.jsonl", [{**record, "data": str(data)}])
    b = write_records(tmp_path / "b.jsonl", [{**record, "data": "/elsewhere"}])
    assert stored_settings([a]) == {"bench": "math500", "data": str(data), "option_orders": 1}
    with pytest.raises(ValueError, match=r"a.jsonl:1 has data .*, .*b.jsonl:1 has '/elsewhere'; regrade runs of one "
                                         r"data at a time; or give --data"):
        stored_settings([a, b])
    assert run_cli(["--regrade", str(a), "--no-progress"]) == 0  # no hub: the records' own data file
    assert "accuracy 1.0000 -> 1.0000" in capsys.readouterr().out
    assert run_cli(["--regrade", str(a), str(b), "--no-progress", "--data", str(data)]) == 0  # given: no conflict
    # Runs of two benches: --bench cannot reconcile them (each record is graded on its own
    # bench), so the message offers no such option.
    amc = write_records(tmp_path / "c.jsonl", [{**record, "bench": "amc23", "data": str(data)}])
    with pytest.raises(ValueError, match=r"has 'amc23'; regrade runs of one bench at a time$"):
        stored_settings([a, amc])
