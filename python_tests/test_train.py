"""Training wrapper tests: tiny random Qwen2 / Llama models and a word-level tokenizer, CPU.

Covers: loss halves within a few dozen steps (SuperThoughts and baseline), the output
directory is a self-contained loadable checkpoint, and bad input. LoRA runs:
test_train_lora.py. Resume: test_train_resume.py. Pad-split draws across DataLoader
workers, ranks and resumes, and 2-process torchrun runs: test_train_parallel.py. The fixtures
and helpers here (base_dirs, FAST, ONE_STEP, ROWS, make_model, make_tokenizer, free_port,
losses) serve the other test_train_*.py.
"""
from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from superthoughts_ext.stop_tokens import resolve_eos_ids  # noqa: E402
from superthoughts_ext.train import TrainOptions, add_arguments, run, train  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
WORDS = ["system", "user", "assistant", "what", "is", "so", "the", "answer", "step", "+", "="]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Fixed small task: "what is a + b" -> "a + b = c so the answer is c", sums below 10.
ROWS = [
    {"problem": f"what is {a} + {b}", "solution": f"{a} + {b} = {a + b} so the answer is {a + b}"}
    for a, b in [(1, 2), (3, 4), (2, 5), (4, 4), (0, 7), (6, 1), (3, 3), (2, 2)]
]
FAST = dict(
    max_steps=30, learning_rate=3e-3, batch_size=8, warmup_ratio=0.0, lr_scheduler="constant",
    logging_steps=1, save_steps=0, progress_bar=False, seed=0,
)
ONE_STEP = {**FAST, "max_steps": 1}  # for tests of what a run accepts or writes, not what it learns


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level ChatML tokenizer: specials, chat words, digits, arithmetic symbols."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + [str(d) for d in range(10)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
        eos_token="<|im_end|>", chat_template=CHATML,
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tok


def make_model(kind: str, vocab: int) -> torch.nn.Module:
    """Tiny random causal LM of the given family (2 layers, hidden 64)."""
    common = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    config = Qwen2Config(**common) if kind == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny base checkpoints (model + tokenizer) for qwen2 and llama, plus the data file."""
    root = tmp_path_factory.mktemp("train_base")
    tok = make_tokenizer()
    dirs = {}
    for kind in ("qwen2", "llama"):
        path = root / kind
        make_model(kind, len(tok) + 3).save_pretrained(path)
        tok.save_pretrained(path)
        dirs[kind] = path
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    dirs["data"] = data
    return dirs


def losses(result) -> list[float]:
    return [e["loss"] for e in result.log_history if "loss" in e]


def free_port() -> int:
    """A free local port for the rendezvous of the multi-process tests (test_train_parallel.py,
    test_train_fsdp.py)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_loss_halves(base_dirs, tmp_path, baseline):
    result = train(TrainOptions(
        model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "out",
        baseline=baseline, **FAST,
    ))
    curve = losses(result)
    assert len(curve) == FAST["max_steps"] and all(map(torch.isfinite, torch.tensor(curve)))
    assert sum(curve[-3:]) / 3 <= 0.5 * curve[0], curve
    assert result.global_step == FAST["max_steps"] and result.num_examples == len(ROWS)
    # Trainer's FLOP count: 6 x non-embedding parameters x positions (SuperThoughts: units).
    assert result.metrics["total_flos"] > 0
    logged = result.log_history[0]
    if baseline:
        assert "loss_main" not in logged
    else:
        assert {"loss_main", "loss_mtp"} <= set(logged)
        assert logged["loss_main"] > 0 and logged["loss_mtp"] > 0


def test_logged_loss_parts_add_up_to_the_loss_over_a_short_accumulation_step(base_dirs, tmp_path):
    # 8 rows in batches of 3 with 2 micro-batches per step: every second step has one micro-batch
    # (3 + 3, then 2), and Trainer weights it like a full step. A logging window over both must
    # weight the parts alike (they were averaged per micro-batch: 6.8592 against a loss of 6.8859).
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "out", rho_max=0.0,
                                lambda_mtp=0.5, **{**FAST, "batch_size": 3, "grad_accum": 2, "max_steps": 4,
                                                   "logging_steps": 2, "learning_rate": 1e-3}))
    logged = [e for e in result.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [1, 2, 4]  # logging_first_step, then every 2
    for entry in logged:
        assert entry["loss"] == pytest.approx(entry["loss_main"] + 0.5 * entry["loss_mtp"], abs=2e-4), entry


def test_output_dir_loads(base_dirs, tmp_path, capfd):
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model

    out = tmp_path / "st"
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **{**FAST, "max_steps": 3}))
    # The run records the tokenizer's special ids itself, so the Trainer has nothing to align
    # and no warning that they "differ from the model config".
    assert "PAD/BOS/EOS" not in capfd.readouterr().err
    loaded = load_model(out)
    assert isinstance(loaded, SuperThoughtsForCausalLM)
    trained = result.model.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], msg=name)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(make_tokenizer()) and tok.eos_token == "<|im_end|>"
    assert tok.chat_template is not None
    saved = loaded.backbone.config
    assert (saved.eos_token_id, saved.pad_token_id) == (tok.eos_token_id, loaded.pad_token_id)
    assert resolve_eos_ids(loaded, None)[0] == tok.eos_token_id


def test_baseline_output_is_plain_hf(base_dirs, tmp_path, capfd):
    out = tmp_path / "sft"
    train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out, baseline=True,
                       **{**FAST, "max_steps": 2}))
    assert "PAD/BOS/EOS" not in capfd.readouterr().err
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>"
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert model.generation_config.eos_token_id[0] == tok.eos_token_id


def test_variants_checkpointing_bf16(base_dirs, tmp_path):
    from superthoughts_ext.modeling import load_model

    out = tmp_path / "variants"
    result = train(TrainOptions(
        model=base_dirs["qwen2"], data=ROWS, output_dir=out, compressor_type="mlp", mtp_type="mlp",
        lambda_mtp=0.5, gradient_checkpointing=True, bf16=True, lora_r=4, **{**FAST, "max_steps": 3},
    ))
    assert all(map(torch.isfinite, torch.tensor(losses(result))))
    loaded = load_model(out)
    assert (loaded.config.compressor_type, loaded.config.mtp_type, loaded.config.lambda_mtp) == ("mlp", "mlp", 0.5)


def test_trainer_asks_for_the_loss_alone_while_training(tmp_path):
    from transformers import TrainingArguments

    from superthoughts_ext.data import SuperThoughtsCollator
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM
    from superthoughts_ext.trainer import SuperThoughtsTrainer

    model = SuperThoughtsForCausalLM.from_base(make_model("qwen2", 40), pad_token_id=0)
    trainer = SuperThoughtsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                                                       use_cpu=True))
    rows = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 10, 11, 2]}, {"prompt_ids": [5], "response_ids": [12, 2]}]
    batch = SuperThoughtsCollator(0, 2, rho_max=0.0)(rows)
    loss, out = trainer.compute_loss(model.train(), batch, return_outputs=True)
    assert out.logits_main is None and out.logits_mtp is None and torch.isfinite(loss)
    with torch.no_grad():
        eval_loss, eval_out = trainer.compute_loss(model.eval(), batch, return_outputs=True)
    assert eval_out.logits_main.shape == (*batch["first_ids"].shape, 40)
    torch.testing.assert_close(eval_loss, loss.detach())


def test_only_the_writing_rank_saves(tmp_path, monkeypatch):
    # Under FSDP transformers 5.25 calls _save on every rank, each with its part of the gathered
    # state dict (empty off rank 0): a rank that must not save writes nothing.
    from transformers import TrainingArguments

    from superthoughts_ext.modeling import SuperThoughtsForCausalLM
    from superthoughts_ext.trainer import SuperThoughtsTrainer

    model = SuperThoughtsForCausalLM.from_base(make_model("qwen2", 40), pad_token_id=0)
    trainer = SuperThoughtsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[],
                                                                       use_cpu=True))
    monkeypatch.setattr(type(trainer.args), "should_save", property(lambda self: False))
    trainer._save(str(tmp_path / "rank1"), state_dict={})
    assert not (tmp_path / "rank1").exists()
    monkeypatch.undo()
    trainer._save(str(tmp_path / "rank0"))
    assert (tmp_path / "rank0" / "model.safetensors").is_file()


def test_distillation_logs_kl(base_dirs, tmp_path):
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "kd",
                                distill_weight=0.5, **{**FAST, "max_steps": 2}))
    assert "loss_distill" in result.log_history[0]
    assert result.log_history[0]["loss_distill"] >= 0


def test_bad_rows_name_the_line(base_dirs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"problem": "what is 1 + 1"}) + "\n")
    with pytest.raises((ValueError, KeyError), match="2"):
        train(TrainOptions(model=base_dirs["qwen2"], data=bad, output_dir=tmp_path / "o", **FAST))


def test_empty_and_missing_data(base_dirs, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no training examples|empty"):
        train(TrainOptions(model=base_dirs["qwen2"], data=empty, output_dir=tmp_path / "o", **FAST))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train(TrainOptions(model=base_dirs["qwen2"], data=tmp_path / "nope.jsonl", output_dir=tmp_path / "o"))
    with pytest.raises(ValueError, match="no training examples"):
        train(TrainOptions(model=base_dirs["qwen2"], data=[], output_dir=tmp_path / "o"))


def test_vocab_mismatch(base_dirs, tmp_path):
    small = tmp_path / "small"
    make_model("qwen2", 8).save_pretrained(small)
    with pytest.raises(ValueError, match="does not belong"):
        train(TrainOptions(model=small, tokenizer=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o"))


def test_bad_options():
    with pytest.raises(TypeError, match="no_such_option"):
        TrainOptions(model="m", data="d", output_dir="o", no_such_option=1)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainOptions(model="m", data="d", output_dir="o", learning_rate=0)
    with pytest.raises(ValueError, match="distill_weight"):
        TrainOptions(model="m", data="d", output_dir="o", baseline=True, distill_weight=1.0)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--no-such-flag"])


def test_cli_run(base_dirs, tmp_path, capsys):
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()  # transformers' default, whatever ran before
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args([
        "--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
        "--max-steps", "2", "--learning-rate", "1e-3", "--batch-size", "4", "--save-steps", "0",
        "--no-progress",
    ])
    assert run(args) == 0
    assert (out / "config.json").is_file()
    # --no-progress hides transformers' bars too ("Loading weights" went into log files), for this run only.
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "tokenizing" not in err and transformers_logging.is_progress_bar_enabled()
    args = parser.parse_args(["--model", str(base_dirs["qwen2"]), "--data", str(tmp_path / "x.jsonl"),
                              "--output", str(tmp_path / "cli2")])
    assert run(args) == 2
    assert "x.jsonl" in capsys.readouterr().err
    # Option errors name the flags the user typed, not TrainOptions' fields.
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--epochs", "0", "--max-steps", "0"])
    assert run(args) == 2
    assert "error: train: set --max-steps > 0 or --epochs > 0" in capsys.readouterr().err
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--lora-alpha", "8"])
    assert run(args) == 2
    assert "error: train: --lora-alpha applies to LoRA runs: set --lora-r > 0" in capsys.readouterr().err
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--bf16", "--dtype", "float16"])
    assert run(args) == 2
    assert "--bf16 autocast needs float32 or bfloat16 weights, not --dtype float16" in capsys.readouterr().err


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_accumulated_loss_is_the_mean_of_micro_batch_means(base_dirs, tmp_path, baseline):
    # Two rows of very different lengths and per-token losses (a trained model gets the short
    # one nearly right): with --grad-accum 2 both modes log the mean of the two rows' own
    # means, not a token-weighted mean, so SuperThoughts and its baseline train the same
    # objective. A learning rate of 1e-12 keeps the weights as they are across the steps.
    trained = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "trained",
                                 baseline=baseline, **FAST)).output_dir
    rows = [ROWS[0], {"problem": "what is 9 + 9", "solution": " ".join(["9 + 9 = 18"] * 12)}]
    tiny_lr = {**FAST, "learning_rate": 1e-12, "batch_size": 1, **({} if baseline else {"rho_max": 0.0})}
    alone = losses(train(TrainOptions(model=trained, data=rows, output_dir=tmp_path / "alone",
                                      baseline=baseline, **{**tiny_lr, "max_steps": 2})))
    accumulated = losses(train(TrainOptions(model=trained, data=rows, output_dir=tmp_path / "accumulated",
                                            baseline=baseline, grad_accum=2, **{**tiny_lr, "max_steps": 1})))
    assert abs(alone[0] - alone[1]) > 0.5, alone  # token weighting would move the mean far off
    assert accumulated[0] == pytest.approx(sum(alone) / 2, rel=1e-3), (accumulated, alone)


def test_report_to_takes_several_integrations():
    # It took one; Trainer logs to a list of them.
    from superthoughts_ext.train import options_from_args, training_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = ["--model", "m", "--data", "d", "--output", "o", "--report-to"]
    assert training_arguments(options_from_args(parser.parse_args([*flags, "none"]))).report_to == []
    several = options_from_args(parser.parse_args([*flags, "tensorboard", "wandb"]))
    assert several.report_to == ("tensorboard", "wandb")
    with pytest.raises(ValueError, match=r"--report-to: .*requires tensorboard"):  # each one is checked
        training_arguments(several)


def test_optim_picks_the_optimizer(base_dirs, tmp_path):
    from superthoughts_ext.train import options_from_args, training_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--output", "o", "--optim", "adafactor"])
    assert str(training_arguments(options_from_args(args)).optim.value) == "adafactor"
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", optim="adafactor",
                                **{**FAST, "max_steps": 6, "learning_rate": 1e-2}))
    assert losses(result)[-1] < losses(result)[0]
