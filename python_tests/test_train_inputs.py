"""Inputs of the training wrapper other than its rows (those: test_train_rows.py): tokenizers
without a pad token or without files, continuing a SuperThoughts checkpoint with other settings,
option mistakes and options a run would not read, refused before the data is tokenised, and an
output that holds a finished run. Tiny random models on CPU, a step or two each.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import ONE_STEP, ROWS, make_model, make_tokenizer  # noqa: E402

from superthoughts_ext import train_data, train_utils  # noqa: E402
from superthoughts_ext.train import TrainOptions, train  # noqa: E402

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
