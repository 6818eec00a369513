"""The training data pipeline at the scale users train at (100k-row chain-of-thought files,
every process of a node tokenising the whole file): what a row costs to tokenise and to hold.
(The rows' checks: test_data_jsonl.py, test_data_inputs.py, test_train_rows.py.)
"""
from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from test_data_jsonl import CHATML, word_tokenizer, write_jsonl  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from superthoughts_ext import train_data  # noqa: E402
from superthoughts_ext.data import SuperThoughtsCollator  # noqa: E402
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


def numbered_word_tokenizer(words: int) -> PreTrainedTokenizerFast:
    """Special tokens, then the words w0 .. w{words - 1}: ids past 256, which Python does not cache, so a
    list of them holds an int object per token, as with a real vocabulary."""
    vocab = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "system", "user", "assistant"]
    vocab += [f"w{i}" for i in range(words)]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", chat_template=CHATML)


def test_loading_packs_each_row_as_it_is_read(tmp_path: Path) -> None:
    # The loader held every row as lists of Python ints (~36 bytes a token) and packed them only
    # afterwards: 9.5x the packed ids at its peak here, several GB a process for a 100k-row file.
    # Packed row by row: 1.7x (the array, its room to grow, a row in flight, the vocabulary).
    tok = numbered_word_tokenizer(2000)
    rows = [{"problem": "w1 w2", "solution": " ".join(f"w{(7 * i + 3 * j) % 2000}" for j in range(1000))}
            for i in range(200)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    tracemalloc.start()
    try:
        examples = load_jsonl_examples(path, tok)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(examples) == [format_example(tok, r["problem"], r["solution"]) for r in rows]
    tokens = sum(len(e["prompt_ids"]) + len(e["response_ids"]) for e in examples)
    assert examples.ids.dtype == np.int32 and examples.ids.nbytes == 4 * tokens
    assert peak < 3 * examples.ids.nbytes, f"peak {peak} bytes for {examples.ids.nbytes} bytes of ids"


def test_dropping_rows_shares_the_packed_ids() -> None:
    examples = train_data.Examples.of(_examples(), where="t", unit="row", numbers=[4, 5, 6])
    kept = examples.select([True, False, True])
    assert kept.ids is examples.ids and kept.numbers == [4, 6]
    assert kept == [_examples()[0], _examples()[2]] and kept != _examples()


def test_a_slice_of_the_examples_is_examples_as_a_list_slice_was() -> None:
    # load_jsonl_examples(...)[:100] worked while Examples was a list, and raised TypeError after.
    examples = train_data.Examples.of(_examples(), where="t", unit="line", numbers=[4, 5, 6])
    head, tail = examples[:2], examples[-1:]
    assert isinstance(head, train_data.Examples) and head.ids is examples.ids
    assert head == _examples()[:2] and head.numbers == [4, 5] and tail.numbers == [6]
    assert examples[::2] == _examples()[::2] and examples[5:] == []


def test_a_slice_keeps_what_the_loader_dropped() -> None:
    # As `select` does: an error about a slice left with no row names the rows dropped on loading.
    examples = train_data.Examples.of(_examples(), where="t", unit="line", numbers=[4, 5, 6])
    examples.dropped = ["1 row(s) with an empty 'solution' (lines [2])"]
    assert examples[:2].dropped == examples.dropped == examples.select([True, False, True]).dropped


def _examples() -> list[dict[str, list[int]]]:
    return [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 2]}, {"prompt_ids": [4], "response_ids": []},
            {"prompt_ids": [1, 2 ** 20], "response_ids": [3, 3, 3, 3, 3]}]


def test_train_rows_are_the_examples_numbered_held_as_int32() -> None:
    examples = _examples()
    rows = train_data.TrainRows(examples)
    assert len(rows) == 3
    assert [rows[i] for i in range(3)] == [{**e, "row": i} for i, e in enumerate(examples)]
    assert list(rows) == [rows[0], rows[1], rows[2]] and rows[-1] == rows[2]
    assert all(type(t) is int for t in rows[0]["prompt_ids"] + rows[0]["response_ids"])
    assert rows._examples.ids.dtype.itemsize == 4 and rows._examples.ids.nbytes == 4 * 14  # 4 bytes a token
    with pytest.raises(IndexError):
        rows[3]
    assert pickle.loads(pickle.dumps(rows))[2] == rows[2]  # DataLoader workers started by spawn


def test_train_rows_keep_ids_past_int32() -> None:
    # The rows packed before the id that does not fit int32 are widened with it.
    examples = _examples() + [{"prompt_ids": [2 ** 40], "response_ids": [1]}]
    rows = train_data.TrainRows(examples)
    assert rows._examples.ids.dtype == np.int64
    assert list(rows) == [{**e, "row": i} for i, e in enumerate(examples)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_rows_collate_the_batches_the_row_dicts_did(num_workers: int) -> None:
    examples = _examples()
    collator = SuperThoughtsCollator(pad_id=0, eos_id=2, rho_max=0.5, seed=3)
    old = [{**e, "row": i} for i, e in enumerate(examples)]
    loader = torch.utils.data.DataLoader(train_data.TrainRows(examples), batch_size=2, collate_fn=collator,
                                         num_workers=num_workers)
    for got, want in zip(loader, [collator(old[:2]), collator(old[2:])], strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_train_rows_refuse_ids_past_int64() -> None:
    with pytest.raises(ValueError, match="^TrainRows: a token id does not fit in int64$"):
        train_data.TrainRows([{"prompt_ids": [2 ** 70], "response_ids": [1]}])
    rows = [{"prompt_ids": [5], "response_ids": [6]}, {"prompt_ids": [5], "response_ids": [2 ** 70]}]
    with pytest.raises(ValueError, match="^train: row 2: a token id does not fit in int64$"):
        train_data.load_examples(rows, word_tokenizer(), problem_field="problem", solution_field="solution",
                                 system_prompt=None, max_length=None)
