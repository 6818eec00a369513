"""Benchmark data files as other tools leave them: CSV rows with an unquoted comma, pandas'
JSON layouts and scientific notation, chat-message cells, GPQA files without the option columns,
files that are not UTF-8 and `datasets` folders. Each must load right or fail naming the file,
line, row or column. (The common formats and errors: test_eval_data.py.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("transformers")
from test_eval_cli import run_cli  # noqa: E402

from superthoughts_ext.eval_data import Problem, format_answer, load_problems  # noqa: E402
from superthoughts_ext.grading import is_correct  # noqa: E402


def test_csv_row_with_more_fields_than_the_header_names_its_line(tmp_path: Path, capsys) -> None:
    # An unquoted comma: csv.DictReader files the extra field under the key None.
    path = tmp_path / "ragged.csv"
    path.write_text("problem,answer\nWhat is 1+1?,2\nCompute 1,000 + 1,1001\n")
    with pytest.raises(ValueError, match=r"ragged\.csv:3: 3 fields, the header has 2"):
        load_problems("math500", path)
    # --regrade reads the benchmark with the same loader, before any records file.
    assert run_cli(["--regrade", str(tmp_path / "run.jsonl"), "--bench", "math500", "--data", str(path)]) == 2
    assert "ragged.csv:3: 3 fields, the header has 2" in capsys.readouterr().err


def test_pandas_column_layout_is_refused_with_the_orient_to_use(tmp_path: Path) -> None:
    # pd.DataFrame({"problem": [...], "answer": [...]}).to_json(path): one object of columns.
    path = tmp_path / "cols.json"
    path.write_text(json.dumps({"problem": {"0": "1+1?", "1": "2+2?"}, "answer": {"0": "2", "1": "4"}}))
    with pytest.raises(ValueError, match=r"cols\.json: a JSON object of objects .*orient='records', lines=True"):
        load_problems("math500", path)
    path.write_text(json.dumps({"problem": ["1+1?", "2+2?"], "answer": ["2", "4"]}))  # a dict of columns
    with pytest.raises(ValueError, match=r"cols\.json: a JSON object of lists .*orient='records', lines=True"):
        load_problems("math500", path)
    # One row whose cells are plain values still reads as one problem.
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}))
    assert load_problems("math500", path) == [Problem("0", "1+1?", "2")]


@pytest.mark.parametrize("cell,kind", [({"role": "user", "content": "1+1?"}, "an object"),
                                       ([{"role": "user", "content": "1+1?"}], "a list of objects")],
                         ids=["object", "messages"])
def test_object_cells_are_refused_naming_row_and_column(tmp_path: Path, cell: object, kind: str) -> None:
    path = tmp_path / "chat.jsonl"
    rows = [{"problem": "2+2?", "answer": "4"}, {"problem": cell, "answer": "2"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=rf"math500: row 2, column 'problem': {kind}, not text"):
        load_problems("math500", path)
    # A list of plain values is still text: its items joined.
    path.write_text(json.dumps({"problem": "roots?", "answer": ["1", "2"]}) + "\n")
    assert load_problems("math500", path)[0].answer == "1, 2"


def test_scientific_notation_answers_read_like_float_cells(tmp_path: Path) -> None:
    # pandas' to_csv writes the float 1e-05 as "1e-05"; the JSON number reads as "0.00001".
    csv_path, jsonl_path = tmp_path / "amc.csv", tmp_path / "amc.jsonl"
    csv_path.write_text("id,problem,answer\n0,p,27.0\n1,q,1e-05\n2,r,-3.5E-07\n3,s,2.5e+1\n")
    jsonl_path.write_text("".join(json.dumps({"id": i, "problem": p, "answer": a}) + "\n"
                                  for i, (p, a) in enumerate(zip("pqrs", [27.0, 1e-05, -3.5e-07, 25.0]))))
    from_csv, from_jsonl = load_problems("amc23", csv_path), load_problems("amc23", jsonl_path)
    assert [p.answer for p in from_csv][1:] == [p.answer for p in from_jsonl][1:] == ["0.00001", "-0.00000035", "25"]
    assert is_correct("0.00001", from_csv[1].answer, "amc23") and is_correct("10^{-5}", from_csv[1].answer, "amc23")
    # Only a whole number in that notation: other text stays as written.
    assert format_answer("2e") == "2e" and format_answer("3e^{2}") == "3e^{2}" and format_answer("e5") == "e5"


def test_gpqa_without_option_columns_names_them(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.jsonl"
    path.write_text(json.dumps({"Question": "q?", "Correct Answer": "a", "choices": ["b", "c", "d"]}) + "\n")
    with pytest.raises(ValueError, match=r"gpqa_diamond: no Incorrect Answer 1, Incorrect Answer 2, Incorrect Answer 3 "
                                         r"columns in the data; columns: Correct Answer, Question, choices"):
        load_problems("gpqa_diamond", path)
    # With the columns there, a row missing one option is skipped as such.
    header = {"Question": "q?", "Correct Answer": "a", "Incorrect Answer 1": "b", "Incorrect Answer 2": "c"}
    path.write_text(json.dumps({**header, "Incorrect Answer 3": "d"}) + "\n"
                    + json.dumps({**header, "Incorrect Answer 3": ""}) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) without a problem, answer or option \(row 2 \(id 1\)\)"):
        assert len(load_problems("gpqa_diamond", path)) == 1


@pytest.mark.parametrize("name", ["latin1.jsonl", "latin1.json", "latin1.csv"])
def test_non_utf8_data_names_the_file_and_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".csv"):
        text = "problem,answer\nq,1\ncafé,2\n"
    else:
        text = json.dumps({"problem": "q", "answer": "1"}) + "\n" + json.dumps({"problem": "café", "answer": "2"},
                                                                              ensure_ascii=False) + "\n"
    line = 3 if name.endswith(".csv") else 2
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("latin-1"))  # the BOM does not shift the line
    with pytest.raises(ValueError, match=rf"{name}:{line}: not UTF-8 text \(byte 0xe9\)"):
        load_problems("math500", path)


def test_data_directory_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is a directory .*Dataset\.to_json\(path\)"):
        load_problems("math500", tmp_path)
    # A hub dataset's data/ folder: the split's file is named, not a save_to_disk folder guessed.
    (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"is a directory, holding test-00000-of-00001\.parquet; --data takes one "
                                         r"file .*: pass it, e\.g\. .*/test-00000-of-00001\.parquet$"):
        load_problems("math500", tmp_path)


def test_a_chat_template_refusing_the_system_message_is_named() -> None:
    from superthoughts_ext.eval_data import build_prompt

    class Tokenizer:  # a Gemma-style template: raise_exception() on a system turn
        chat_template = "{{ raise_exception('System role not supported') }}"

        def apply_chat_template(self, messages, **kwargs):
            from jinja2 import TemplateError
            raise TemplateError("System role not supported")

    with pytest.raises(ValueError, match=r"refuses the prompt's messages \(System role not supported\); a template "
                                         r"without a system turn needs --template-system-prompt"):
        build_prompt(Tokenizer(), "1+1?")


def test_gpqa_rows_whose_options_repeat_are_skipped(tmp_path: Path) -> None:
    # Options ('X', 'Y', 'X', 'Z') with reference A graded the right answer wrong, and 24 orders gave 12.
    header = {"Question": "q?", "Correct Answer": "X", "Incorrect Answer 2": "Y", "Incorrect Answer 3": "Z"}
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({**header, "Incorrect Answer 1": "W"}) + "\n"
                    + json.dumps({**header, "Question": "q2?", "Incorrect Answer 1": " X "}) + "\n")
    with pytest.warns(UserWarning, match=r"gpqa_diamond: skipped 1 row\(s\) whose options repeat one another \(row 2 \(id 1\)\)"):
        problems = load_problems("gpqa_diamond", path, option_orders=24)
    assert len(problems) == 24 and len({p.options for p in problems}) == 24


def test_a_whole_decimal_answer_reads_alike_from_csv_and_json(tmp_path: Path) -> None:
    # A float cell 7.0 gave "7" from JSON and "7.0" from a CSV export: compare then refused the runs.
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "a1", "problem": "3 + 4?", "answer": 7.0}) + "\n")
    (tmp_path / "a.csv").write_text("id,problem,answer\na1,3 + 4?,7.0\n")
    assert load_problems("amc23", tmp_path / "a.jsonl") == load_problems("amc23", tmp_path / "a.csv")
    assert load_problems("amc23", tmp_path / "a.csv")[0].answer == "7"


@pytest.mark.parametrize("row, column", [({"problem": "half \ud83d emoji", "answer": "1"}, "problem"),
                                         ({"problem": "q", "answer": "x\udc00"}, "answer")])
def test_an_unpaired_surrogate_names_row_and_column(tmp_path: Path, row: dict, column: str) -> None:
    # A TypeError from the tokenizer, or (in an answer) a failed records write after decoding.
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"problem": "fine", "answer": "2"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"math500: row 2, column '{column}' holds an unpaired UTF-16 surrogate"):
        load_problems("math500", path)


def test_a_json_array_under_a_jsonl_name_says_where_arrays_go(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('[\n  {"problem": "p", "answer": "1"}\n]\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:1: not a JSON object .*; a JSON array is read from a \.json file"):
        load_problems("math500", path)
    path.write_text('[{"problem": "p", "answer": "1"}]\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:1: expected a JSON object, got list; a JSON array is read"):
        load_problems("math500", path)
