"""Resuming a training run: a resumed run matches an uninterrupted one; checkpoints of another
length in epochs, of a finished run, of another output's run, with other settings or optimizer,
cut off mid-save, and LoRA adapters with other options or of another base model are refused
before anything loads, and a LoRA adapter that does not fit the model is named. Tiny random models
on CPU (test_train.py's fixtures). (The resume checks on hand-written checkpoint folders:
test_train_resume_checks.py; `--resume auto`: test_train_resume_auto.py.)
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ONE_STEP, ROWS, losses  # noqa: E402

from superthoughts_ext.train import TrainOptions, train  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


def test_resume_from_checkpoint(base_dirs, tmp_path):
    # rho_max = 0: no pad-split draws, so the resumed run must match an uninterrupted one.
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], rho_max=0.0)
    fast = {**FAST, "save_steps": 2}
    straight = train(TrainOptions(**opts, output_dir=tmp_path / "straight", **{**fast, "max_steps": 4}))
    out = tmp_path / "resume"
    first = train(TrainOptions(**opts, output_dir=out, **{**fast, "max_steps": 2}))
    assert (out / "checkpoint-2").is_dir() and first.global_step == 2
    assert "model" not in repr(first) and "Linear" not in repr(first)  # not the whole module tree
    second = train(TrainOptions(**opts, output_dir=out, resume_from_checkpoint=True, **{**fast, "max_steps": 4}))
    assert second.global_step == 4
    assert [e["step"] for e in second.log_history if "loss" in e] == [1, 2, 3, 4]
    torch.testing.assert_close(losses(second)[2:], losses(straight)[2:], rtol=2e-3, atol=0)
    # train_loss is the mean over the steps the resumed run trained (3 and 4), not their sum / 4.
    assert second.metrics["train_loss"] == pytest.approx(sum(losses(second)[2:]) / 2, rel=1e-3)
    runtime = second.metrics["train_runtime"]
    assert second.metrics["train_steps_per_second"] == pytest.approx(2 / runtime, rel=0.02, abs=2e-3)
    # The summary Trainer logs (log_history, report_to) carries the same corrected values.
    summary = next(e for e in second.log_history if "train_runtime" in e)
    for name in ("train_loss", "train_steps_per_second", "train_samples_per_second"):
        assert summary[name] == second.metrics[name], name
    # A new run there would rotate its checkpoints against this run's (by step number) and a
    # later resume would pick up this one: refused before any tokenising or loading.
    with pytest.raises(ValueError, match=r"'.*resume' holds checkpoints of an earlier run \(last: checkpoint-4\); "
                                         r"--resume continues"):
        train(TrainOptions(**opts, output_dir=out, **fast))
    # Another kind of run on this checkpoint: Trainer loaded it non-strictly and failed later on
    # an unrelated error (an AttributeError, an optimizer group size).
    with pytest.raises(ValueError, match=r"checkpoint-4' was written by a SuperThoughts full run, and this is a "
                                         r"SuperThoughts LoRA r=4 run"):
        train(TrainOptions(**opts, output_dir=out, resume_from_checkpoint=True, lora_r=4, **fast))


def test_resume_to_another_number_of_epochs_is_refused_before_the_first_step(base_dirs, tmp_path):
    # A length in epochs is known once Trainer has counted the batches: 8 rows in batches of 4,
    # 2 steps an epoch. Under a linear schedule 2 epochs resumed as 3 is refused at train begin.
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], rho_max=0.0, output_dir=tmp_path / "o")
    epochs = {**FAST, "max_steps": -1, "batch_size": 4, "save_steps": 2, "lr_scheduler": "linear"}
    first = train(TrainOptions(**opts, **{**epochs, "num_epochs": 2}))
    assert first.global_step == 4
    with pytest.raises(ValueError, match=r"checkpoint-4' is from a run of 4 steps, and this one has 6 steps "
                                         r"\(--epochs 3 of this data and batch size\); resume with --max-steps 4"):
        train(TrainOptions(**opts, resume_from_checkpoint=True, **{**epochs, "num_epochs": 3}))
    assert sorted(p.name for p in (tmp_path / "o").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # The same length has nothing left: refused once Trainer counted it (a fractional number of
    # epochs trained a step past the end and saved it over the finished model). A run under a
    # constant schedule (which a resume may not switch to: another schedule) may be extended.
    opts["output_dir"] = tmp_path / "constant"
    constant = {**epochs, "lr_scheduler": "constant"}
    train(TrainOptions(**opts, **{**constant, "num_epochs": 2}))
    for num_epochs in (2, 1.5):
        with pytest.raises(ValueError, match=r"checkpoint-4' is at step 4 and this run ends at \d steps \(--epochs "
                                             rf"{num_epochs:g} of this data and batch size\): nothing is left"):
            train(TrainOptions(**opts, resume_from_checkpoint=True, **{**constant, "num_epochs": num_epochs}))
    extended = train(TrainOptions(**opts, resume_from_checkpoint=True, **{**constant, "num_epochs": 3}))
    assert extended.global_step == 6


def test_resuming_a_finished_run_is_refused(base_dirs, tmp_path):
    # A restarted job that had finished: Trainer took a step past --max-steps and saved that
    # model over the finished one (one more step at each restart).
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "o", rho_max=0.0)
    fast = {**FAST, "max_steps": 2, "save_steps": 2}
    train(TrainOptions(**opts, **fast))
    finished = (tmp_path / "o" / "model.safetensors").read_bytes()
    for max_steps in (2, 1):
        with pytest.raises(ValueError, match=rf"checkpoint-2' is at step 2 and this run ends at --max-steps "
                                             rf"{max_steps}: nothing is left to train"):
            train(TrainOptions(**opts, resume_from_checkpoint=True, **{**fast, "max_steps": max_steps}))
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == finished
    assert sorted(p.name for p in (tmp_path / "o").glob("checkpoint-*")) == ["checkpoint-2"]
    # A longer run under a schedule its length does not shape goes on from there.
    assert train(TrainOptions(**opts, resume_from_checkpoint=True, **{**fast, "max_steps": 3})).global_step == 3


def test_a_lora_checkpoint_resumed_with_other_heads_is_named(base_dirs, tmp_path):
    # peft's loader raised a bare KeyError (a traceback from the CLI) for a compressor or MTP
    # of another kind than the adapter's saved copy.
    opts = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", lora_r=4)
    fast = {**FAST, "max_steps": 2, "save_steps": 1}
    train(TrainOptions(**opts, **fast))
    for heads in ({"compressor_type": "mlp"}, {"mtp_type": "mlp"}):
        with pytest.raises(ValueError, match=r"resume: .*checkpoint-1.* (does not match the model|does not fit the "
                                             r"model's parameters).*resume with the --model, --compressor-type and "
                                             r"--mtp-type of the run that wrote it"):
            train(TrainOptions(**opts, resume_from_checkpoint=str(tmp_path / "o" / "checkpoint-1"), **fast, **heads))


def test_lora_checkpoint_is_named_when_loaded_as_a_model(base_dirs, tmp_path):
    from superthoughts_ext.modeling import load_model

    out = tmp_path / "lora"
    train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, lora_r=4, **{**ONE_STEP, "save_steps": 1}))
    assert isinstance(load_model(out), torch.nn.Module)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-1' is a LoRA adapter checkpoint .*--resume"):
        load_model(out / "checkpoint-1")
    # A resume with other LoRA options: peft loaded the adapter loosely and the trained steps' adapter
    # was dropped without a word. Refused before anything loads; the same options resume.
    for change, message in (({"lora_alpha": 8}, r"--lora-alpha 32 \(this run: 8\)"),
                            ({"lora_target_modules": ("v_proj",)}, r"--lora-target-modules .*q_proj.* \(this run: "),
                            ({"lora_dropout": 0.1}, r"--lora-dropout 0\.0 \(this run: 0\.1\)")):
        with pytest.raises(ValueError, match=r"checkpoint-1' holds a LoRA adapter with " + message):
            train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, lora_r=4, resume_from_checkpoint=True,
                               **{**ONE_STEP, "save_steps": 1, **change}))
    # The adapters on another base model (a checkpoint holds no frozen weight): they trained on
    # without a word. The same base in another dtype is the same model.
    other = tmp_path / "other"
    shutil.copytree(base_dirs["qwen2"], other)
    from transformers import AutoModelForCausalLM

    changed = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        changed.model.layers[0].mlp.up_proj.weight.mul_(-1)
    changed.save_pretrained(other)
    with pytest.raises(ValueError, match=r"checkpoint-1' holds LoRA adapters trained on another base model \(weights "
                                         r"sha256 \w{12}\.\.\.; this --model's: sha256 \w{12}\.\.\.\); resume with the "
                                         r"--model of the run that wrote it"):
        train(TrainOptions(model=other, data=ROWS, output_dir=out, lora_r=4, resume_from_checkpoint=True,
                           **{**ONE_STEP, "max_steps": 2, "save_steps": 1}))
    resumed = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, lora_r=4,
                                 resume_from_checkpoint=True, **{**ONE_STEP, "max_steps": 2, "save_steps": 1}))
    assert resumed.global_step == 2


def test_a_resume_with_another_optimizer_is_refused(base_dirs, tmp_path):
    # Adafactor loaded AdamW's saved state without a word and failed at its first step
    # (KeyError 'beta1'); the optimizer is recorded in each checkpoint's trainer_state.json.
    opts = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o")
    fast = {**FAST, "max_steps": 2, "save_steps": 1}
    train(TrainOptions(**opts, **fast))
    state = json.loads((tmp_path / "o" / "checkpoint-1" / "trainer_state.json").read_text())
    recorded = state["stateful_callbacks"]["RunSettings"]["args"]
    assert {k: recorded[k] for k in ("optim", "optimizer")} == {"optim": "adamw_torch_fused",
                                                                "optimizer": "torch.optim.adamw.AdamW"}
    resume = str(tmp_path / "o" / "checkpoint-1")
    with pytest.raises(ValueError, match=r"checkpoint-1' was trained with --optim adamw_torch_fused \(torch.optim"
                                         r".adamw.AdamW\), and this run uses adafactor \(transformers.optimization"
                                         r".Adafactor\): its optimizer state would not fit"):
        train(TrainOptions(**opts, resume_from_checkpoint=resume, optim="adafactor", **fast))
    # adamw_torch is the same class, AdamW, with the same state: it resumes.
    assert train(TrainOptions(**opts, resume_from_checkpoint=resume, optim="adamw_torch", **fast)).global_step == 2


def test_a_checkpoint_without_the_run_settings_record_resumes(base_dirs, tmp_path):
    # Checkpoints written before RunSettings existed: Trainer's next checkpoint save updated
    # the record in place and failed with KeyError 'RunSettings'.
    opts = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o")
    train(TrainOptions(**opts, **{**FAST, "max_steps": 2, "save_steps": 1}))
    state_file = tmp_path / "o" / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["RunSettings"]
    state_file.write_text(json.dumps(state))
    resumed = train(TrainOptions(**opts, resume_from_checkpoint=str(state_file.parent),
                                 **{**FAST, "max_steps": 3, "save_steps": 1}))
    assert resumed.global_step == 3 and (tmp_path / "o" / "checkpoint-3" / "trainer_state.json").is_file()


def test_a_resume_with_other_settings_is_refused(base_dirs, tmp_path):
    # Trainer restores the optimizer's and the schedule's state: another learning rate or weight
    # decay was ignored without a word, another schedule took over mid-way, and other data, seed,
    # batch or loss weights trained a run that is neither. Each is named before anything loads.
    opts = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o")
    fast = {**FAST, "max_steps": 2, "save_steps": 1}
    train(TrainOptions(**opts, **fast))
    state = json.loads((tmp_path / "o" / "checkpoint-1" / "trainer_state.json").read_text())
    settings = state["stateful_callbacks"]["RunSettings"]["args"]["settings"]
    assert settings["--learning-rate"] == FAST["learning_rate"] and len(settings["--data"]) == 64
    resume = str(tmp_path / "o" / "checkpoint-1")
    compact = tmp_path / "rows.jsonl"  # the in-memory rows as a file, spaced otherwise
    compact.write_text("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in ROWS))
    for change, message in (
            ({"learning_rate": 1e-2}, r"--learning-rate 0\.003 \(this run: 0\.01\)"),
            ({"weight_decay": 0.1, "seed": 5}, r"--weight-decay 0\.0 \(this run: 0\.1\); --seed 0 \(this run: 5\)"),
            ({"lr_scheduler": "linear"}, r"--lr-scheduler 'constant' \(this run: 'linear'\)"),
            ({"data": ROWS[::-1]}, r"--data sha256 \w{12}\.\.\. \(this run: sha256 \w{12}\.\.\.\)"),
            ({"batch_size": 4, "grad_accum": 2}, None),  # the same global batch: resumes
            # Loss weights, pad-splits and clipping apply from the next step (lowered after a spike).
            ({"rho_max": 0.5, "max_grad_norm": 0.5, "lambda_mtp": 0.3}, None),
            # The same rows from a file: the same data.
            ({"data": compact}, None),
            ({"batch_size": 4}, r"global batch \(--batch-size x --grad-accum x processes\) 8 \(this run: 4\)")):
        options = TrainOptions(**{**opts, **fast, **change}, resume_from_checkpoint=resume)
        if message is None:
            assert train(options).global_step == 2
            continue
        with pytest.raises(ValueError, match=r"checkpoint-1' was trained with " + message + r"; resume with the "
                                             r"settings of the run that wrote it"):
            train(options)


def test_an_incomplete_checkpoint_is_named(base_dirs, tmp_path):
    # A save cut off before trainer_state.json: Trainer failed on the bare missing path after the
    # data and the model had loaded.
    opts = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o")
    train(TrainOptions(**opts, **{**FAST, "max_steps": 2, "save_steps": 1}))
    # The run's output folder given for a checkpoint: named with its last checkpoint (it was told
    # to remove the folder).
    with pytest.raises(FileNotFoundError, match=r"--resume '.*o' is a run's output folder, not one of its "
                                                r"checkpoints; resume from its last one, '.*checkpoint-2'"):
        train(TrainOptions(**opts, **{**FAST, "max_steps": 3}, resume_from_checkpoint=str(tmp_path / "o")))
    # Missing, or torn by a kill while transformers wrote it (empty: a bare JSON error after loading).
    state = tmp_path / "o" / "checkpoint-2" / "trainer_state.json"
    for torn in (lambda: state.write_text(""), state.unlink):
        torn()
        with pytest.raises(FileNotFoundError, match=r"checkpoint-2' is not a complete checkpoint \(no readable "
                                                    r"trainer_state.json: its save was cut off\?\); remove it and "
                                                    r"resume from another one, such as .*checkpoint-1'"):
            train(TrainOptions(**opts, **{**FAST, "max_steps": 3}, resume_from_checkpoint=True))


def test_another_runs_checkpoint_is_not_resumed_into_a_used_output(base_dirs, tmp_path):
    # The output's finished model and same-numbered checkpoints were overwritten, and rotation
    # deleted others; an empty output, or the output's own checkpoint, resumes.
    fast = {**FAST, "max_steps": 2, "save_steps": 1}
    for name in ("a", "b"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / name, **fast))
    with pytest.raises(ValueError, match=r"--output '.*b' holds another run \(config.json, model.safetensors, "
                                         r"checkpoint-1, checkpoint-2.*\), and --resume '.*a/checkpoint-1' is not one of its checkpoints"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "b", **fast,
                           resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1")))
    resumed = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "c", **fast,
                                 resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1")))
    assert resumed.global_step == 2
    # This run's own checkpoint kept elsewhere (scratch storage) records its run id: it resumes,
    # and the run keeps its id. The fork into "c" got an id of its own: it is another run.
    def run_id(checkpoint):
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return state["stateful_callbacks"]["RunSettings"]["args"]["run_id"]

    shutil.copytree(tmp_path / "a" / "checkpoint-1", tmp_path / "scratch" / "checkpoint-1")
    resumed = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "a", **fast,
                                 resume_from_checkpoint=str(tmp_path / "scratch" / "checkpoint-1")))
    assert resumed.global_step == 2
    ids = {name: run_id(tmp_path / name / "checkpoint-2") for name in ("a", "b", "c")}
    assert ids["a"] == run_id(tmp_path / "a" / "checkpoint-1") and len(set(ids.values())) == 3, ids
    with pytest.raises(ValueError, match=r"holds another run .*is not one of its checkpoints \(nor a copy of one\)"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "a", **{**fast, "max_steps": 3},
                           resume_from_checkpoint=str(tmp_path / "c" / "checkpoint-2")))


def test_a_final_save_cut_off_leaves_no_config(base_dirs, tmp_path, monkeypatch):
    # Saved in place, a kill mid-save left a 0-byte config.json and no weights: a new run refused the
    # folder as a trained model, and it loaded as none. The files now move in from a hidden folder,
    # config.json last, so a cut-off save leaves no config.json.
    import os
    from pathlib import Path

    from superthoughts_ext.modeling import load_model

    real_replace = os.replace

    def replace(source, target):
        if Path(target).name == "config.json" and Path(source).parent.name == ".final-save":
            raise KeyboardInterrupt  # the kill, just before the last file
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **ONE_STEP))
    assert (out / "model.safetensors").is_file() and not (out / "config.json").exists()
    with pytest.raises((FileNotFoundError, ValueError)):
        load_model(out)
    monkeypatch.undo()
    done = tmp_path / "done"
    train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=done, **ONE_STEP))
    assert (done / "config.json").is_file() and not (done / ".final-save").exists()
    assert isinstance(load_model(done), torch.nn.Module)
