"""The rows a training run reads: pre-tokenised rows checked up front, rows beyond max_length or
the model's context dropped and named, a pad token inside a response, the tokenising progress bar,
and the prompts built from text rows (the ones eval sends). Tiny random models on CPU (test_train.py's
fixtures), a step or two each. (Other inputs of a run: test_train_inputs.py.)
"""
from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import ONE_STEP, ROWS, make_model, make_tokenizer  # noqa: E402

from superthoughts_ext import train_data, train_utils  # noqa: E402
from superthoughts_ext.data import layout_length  # noqa: E402
from superthoughts_ext.train import TrainOptions, train  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


def load_rows(rows: list[dict], max_length: int | None = None) -> list[dict]:
    return train_data.load_examples(rows, make_tokenizer(), problem_field="problem", solution_field="solution",
                                    system_prompt=None, max_length=max_length)


@pytest.mark.parametrize("rows, message", [
    ([{"prompt_ids": [], "response_ids": []}], r"row 1: empty prompt_ids"),
    ([{"prompt_ids": [5], "response_ids": [6]}, {"prompt_ids": [], "response_ids": [6]}], r"row 2: empty prompt_ids"),
    ([{"prompt_ids": [5], "response_ids": [5, 2, 6]}], r"row 1: response holds EOS \(2\) at position 1"),
    ([{"prompt_ids": [5], "response_ids": [5, -100, 6]}], r"row 1: response_ids holds the negative token id -100"),
    ([{"prompt_ids": [5.0], "response_ids": [6]}], r"row 1: prompt_ids must be a list of int token ids"),
    ([{"prompt_ids": 5, "response_ids": [6]}], r"row 1: prompt_ids must be a list of int token ids"),
    # operator.index reads True as 1, and bytes iterate to ints: neither is a list of token ids.
    ([{"prompt_ids": [True, 7], "response_ids": [6]}], r"row 1: prompt_ids must be a list of int token ids"),
    ([{"prompt_ids": [5], "response_ids": b"ab"}], r"row 1: response_ids must be a list of int token ids"),
    ([{"prompt_ids": [5], "response_ids": bytearray(b"ab")}], r"row 1: response_ids must be a list of int token"),
    ([{"prompt_ids": torch.tensor([True, False]), "response_ids": [6]}], r"row 1: prompt_ids must be a list of int"),
    # A misspelt field in a later row is named there (all rows were read as text rows: "row 1: no
    # field 'problem'"); so is a text row among tokenised ones.
    ([{"prompt_ids": [5], "response_ids": [6]}] * 2 + [{"prompt_ids": [5], "response_id": [6]}],
     r"row 3: no field 'response_ids'; the row has 'prompt_ids', 'response_id' \(tokenised rows need"),
    ([{"prompt_ids": [5], "response_ids": [6]}, {"problem": "what is 1 + 2", "solution": "3"}],
     r"row 2: no field 'prompt_ids'; the row has 'problem', 'solution'"),
    ([{"prompt_ids": [5], "response_ids": [6]}, [5, 6]], r"row 2: expected a mapping with prompt_ids and "
                                                          r"response_ids, got list"),
], ids=["all-empty", "empty-prompt", "inner-eos", "negative", "float", "not-a-list", "bool", "bytes", "bytearray", "bool-tensor",
        "misspelt-later-row", "text-row-among-tokenised", "not-a-mapping"])
def test_pretokenised_rows_are_checked_up_front(rows, message):
    with pytest.raises(ValueError, match=message):
        load_rows(rows)


def test_out_of_vocabulary_ids_and_pipes_are_named(tmp_path):
    model = make_model("qwen2", len(make_tokenizer()))
    rows = [{"prompt_ids": [5], "response_ids": [6, 2]}] * 5 + [{"prompt_ids": [5], "response_ids": [9999, 2]}]
    with pytest.raises(ValueError, match=r"^train: example 6: token id 9999 >= vocabulary size"):
        train_utils.check_vocab(make_tokenizer(), model, rows)
    examples = load_rows(rows)
    with pytest.raises(ValueError, match=r"^train: row 6: token id 9999 >= vocabulary size"):
        train_utils.check_vocab(make_tokenizer(), model, examples)
    # A shell pipe (--data <(...)) exists but is no regular file: train reads its data twice.
    import os
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"rows\.fifo' is not a regular file \(a pipe\?\)"):
        load_rows(fifo)


def test_pretokenised_rows_obey_max_length():
    long = {"prompt_ids": [5, 6, 7], "response_ids": list(range(4, 25))}
    short = {"prompt_ids": [5], "response_ids": [6, 7, 2]}
    with pytest.warns(UserWarning, match=r"^train: dropped 1 row\(s\) longer than max_length=5 tokens \(rows \[1\]\)$"):
        assert load_rows([long, short], max_length=5) == [short]
    # The EOS appended to a response without one counts: [5] + [6, 7, EOS] is 4 tokens.
    assert len(load_rows([{"prompt_ids": [5], "response_ids": [6, 7]}], max_length=4)) == 1
    with pytest.warns(UserWarning, match="max_length=3"), pytest.raises(ValueError, match="no training examples"):
        load_rows([{"prompt_ids": [5], "response_ids": [6, 7]}], max_length=3)
    # Text rows: the same warning, and errors name the row.
    with pytest.warns(UserWarning, match=r"^train: dropped 1 row\(s\) with an empty 'solution' \(rows \[2\]\)$"):
        assert len(load_rows([ROWS[0], {"problem": "what", "solution": " "}])) == 1
    with pytest.raises(ValueError, match=r"^train: row 2: no field 'solution'; the row has 'problem'"):
        load_rows([ROWS[0], {"problem": "what"}])
    # Integer tensors and tuples are ids too.
    ids = load_rows([{"prompt_ids": torch.tensor([5, 6]), "response_ids": (7,)}])
    assert ids == [{"prompt_ids": [5, 6], "response_ids": [7]}]


def test_text_row_options_are_refused_for_tokenised_rows(base_dirs, tmp_path):
    # Neither is read there: both went unused without a word.
    rows = [{"prompt_ids": [5], "response_ids": [6, 2]}]
    with pytest.raises(ValueError, match=r"^train: problem_field, system_prompt apply to text rows; these rows are "
                                         r"already tokenised \(prompt_ids / response_ids\)$"):
        train(TrainOptions(model=base_dirs["qwen2"], data=rows, output_dir=tmp_path / "o", problem_field="q",
                           system_prompt="Be brief.", **ONE_STEP))


def test_rows_beyond_the_context_are_dropped(base_dirs, tmp_path):
    # The tiny models have max_position_embeddings=256.
    long = {"problem": "what is 1 + 2", "solution": " ".join(["step"] * 600)}
    with pytest.warns(UserWarning, match=r"^train: dropped 1 row\(s\) longer than the model's context, "
                                         r"max_position_embeddings=256, up to \d+ positions \(rows \[9\]\)$"):
        result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS + [long], output_dir=tmp_path / "o",
                                    **ONE_STEP))
    assert result.num_examples == len(ROWS)
    with pytest.raises(ValueError, match="no training examples left"):
        train(TrainOptions(model=base_dirs["qwen2"], data=[long], output_dir=tmp_path / "o2", baseline=True,
                           **ONE_STEP))


@pytest.mark.parametrize("baseline", [False, True])
def test_pad_inside_a_response_is_named(base_dirs, tmp_path, baseline):
    # A real pad token inside a response: the pair (x, PAD) reads like a fallback's single unit.
    tok = make_tokenizer()
    pad, eos = tok.pad_token_id, tok.eos_token_id
    clean = {"prompt_ids": [5, 6], "response_ids": [7, 8, 9, eos]}
    padded = {"prompt_ids": [5, 6], "response_ids": [7, pad, 9, eos]}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(TrainOptions(model=base_dirs["qwen2"], data=[clean, padded, clean], baseline=baseline,
                                    output_dir=tmp_path / "o", **ONE_STEP))
    named = [str(w.message) for w in record if "pad token id" in str(w.message)]
    assert result.num_examples == 3  # kept
    if baseline:  # one position per token: a pad is just a token there
        assert named == []
    else:
        assert len(named) == 1
        assert re.match(rf"train: 1 row\(s\) with the pad token id {pad} inside the response \(rows \[2\]\): "
                        r"a pair ending in the pad reads like a decoding fallback's single unit", named[0])
    # Nothing to say when the pad is EOS itself (EOS ends the response).
    examples = train_data.Examples.of([padded], where="t", unit="row", numbers=[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_data.warn_pad_in_responses(examples, eos, eos)


def test_context_counts_units_or_tokens():
    row = {"prompt_ids": [5] * 10, "response_ids": [6] * 19 + [2]}  # 10 pairs
    drop = train_data.drop_beyond_context
    # Each row is kept at exactly its most positions and dropped at one less: 10 + 10 units;
    # 0.25 * 10 = 2.5 pairs split, rounded down or up at random, so at most 3: 10 + 13 units;
    # one position per token: 10 + 20.
    for fraction, length in [(0.0, 20), (0.25, 23), (1.0, 30)]:
        with warnings.catch_warnings():  # compressed, it fits where a baseline would drop it (next test)
            warnings.filterwarnings("ignore", message=".*only compressed")
            assert drop([row], length, 2, fraction) == [row]
        with pytest.raises(ValueError, match=rf"^train: no training examples left: 1 row\(s\) .* up to {length} "
                                             r"positions \(rows \[1\]\)$"):
            drop([row], length - 1, 2, fraction)
    with pytest.warns(UserWarning, match=r"dropped 1 row\(s\) .* up to 30 positions \(rows \[1\]\)"):
        assert drop([row, {"prompt_ids": [5], "response_ids": [2]}], 29, 2, 1.0) == [
            {"prompt_ids": [5], "response_ids": [2]}]
    assert drop([row], None, 2, 1.0) == [row]


def test_rows_only_compressed_fit_are_named_for_the_baseline():
    # Kept compressed (20 or at most 23 positions) but 30 at one position per token: a --baseline run
    # of the same data drops it, so the warning says so and how to keep the runs on one row set.
    row = {"prompt_ids": [5] * 10, "response_ids": [6] * 19 + [2]}
    short = {"prompt_ids": [5], "response_ids": [2]}
    drop = train_data.drop_beyond_context
    for fraction in (0.0, 0.25):
        with pytest.warns(UserWarning, match=r"^train: 1 row\(s\) fit the model's context \(max_position_"
                                             r"embeddings=29\) only compressed \(rows \[1\]\): a --baseline run of "
                                             r"this data drops them; --max-length 29 keeps both runs to the same rows$"):
            assert drop([row, short], 29, 2, fraction) == [row, short]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert drop([row, short], 30, 2, 0.25) == [row, short]  # fits either way: silent


def test_rows_beyond_the_context_are_named_by_jsonl_line(tmp_path):
    # The names are the loader's line numbers: a blank line and a row the loader drops (empty
    # solution) come before the long rows, so positions in the example list would name others.
    short = {"problem": "what is 1 + 2", "solution": "3"}
    long = {"problem": "what is 1 + 2", "solution": " ".join(["1 + 2 = 3"] * 8)}
    lines = [short, "", {"problem": "what is 1 + 2", "solution": " "}, long, short, long, short]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in lines))
    tok = make_tokenizer()
    with pytest.warns(UserWarning, match=r"dropped 1 row\(s\) with an empty 'solution' \(lines \[3\]\)"):
        examples = train_data.load_examples(path, tok, problem_field="problem", solution_field="solution",
                                            system_prompt=None, max_length=None)
    eos = tok.eos_token_id
    short_ids, long_ids = examples[0], examples[1]

    def positions(e, fraction):
        return layout_length(e["prompt_ids"], e["response_ids"], eos, fraction)

    context = positions(short_ids, 1.0)  # every short row fits, even one position per token
    assert positions(long_ids, 0.25) > context
    with pytest.warns(UserWarning) as record:
        kept = train_data.drop_beyond_context(examples, context, eos, 0.25)
    assert [str(w.message) for w in record] == [
        f"{path}: dropped 2 row(s) longer than the model's context, max_position_embeddings={context}, "
        f"up to {positions(long_ids, 0.25)} positions (lines [4, 6])"]
    assert kept == [short_ids] * 3
    # Rows that fit only compressed are named for the baseline run.
    context = positions(long_ids, 0.25)
    assert positions(long_ids, 1.0) > context
    with pytest.warns(UserWarning, match=r"rows\.jsonl: 2 row\(s\) fit the model's context .* only compressed "
                                         r"\(lines \[4, 6\]\): a --baseline run"):
        assert train_data.drop_beyond_context(examples, context, eos, 0.25) == examples
    # With no row left, the error names every line, those the loader dropped too.
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: no training examples left: 5 row\(s\) "
                                         r"longer than .* \(lines \[1, 4, 5, 6, 7\]\); dropped on loading: 1 "
                                         r"row\(s\) with an empty 'solution' \(lines \[3\]\)$"):
        train_data.drop_beyond_context(examples, 1, eos, 0.25)



@pytest.mark.parametrize("progress_bar", [True, False], ids=["bar", "no-bar"])
def test_tokenising_progress_follows_progress_bar(base_dirs, tmp_path, capsys, progress_bar):
    train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "o",
                       **{**ONE_STEP, "progress_bar": progress_bar}))
    shown = f"tokenizing {base_dirs['data']}: 100%" in capsys.readouterr().err
    assert shown == progress_bar


def test_training_prompts_are_the_prompts_eval_sends():
    # The template here has no default system turn, so the prompts differ unless training sends
    # the chain-of-thought system message that evaluation sends.
    import argparse

    from superthoughts_ext.eval_data import build_prompt
    from superthoughts_ext.train import add_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    required = ["--model", "m", "--data", "d.jsonl", "--output", "o"]
    tok = make_tokenizer()
    row = [{"problem": "what is 2 + 3", "solution": "5"}]
    options = options_from_args(parser.parse_args(required))
    example, = train_data.load_examples(row, tok, problem_field="problem", solution_field="solution",
                                        system_prompt=options.system_prompt, max_length=None)
    eval_ids = tok(build_prompt(tok, "what is 2 + 3"), add_special_tokens=False)["input_ids"]
    assert example["prompt_ids"] == eval_ids
    assert TrainOptions(model="m", data=row, output_dir="o").system_prompt == options.system_prompt
    # --template-system-prompt leaves the system turn to the template (none here).
    options = options_from_args(parser.parse_args(required + ["--template-system-prompt"]))
    assert options.system_prompt is None
    example, = train_data.load_examples(row, tok, problem_field="problem", solution_field="solution",
                                        system_prompt=None, max_length=None)
    assert example["prompt_ids"] != eval_ids and tok.decode(example["prompt_ids"]).count("system") == 0
    # eval takes the same two flags, so a model trained with either is scored on its own prompts.
    from superthoughts_ext import eval_cli

    eval_parser = argparse.ArgumentParser()
    eval_cli.add_arguments(eval_parser)
    for flags in (["--template-system-prompt"], ["--system-prompt", "be brief"], []):
        train_options = options_from_args(parser.parse_args(required + flags))
        eval_args = eval_parser.parse_args(["--model", "m", "--bench", "math500"] + flags)
        example, = train_data.load_examples(row, tok, problem_field="problem", solution_field="solution",
                                            system_prompt=train_options.system_prompt, max_length=None)
        eval_ids = tok(build_prompt(tok, "what is 2 + 3", eval_args.system_prompt), add_special_tokens=False)
        assert example["prompt_ids"] == eval_ids["input_ids"], flags
