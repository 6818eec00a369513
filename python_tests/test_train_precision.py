"""Training in low precision, and runs that diverge: float16 weights are refused where AdamW
would train them, bfloat16 weights too large for a step of the learning rate are warned about,
and a NaN loss or gradient norm stops the run before the NaN weights are saved. Tiny random
models on CPU (test_train.py's fixtures).
"""
from __future__ import annotations

import argparse
import copy
import math
import re
import warnings

import pytest
import torch
from host_memory import needs_peak_reset, peak_rss_rise

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS  # noqa: E402

from superthoughts_ext import train_precision, train_utils  # noqa: E402
from superthoughts_ext.train import TrainOptions, add_arguments, run, train  # noqa: E402
from superthoughts_ext.trainer import TrainingDiverged  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


@pytest.mark.parametrize("kind", [{}, {"lora_r": 4}, {"baseline": True}], ids=["full", "lora", "baseline-full"])
def test_float16_weights_are_refused_where_adamw_would_train_them(base_dirs, tmp_path, kind):
    # Before this check a full run went NaN at step 4, and the logged loss read 0.
    with pytest.raises(ValueError, match=r"dtype float16 weights cannot be trained \(AdamW's state underflows"):
        TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", dtype="float16", **kind)


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_a_float16_module_is_refused_and_dtype_does_not_apply_to_modules(tmp_path, baseline):
    # A module trains in its own dtype: a float16 one went NaN (the message then blamed the
    # learning rate), and `dtype` was ignored for modules without a word.
    tok = test_train.make_tokenizer()
    half = test_train.make_model("qwen2", len(tok) + 3).half()
    with pytest.raises(ValueError, match=r"train: \d+ trainable weights are float16 \(first: .*\) and cannot be "
                                         r"trained \(AdamW's state underflows"):
        train(TrainOptions(model=half, tokenizer=tok, data=ROWS, output_dir=tmp_path / "o", baseline=baseline,
                           **{**FAST, "max_steps": 1}))
    with pytest.raises(ValueError, match=r"dtype bfloat16 applies to a model directory; a model given as a module "
                                         r"trains in its own dtype"):
        TrainOptions(model=half.float(), data=ROWS, output_dir=tmp_path / "o", dtype="bfloat16")


def test_float16_base_of_a_baseline_lora_run_trains(base_dirs, tmp_path):
    # peft keeps the adapters in float32; the frozen float16 base only runs forward and backward.
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", dtype="float16",
                                baseline=True, lora_r=4, **{**FAST, "max_steps": 12}))
    losses = test_train.losses(result)
    assert len(losses) == 12 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


def test_stalled_bf16_share_counts_weights_a_step_cannot_move():
    layer = torch.nn.Linear(64, 64, dtype=torch.bfloat16)
    frozen = torch.nn.Linear(64, 64, dtype=torch.bfloat16).requires_grad_(False)
    wide = torch.nn.Linear(64, 64)  # float32: not counted
    with torch.no_grad():
        layer.weight.fill_(1.0)  # bfloat16 spacing 2^-8 below 1.0, 2^-7 above: a step of 1e-3 rounds away
        layer.bias.fill_(1e-3)   # a step of 1e-3 moves these
    model = torch.nn.ModuleList([layer, frozen, wide])
    share, count = train_precision.stalled_bf16_share(model, 1e-3)
    assert count == 64 * 64 + 64
    assert share == pytest.approx(64 * 64 / count)
    assert train_precision.stalled_bf16_share(model, 1e-2) == (0.0, count)  # above half the spacing: all move
    # A tensor larger than the sample is read on a strided sample, with the same share.
    big = torch.nn.Parameter(torch.ones(3 * train_precision.STALL_SAMPLE + 5, dtype=torch.bfloat16))
    assert train_precision.stalled_bf16_share(torch.nn.ParameterList([big]), 1e-3) == (1.0, big.numel())


@pytest.mark.parametrize("learning_rate,warned", [(1e-5, True), (3e-3, False)], ids=["stalls", "moves"])
def test_bf16_weights_a_small_learning_rate_cannot_move_are_warned_about(base_dirs, tmp_path, learning_rate, warned):
    # Measured on this tiny model: at 1e-5 about three quarters of the weights stay as they are.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", dtype="bfloat16",
                           **{**FAST, "max_steps": 1, "learning_rate": learning_rate}))
    messages = [str(w.message) for w in caught if "trainable bfloat16 weights" in str(w.message)]
    assert bool(messages) == warned
    if warned:
        assert "are too large for a step of the learning rate (1e-05) to change them" in messages[0]
        assert "keep float32 weights (--dtype float32) with --bf16 autocast" in messages[0]


def test_bf16_adamw_second_moment_never_decreases():
    # What the warning below says, checked on torch's own AdamW: its state takes each weight's
    # dtype, and 0.999 x exp_avg_sq changes it by 0.1%, under half a bfloat16 step (0.2-0.4%),
    # so it rounds back. After one large gradient and 1000 small ones float32's second moment has
    # fallen to 0.37 of the spike's value; bfloat16's still holds all of it.
    for fused in (False, True):
        held = {}
        for dtype in (torch.float32, torch.bfloat16):
            weight = torch.zeros(64, dtype=dtype, requires_grad=True)
            optimizer = torch.optim.AdamW([weight], lr=1e-3, fused=fused)
            for scale in [1.0] + [1e-3] * 1000:
                weight.grad = torch.full_like(weight, scale)
                optimizer.step()
            held[dtype] = optimizer.state[weight]["exp_avg_sq"].float().mean().item() / 1e-3
        assert held[torch.float32] == pytest.approx(0.368, abs=0.01)
        assert held[torch.bfloat16] > 0.99, (fused, held)


@pytest.mark.parametrize("dtype,optim,warned", [("bfloat16", None, True), ("bfloat16", "adamw_torch", True),
                                                ("bfloat16", "adafactor", False), ("float32", None, False)],
                         ids=["bf16-default", "bf16-adamw_torch", "bf16-adafactor", "fp32"])
def test_adamw_training_bf16_weights_is_warned_about_its_second_moment(base_dirs, tmp_path, dtype, optim, warned):
    # A learning rate at which bfloat16 weights do move (no stalled-weights warning): AdamW's
    # moments of those weights are bfloat16 too, and its second moment then only ever grows, so
    # one large gradient shrinks every later step of the weights it hit. This went unsaid.
    # transformers' Adafactor keeps float32 state.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", dtype=dtype, optim=optim,
                           **{**FAST, "max_steps": 1}))
    messages = [str(w.message) for w in caught if "second moment" in str(w.message)]
    assert not any("trainable bfloat16 weights" in str(w.message) for w in caught)
    assert bool(messages) == warned
    if warned:
        assert re.search(r"train: AdamW keeps its moment estimates of the [\d,]+ bfloat16 weights it trains in "
                         r"bfloat16, where the second moment never decreases", messages[0]), messages[0]
        assert "keep float32 weights (--dtype float32) with --bf16 autocast" in messages[0]


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_a_diverged_run_stops_without_saving_nan_weights(base_dirs, tmp_path, baseline):
    # A learning rate of 1e12 turns the weights NaN on the first update; Trainer went on to the
    # last step and saved them (logging the loss as the earlier steps' mean).
    out = tmp_path / "o"
    with pytest.raises(TrainingDiverged, match=r"train: training diverged by step 2 \(loss nan, grad_norm nan.*\); "
                                               r"stopped without saving the model \(checkpoints from step 1 on may"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, baseline=baseline,
                           **{**FAST, "max_steps": 6, "learning_rate": 1e12}))
    assert not (out / "config.json").exists()


def test_a_diverged_cli_run_exits_with_the_error(base_dirs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output",
                              str(tmp_path / "o"), "--max-steps", "4", "--learning-rate", "1e12", "--logging-steps",
                              "1", "--save-steps", "0", "--no-progress", "--lr-scheduler", "constant"])
    assert run(args) == 2
    assert "error: train: training diverged by step 2" in capsys.readouterr().err


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_a_bf16_autocast_run_returns_the_model_it_saved(base_dirs, tmp_path, baseline):
    # accelerate's autocast wrapper stayed on the returned model's forward: its logits were
    # bfloat16-autocast ones, ~3e-3 off those of the saved float32 model with the same weights.
    from superthoughts_ext.modeling import load_model

    out = tmp_path / "o"
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, baseline=baseline, bf16=True,
                                **{**FAST, "max_steps": 2}))
    from superthoughts_ext.data import SuperThoughtsCollator

    collate = SuperThoughtsCollator(0, 2, rho_max=0.0, baseline=baseline)
    batch = collate([{"prompt_ids": [4, 5], "response_ids": [6, 7, 8, 9]}])
    batch = {key: value for key, value in batch.items() if not key.startswith("labels")}
    with torch.no_grad():
        returned, saved = (model.eval()(**batch) for model in (result.model, load_model(out)))
    name = "logits" if baseline else "logits_main"
    assert getattr(returned, name).dtype == torch.float32
    assert torch.equal(getattr(returned, name), getattr(saved, name))


def test_float16_mixed_precision_steps_the_scaler_skips_are_not_divergence(tmp_path):
    # A GradScaler skips steps whose gradients overflow (routine early in a float16 run) and
    # Trainer still logs their grad_norm as inf / nan: that run is fine, not diverged.
    from transformers import TrainingArguments

    from superthoughts_ext.trainer import SuperThoughtsTrainer

    model = test_train.make_model("qwen2", 40)
    trainer = SuperThoughtsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                                                       use_cpu=True))
    with pytest.raises(TrainingDiverged, match=r"grad_norm inf"):
        trainer._stop_if_diverged({"loss": 2.0, "grad_norm": float("inf")})
    trainer.args.fp16 = True  # set after construction: float16 autocast needs a GPU
    trainer._stop_if_diverged({"loss": 2.0, "grad_norm": float("inf")})


@pytest.mark.parametrize("dtype, bf16, teacher", [("float32", True, torch.bfloat16), ("float32", False, torch.float32),
                                                  ("bfloat16", False, torch.bfloat16)])
def test_the_distillation_teacher_is_bf16_under_bf16_autocast(base_dirs, tmp_path, dtype, bf16, teacher):
    # Under --bf16 the frozen teacher was loaded in float32 beside the float32 weights trained:
    # 4 bytes a parameter (28 GB for a 7B teacher) where autocast runs its matmuls in bfloat16.
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "kd", dtype=dtype,
                                bf16=bf16, distill_weight=0.5, **{**FAST, "max_steps": 2}))
    assert {p.dtype for p in result.model.teacher.parameters()} == {teacher}
    assert math.isfinite(result.log_history[0]["loss_distill"]) and result.log_history[0]["loss_distill"] >= 0
    assert {p.dtype for p in result.model.parameters()} == {getattr(torch, dtype)}


@needs_peak_reset
def test_a_teacher_copied_from_the_model_is_made_in_its_dtype_without_a_float32_copy():
    # With a SuperThoughts checkpoint (or a module) as the model there is no plain checkpoint to
    # load the teacher from: it was copied from the backbone in float32 and only then cast, so a
    # 7B teacher cost a 28 GB transient for 14 GB kept (peak 2x the bfloat16 teacher here).
    from transformers import AutoModelForCausalLM, Qwen2Config

    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    config = Qwen2Config(vocab_size=16384, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(0)
    model = SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(config))
    expected = copy.deepcopy(model.backbone).to(torch.bfloat16)  # the teacher as it was made
    teacher_bytes = sum(p.nbytes for p in expected.parameters())
    _, rise = peak_rss_rise(lambda: train_utils.attach_teacher(model, model, torch.bfloat16))
    assert rise < 1.5 * teacher_bytes, f"peak {rise / 2**20:.0f} MiB for a {teacher_bytes / 2**20:.0f} MiB teacher"
    teacher = model.teacher
    assert teacher.lm_head.weight is teacher.get_input_embeddings().weight  # still tied, stored once
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert not any(name.startswith("teacher") for name in model.state_dict())
    mine, theirs = dict(teacher.named_buffers()), dict(expected.named_buffers())
    # The RoPE frequencies stay float32, as from_pretrained(dtype=torch.bfloat16) builds them
    # (the teacher of a plain checkpoint): .to() rounded them, turning the angles by radians.
    kept = dict(model.backbone.named_buffers())
    kept = {name: kept[name] for name in theirs if name.endswith("inv_freq")}
    assert kept and all(tensor.dtype == torch.float32 for tensor in kept.values())
    for name, tensor in [*expected.named_parameters(remove_duplicate=False), *theirs.items()]:
        made = teacher.get_parameter(name) if name not in theirs else mine[name]
        tensor = kept.get(name, tensor)
        assert made.dtype == tensor.dtype and torch.equal(made, tensor), name
    assert mine.keys() == theirs.keys()
