"""Inputs of the training wrapper that the main tests do not cover: tokenizers without a pad
token or without files, continuing a SuperThoughts checkpoint with other settings, rows beyond
the model's context, and pre-tokenised rows. Tiny random models on CPU, a step or two each.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS, make_model, make_tokenizer  # noqa: E402

from superthoughts_ext import train_data, train_utils  # noqa: E402
from superthoughts_ext.data import layout_length  # noqa: E402
from superthoughts_ext.train import TrainOptions, train  # noqa: E402

ONE_STEP = {**FAST, "max_steps": 1}
base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


@pytest.fixture
def recorded_pads(monkeypatch):
    """Makes `train` build a collator that records the pad id it pads with."""
    from superthoughts_ext import data

    pads: list[int] = []

    class Recording(data.SuperThoughtsCollator):
        def __init__(self, pad_id, *args, **kwargs):
            super().__init__(pad_id, *args, **kwargs)
            pads.append(self.pad_id)

    monkeypatch.setattr(data, "SuperThoughtsCollator", Recording)
    return pads


def saved_pad(out: Path, baseline: bool) -> int | None:
    values = json.loads((out / "config.json").read_text())
    return values["pad_token_id"] if baseline else values["superthoughts"]["pad_token_id"]


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_tokenizer_without_pad_saves_the_pad_it_trained_with(tmp_path, recorded_pads, baseline):
    from superthoughts_ext.modeling import load_model

    tok = make_tokenizer()
    tok.pad_token = None
    eos = tok.eos_token_id
    model = make_model("llama", len(tok) + 3)
    # Base checkpoints often name <|endoftext|> (id 0) as EOS and no pad: a reload that lost
    # the training pad would fall back to that id.
    model.config.eos_token_id, model.config.pad_token_id = 0, None
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    result = train(TrainOptions(model=tmp_path / "base", tokenizer=tok, data=ROWS, output_dir=out,
                                baseline=baseline, **ONE_STEP))
    assert recorded_pads == [eos]
    assert saved_pad(out, baseline) == eos
    assert tok.pad_token_id is None, "the caller's tokenizer object was changed"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).pad_token_id == eos
    if not baseline:
        assert result.model.pad_token_id == eos and load_model(out).pad_token_id == eos


def test_with_pad_token_replaces_another_pad_with_a_warning():
    tok = make_tokenizer()
    assert train_utils.with_pad_token(tok, tok.pad_token_id) is tok
    with pytest.warns(UserWarning, match="replaced by '<|im_end|>'"):
        other = train_utils.with_pad_token(tok, tok.eos_token_id)
    assert other.pad_token_id == tok.eos_token_id and tok.pad_token_id == 0
    with pytest.raises(ValueError, match="id 99"):
        train_utils.with_pad_token(tok, 99)


@pytest.fixture
def st_checkpoint(base_dirs, tmp_path):
    """Writes a fresh SuperThoughts checkpoint (pad 0, with the tokenizer) of the qwen2 base."""
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    def write(name: str, **fields) -> Path:
        out = tmp_path / name
        SuperThoughtsForCausalLM.from_base(base_dirs["qwen2"], pad_token_id=0, **fields).save_pretrained(out)
        make_tokenizer().save_pretrained(out)
        return out

    return write


def saved_fields(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())["superthoughts"]


def test_continued_checkpoint_takes_the_runs_loss_settings(st_checkpoint, tmp_path):
    source = st_checkpoint("st")
    out = tmp_path / "more"
    result = train(TrainOptions(model=source, data=ROWS, output_dir=out, distill_weight=0.5, lambda_mtp=0.0,
                                rho_max=0.1, **ONE_STEP))
    assert "loss_distill" in result.log_history[0]
    expected = {"distill_weight": 0.5, "lambda_mtp": 0.0, "rho_max": 0.1, "pad_token_id": 0}
    assert {k: getattr(result.model.config, k) for k in expected} == expected
    assert {k: saved_fields(out)[k] for k in expected} == expected


def test_distilled_checkpoint_continues_without_distillation(st_checkpoint, tmp_path):
    source = st_checkpoint("distilled", distill_weight=0.5, lambda_mtp=0.3)
    out = tmp_path / "more"
    result = train(TrainOptions(model=source, data=ROWS, output_dir=out, **ONE_STEP))
    assert "loss_distill" not in result.log_history[0]
    # lambda_mtp not given: the checkpoint's stays.
    assert saved_fields(out)["distill_weight"] == 0.0 and saved_fields(out)["lambda_mtp"] == 0.3


def test_continued_checkpoint_dtype_pad_and_refusals(st_checkpoint):
    source = st_checkpoint("st")
    build = train_utils.build_model
    model = build(source, baseline=False, dtype=torch.bfloat16, overrides={"pad_token_id": 2, "rho_max": 0.5})
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.pad_token_id == 0 and model.config.rho_max == 0.5
    with pytest.raises(ValueError, match="compressor_type='mlp'.*has compressor_type='linear'"):
        build(source, baseline=False, dtype=torch.float32, overrides={"compressor_type": "mlp"})
    with pytest.raises(ValueError, match="mtp_type='mlp'.*has mtp_type='decoder'"):
        build(model, baseline=False, dtype=torch.float32, overrides={"mtp_type": "mlp"})
    with pytest.raises(ValueError, match="lambda_mtp must be >= 0"):
        build(model, baseline=False, dtype=torch.float32, overrides={"lambda_mtp": -1.0})
    assert model.config.lambda_mtp == 1.0, "a refused value was kept"
    # The same kinds as the checkpoint's are fine.
    build(model, baseline=False, dtype=torch.float32, overrides={"compressor_type": "linear", "mtp_type": "decoder"})


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


def test_directory_without_tokenizer_files_is_refused(base_dirs, tmp_path):
    bare = tmp_path / "bare"
    make_model("qwen2", len(make_tokenizer()) + 3).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*bare.*; pass --tokenizer"):
        train(TrainOptions(model=bare, data=ROWS, output_dir=tmp_path / "o", **ONE_STEP))
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*bare.*; --tokenizer names a directory without one$"):
        train_utils.load_tokenizer(bare, base_dirs["qwen2"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_utils.load_tokenizer(tmp_path / "nope", None)
    # The tokenizer of another directory is fine.
    assert len(train_utils.load_tokenizer(base_dirs["qwen2"], bare)) == len(make_tokenizer())


@pytest.mark.parametrize("progress_bar", [True, False], ids=["bar", "no-bar"])
def test_tokenising_progress_follows_progress_bar(base_dirs, tmp_path, capsys, progress_bar):
    train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "o",
                       **{**ONE_STEP, "progress_bar": progress_bar}))
    shown = f"tokenizing {base_dirs['data']}: 100%" in capsys.readouterr().err
    assert shown == progress_bar


def test_system_prompt_flags_exclude_each_other(capsys):
    # Both write system_prompt: the last one given won, silently.
    import argparse

    from superthoughts_ext.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--system-prompt", "x",
                           "--template-system-prompt"])
    assert "not allowed with argument --system-prompt" in capsys.readouterr().err


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


@pytest.mark.parametrize("change,message", [
    ({"lr_scheduler": "cosin"}, r"--lr-scheduler 'cosin' is none of transformers .*'s: linear, cosine, "),
    ({"logging_steps": 0}, r"logging_steps must be >= 1, got 0"),
    ({"report_to": "tensorbord"}, "--report-to: tensorbord is not supported"),
    ({"model": "tokenizer_only"}, r"tokenizer_only' is not a model directory \(no config.json\)"),
    # Known to transformers but not installed here: Trainer raised at construction, after tokenising.
    ({"report_to": "tensorboard"}, r"--report-to: .*tensorboard"),
    ({"lr_scheduler": "warmup_stable_decay"}, r"warmup_stable_decay: .*num_decay_steps.*--lr-scheduler-kwargs"),
    ({"lr_scheduler": "cosine_with_min_lr"}, r"cosine_with_min_lr: One of min_lr or min_lr_rate"),
    # It steps on the held-out loss (TrainingArguments said "requires an eval strategy", not how to give one).
    ({"lr_scheduler": "reduce_lr_on_plateau"}, "lr_scheduler reduce_lr_on_plateau steps on the held-out loss: "
                                               "give eval_data"),
    ({"output_dir": "a_file"}, r"a_file' is a file, not a directory"),
    ({"output_dir": "model"}, "is the --model directory; the run would overwrite the model it starts from"),
    ({"optim": "adamw_nope"}, r"--optim 'adamw_nope' is none of transformers .*adamw_torch_fused"),
    # Its package is missing: Trainer raised when it built the optimizer, after tokenising and loading.
    ({"optim": "adamw_bnb_8bit"}, r"--optim adamw_bnb_8bit: You need to install `bitsandbytes`"),
], ids=["scheduler", "logging-steps", "report-to", "no-config", "report-to-missing", "scheduler-kwargs",
        "scheduler-min-lr", "plateau", "output-file", "output-is-model", "optim", "optim-missing"])
def test_option_mistakes_fail_before_the_data_is_tokenised(base_dirs, tmp_path, monkeypatch, change, message):
    # Tokenising a large file takes minutes: a typo must not wait for it.
    def tokenise(*args, **kwargs):
        raise AssertionError("the data was tokenised before the options were checked")

    monkeypatch.setattr(train_data, "load_examples", tokenise)
    make_tokenizer().save_pretrained(tmp_path / "tokenizer_only")
    model = tmp_path / "tokenizer_only" if "model" in change else base_dirs["qwen2"]
    (tmp_path / "a_file").write_text("")
    output = {"a_file": tmp_path / "a_file", "model": base_dirs["qwen2"]}.get(change.get("output_dir"), tmp_path / "o")
    options = {**ONE_STEP, **change, "model": model, "output_dir": output}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(TrainOptions(data=ROWS, **options))


@pytest.mark.parametrize("change,message", [
    ({"baseline": True, "lambda_mtp": 0.5}, "lambda_mtp applies to SuperThoughts mode, not baseline"),
    ({"baseline": True, "compressor_type": "mlp", "rho_max": 0.5},
     "compressor_type, rho_max apply to SuperThoughts mode, not baseline"),
    ({"lora_alpha": 64, "lora_dropout": 0.1}, "lora_alpha, lora_dropout apply to LoRA runs: set lora_r > 0"),
    ({"lora_target_modules": ["q_proj"]}, "lora_target_modules applies to LoRA runs"),
    ({"bf16": True, "dtype": "float16"}, "bf16 autocast needs float32 or bfloat16 weights, not dtype float16"),
    ({"save_steps": -5}, r"save_steps must be >= 0 \(0 = final save only\), got -5"),
    # transformers reads only a negative max_steps as unset: 0 trained one step at the peak rate.
    ({"max_steps": 0}, r"max_steps must be > 0, or -1 \(the default\) to train num_epochs; got 0"),
    ({"max_length": 0}, r"max_length must be >= 1 \(None: the model's context\), got 0"),
    ({"save_total_limit": -1}, r"save_total_limit must be >= 0 \(0 = keep every checkpoint\)"),
    # An alpha of 0 scales every adapter to nothing (only the compressor and MTP trained).
    ({"lora_r": 4, "lora_alpha": 0}, "lora_alpha must be > 0, got 0"),
    ({"lora_r": 4, "lora_dropout": 1.5}, r"lora_dropout must be in \[0, 1\), got 1.5"),
    # transformers' constant schedule ignores a warmup and both constant ones their arguments.
    ({"lr_scheduler": "constant", "warmup_ratio": 0.5}, r"warmup_ratio 0.5 needs a schedule with a warmup "
                                                        r"\(constant_with_warmup\), not constant"),
    ({"lr_scheduler": "constant_with_warmup", "lr_scheduler_kwargs": {"min_lr_rate": 0.5}},
     r"lr_scheduler constant_with_warmup takes no arguments, got \{'min_lr_rate': 0.5\}"),
])
def test_options_a_run_would_not_read_are_refused(change, message):
    # Silently dropped, they trained something else than asked (--baseline --lambda-mtp 0.5 was a
    # plain SFT run; --lora-alpha without --lora-r full fine-tuning).
    with pytest.raises(ValueError, match=f"^TrainOptions: {message}"):
        TrainOptions(model="m", data=ROWS, output_dir="o", **change)
    # Their defaults, and the same values where they are read, are fine.
    TrainOptions(model="m", data=ROWS, output_dir="o", baseline=True, rho_max=0.25,
                 lora_target_modules=list(train_utils.DEFAULT_LORA_TARGETS))
    TrainOptions(model="m", data=ROWS, output_dir="o", lambda_mtp=0.5, lora_r=4, lora_alpha=64, save_total_limit=0)
    TrainOptions(model="m", data=ROWS, output_dir="o", lr_scheduler="constant")  # the default warmup_ratio: not asked for


def test_scheduler_arguments_and_checkpoint_limit_reach_the_trainer(tmp_path):
    import argparse

    from superthoughts_ext.train import add_arguments, options_from_args, training_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", str(tmp_path / "o"), "--lr-scheduler",
                              "cosine_with_min_lr", "--lr-scheduler-kwargs", '{"min_lr_rate": 0.1}',
                              "--save-total-limit", "0"])
    training = training_arguments(options_from_args(args))
    assert training.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert training.save_total_limit is None  # 0 keeps every checkpoint
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--lr-scheduler-kwargs", "[1]"])


def test_a_new_run_does_not_overwrite_a_finished_one(base_dirs, tmp_path):
    # A --save-steps 0 run leaves no checkpoint-N folder: only its model says a run finished there.
    out = tmp_path / "sft"
    train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, baseline=True, **ONE_STEP))
    # Trainer sets use_cache False on the model it trains; the saved config keeps the base's.
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    with pytest.raises(ValueError, match=r"sft' holds a trained model \(config.json, model.safetensors\); a new "
                                         r"run needs another --output"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **ONE_STEP))
