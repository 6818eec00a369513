"""Training and held-out data in several files (data_files.py): a directory of shards as Hugging
Face downloads them, or files named one by one. The examples, numbers, held-out layouts and resume
digest of the rows all files hold one after the other; rows named by their file and their line or
row index there; the folders a run must not read (several splits, missing shards, JSONL beside
parquet, a file twice, no data at all) refused naming what is wrong; one step of a run from the CLI.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")
from test_data_jsonl import word_tokenizer, write_jsonl  # noqa: E402

from superthoughts_ext import cli, train_data  # noqa: E402
from superthoughts_ext.data_files import data_files  # noqa: E402
from superthoughts_ext.train import options_from_args  # noqa: E402
from superthoughts_ext.train_run_settings import data_digest  # noqa: E402
from superthoughts_ext.train_utils import check_vocab  # noqa: E402

ROWS = [{"problem": "what is two", "solution": "so four"}, {"problem": "what", "solution": "four"},
        {"problem": "two", "solution": "so two is four"}, {"problem": "what two", "solution": "two"},
        {"problem": "what is", "solution": "so so four"}]


def load(data, **kwargs):
    return train_data.load_examples(data, word_tokenizer(), problem_field="problem", solution_field="solution",
                                    system_prompt=None, max_length=kwargs.pop("max_length", None), **kwargs)


def pyarrow_parquet():
    pytest.importorskip("pyarrow", reason="pyarrow writes the parquet files these tests read (pip install pyarrow)")
    import pyarrow.parquet as pq

    return pq


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa

    pyarrow_parquet().write_table(pa.Table.from_pylist(rows, schema=pa.schema([("problem", pa.string()),
                                                                                ("solution", pa.string())])), path)
    return path


def parquet_shards(folder: Path, parts: list[list[dict]], split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, part in enumerate(parts):
        write_parquet(folder / f"{split}-{index:05d}-of-{len(parts):05d}.parquet", part)
    return folder


def test_a_folder_of_parquet_shards_reads_as_its_rows_in_shard_order(tmp_path: Path) -> None:
    folder = parquet_shards(tmp_path / "data", [ROWS[:2], ROWS[2:3], [], ROWS[3:]])
    (folder / "README.md").write_text("# card")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs")
    examples = load(folder)
    assert list(examples) == list(load(ROWS))
    assert examples.unit == "row index" and examples.where == f"{folder} (4 files)"
    # Each shard's rows follow the rows before it: the numbers of one file holding them all.
    assert examples.numbers == [0, 1, 2, 3, 4]
    assert [examples.row_name(i) for i in (0, 2, 4)] == [f"{folder / 'train-00000-of-00004.parquet'}: row index 0",
                                                         f"{folder / 'train-00001-of-00004.parquet'}: row index 0",
                                                         f"{folder / 'train-00003-of-00004.parquet'}: row index 1"]


def test_jsonl_files_named_one_by_one_number_rows_by_file_and_line(tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [ROWS[0], "", {"problem": "what", "solution": " "}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"problem": "two", "solution": ""}, *ROWS[1:3]])
    nothing = write_jsonl(tmp_path / "empty.jsonl", [])  # takes no number: b.jsonl's follow a.jsonl's
    with pytest.warns(UserWarning) as caught:
        examples = load([first, nothing, second])
    # The loader's own drops are named file by file, as for one file.
    assert [str(w.message) for w in caught] == [
        f"{first}: dropped 1 row(s) with an empty 'solution' (lines [3])",
        f"{second}: dropped 1 row(s) with an empty 'solution' (lines [1])"]
    assert list(examples) == list(load([ROWS[0], *ROWS[1:3]]))
    assert examples.numbers == [1, 5, 6]  # b.jsonl's lines 2 and 3 after a.jsonl's three
    assert examples.where == f"{first} ... {second} (3 files)"
    assert [examples.row_name(i) for i in range(3)] == [f"{first}: line 1", f"{second}: line 2", f"{second}: line 3"]
    # A row's error names its own file and line.
    bad = write_jsonl(tmp_path / "c.jsonl", [ROWS[0], {"problem": "what"}])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"c\.jsonl:2: no field 'solution'"):
        load([first, bad])


def test_drops_after_loading_name_each_rows_file(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"{name}.jsonl", part) for name, part in (("a", ROWS[:2]), ("b", ROWS[2:]))]
    examples = load(files)
    # Rows of 11, 8, 11, 9, 11 tokens: the three of 11 go.
    with pytest.warns(UserWarning, match=r"\(2 files\): dropped 3 row\(s\) longer than the model's context.*"
                                         r"\(.*a\.jsonl: lines \[1\]; .*b\.jsonl: lines \[1, 3\]\)"):
        kept = train_data.drop_beyond_context(examples, 10, eos_id=2, split_fraction=1.0)
    assert kept.numbers == [2, 4] and kept.files == examples.files
    # Every row dropped: the error names the files and the loader's drops.
    empty = [write_jsonl(tmp_path / f"{name}.jsonl", [{"problem": "what", "solution": ""}]) for name in "ef"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"every row was dropped, .*e\.jsonl: 1 row\(s\) "
                                                                    r"with an empty 'solution' \(lines \[1\]\); "
                                                                    r".*f\.jsonl: 1 row"):
        load(empty)
    # A token id past the model's vocabulary is named in its file.
    model = SimpleNamespace(get_input_embeddings=lambda: SimpleNamespace(num_embeddings=8))
    with pytest.raises(ValueError, match=r"a\.jsonl: line 1: token id \d+ >= vocabulary size 8"):
        check_vocab([None] * 8, model, examples)  # a tokenizer of 8 tokens


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_held_out_shards_get_the_layouts_of_one_file_holding_their_rows(tmp_path: Path, kind: str) -> None:
    # eval_row seeds a held-out row's pad-split layout: unique across the files, and the same as
    # in one file of all the rows, so a set re-sharded or joined is scored on the same layouts.
    if kind == "parquet":
        pyarrow_parquet()
    write = write_parquet if kind == "parquet" else write_jsonl
    shards = [write(tmp_path / f"val-{i:05d}-of-00002.{kind}", part) for i, part in enumerate((ROWS[:2], ROWS[2:]))]
    whole = write(tmp_path / f"whole.{kind}", ROWS)
    assert ([row["eval_row"] for row in train_data.EvalRows(load(shards, held_out=True))]
            == [row["eval_row"] for row in train_data.EvalRows(load(whole, held_out=True))] == [1, 2, 3, 4, 5])


def test_the_digest_covers_every_file_in_order(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"train-{i:05d}-of-00003.jsonl", part)
             for i, part in enumerate((ROWS[:2], ROWS[2:4], ROWS[4:]))]
    assert data_digest(tmp_path) == data_digest(files) == data_digest(ROWS)  # the rows, one file after the other
    assert data_digest(files[::-1]) != data_digest(files)
    assert data_digest(files[:2]) != data_digest(files)
    files[2].write_text(json.dumps({"problem": "what", "solution": "two"}) + "\n")
    assert data_digest(tmp_path) != data_digest(ROWS)
    assert data_digest([files[0], files[0]]) is None  # refused on loading, which says why
    assert data_digest(files[:1]) == data_digest(files[0]) == data_digest(ROWS[:2])


def test_a_folder_holding_several_splits_is_refused(tmp_path: Path) -> None:
    # NuminaMath-CoT keeps train-* and test-* side by side: the test rows would be trained on.
    for split in ("train", "test"):
        write_jsonl(tmp_path / f"{split}-00000-of-00001.jsonl", ROWS)
    with pytest.raises(ValueError, match=rf"train: data directory '{tmp_path}' holds the shards of several splits: "
                                         r"test \(1 file\(s\)\), train \(1 file\(s\)\); pass the files of one, e\.g\. "
                                         r".*/train-\*\.jsonl"):  # not test-*, first in name order
        load(tmp_path)
    # Held-out data is pointed at the held-out split.
    with pytest.raises(ValueError, match=r"train: eval data directory .* e\.g\. .*/test-\*\.jsonl"):
        data_files(tmp_path, name="eval data")
    # Named one by one, a split's files are read.
    assert len(load(sorted(tmp_path.glob("train-*")))) == len(ROWS)


def test_a_folder_missing_shards_is_refused(tmp_path: Path) -> None:
    for index in (0, 2):
        write_jsonl(tmp_path / f"train-{index:05d}-of-00004.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"holds 2 of the 4 shards of 'train': 00001, 00003 missing \(a download "
                                         r"cut short\?\)"):
        load(tmp_path, held_out=True)
    # The files themselves, a choice: read.
    assert len(load(sorted(tmp_path.iterdir()))) == 2 * len(ROWS)


def test_jsonl_beside_parquet_is_refused(tmp_path: Path) -> None:
    pyarrow_parquet()
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_parquet(tmp_path / "train.parquet", ROWS)  # a converted copy: every row twice
    with pytest.raises(ValueError, match=r"train: data mixes JSON Lines and parquet files \(.*train\.jsonl', "
                                         r".*train\.parquet'\): one format a run"):
        load(tmp_path)


def test_a_file_named_twice_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"train: eval data names the file .*train\.jsonl' twice"):
        load([tmp_path, path], held_out=True)


def test_held_out_files_that_are_also_trained_on_are_named_in_a_warning(tmp_path: Path) -> None:
    first, second = write_jsonl(tmp_path / "a.jsonl", ROWS[:2]), write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    with pytest.warns(UserWarning, match=r"--eval-data .*b\.jsonl: also in --data; its eval_loss scores rows"):
        train_data.check_data_files([second], held_out=True, training=tmp_path)  # b.jsonl is in the folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train_data.check_data_files([second], held_out=True, training=[first]) == [second]
        train_data.check_data_files([second], held_out=True, training=ROWS)  # rows in memory: nothing to compare


def test_a_snapshot_folder_points_at_its_data_subfolder(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# card")
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train-00000-of-00001.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"holds no \.jsonl or \.parquet file \(it holds README\.md, data\); its "
                                         r"subfolder 'data' holds some: pass that"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"train: data file .*missing\.jsonl' does not exist"):
        load([tmp_path / "data", tmp_path / "missing.jsonl"])


def test_the_cli_takes_several_files_and_keeps_one_a_path(tmp_path: Path) -> None:
    def options(*data: str):
        args = cli.build_parser(["train"]).parse_args(["train", "--model", "m", "--data", *data, "--output", "o",
                                                       "--eval-data", *data])
        return options_from_args(args)

    assert (options("d.jsonl").data, options("d.jsonl").eval_data) == ("d.jsonl", "d.jsonl")
    assert options("a.jsonl", "b.jsonl").data == ("a.jsonl", "b.jsonl")


def test_a_run_trains_on_a_folder_of_shards_as_on_its_rows(tmp_path: Path) -> None:
    from test_train import ONE_STEP, make_model, make_tokenizer
    from test_train import ROWS as SUM_ROWS

    from superthoughts_ext.train import TrainOptions, train

    tok = make_tokenizer()
    parts = (SUM_ROWS[:3], SUM_ROWS[3:5], SUM_ROWS[5:])
    (tmp_path / "data").mkdir()
    for index, part in enumerate(parts):
        write_jsonl(tmp_path / "data" / f"train-{index:05d}-of-00003.jsonl", part)
    held_out = [write_jsonl(tmp_path / f"val{index}.jsonl", part) for index, part in enumerate((SUM_ROWS[:2],
                                                                                                SUM_ROWS[6:]))]
    losses = []
    for name, data, eval_data in (("shards", tmp_path / "data", held_out),
                                  ("rows", SUM_ROWS, SUM_ROWS[:2] + SUM_ROWS[6:])):
        result = train(TrainOptions(model=make_model("llama", len(tok)), tokenizer=tok, data=data, eval_data=eval_data,
                                    output_dir=tmp_path / name, **ONE_STEP))
        assert (result.num_examples, result.num_eval_examples) == (len(SUM_ROWS), 4)
        losses.append([(e.get("loss"), e.get("eval_loss")) for e in result.log_history])
    assert losses[0] == losses[1]


def test_under_torchrun_one_process_a_machine_warns_of_the_data(tmp_path: Path, monkeypatch, capsys) -> None:
    # Every process reads the same files, so each data warning came once per process.
    import torch.distributed as dist
    from test_train import free_port, make_model, make_tokenizer

    make_tokenizer().save_pretrained(tmp_path / "m")
    make_model("llama", len(make_tokenizer())).save_pretrained(tmp_path / "m")
    data = write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"problem": "what"}])  # no solution: the run stops there
    argv = ["train", "--model", str(tmp_path / "m"), "--data", str(data), "--eval-data", str(data),
            "--output", str(tmp_path / "o")]

    def warned() -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                assert cli.main(argv) == 2
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()
        assert "d.jsonl:6: no field 'solution'" in capsys.readouterr().err  # the error, on every process
        return any("its eval_loss scores rows the model trains on" in str(w.message) for w in caught)

    assert warned()
    # The second process of a machine (in a group of one here, so that it runs alone in this test).
    for name, value in {"LOCAL_RANK": "1", "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    assert not warned()
