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
