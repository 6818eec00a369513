"""The training data pipeline at the scale users train at (100k-row chain-of-thought files,
every process of a node tokenising the whole file): what a row costs to tokenise and to hold.
(The rows' checks: test_data.py, test_data_inputs.py, test_train_inputs.py.)
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
from test_data import word_tokenizer, write_jsonl  # noqa: E402

from superthoughts_ext.data_jsonl import format_example, load_jsonl_examples  # noqa: E402


def test_the_vocabulary_is_read_once_per_file_not_per_row(tmp_path: Path) -> None:
    # get_vocab builds the whole vocabulary (~150k entries for Qwen: tens of ms), which was most
    # of a row's tokenising time: hours for a 100k-row file.
    tok = word_tokenizer()
    calls = []
    get_vocab = tok.get_vocab
    tok.get_vocab = lambda: calls.append(1) or get_vocab()
    rows = [{"problem": "what is two", "solution": "so four"}] * 5 + [{"problem": "what", "solution": "four"}]
    examples = load_jsonl_examples(write_jsonl(tmp_path / "d.jsonl", rows), tok)
    assert len(calls) == 1
    tok.get_vocab = get_vocab
    assert list(examples) == [format_example(tok, r["problem"], r["solution"]) for r in rows]

