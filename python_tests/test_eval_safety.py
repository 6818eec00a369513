"""What keeps evaluation runs from mixing or losing work: output paths checked before decoding, a
resume with another prompt format, a regrade or comparison against another problem set, a data
file whose ids repeat, and the CLI's checks that come before the weights load. (The tiny
tokenizer and fake generate of test_evaluation.py; the CLI helpers of test_eval_cli.py.)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_eval_cli import run_cli  # noqa: E402
from test_eval_compare import write_records  # noqa: E402
from test_eval_io import crash_after_one_batch  # noqa: E402
from test_eval_regrade import evaluated_run, regrade, write_data  # noqa: E402
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer  # noqa: E402

from superthoughts_ext.eval_compare import compare, compare_runs  # noqa: E402
from superthoughts_ext.eval_data import load_problems  # noqa: E402
from superthoughts_ext.evaluation import check_records_file, evaluate, summary_path  # noqa: E402


def test_an_output_that_cannot_be_written_is_refused_before_decoding(tmp_path: Path) -> None:
    # Found at the first batch's write before (a sweep: after the thresholds before it), as a traceback.
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="output .* is a directory; give the records file's path"):
        check_records_file(tmp_path, resume=False, overwrite=False)
    with pytest.raises(ValueError, match=r"cannot write .*a_file/st\.jsonl: .*a_file is a file, not a folder"):
        check_records_file(tmp_path / "a_file" / "st.jsonl", resume=False, overwrite=False)
    check_records_file(tmp_path / "new" / "st.jsonl", resume=False, overwrite=False)
    assert not (tmp_path / "new" / "st.jsonl").exists()  # the write check leaves nothing behind


def test_a_summary_name_linked_elsewhere_is_never_written_through(tmp_path: Path) -> None:
    # A run folder unpacked from elsewhere, its summary's name a planted symlink: to nothing, the
    # resume created the file it names, and its folders, outside the folder; to a file, it is replaced.
    tokenizer = make_tokenizer()
    out = evaluated_run(tmp_path)
    summary, outside = summary_path(out), tmp_path / "outside"
    summary.unlink()
    summary.symlink_to(outside / "new_folder" / "planted.json")
    kwargs = dict(mode="superthoughts", threshold=0.9, batch_size=3, output_jsonl=out, progress=False,
                  generate_fn=fake_generate(tokenizer, []), metadata={"model": "fake"}, resume=True)
    with pytest.raises(ValueError, match=r"st\.summary\.json, where the summary of .*st\.jsonl goes, is a symlink to "
                                         r"nothing \(.*planted\.json\); remove it"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, **kwargs)
    assert not outside.exists()
    outside.mkdir()
    (outside / "kept.json").write_text("{}")
    summary.unlink()
    summary.symlink_to(outside / "kept.json")
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, **kwargs)
    assert (outside / "kept.json").read_text() == "{}"
    assert not summary.is_symlink() and json.loads(summary.read_text())["n"] == len(PROBLEMS)


def test_a_sweep_with_an_unwritable_file_decodes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_data(tmp_path / "m.jsonl", [{"id": p.id, "problem": p.question, "answer": p.answer} for p in PROBLEMS])
    (tmp_path / "st-t0.9.jsonl").mkdir()  # the second threshold's file
    argv = ["--model", str(tmp_path / "missing"), "--bench", "math500", "--data", str(data),
            "--output", str(tmp_path / "st.jsonl"), "--threshold", "0.5", "0.9", "--mode", "superthoughts"]
    assert run_cli(argv) == 2
    assert "st-t0.9.jsonl is a directory" in capsys.readouterr().err
    assert not (tmp_path / "st-t0.5.jsonl").exists()


def test_resume_with_another_chat_template_is_refused(tmp_path: Path) -> None:
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch(tokenizer),
                 **kwargs)
    other = copy.deepcopy(tokenizer)
    other.chat_template = other.chat_template.replace("{{ m['role'] }}\n", "{{ m['role'] }} \n")
    # Records 1-3 held one prompt format and the rest another, in one run.
    with pytest.raises(ValueError, match=r"st\.jsonl:1 was decoded from another prompt than this run builds"):
        evaluate(fake_model(other), other, "math500", PROBLEMS, generate_fn=fake_generate(other, []), resume=True,
                 **kwargs)
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True,
                       generate_fn=fake_generate(tokenizer, []), **kwargs)
    assert summary.n == len(PROBLEMS) and summary.n_resumed == 3


def test_regrade_against_another_problem_set_is_refused(tmp_path: Path) -> None:
    run = evaluated_run(tmp_path)
    # The same ids, other questions: references and grades were rewritten from the wrong problems.
    other = write_data(tmp_path / "other.jsonl", [{"id": p.id, "problem": f"what is {i} + 7", "answer": str(i + 7)}
                                                  for i, p in enumerate(PROBLEMS)])
    before = run.read_text()
    with pytest.raises(ValueError, match="asks another question than the record's prompt; give the --data the run used"):
        regrade([run], other)
    assert run.read_text() == before


def test_compare_refuses_runs_of_other_problem_sets(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "bench": "math500", "reference": str(i)} for i in range(4)])
    b = write_records(tmp_path / "b.jsonl", [{"id": str(i), "bench": "math500", "reference": str(i + (i > 1))}
                                             for i in range(4)])
    with pytest.raises(ValueError, match=r"2 of the 4 problems matched by id have other reference answers in "
                                         r".*b\.jsonl than in .*a\.jsonl \(first: '2', '3' vs '2'\)"):
        compare(a, b)
    with pytest.raises(ValueError, match="different problem sets"):
        compare_runs(a, [a, b])


def test_repeated_ids_in_the_data_are_warned_about(tmp_path: Path) -> None:
    rows = [{"unique_id": f"u{i % 3}", "problem": f"what is {i} + 1", "answer": str(i + 1)} for i in range(4)]
    data = write_data(tmp_path / "m.jsonl", rows)
    with pytest.warns(UserWarning, match=r"math500: the 'unique_id' column repeats \['u0'\] \(rows \[1, 4\]\); the "
                                         r"problems are numbered by their rows instead \(ids from 0: row 1 is id '0'\)"):
        problems = load_problems("math500", data)
    assert [p.id for p in problems] == ["0", "1", "2", "3"]


def test_rows_without_an_id_are_warned_about(tmp_path: Path) -> None:
    # One row without its id renumbered every problem without a word: compare and regrade against
    # a run on the clean file then met other problems under the same ids.
    rows = [{"unique_id": f"u{i}", "problem": f"what is {i} + 1", "answer": str(i + 1)} for i in range(4)]
    del rows[2]["unique_id"]
    data = write_data(tmp_path / "m.jsonl", rows)
    with pytest.warns(UserWarning, match=r"math500: rows \[3\] have no 'unique_id' column \(1 of 4\); the problems "
                                         "are numbered by their rows instead"):
        problems = load_problems("math500", data)
    assert [p.id for p in problems] == ["0", "1", "2", "3"]


def test_mode_errors_come_before_the_weights_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext import generate_cli

    monkeypatch.setattr(generate_cli, "load_checkpoint", lambda *a: pytest.fail("the model was loaded"))
    data = write_data(tmp_path / "m.jsonl", [{"id": "0", "problem": "what is 1 + 1", "answer": "2"}])
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    common = ["--model", str(plain), "--bench", "math500", "--data", str(data), "--output", str(tmp_path / "o.jsonl")]
    assert run_cli([*common, "--mode", "standard", "--threshold", "0.9"]) == 2
    assert "--threshold applies to superthoughts mode, not standard" in capsys.readouterr().err
    assert run_cli([*common, "--mode", "pairs"]) == 2
    assert "plain is a plain model; use --mode standard" in capsys.readouterr().err


def test_compare_plot_that_cannot_be_written_is_refused_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": str(i), "bench": "math500"} for i in range(3)])
    assert run_cli(["--compare", str(a), str(a), "--plot", str(tmp_path)]) == 2
    assert "is a directory; give the PNG file's path" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert run_cli(["--compare", str(a), str(a), "--plot", str(tmp_path / "a_file" / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "cannot be written: " in err and "a_file is a file, not a folder" in err
