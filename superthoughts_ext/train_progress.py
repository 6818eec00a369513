"""Trainer's progress bars drawn by `superthoughts_ext.progress.progress_bar`: tqdm bars on a
terminal, whole lines in a log file (transformers' ProgressCallback draws tqdm's carriage-return
redraws into it, one endless line).

The per-logging-step metrics lines are ProgressCallback's own (`on_log`, on stdout), unchanged;
with --no-progress (disable_tqdm) Trainer prints them through its PrinterCallback instead.
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import has_length

from superthoughts_ext.progress import progress_bar, writes_lines


class LineProgressCallback(ProgressCallback):
    """ProgressCallback whose training and evaluation bars come from `progress_bar`. In a log the
    lines name what they count ("training: 40% 120/300 [... 2.80step/s]"), and a resumed run's
    line starts at its checkpoint's step, so that its rate counts only the steps it trains."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        in_log = writes_lines()
        start = state.global_step if in_log else 0  # on a terminal the bar is ProgressCallback's own
        if state.is_world_process_zero:
            named = dict(desc="training", unit="step", initial=start) if in_log else {}
            self.training_bar = progress_bar(total=state.max_steps, dynamic_ncols=True, **named)
        self.current_step = start

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                           eval_dataloader: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and has_length(eval_dataloader):
            if self.prediction_bar is None:
                named = dict(desc="evaluating", unit="batch") if writes_lines() else {}
                self.prediction_bar = progress_bar(total=len(eval_dataloader), leave=self.training_bar is None,
                                                   dynamic_ncols=True, **named)
            self.prediction_bar.update(1)


def use_line_progress(trainer: Any) -> None:
    """Replace `trainer`'s ProgressCallback (Trainer adds it unless disable_tqdm) by a
    LineProgressCallback. A notebook's NotebookProgressCallback, or none, stays."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(LineProgressCallback())
