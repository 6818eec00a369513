"""`superthoughts train` with its output in a log file (nohup, SLURM, CI): the bars of tokenising,
loading weights and training are whole lines, never a carriage return, and the per-logging-step
metrics lines are still there. On a terminal Trainer's bar stays tqdm's. Tiny random Qwen2 and
the data of test_train.py, CPU. 2-process torchrun: test_train_parallel.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_progress import Terminal  # noqa: E402
from test_train import FAST  # noqa: E402

from superthoughts_ext.train import TrainOptions, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


def test_train_into_a_log_file_writes_whole_lines_and_the_metrics(base_dirs, tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("TQDM_MININTERVAL", None)
    cmd = [sys.executable, "-m", "superthoughts_ext.cli", "train", "--model", str(base_dirs["qwen2"]),
           "--data", str(base_dirs["data"]), "--output", str(tmp_path / "out"), "--max-steps", "4",
           "--batch-size", "4", "--logging-steps", "2", "--save-steps", "0"]
    with open(log, "w") as both:  # `> train.log 2>&1`, as nohup writes
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, stdout=both, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text, text[:2000]
    lines = text.splitlines()
    assert lines[0] == f"tokenizing {base_dirs['data']}:   0% 0/8 [elapsed 00:00, ETA ?, ?line/s]", lines[:3]
    assert any(line.startswith("Loading weights: 100% ") for line in lines), lines
    assert any(line.startswith("training: 100% 4/4 [elapsed ") and "step/s]" in line for line in lines), lines
    metrics = [line for line in lines if line.startswith("{'loss': ")]
    assert len(metrics) == 3 and all("'loss_main'" in line for line in metrics), lines  # steps 1, 2 and 4
    assert any(line.startswith("{'train_runtime': ") for line in lines) and len(lines) < 30, lines


def test_no_progress_hides_the_training_bar_and_keeps_the_metrics(base_dirs, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "out",
                       **{**FAST, "max_steps": 2}))  # FAST: progress_bar=False
    captured = capsys.readouterr()
    assert "training" not in captured.err and "tokenizing" not in captured.err, captured.err
    assert captured.out.count("{'loss': ") == 2, captured.out


def test_on_a_terminal_the_training_bar_stays_a_tqdm_bar(base_dirs, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "out",
                       **{**FAST, "max_steps": 2, "progress_bar": True}))
    drawn = terminal.getvalue()
    assert "\r" in drawn and "2/2 [" in drawn and "%|" in drawn, drawn[-500:]
    assert "training:" not in drawn  # the log lines' name: a terminal shows Trainer's own bar


def test_a_resumed_runs_line_starts_at_its_checkpoint_and_its_rate_counts_this_runs_steps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Resumed at step 100 of 300: a line "1/300" would hide the steps already done, and a rate over
    # 100 steps the run did not train would overstate its speed.
    import io

    from tqdm import std as tqdm_std
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from superthoughts_ext.train_progress import LineProgressCallback

    now = [1_000.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: now[0])
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    state = TrainerState(global_step=100, max_steps=300)
    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    callback = LineProgressCallback()
    callback.on_train_begin(args, state, control)
    for _ in range(200):
        now[0] += 0.5
        state.global_step += 1
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control)
    lines = log.getvalue().splitlines()
    assert lines[0] == "training:  33% 100/300 [elapsed 00:00, ETA ?, ?step/s]"
    assert lines[-1] == "training: 100% 300/300 [elapsed 01:40, ETA 00:00,  2.00step/s]"
