"""Benchmark data files: loading each benchmark from JSON Lines, JSON or CSV (a BOM, raw line
separators inside strings, one-row files), GPQA's shuffled choices, answer formatting,
--limit, and the errors that name the file, line or column. (Prompts and the main flow:
test_evaluation.py, whose tiny tokenizer and fake generate are reused here.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_eval_cli import run_cli  # noqa: E402
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer  # noqa: E402

from superthoughts_ext.eval_data import Problem, get_bench, gpqa_question, load_problems  # noqa: E402
from superthoughts_ext.evaluation import evaluate  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- benchmark loading

@pytest.mark.skipif(not (DATA / "amc23.jsonl").is_file(), reason="shared benchmark data absent")
def test_load_amc23_from_file() -> None:
    problems = load_problems("amc23", DATA / "amc23.jsonl", limit=5)
    assert len(problems) == 5 and problems[0].id == "0" and problems[0].answer == "27"


def test_unknown_bench_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="amc23, gpqa_diamond, math500, olympiadbench"):
        get_bench("gsm8k")


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems("math500", missing)


def test_offline_hub_says_to_pass_data(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="pass --data FILE"):
        load_problems("math500")


def test_rows_without_answer_are_skipped_with_a_count(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    rows = [{"problem": "p1", "answer": "1"}, {"problem": "p2", "answer": ""}, {"problem": "p3", "answer": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 2 row\(s\) without a problem, answer or option \(row 2 \(id 1\), row 3 \(id 2\)\)"):
        problems = load_problems("math500", path)
    assert problems == [Problem("0", "p1", "1")]


def test_missing_column_and_field_override(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"q": "what", "sol": "$4$"}) + "\n")
    with pytest.raises(ValueError, match="columns: q, sol"):
        load_problems("math500", path)
    assert load_problems("math500", path, problem_field="q", answer_field="sol") == [Problem("0", "what", "4")]


def test_gpqa_csv_choices_are_shuffled_deterministically(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.csv"
    header = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    lines = [f"rec{i},Question number {i}?,right{i},wrong{i}a,wrong{i}b,wrong{i}c\n" for i in range(12)]
    path.write_text(header + "".join(lines))
    problems = load_problems("gpqa_diamond", path)
    assert [p.id for p in problems] == [f"rec{i}" for i in range(12)]
    for i, problem in enumerate(problems):
        assert f"{problem.answer}) right{i}\n" in problem.question
        assert "\\boxed{" in problem.question
        # The options travel with the problem, in the letter order the question shows, for grading
        # an answer boxed as an option's text.
        assert problem.options["ABCD".index(problem.answer)] == f"right{i}"
        assert all(f"{letter}) {option}\n" in problem.question for letter, option in zip("ABCD", problem.options))
    assert len({p.answer for p in problems}) > 1  # the correct letter moves around
    again = gpqa_question("Question number 3?", "right3", ["wrong3a", "wrong3b", "wrong3c"])
    assert again == (problems[3].question, problems[3].answer)
    with pytest.raises(ValueError, match="three incorrect"):
        gpqa_question("q", "a", ["b"])


# ---------------------------------------------------------------- data files

def test_dollar_signs_are_stripped_from_single_span_answers_only(tmp_path: Path) -> None:
    import csv

    from superthoughts_ext.eval_data import format_answer, load_problems

    assert format_answer("$4$") == "4" and format_answer(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
    assert format_answer("$x$ and $y$") == "$x$ and $y$" and format_answer("$5") == "$5"
    math = tmp_path / "m.jsonl"
    math.write_text(json.dumps({"problem": "$x^2 = 4$", "answer": "$2$"}) + "\n")
    assert load_problems("math500", math) == [Problem("0", "$x^2 = 4$", "2")]  # the question as written

    gpqa = tmp_path / "gpqa.csv"
    with gpqa.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                         "Incorrect Answer 3"])
        writer.writerow(["r1", "$X$ reacts with $Y$?", "$A_2$ and $B$", "$C$ and $D$", "$E$", "$F$"])
        writer.writerow(["r2", "$Z$", "$G$", "$H$", "$I$", "$J$"])
    first, second = load_problems("gpqa_diamond", gpqa)
    assert first.question.startswith("$X$ reacts with $Y$?\n\n")
    assert f"{first.answer}) $A_2$ and $B$\n" in first.question and ") $E$\n" in first.question + "\n"
    # The correct option keeps its "$" like the others: nothing tells it apart.
    assert second.question.startswith("$Z$\n\n") and f"{second.answer}) $G$\n" in second.question


def test_float_answers_read_as_numbers_math_verify_parses(tmp_path: Path) -> None:
    # JSON numbers load as floats: 27.0 is "27"; a small one must not become "1e-05" (repr), which
    # math-verify cannot parse, so that no prediction would ever match it.
    from superthoughts_ext.eval_data import load_problems
    from superthoughts_ext.grading import is_correct

    data = tmp_path / "floats.jsonl"
    data.write_text("".join(json.dumps({"id": i, "problem": "p", "answer": a}) + "\n"
                            for i, a in enumerate([27.0, 0.25, 1e-05, -3.5e-07])))
    problems = load_problems("amc23", data)
    assert [p.answer for p in problems] == ["27", "0.25", "0.00001", "-0.00000035"]
    assert is_correct("10^{-5}", problems[2].answer, "amc23")


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one_is_refused(tmp_path: Path, limit: int, capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.eval_data import load_problems

    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"problem": p.question, "answer": p.answer}) + "\n" for p in PROBLEMS))
    with pytest.raises(ValueError, match=f"limit must be >= 1 .*got {limit}"):
        load_problems("math500", data, limit=limit)
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="limit must be >= 1"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, limit=limit, progress=False,
                 generate_fn=fake_generate(tokenizer, []))
    assert run_cli(["--model", str(tmp_path), "--bench", "math500", "--data", str(data), "--limit", str(limit)]) == 2
    assert f"limit must be >= 1 (or left out for every problem), got {limit}" in capsys.readouterr().err


def test_data_files_with_a_bom_or_json_lines_under_json(tmp_path: Path) -> None:
    from superthoughts_ext.eval_data import load_problems

    rows = "".join(json.dumps({"id": i, "problem": f"q{i}", "answer": float(i + 1)}) + "\n" for i in range(3))
    (tmp_path / "amc.json").write_text(rows)  # datasets' Dataset.to_json("amc.json") writes JSON Lines
    (tmp_path / "amc.jsonl").write_text("\ufeff" + rows, encoding="utf-8")
    expected = [Problem(str(i), f"q{i}", str(i + 1)) for i in range(3)]
    assert load_problems("amc23", tmp_path / "amc.json") == load_problems("amc23", tmp_path / "amc.jsonl") == expected
    (tmp_path / "g.csv").write_text("\ufeffQuestion,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,"
                                    "Incorrect Answer 3\nq,a,b,c,d\n", encoding="utf-8")
    assert load_problems("gpqa_diamond", tmp_path / "g.csv")[0].question.startswith("q\n\n")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_json_lines_keep_raw_line_separators_inside_strings(tmp_path: Path, separator: str) -> None:
    # JSON allows these raw inside strings and json.dumps(ensure_ascii=False) writes them so;
    # str.splitlines would cut the row in two.
    from superthoughts_ext.eval_data import load_problems

    rows = [{"problem": f"a{separator}b", "answer": "1"}, {"problem": "c", "answer": "2"}]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows)
    assert separator in text
    for name in ("rows.jsonl", "rows.json"):
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
        expected = [Problem("0", f"a{separator}b", "1"), Problem("1", "c", "2")]
        assert load_problems("math500", tmp_path / name) == expected


def test_json_file_of_one_row(tmp_path: Path) -> None:
    from superthoughts_ext.eval_data import load_problems

    # datasets' to_json of a one-row dataset: JSON Lines of one line, i.e. one object.
    (tmp_path / "one.json").write_text(json.dumps({"problem": "q", "answer": "1"}) + "\n")
    assert load_problems("math500", tmp_path / "one.json") == [Problem("0", "q", "1")]


# (file name, content, the error it must raise): each names the file and, where there is one,
# the line.
BROKEN_FILES = [
    # A list and then more: broken JSON, said so with the line of the junk (not JSON Lines errors).
    ("junk.json", '[{"problem": "q", "answer": "1"}]\n]\n', r"junk.json:2: not valid JSON \(Extra data"),
    ("scalar.json", "3\n", r"scalar.json: expected a JSON list of objects"),
    ("bad.jsonl", '{"problem": "q", "answer": "1"}\n{"problem": "q2", "answer": \n', r"bad.jsonl:2: not a JSON object"),
    ("bad.json", '[\n  {"problem": "q", "answer": "1"},\n  {"problem": "q2",}\n]\n', r"bad.json:3: not valid JSON"),
    ("list.jsonl", '["q", "1"]\n', r"list.jsonl:1: expected a JSON object, got list"),
    # Valid JSON that Python's reader refuses: an integer beyond int()'s digit limit.
    ("huge.jsonl", '{"problem": "q", "answer": "1"}\n{"problem": "q", "answer": "1", "id": ' + "9" * 5000 + '}\n',
     r"huge.jsonl:2: JSON that Python cannot read: .*digits"),
    ("huge.json", '[{"problem": "q", "answer": ' + "9" * 5000 + '}]\n', r"huge.json: JSON that Python cannot read"),
]


@pytest.mark.parametrize("name,text,message", BROKEN_FILES, ids=[row[0] for row in BROKEN_FILES])
def test_data_parse_errors_name_the_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    from superthoughts_ext.eval_data import load_problems

    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_problems("math500", tmp_path / name)


def test_gpqa_option_orders_ask_each_question_in_several_shuffles(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.csv"
    header = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    path.write_text(header + "".join(f"rec{i},Question {i}?,right{i},wrong{i}a,wrong{i}b,wrong{i}c\n" for i in range(5)))
    single = load_problems("gpqa_diamond", path)
    problems = load_problems("gpqa_diamond", path, option_orders=4)
    assert [p.id for p in problems[:5]] == ["rec0", "rec0#order1", "rec0#order2", "rec0#order3", "rec1"]
    assert [p.option_order for p in problems[:5]] == [0, 1, 2, 3, 0]
    # Order 0 is the single-order run's problem, id and all: runs of 1 and of 4 orders compare on it.
    assert [p for p in problems if p.option_order == 0] == [
        Problem(p.id, p.question, p.answer, p.options, option_order=0) for p in single]
    assert all(p.option_order == 0 for p in single)
    for i in range(5):
        shuffles = [p for p in problems if p.id.split("#")[0] == f"rec{i}"]
        assert all(p.options["ABCD".index(p.answer)] == f"right{i}" for p in shuffles)
        assert all(sorted(p.options) == sorted([f"right{i}", f"wrong{i}a", f"wrong{i}b", f"wrong{i}c"]) for p in shuffles)
        assert len({p.options for p in shuffles}) == 4  # distinct: a greedy model answers a repeat alike
        assert {p.answer for p in shuffles} == set("ABCD")  # four orders: the answer once under each letter
    assert load_problems("gpqa_diamond", path, option_orders=4) == problems  # reproducible
    assert len(load_problems("gpqa_diamond", path, option_orders=3, limit=2)) == 6  # the limit counts questions


def test_option_orders_need_a_multiple_choice_bench_and_at_least_one(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n")
    assert load_problems("math500", path, option_orders=1) == [Problem("0", "p", "1")]
    with pytest.raises(ValueError, match="math500 has no answer options to shuffle; option orders apply to gpqa_diamond"):
        load_problems("math500", path, option_orders=2)
    for bad in (0, 25):
        with pytest.raises(ValueError, match=rf"option_orders must be in \[1, 24\] \(four options have 24 orders\), "
                                             rf"got {bad}"):
            load_problems("gpqa_diamond", path, option_orders=bad)
    from superthoughts_ext.eval_data import gpqa_option_orders

    every = gpqa_option_orders("q?", "right", ["a", "b", "c"], 24)
    assert len({options for options, _ in every}) == 24
    assert all(options["ABCD".index(letter)] == "right" for options, letter in every)


def test_a_nan_answer_is_a_missing_one(tmp_path: Path) -> None:
    # pandas / CSV exports write a missing cell as NaN: such a row is skipped with the empty
    # ones, not graded against the reference answer "NaN".
    from superthoughts_ext.eval_data import cell_text

    assert cell_text(float("nan")) is None
    path = tmp_path / "m.jsonl"
    path.write_text('{"problem": "p1", "answer": NaN}\n{"problem": "p2", "answer": "4"}\n')
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) without a problem, answer or option \(row 1 \(id 0\)\)"):
        problems = load_problems("math500", path)
    assert problems == [Problem("1", "p2", "4")]


def test_whole_float_cells_read_as_integers_in_lists_too(tmp_path: Path) -> None:
    # A JSON number loads as a float: 27.0 is the answer "27", also inside a list of answers,
    # where no later step turns "1.0" back into "1".
    from superthoughts_ext.eval_data import cell_text

    assert cell_text(27.0) == "27" and cell_text(-3.0) == "-3"
    assert cell_text([1.0, 2.5]) == "1, 2.5"
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"problem": "p", "answer": [1.0, 2.5]}) + "\n")
    assert load_problems("math500", path) == [Problem("0", "p", "1, 2.5")]
