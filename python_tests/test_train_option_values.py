"""Option values a training run cannot use, refused before any loading (or, for a run that
diverged on its last step, before its model is saved). Tiny random models on CPU (test_train.py's
fixtures)."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS  # noqa: E402

from superthoughts_ext.train import TrainOptions, train  # noqa: E402
from superthoughts_ext.trainer import TrainingDiverged  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("change, message", [
    # An infinite rate or decay trained one step to NaN weights and saved them (exit 0).
    ({"learning_rate": INF}, r"learning_rate must be a finite number > 0, got inf"),
    ({"weight_decay": NAN}, r"weight_decay must be a finite number >= 0, got nan"),
    ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0, got -0.1"),
    # transformers raised an OverflowError while counting the steps.
    ({"num_epochs": INF}, r"num_epochs must be finite, got inf"),
    ({"max_grad_norm": NAN}, r"max_grad_norm must be a number"),
    # Refused by transformers or the model config after loading, in their own names.
    ({"seed": -1}, r"seed must be in \[0, 2\*\*32\), got -1"),
    ({"seed": 2**32}, r"seed must be in \[0, 2\*\*32\), got 4294967296"),
    ({"logging_steps": 0}, r"logging_steps must be >= 1, got 0"),
    ({"dataloader_num_workers": -1}, r"dataloader_num_workers must be >= 0, got -1"),
    ({"lambda_mtp": NAN}, r"lambda_mtp must be a finite number >= 0, got nan"),
    ({"distill_weight": INF}, r"distill_weight must be a finite number >= 0, got inf"),
    ({"compressor_type": "conv"}, r"compressor_type must be one of linear, mlp, got 'conv'"),
    ({"mtp_type": ""}, r"mtp_type must be one of decoder, mlp, got ''"),
    ({"output_dir": ""}, r"output_dir must name a directory, got ''"),
])
def test_values_a_run_cannot_use_are_refused_up_front(change, message):
    options = {"model": "m", "data": ROWS, "output_dir": "o", **change}
    with pytest.raises(ValueError, match=f"^TrainOptions: {message}"):
        TrainOptions(**options)


def test_an_output_that_cannot_be_written_is_refused_before_training(base_dirs, tmp_path):
    # Trainer makes the folder at its first save: under a file (or read-only) the run failed
    # with a traceback, after training.
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"--output '.*file.txt/out' cannot be written: .*file.txt is a file, not a "
                                         r"folder"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=blocker / "out", **FAST))
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match=r"--output '.*loop' cannot be written: .*[Ss]ymlink loop"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=loop, **FAST))


def test_weights_broken_by_the_last_step_are_not_saved(base_dirs, tmp_path):
    # A rate that overflows float32 turns the weights infinite in one step; the logged loss of
    # that step was finite (computed before the update), so the model of inf was saved.
    out = tmp_path / "o"
    with pytest.raises(TrainingDiverged, match=r"weights hold NaN or inf after the last step \(.*\); the model was "
                                               r"not saved"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out,
                           **{**FAST, "max_steps": 1, "learning_rate": 1e39}))
    assert not (out / "model.safetensors").exists()


def test_a_second_run_into_one_output_is_refused_while_the_first_writes(base_dirs, tmp_path):
    # Two runs started together both passed the output checks (nothing is saved before the first
    # checkpoint) and overwrote, or rotated away, each other's checkpoints.
    from superthoughts_ext.run_info import output_lock

    out = tmp_path / "o"
    with output_lock(out, "train"):  # another process's lock (flock locks conflict per open file)
        with pytest.raises(ValueError, match=r"train: '.*o' is being written by pid \d+ on .*; wait for it to finish"):
            train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **{**FAST, "max_steps": 1}))
    done = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **{**FAST, "max_steps": 1}))
    assert done.global_step == 1  # released


def test_accelerate_launch_settings_that_differ_from_the_flags_are_said(monkeypatch, tmp_path):
    # accelerate launch passes its config as environment variables: its mixed precision turned
    # bf16 on without --bf16, and its gradient accumulation was dropped, both without a word.
    import warnings

    from superthoughts_ext.train_args import training_arguments

    options = TrainOptions(model="m", data=ROWS, output_dir=tmp_path / "o", **{**FAST, "grad_accum": 2})
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    with pytest.warns(UserWarning) as caught:
        args = training_arguments(options)
    said = [str(w.message) for w in caught]
    assert ("train: accelerate's gradient_accumulation_steps 4 is not used; this run accumulates --grad-accum 2 "
            "micro-batches per step") in said
    assert "train: accelerate's mixed_precision bf16 (its launch config) applies to this run, though --bf16 is not given" \
        in said
    assert args.mixed_precision == "bf16" and args.gradient_accumulation_steps == 2
    # The same settings as the flags: nothing to say.
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training_arguments(TrainOptions(model="m", data=ROWS, output_dir=tmp_path / "o",
                                        **{**FAST, "grad_accum": 2, "bf16": True}))


def test_report_to_none_or_all_among_other_names_is_refused(tmp_path):
    # TrainingArguments reads "none" / "all" only alone: among others it failed in transformers'
    # words ("none is not supported, only ...") without naming the flag.
    from superthoughts_ext.train_args import training_arguments

    for names in (("codecarbon", "none"), ("none", "all")):
        options = TrainOptions(model="m", data=ROWS, output_dir=tmp_path / "o", report_to=names, **FAST)
        with pytest.raises(ValueError, match=rf"train: --report-to: 'none' and 'all' stand alone, got {' '.join(names)}"):
            training_arguments(options)


def test_accelerates_defaults_and_fp16_are_said_as_they_differ(monkeypatch, tmp_path):
    # gradient_accumulation_steps 1 is accelerate's default config: not worth a word; fp16 is said as bf16 is.
    import warnings
    from types import SimpleNamespace

    from superthoughts_ext.train_args import _warn_launcher_settings

    options = TrainOptions(model="m", data=ROWS, output_dir=tmp_path / "o", **{**FAST, "grad_accum": 2})
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_launcher_settings(options, SimpleNamespace(mixed_precision="no"))
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    with pytest.warns(UserWarning, match=r"accelerate's mixed_precision fp16 \(its launch config\) applies"):
        _warn_launcher_settings(options, SimpleNamespace(mixed_precision="fp16"))


def test_report_to_all_is_left_to_transformers(tmp_path):
    # "all" among the names is TrainingArguments' to read (the up-front check knows it only alone).
    from superthoughts_ext.train_args import _check_names

    for report_to in ("all", ("all",), ("none",)):
        _check_names(TrainOptions(model="m", data=ROWS, output_dir=tmp_path / "o", **{**FAST, "report_to": report_to}))
