"""Parquet files as training, held-out and benchmark data (parquet_rows.py): the rows a JSONL copy
gives, named by their 0-based row index, read a record batch at a time with only the columns used;
cells that are not text, missing columns, files that are no parquet and a missing pyarrow, each
refused naming what is wrong. (Chat-message rows, --messages-field: test_data_messages.py.)
"""
from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pa = pytest.importorskip("pyarrow", reason="pyarrow writes the parquet files these tests read (pip install pyarrow)")
import pyarrow.parquet as pq  # noqa: E402
from test_data_jsonl import word_tokenizer, write_jsonl  # noqa: E402

from superthoughts_ext import parquet_rows, train_data  # noqa: E402
from superthoughts_ext.data_jsonl import load_parquet_examples  # noqa: E402
from superthoughts_ext.eval_data import load_problems  # noqa: E402
from superthoughts_ext.eval_files import read_rows  # noqa: E402
from superthoughts_ext.train_run_settings import data_digest  # noqa: E402

ROWS = [{"problem": "what is two", "solution": "so four"}, {"problem": "what", "solution": "four"},
        {"problem": "two", "solution": "so two is four"}]


def write_parquet(path: Path, rows: list[dict] | pa.Table) -> Path:
    pq.write_table(rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows), path)
    return path


def load(path: Path, **kwargs):
    return train_data.load_examples(path, word_tokenizer(), problem_field=kwargs.pop("problem_field", "problem"),
                                    solution_field="solution", system_prompt=None, max_length=None, **kwargs)


def test_parquet_rows_tokenise_as_their_jsonl_copy(tmp_path: Path) -> None:
    # Another column (a list of generations, as OpenR1-Math keeps) is not read.
    table = [{**row, "generations": [row["solution"], "x"]} for row in ROWS]
    parquet = load(write_parquet(tmp_path / "d.parquet", table))
    jsonl = load(write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert list(parquet) == list(jsonl)
    assert parquet.unit == "row index" and parquet.numbers == [0, 1, 2]  # 0-based, as Dataset[i]
    assert jsonl.numbers == [1, 2, 3]  # lines


def test_parquet_is_known_by_its_bytes_under_any_name(tmp_path: Path) -> None:
    # A hub cache blob has no suffix; the same file as a .parquet reads alike.
    path = write_parquet(tmp_path / "blob", ROWS)
    assert parquet_rows.is_parquet(path) and not parquet_rows.is_parquet(write_jsonl(tmp_path / "d.jsonl", ROWS))
    assert len(load(path)) == 3


def test_rows_across_record_batches_keep_their_index(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parquet_rows, "BATCH_ROWS", 2)
    rows = [{"problem": "what", "solution": "four" if i != 3 else " "} for i in range(7)]
    with pytest.warns(UserWarning, match=r"dropped 1 row\(s\) with an empty 'solution' \(row indices \[3\]\)"):
        examples = load(write_parquet(tmp_path / "d.parquet", rows))
    assert examples.numbers == [0, 1, 2, 4, 5, 6]


def test_only_the_columns_read_are_decoded(tmp_path: Path, monkeypatch) -> None:
    seen = []
    real = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    load(write_parquet(tmp_path / "d.parquet", [{**row, "other": "x" * 1000} for row in ROWS]))
    assert seen == [["problem", "solution"]]


@pytest.mark.parametrize(("column", "first", "kind"), [
    (["four", "four", None], 2, "NoneType"), ([["so"], ["four"], ["x"]], 0, "list"),
    ([{"text": "four"}] * 3, 0, "dict"), ([b"four"] * 3, 0, "bytes"),
], ids=["null", "list", "struct", "binary"])
def test_a_cell_that_is_not_text_names_its_row_index_and_column(tmp_path: Path, column, first: int,
                                                                kind: str) -> None:
    path = write_parquet(tmp_path / "d.parquet", pa.table({"problem": ["what"] * 3, "solution": pa.array(column)}))
    hint = r" \(a binary parquet column" if kind == "bytes" else ""
    with pytest.raises(ValueError, match=rf"d\.parquet: row index {first}: field 'solution' is {kind}, not a "
                                         rf"string{hint}"):
        load(path)


def test_missing_column_names_the_files_columns(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", [{"question": "what", "answer": "four"}])
    with pytest.raises(ValueError, match=r"d\.parquet: no column 'problem'; the file has 'question', 'answer' "
                                         r"\(--problem-field / --solution-field name others\)"):
        load(path)
    tokenised = write_parquet(tmp_path / "t.parquet", [{"prompt_ids": [1, 2], "response_ids": [2]}])
    with pytest.raises(ValueError, match=r"tokenised rows .* are read from memory only"):
        load(tokenised)


def test_drops_and_progress_name_row_indices(tmp_path: Path, capsys) -> None:
    path = write_parquet(tmp_path / "d.parquet", ROWS)
    with pytest.warns(UserWarning, match=r"d\.parquet: dropped 2 row\(s\) longer than max_length=9 tokens "
                                         r"\(row indices \[0, 2\]\)"):
        examples = load_parquet_examples(path, word_tokenizer(), max_length=9, progress=True)
    assert examples.numbers == [1]
    err = capsys.readouterr().err
    assert f"tokenizing {path}: 100%" in err and "3/3 [" in err  # the total from the file's footer


@pytest.mark.parametrize(("content", "message"), [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n", r"Git LFS pointer.*git lfs pull"),
    (b"PAR1\x15\x04\x15\xee\xff\x00\n" * 4, r"not a parquet file pyarrow can read \(.*magic bytes"),
], ids=["lfs-pointer", "garbage"])
def test_a_parquet_name_that_holds_no_parquet_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "train-00000-of-00001.parquet"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"train-00000-of-00001\.parquet: .*{message}"):
        load(path)
    with pytest.raises(ValueError, match=message):
        read_rows(path)


@pytest.fixture
def without_pyarrow(monkeypatch):
    real_import = builtins.__import__

    def refusing(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refusing)


def test_missing_pyarrow_says_how_to_install_it_before_tokenising(tmp_path: Path, without_pyarrow) -> None:
    path = write_parquet(tmp_path / "val.parquet", ROWS)  # written before pyarrow "goes"
    with pytest.raises(ValueError, match=r"val\.parquet: reading a parquet file needs pyarrow, which is not "
                                         r"installed: pip install pyarrow"):
        train_data.check_data_files(path, held_out=True)  # what train checks for --eval-data up front
    with pytest.raises(ValueError, match=r"pip install pyarrow"):
        load_problems("math500", path)
    assert data_digest(path) is None  # not compared on resume: loading says why


def test_held_out_parquet_is_named_as_eval_data(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "val.parquet", [{"problem": "what", "solution": ""}])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"train: no evaluation examples in .*val\.parquet"
                                                                     r": every row was dropped.*\(row indices \[0\]\)"):
        load(path, held_out=True)


def test_held_out_parquet_rows_get_the_layouts_of_their_jsonl_copy(tmp_path: Path) -> None:
    # eval_row seeds a held-out row's pad-split layout: row index + 1, as its line in a JSONL copy.
    parquet = train_data.EvalRows(load(write_parquet(tmp_path / "d.parquet", ROWS)))
    jsonl = train_data.EvalRows(load(write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert [row["eval_row"] for row in parquet] == [row["eval_row"] for row in jsonl] == [1, 2, 3]


def test_digest_of_parquet_rows_is_that_of_the_same_rows_in_memory(tmp_path: Path) -> None:
    parquet = write_parquet(tmp_path / "d.parquet", ROWS)
    jsonl = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert data_digest(parquet) == data_digest(ROWS) == data_digest(jsonl)
    assert data_digest(write_parquet(tmp_path / "e.parquet", ROWS[:2])) != data_digest(parquet)


def test_eval_reads_a_parquet_bench(tmp_path: Path) -> None:
    # A float answer column (pandas writes integers so when a cell is missing) reads as the number.
    rows = [{"problem": "1+1", "answer": 2.0, "unique_id": "a"}, {"problem": "2+2", "answer": 4.0, "unique_id": "b"}]
    path = write_parquet(tmp_path / "math500.parquet", rows)
    assert read_rows(path) == rows
    assert [(p.id, p.question, p.answer) for p in load_problems("math500", path)] == [("a", "1+1", "2"),
                                                                                     ("b", "2+2", "4")]


@pytest.mark.parametrize(("cell", "kind"), [([{"role": "user", "content": "1+1"}], "a list of objects"),
                                            (b"1+1", "bytes")], ids=["messages", "binary"])
def test_eval_refuses_a_parquet_cell_that_is_not_text(tmp_path: Path, cell, kind: str) -> None:
    table = pa.table({"problem": pa.array([cell, cell]), "answer": pa.array(["2", "2"])})
    path = write_parquet(tmp_path / "math500.parquet", table)
    with pytest.raises(ValueError, match=rf"math500: row 1, column 'problem': {kind}, not text"):
        load_problems("math500", path)


def test_eval_rows_of_a_parquet_bench_are_json_values(tmp_path: Path) -> None:
    # Records written from these rows must be JSON: the cells are plain Python values.
    rows = [{"problem": "p", "answer": "a", "choices": ["x", "y"], "meta": {"level": 3}}]
    assert json.loads(json.dumps(read_rows(write_parquet(tmp_path / "b.parquet", rows)))) == rows


def test_eval_knows_a_parquet_bench_by_its_bytes(tmp_path: Path) -> None:
    # A hub cache blob has no suffix; train read it already, eval named its format '' unsupported.
    rows = [{"problem": "1+1", "answer": "2", "unique_id": "a"}]
    assert read_rows(write_parquet(tmp_path / "blob", rows)) == rows
    with pytest.raises(ValueError, match=r"unsupported data format ''"):
        read_rows(write_jsonl(tmp_path / "rows", rows))  # no suffix and no parquet: still refused
