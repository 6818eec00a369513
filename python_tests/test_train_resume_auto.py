"""`--resume auto`, the resume of a job requeued with the same command line: it resumes from the
last complete checkpoint in --output (removing the saves cut off after it, on the main process
alone, never through a symlink) and else starts a new run, under every check `--resume` makes;
on an output holding the same run finished it ends at once, exit status 0, and any other finished
run is refused as before. Tiny random Qwen2 models on CPU (test_train.py's fixtures). (SIGTERM's
stops, which a requeued job resumes from: test_train_preemption.py.)
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS  # noqa: E402

from superthoughts_ext.train import TrainOptions, main, train  # noqa: E402
from superthoughts_ext.train_finished import RunFinished  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_resume_auto_starts_a_new_run_or_resumes_the_last_complete_checkpoint(base_dirs, tmp_path, capsys):
    out = tmp_path / "o"
    opts = dict(model=base_dirs["qwen2"], data=ROWS, output_dir=out, resume_from_checkpoint="auto")
    # A save SIGKILL cut off before the first checkpoint was whole: removed, and a new run.
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "model.safetensors").write_bytes(b"")
    first = train(TrainOptions(**opts, **{**FAST, "max_steps": 2, "save_steps": 1}))
    assert first.global_step == 2 and checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    err = capsys.readouterr().err
    assert f"train: --resume auto: removing '{out / 'checkpoint-1'}', a checkpoint whose save was cut off" in err
    assert f"train: --resume auto: no checkpoint in '{out}', starting a new run" in err
    # The same command, longer (a constant schedule allows it): from checkpoint-2, past a later
    # one whose save was cut off, which plain --resume refuses.
    (out / "checkpoint-3").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint-3' is not a complete checkpoint"):
        train(TrainOptions(**{**opts, "resume_from_checkpoint": True}, **{**FAST, "max_steps": 4, "save_steps": 1}))
    resumed = train(TrainOptions(**opts, **{**FAST, "max_steps": 4, "save_steps": 1}))
    assert f"train: --resume auto: resuming from '{out / 'checkpoint-2'}'" in capsys.readouterr().err
    assert resumed.global_step == 4 and [e["step"] for e in resumed.log_history if "loss" in e] == [1, 2, 3, 4]
    # The resume checks apply as to --resume: another learning rate is refused before anything loads.
    with pytest.raises(ValueError, match=r"checkpoint-4' was trained with --learning-rate 0\.003 \(this run: 0\.01\)"):
        train(TrainOptions(**opts, **{**FAST, "max_steps": 6, "save_steps": 1, "learning_rate": 1e-2}))
    # Plain --resume stays strict where there is nothing to resume.
    with pytest.raises(FileNotFoundError, match=r"no checkpoint-N folder in '.*empty' to resume from"):
        train(TrainOptions(**{**opts, "output_dir": tmp_path / "empty", "resume_from_checkpoint": True}, **FAST))


def test_resume_auto_on_another_rank_starts_beside_a_cut_off_save_the_main_rank_removes(base_dirs, tmp_path,
                                                                                       monkeypatch):
    # Only the main process removes a cut-off checkpoint-N, and the other ranks do not wait for it:
    # one that looked first refused the new run, as if an earlier run's checkpoints were there.
    out = tmp_path / "o"
    (out / "checkpoint-1").mkdir(parents=True)
    monkeypatch.setenv("RANK", "1")  # what this process does as torchrun's rank 1 (it trains alone)
    result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, resume_from_checkpoint="auto",
                                **{**FAST, "max_steps": 1}))
    assert result.global_step == 1 and (out / "checkpoint-1").is_dir()  # left to the main process


def test_resume_auto_leaves_a_symlinked_cut_off_checkpoint_and_what_it_names_alone(base_dirs, tmp_path, capsys):
    out, elsewhere = tmp_path / "o", tmp_path / "scratch" / "checkpoint-5"
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.safetensors").write_bytes(b"")
    out.mkdir()
    (out / "checkpoint-5").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"checkpoint-5' is a symlink to .*scratch/checkpoint-5', a checkpoint "
                                         r"without trainer_state\.json"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=out, resume_from_checkpoint="auto",
                           **{**FAST, "max_steps": 1}))
    assert (out / "checkpoint-5").is_symlink() and (elsewhere / "model.safetensors").is_file()
    assert "removing" not in capsys.readouterr().err



@pytest.mark.parametrize("save_steps", [0, 2])
def test_resume_auto_on_the_same_run_finished_ends_at_once(base_dirs, tmp_path, capsys, save_steps):
    # A job requeued after its run finished, or a script that runs the command until it exits 0:
    # refused as by --resume (other settings named, else nothing left to train; without checkpoints
    # a trained model in the way), exit status 2, the job ended as failed.
    out, other_data = tmp_path / "o", tmp_path / "other.jsonl"
    other_data.write_text(base_dirs["data"].read_text().replace("what is", "how much is"))
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            "--max-steps", "2", "--save-steps", str(save_steps), "--learning-rate", "3e-3", "--batch-size", "8",
            "--lr-scheduler", "linear", "--warmup-ratio", "0", "--no-progress", "--resume", "auto"]
    assert main(argv) == 0
    finished = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == (f"train: --resume auto: the run is already finished: its model, saved after 2 steps, is "
                            f"in '{out}'; nothing to train\n"), captured
    assert "resuming" not in captured.err and "starting" not in captured.err
    with pytest.raises(RunFinished, match="already finished"):
        train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out, max_steps=2,
                           save_steps=save_steps, learning_rate=3e-3, batch_size=8, lr_scheduler="linear",
                           warmup_ratio=0.0, progress_bar=False, resume_from_checkpoint="auto"))
    # Another run: refused as before (with checkpoints by the resume checks, without them as a new run).
    refusals = {"--max-steps": ["--max-steps", "3"], "--data": ["--data", str(other_data)], "--resume": ["--resume"]}
    for flag, changed in refusals.items():
        assert main([*argv, *changed]) == 2, flag
        expected = {0: "holds a trained model", 2: "nothing is left to train"}[save_steps]
        if flag == "--max-steps" and save_steps:
            expected = "is from a run of 2 steps, and this one has --max-steps 3"
        elif flag == "--data" and save_steps:  # what differs is named before the steps left
            expected = "was trained with --data "
        elif flag == "--resume" and not save_steps:
            expected = "no checkpoint-N folder"
        assert expected in capsys.readouterr().err, flag
    assert (out / "model.safetensors").read_bytes() == finished
