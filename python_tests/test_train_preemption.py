"""`--resume auto`: a requeued job's command line resumes when --output holds a checkpoint and
else starts a new run. Tiny random Qwen2 models on CPU (test_train.py's fixtures).
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS  # noqa: E402

from superthoughts_ext.train import TrainOptions, train  # noqa: E402

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
