"""What a run's checkpoints hold and what a resume makes of them once the run has trained to its
end: a run stopped after its last checkpoint, in or before the final save, is completed by a
resume that saves the checkpoint's model (a LoRA checkpoint holds the adapter alone, which no
loader takes). Tiny random models on CPU (test_train.py's fixtures).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
import test_train  # noqa: E402
from test_train import FAST, ROWS  # noqa: E402

from superthoughts_ext.generate_cli import load_checkpoint  # noqa: E402
from superthoughts_ext.modeling import load_model  # noqa: E402
from superthoughts_ext.train import TrainOptions, train  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)
TWO_STEPS = {**FAST, "max_steps": 2, "save_steps": 2}


def cut_off_final_save(out: Path) -> None:
    """The output of a run killed after its last checkpoint: every file of the final save gone."""
    for path in out.iterdir():
        if not path.name.startswith("checkpoint-"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def same_weights(a: Path, b: Path) -> None:
    left, right = load_model(a).state_dict(), load_model(b).state_dict()
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def test_a_baseline_checkpoint_keeps_the_models_use_cache(base_dirs, tmp_path):
    # Trainer sets use_cache False to train: checkpoints saved that, and a plain forward of a
    # model loaded from one returned no cache.
    out = tmp_path / "sft"
    train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, baseline=True, **TWO_STEPS))
    assert json.loads((out / "checkpoint-2" / "config.json").read_text())["use_cache"] is True
    assert json.loads((out / "config.json").read_text())["use_cache"] is True


@pytest.mark.parametrize("kind", [{}, {"lora_r": 4}, {"lora_r": 4, "baseline": True},
                                  {"lora_r": 4, "max_steps": -1, "num_epochs": 2, "save_steps": 1},
                                  # Trainer records 1.5 epochs as 2 (and the epoch reached, 1.5).
                                  {"max_steps": -1, "num_epochs": 1.5, "batch_size": 4, "save_steps": 1}],
                         ids=["full", "lora", "sft-lora", "lora-epochs", "fractional-epochs"])
def test_a_resume_saves_the_model_of_a_run_whose_final_save_was_cut_off(base_dirs, tmp_path, kind):
    options = dict(model=base_dirs["qwen2"], data=ROWS, **{**TWO_STEPS, **kind})  # 8 rows: 1 step per epoch
    straight = tmp_path / "straight"
    train(TrainOptions(output_dir=straight, **options))
    out = tmp_path / "cut"
    train(TrainOptions(output_dir=out, **options))
    cut_off_final_save(out)
    last = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    # generate / eval said "no tokenizer files", then (given --tokenizer) "not a model directory".
    for load in (lambda: load_checkpoint(str(out), "cpu", "auto", None), lambda: load_model(out)):
        with pytest.raises(FileNotFoundError, match=rf"cut' holds no model yet, only checkpoints \(last: checkpoint-{last}\): "
                                                    r"its run is still training, or was stopped before its final save"):
            load()
    with pytest.warns(UserWarning, match=rf"checkpoint-{last}' is the last step of its run and .*cut' holds no model \(the "
                                         r"final save was cut off\): saving the checkpoint's model, no step trained"):
        result = train(TrainOptions(output_dir=out, resume_from_checkpoint=True, **options))
    assert result.global_step == last and [e["step"] for e in result.log_history if "loss" in e] == [*range(1, last + 1)]
    same_weights(out, straight)  # a LoRA run's merged model, as the uninterrupted run saved it
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in straight.iterdir())
    # Done now: the same command again has nothing left to do.
    with pytest.raises(ValueError, match=rf"is at step {last} and this run ends at (--max-steps )?{last}( steps)?.*: "
                                         "nothing is left to train"):
        train(TrainOptions(output_dir=out, resume_from_checkpoint=True, **options))


def test_a_run_of_another_length_does_not_take_the_last_checkpoint_for_a_finished_run(base_dirs, tmp_path):
    options = dict(model=base_dirs["qwen2"], data=ROWS, lora_r=4, **TWO_STEPS)
    out = tmp_path / "cut"
    train(TrainOptions(output_dir=out, **options))
    cut_off_final_save(out)
    # The checkpoint's run ended at step 2; a run of 1 step resumed from it is no completion.
    with pytest.raises(ValueError, match="is at step 2 and this run ends at --max-steps 1: nothing is left to train"):
        train(TrainOptions(output_dir=out, resume_from_checkpoint=True, **{**options, "max_steps": 1}))
    assert not (out / "config.json").exists()


def test_a_save_cut_off_while_its_files_moved_in_is_completed(base_dirs, tmp_path):
    # config.json is moved in last: a kill before it leaves the weights and the tokenizer without
    # it, which the resume took for a finished model ("nothing is left to train").
    options = dict(model=base_dirs["qwen2"], data=ROWS, lora_r=4, **TWO_STEPS)
    out = tmp_path / "cut"
    train(TrainOptions(output_dir=out, **options))
    (out / "config.json").unlink()
    with pytest.warns(UserWarning, match="the final save was cut off"):
        train(TrainOptions(output_dir=out, resume_from_checkpoint=True, **options))
    assert load_model(out) is not None


# final_save_pending on hand-written trainer_state.json files (no training run).
def _checkpoint(out: Path, step: int, state: dict) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_final_save_pending_cases(tmp_path):
    from superthoughts_ext.train_resume import final_save_pending

    out = tmp_path / "run"
    last = _checkpoint(out, 2, {"global_step": 2, "max_steps": 2, "num_train_epochs": 2, "epoch": 2.0})
    assert final_save_pending(last, out, 2, 0.0)
    # Past its end (a run that trained a step too far before this release) counts as the last step.
    past = _checkpoint(tmp_path / "past", 3, {"global_step": 3, "max_steps": 2, "num_train_epochs": 3})
    assert final_save_pending(past, tmp_path / "past", 2, 0.0)
    # Not the last step, another length (steps or epochs) or another output folder: no.
    assert not final_save_pending(_checkpoint(out, 1, {"global_step": 1, "max_steps": 2}), out, 2, 0.0)
    assert not final_save_pending(last, out, 3, 0.0)
    assert final_save_pending(last, out, -1, 2.0) and not final_save_pending(last, out, -1, 3.0)
    assert not final_save_pending(last, tmp_path / "elsewhere", 2, 0.0)  # a fork of the run into a new folder
    # A final model's config there: it was saved (its weights alone: the save was cut off moving in).
    for name in ("config.json", "adapter_config.json"):
        (out / name).write_text("{}")
        assert not final_save_pending(last, out, 2, 0.0), name
        (out / name).unlink()
    (out / "model.safetensors").write_text("")
    assert final_save_pending(last, out, 2, 0.0)


def test_a_finished_run_is_not_loaded_under_fsdp(tmp_path):
    from types import SimpleNamespace

    from superthoughts_ext.trainer import SuperThoughtsTrainer

    fake = SimpleNamespace(is_fsdp_enabled=True, args=SimpleNamespace(should_save=True, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"is the last step of its run, whose final save was cut off: resume it in "
                                         "one process without FSDP"):
        SuperThoughtsTrainer.load_finished_run(fake, tmp_path / "checkpoint-2")


def test_a_model_is_given_its_use_cache_back_after_a_checkpoint(base_dirs, tmp_path):
    # _save writes the model's own use_cache, and training goes on with Trainer's (False).
    from transformers import AutoModelForCausalLM

    from superthoughts_ext.train_args import training_arguments
    from superthoughts_ext.trainer import SuperThoughtsTrainer

    model = AutoModelForCausalLM.from_pretrained(base_dirs["qwen2"])
    assert model.config.use_cache is True
    args = training_arguments(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", **FAST))
    trainer = SuperThoughtsTrainer(model=model, args=args)
    model.config.use_cache = False  # as Trainer.train sets it
    trainer._save(str(tmp_path / "ckpt"))
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["use_cache"] is True
    assert model.config.use_cache is False
    # The model given positionally too.
    model.config.use_cache = True
    trainer = SuperThoughtsTrainer(model, args)
    model.config.use_cache = False
    trainer._save(str(tmp_path / "ckpt2"))
    assert json.loads((tmp_path / "ckpt2" / "config.json").read_text())["use_cache"] is True


def test_a_run_folder_with_checkpoints_is_named_before_another_tokenizer_is_looked_at(tmp_path):
    # --tokenizer given: its missing files are what is said, whatever --model holds.
    (tmp_path / "run" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "tok").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files in '.*tok'$"):
        load_checkpoint(str(tmp_path / "run"), "cpu", "auto", str(tmp_path / "tok"))
    with pytest.raises(FileNotFoundError, match=r"holds no model yet, only checkpoints \(last: checkpoint-1\)"):
        load_checkpoint(str(tmp_path / "run"), "cpu", "auto", None)


def test_a_new_run_names_the_last_complete_checkpoint_of_the_earlier_one(tmp_path):
    # checkpoint-4's save was cut off (no trainer_state.json): --resume continues from checkpoint-2.
    from superthoughts_ext.train_resume import check_resume

    _checkpoint(tmp_path, 2, {"global_step": 2, "max_steps": 6})
    (tmp_path / "checkpoint-4").mkdir()
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(last: checkpoint-2\); --resume"):
        check_resume(tmp_path, None)


def test_a_final_save_in_shards_over_a_single_file_model_leaves_only_the_shards(base_dirs, tmp_path, monkeypatch):
    # A finished run's one model.safetensors (every release before sharded saves) resumed for more
    # steps by a run whose final save is sharded: the files were moved in over the folder, the old
    # file stayed beside the new index, and the output loaded as neither ("holds both").
    import superthoughts_ext.modeling as modeling
    from superthoughts_ext.checkpoint import save_superthoughts_dir

    options = dict(model=base_dirs["qwen2"], data=ROWS, **TWO_STEPS)
    out = tmp_path / "out"
    train(TrainOptions(output_dir=out, **options))
    assert (out / "model.safetensors").is_file()
    monkeypatch.setattr(modeling, "save_superthoughts_dir",
                        lambda model, directory, state_dict, max_shard_size: save_superthoughts_dir(
                            model, directory, state_dict, "20KB"))
    train(TrainOptions(output_dir=out, resume_from_checkpoint=True, **{**options, "max_steps": 4}))
    assert (out / "model.safetensors.index.json").is_file() and not (out / "model.safetensors").exists()
    same_weights(out, out / "checkpoint-4")


@pytest.mark.parametrize("save_steps", [2, 0], ids=["checkpoint", "final_save"])
def test_a_save_that_meets_a_full_disk_is_named_and_leaves_no_half_written_folder(base_dirs, tmp_path, capsys,
                                                                                 file_size_limit, save_steps):
    # The weights (~0.5 MB) pass the file size limit no more than a full disk would: a traceback
    # through Trainer ended in "Error while serializing: I/O error: File too large", and the
    # half-written checkpoint-2 made a rerun refuse the folder (an earlier run's checkpoints)
    # and --resume refuse the checkpoint (cut off), until it was removed by hand.
    import argparse

    from superthoughts_ext.train import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            "--max-steps", "2", "--save-steps", str(save_steps), "--no-progress"]
    with file_size_limit(100_000):
        assert run(parser.parse_args(argv)) == 2
    error = capsys.readouterr().err
    failed = out / "checkpoint-2" if save_steps else out
    assert error.startswith(f"error: cannot write {failed}") and "File too large" in error  # or a file in it
    assert "Traceback" not in error
    assert not list(out.iterdir())  # neither checkpoint-2 nor the final save's staging folder
    assert run(parser.parse_args(argv)) == 0  # once there is room, the same command runs
    assert (out / "config.json").is_file()


def test_a_checkpoint_save_interrupted_is_removed_and_the_run_resumes_from_the_one_before(base_dirs, tmp_path,
                                                                                           monkeypatch):
    # Ctrl-C (or SIGTERM, raised as cli.Terminated) after the weights and optimizer were written
    # left checkpoint-2 without trainer_state.json, and --resume refused it until removed by hand.
    import transformers.trainer

    from superthoughts_ext.cli import Terminated

    saved_rng_state = transformers.trainer.Trainer._save_rng_state

    def interrupted_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise Terminated
        saved_rng_state(self, output_dir)

    monkeypatch.setattr(transformers.trainer.Trainer, "_save_rng_state", interrupted_at_step_2)
    out = tmp_path / "out"
    options = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **{**FAST, "max_steps": 3, "save_steps": 1})
    with pytest.raises(Terminated):
        train(TrainOptions(**options))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]
    monkeypatch.undo()
    resumed = train(TrainOptions(**options, resume_from_checkpoint=True))
    assert resumed.global_step == 3 and [e["step"] for e in resumed.log_history if "loss" in e] == [1, 2, 3]


def test_a_final_save_interrupted_leaves_no_staging_folder(base_dirs, tmp_path, monkeypatch):
    # .final-save/ held a whole model's copy (hidden, 28 GB for a 14B model) until the next run.
    import superthoughts_ext.trainer
    from superthoughts_ext.cli import Terminated

    saved = torch.save

    def interrupted(obj, path, *args, **kwargs):
        if Path(path).parent.name == ".final-save":
            raise Terminated  # after the weights, before training_args.bin
        saved(obj, path, *args, **kwargs)

    monkeypatch.setattr(superthoughts_ext.trainer.torch, "save", interrupted)
    out = tmp_path / "out"
    with pytest.raises(Terminated):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, **{**FAST, "max_steps": 1}))
    assert list(out.iterdir()) == []


def test_a_rotation_that_fails_names_the_older_checkpoint_not_the_saved_one(base_dirs, tmp_path, monkeypatch):
    # Trainer removes older checkpoints (--save-total-limit) inside the save: an error there was
    # reported against the new checkpoint, which had been saved whole. transformers' own
    # rotation ignores a failed removal; this stands in for one that does not.
    import errno

    import transformers.trainer

    from superthoughts_ext.file_writes import WriteFailed

    out = tmp_path / "out"

    def failing_rotation(output_dir, save_total_limit=None, **kwargs):
        if (Path(output_dir) / "checkpoint-2").exists():
            old = Path(output_dir) / "checkpoint-1"
            raise PermissionError(errno.EACCES, "Permission denied", str(old))

    monkeypatch.setattr(transformers.trainer, "rotate_checkpoints", failing_rotation)
    options = TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out,
                           **{**TWO_STEPS, "save_steps": 1, "save_total_limit": 1})
    with pytest.raises(WriteFailed) as failed:
        train(options)
    message = str(failed.value)
    assert message.startswith(f"cannot write {out / 'checkpoint-1'}: Permission denied")
    assert message.endswith("removing older checkpoints (--save-total-limit) failed after checkpoint-2 was saved")
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()  # whole: kept
