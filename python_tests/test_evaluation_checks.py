"""Checks of evaluate's output file before decoding (evaluation.check_records_file), on the tiny
tokenizer and fake generate of test_evaluation.py. (The main flow: test_evaluation.py; unwritable
paths and other run-mixing checks: test_eval_safety.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl  # noqa: E402

from superthoughts_ext.evaluation import check_records_file, evaluate  # noqa: E402


def test_an_empty_records_file_is_no_earlier_run(tmp_path: Path) -> None:
    # An existing but empty output file (made by `touch`, or a run that stopped before its first
    # batch) holds no records to lose: it needs neither resume nor overwrite.
    out = tmp_path / "st.jsonl"
    out.write_text("")
    check_records_file(out, resume=False, overwrite=False)
    tokenizer = make_tokenizer()
    result = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:2], batch_size=2, output_jsonl=out,
                      progress=False, generate_fn=fake_generate(tokenizer, []))
    assert result.n == 2 == len(read_jsonl(out))
    # Once it holds records, the same call is refused.
    with pytest.raises(FileExistsError, match="st.jsonl holds the records of an earlier run"):
        check_records_file(out, resume=False, overwrite=False)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(tmp_path: Path) -> None:
    # Two evaluations started together both passed the records check (the file appears only once
    # the model has loaded) and interleaved their records; a --resume started meanwhile truncated
    # the file under the first. The output is locked from the check to the summary.
    from superthoughts_ext.run_info import output_lock

    out = tmp_path / "st.jsonl"
    tokenizer = make_tokenizer()
    run = lambda **kwargs: evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:2], batch_size=2,  # noqa: E731
                                    output_jsonl=out, progress=False, generate_fn=fake_generate(tokenizer, []),
                                    **kwargs)
    with output_lock(out, "evaluate"):  # another process's lock (flock locks conflict per open file)
        for kwargs in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(ValueError, match=r"evaluate: '.*st.jsonl' is being written by pid \d+ on .*; wait "
                                                 r"for it to finish or choose another output"):
                run(**kwargs)
    assert not out.exists()
    assert run().n == 2  # released
