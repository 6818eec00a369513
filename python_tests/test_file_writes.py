"""Files that cannot be written: a full disk (stood in for by a file size limit, which needs no
root: conftest's file_size_limit), a parent that is a file. What another run reads back is
written whole or not at all, and a command says which file failed and why in one line.
(Training's checkpoints: test_train_checkpoints.py; export: test_export.py.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_eval_cli import fake_cli, run_cli  # noqa: E402,F401 (fake_cli: a fixture)
from test_eval_io import crash_after_one_batch  # noqa: E402
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl  # noqa: E402

from superthoughts_ext.evaluation import evaluate  # noqa: E402
from superthoughts_ext.file_writes import WriteFailed, replace_text, writing  # noqa: E402
from superthoughts_ext.run_info import results_file  # noqa: E402


def test_replace_text_leaves_the_old_file_whole_when_the_write_fails(tmp_path: Path, file_size_limit) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old\n")
    with file_size_limit(1024), pytest.raises(WriteFailed) as failed:
        replace_text(path, "x" * 4096)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary
    assert str(failed.value).startswith(f"cannot write {path}: File too large (")
    assert "files are limited to 1024 bytes (ulimit -f)" in str(failed.value)


def test_replace_text_refuses_a_file_it_may_not_write_as_open_does(tmp_path: Path, unwritable) -> None:
    # os.replace needs only the folder: a read-only (0444) summary was overwritten.
    path = tmp_path / "summary.json"
    path.write_text("old\n")
    unwritable(path)
    with pytest.raises(WriteFailed, match=f"^cannot write {path}: Permission denied"):
        replace_text(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_replace_text_gives_a_new_file_the_umask_without_setting_it(tmp_path: Path, monkeypatch) -> None:
    # os.umask sets the umask to read it: meanwhile another thread's files were created with none.
    set_umask = os.umask
    previous = set_umask(0o027)
    try:
        def no_umask(mask: int) -> int:
            raise AssertionError("os.umask changes the process's umask")

        monkeypatch.setattr(os, "umask", no_umask)
        replace_text(tmp_path / "new.json", "{}\n")
        kept = tmp_path / "kept.json"
        kept.write_text("old\n")
        kept.chmod(0o604)
        replace_text(kept, "new\n")
    finally:
        set_umask(previous)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640  # as open() creates it
    assert kept.stat().st_mode & 0o777 == 0o604 and kept.read_text() == "new\n"


def test_an_existing_output_in_a_folder_that_is_not_writable_is_refused_up_front(tmp_path: Path, unwritable) -> None:
    # replace_text writes a new file in the folder: appending to the existing file was all the
    # check tried, and the benchmark failed once it had measured.
    results = tmp_path / "results" / "step.json"
    results.parent.mkdir()
    results.write_text("{}\n")
    unwritable(results.parent)
    with pytest.raises(SystemExit, match=f"Permission denied \\(the folder {results.parent}, where the file"):
        results_file(results, tmp_path / "default.json", overwrite=False)


def test_a_resume_in_a_folder_that_is_not_writable_is_refused_before_the_model_loads(
        fake_cli, tmp_path: Path, capsys, unwritable) -> None:
    # The kept records are rewritten through a new file in the folder: the existing records and
    # summary passed the check, and the resume failed once the weights had loaded.
    out = tmp_path / "runs" / "st.jsonl"
    argv = [*fake_cli.argv, "--output", str(out)]
    assert run_cli(argv) == 0
    kept, loads = out.read_bytes(), len(fake_cli.loaded)
    unwritable(out.parent)
    capsys.readouterr()
    for extra in (["--resume"], ["--overwrite"]):
        assert run_cli([*argv, *extra]) == 2
        error = capsys.readouterr().err
        assert f"cannot write {out}: Permission denied (the folder {out.parent}, where the file" in error
    assert len(fake_cli.loaded) == loads and out.read_bytes() == kept


def test_a_resume_removes_the_temporary_files_of_a_write_that_was_killed(tmp_path: Path) -> None:
    # A SIGKILL inside replace_text leaves its temporary file; nothing removed it.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch(tokenizer),
                 **kwargs)
    stale = [tmp_path / ".st.jsonl.k3x_9q2a.tmp", tmp_path / ".st.summary.json.0aqz7b1c.tmp"]
    others = [tmp_path / ".other.jsonl.k3x_9q2a.tmp", tmp_path / ".st.jsonl.notes.tmp", tmp_path / "st.jsonl.tmp"]
    for path in stale + others:
        path.write_text("{")
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True,
                       generate_fn=fake_generate(tokenizer, []), **kwargs)
    assert summary.n == len(PROBLEMS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["st.jsonl", "st.summary.json",
                                                                 *(p.name for p in others)])


def test_writing_names_the_file_of_a_torch_save_failure(tmp_path: Path, file_size_limit) -> None:
    # torch.save's own error is "unexpected pos 488512 vs 488404" or "file write failed".
    path = tmp_path / "optimizer.pt"
    with file_size_limit(4096), pytest.raises(WriteFailed, match=f"^cannot write {path}: .*ulimit -f"):
        with writing(path):
            torch.save(torch.zeros(10_000), path)
    with pytest.raises(RuntimeError, match="not a write") as other:  # other errors pass through as they are
        with writing(path):
            raise RuntimeError("not a write")
    assert type(other.value) is RuntimeError


def test_a_resume_that_cannot_rewrite_the_records_keeps_them(tmp_path: Path, file_size_limit) -> None:
    # The kept records were rewritten in place: a full disk cut them short, and the next resume
    # lost every record past the cut.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch(tokenizer),
                 **kwargs)
    kept = out.read_bytes()
    assert len(read_jsonl(out)) == 3
    with file_size_limit(len(kept) // 2), pytest.raises(WriteFailed, match=f"cannot write {out}: File too large"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True,
                 generate_fn=fake_generate(tokenizer, []), **kwargs)
    assert out.read_bytes() == kept
    calls: list[dict] = []
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True,
                       generate_fn=fake_generate(tokenizer, calls), **kwargs)
    assert [c["batch"] for c in calls] == [3, 1] and summary.n == len(PROBLEMS) and summary.n_resumed == 3


def test_the_cli_names_the_records_file_it_cannot_write_and_how_to_go_on(fake_cli, tmp_path: Path, capsys,
                                                                        file_size_limit) -> None:
    out = tmp_path / "st.jsonl"
    argv = [*fake_cli.argv, "--batch-size", "3", "--output", str(out)]
    with file_size_limit(1500):  # the first batch's records (~2.4 kB) do not fit
        assert run_cli(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"superthoughts eval: error: cannot write {out}: File too large (")
    assert "Traceback" not in error
    assert "the same command with --resume continues it" in error
    assert run_cli([*argv, "--resume"]) == 0  # a torn last line, if any, is dropped
    assert len(read_jsonl(out)) == len(PROBLEMS)
    assert json.loads((tmp_path / "st.summary.json").read_text())["n"] == len(PROBLEMS)


def test_save_pretrained_names_the_weights_file_it_cannot_write(tmp_path: Path, file_size_limit) -> None:
    # safetensors said "Error while serializing: I/O error: File too large (os error 27)", no file.
    from transformers import AutoModelForCausalLM, Qwen2Config

    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(config), pad_token_id=0)
    weights = tmp_path / "st" / "model.safetensors"
    with file_size_limit(16_384), pytest.raises(WriteFailed, match=f"^cannot write {weights}: .*File too large"):
        model.save_pretrained(tmp_path / "st")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):  # not taken for a model
        SuperThoughtsForCausalLM.from_pretrained(tmp_path / "st")
