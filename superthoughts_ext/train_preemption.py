"""SIGTERM during training (a job scheduler's preemption or time limit: SLURM sends SIGTERM,
waits its grace period, then SIGKILL) ends the run at a checkpoint, not where the signal found it.

While Trainer trains, SIGTERM only marks a stop as asked for (`StopOnSigterm`). At the end of the
optimizer step under way every process agrees on it, and then Trainer saves `checkpoint-N` at
that step through its own save (the one periodic saves take, rotation included) and leaves its
loop (after a periodic save the signal came during, that checkpoint is the stop's); `train` then
raises `StoppedAtCheckpoint`, a `cli.Terminated`, so the command ends with exit status 143 and
the resume hint. `--resume` (or `--resume auto`) continues from that step
exactly: the steps since the last periodic save are not trained again.

Why the processes agree by an all-reduce rather than each acting on its own signal: the signal
comes to each rank at its own moment (torchrun forwards it when its monitor loop notices, SLURM
signals the nodes one by one, a `kill` may name one worker), so two ranks could see it at the
ends of different steps; one would save and leave while the other went on into a step whose
gradient all-reduce then never completes, or into another checkpoint. The all-reduce of the
flag at each step's end costs one small collective (and, on a GPU, one host sync) a step.

A SIGTERM after training, during the final save (and the LoRA merge and weight check before
it), lets that save finish (`final_save_despite_sigterm`): it is bounded (a full run's is shorter
than its checkpoint's, which adds the optimizer state), and cut off with `--save-steps 0` it left
nothing to resume from. The command then ends with exit status 143 and a line saying the model is
saved (`StoppedAfterTheFinalSave`); `--resume auto` on that output ends at once (`train_finished`).
The handler armed for training stays armed into that save, leaving no moment where the signal
would cut it off. Under FSDP a SIGTERM during the last step or after its end goes on to the final
save too, rather than stopping at the last step's checkpoint: a resume cannot make the final save
from a checkpoint there.

Ctrl-C (SIGINT) is left as it was: a person at the terminal asks for a stop now, and a second
SIGTERM or a Ctrl-C during that step or save stops at once too (the save's half-written folder is
removed: `trainer.SuperThoughtsTrainer._save_checkpoint`). A second SIGTERM within
`REPEAT_WINDOW_S` of the first is the same request: under torchrun or accelerate launch in a SLURM
job each worker gets SLURM's SIGTERM and, a moment later, the one torchrun forwards.

transformers' own `enable_jit_checkpoint` (TrainingArguments) is not used: each rank saves on its
own once a 3 s timer fires, from whichever hook it is in (before the optimizer step included),
with no agreement between ranks, and training then ends as if finished: `train` would go on to
save its final model at that step.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from transformers import TrainerCallback

from superthoughts_ext import cli

# Seconds after a first SIGTERM in which another one repeats it (a launcher forwarding the
# scheduler's signal to workers the scheduler signalled too) rather than asking for a stop now.
REPEAT_WINDOW_S = 5.0


class StoppedAtCheckpoint(cli.Terminated):
    """Training stopped on SIGTERM at a checkpoint of the step it had reached: within training, or
    (a SIGTERM after the last step's end) before its final save; the message says which. Every
    process raises it at the same point, after the same steps."""


class StoppedAfterTheFinalSave(cli.Terminated):
    """SIGTERM came after training, during the final save, which went on: the run is finished and
    its model saved (`final_save_despite_sigterm`). Every process raises it, after the save."""

    continues = False  # nothing left to resume: no resume hint


class StopOnSigterm(TrainerCallback):
    """Turns SIGTERM during `Trainer.train` (from on_train_begin until it returns) into a save of a
    checkpoint at the end of the current optimizer step and a stop there; `stopping_on_sigterm`
    wraps the train call and raises `StoppedAtCheckpoint` afterwards, or hands the handler over to
    the final save (`final_save_despite_sigterm`), which a SIGTERM then lets finish.
    `reduce_max(flag) -> flag` agrees on a flag across processes (max over them; the identity in a
    single process)."""

    def __init__(self, reduce_max: Callable[[bool], bool]) -> None:
        self._reduce_max = reduce_max
        self.asked_at: float | None = None  # time.monotonic() of the first SIGTERM, on this process
        self.stopped_at_step: int | None = None  # the step saved and stopped at, once agreed
        self.saved_at_step: int | None = None  # the step of this run's latest checkpoint
        self.ended_at_step: int | None = None  # the step training ended at (on_train_end)
        # Set by `final_save_despite_sigterm`: a run that ends normally keeps the handler armed, and
        # with late_sigterm_saves so does one a SIGTERM came to in its last step or after its end.
        self.final_save_follows = self.late_sigterm_saves = False
        self._previous: Any = None
        self._armed = False

    def _on_sigterm(self, signum: int, frame: object) -> None:
        # Only a flag: the step under way finishes and on_step_end acts on it. No print here (a
        # signal that interrupts a write to stderr makes a second one a reentrant-call error).
        now = time.monotonic()
        if self.asked_at is None:
            self.asked_at = now
        elif now - self.asked_at >= REPEAT_WINDOW_S:
            raise cli.Terminated

    def _arm(self) -> None:
        """The SIGTERM handler, where the process has the default one or `superthoughts`'s (a
        caller's own handling is left alone, as `cli.sigterm_as_interrupt` leaves it) and on the
        main thread, the only one that can install a handler."""
        if self._armed or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_DFL or previous is cli._raise_terminated:
            self._previous = previous
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._armed = True

    def _disarm(self) -> None:
        if self._armed:
            signal.signal(signal.SIGTERM, self._previous)
            self._armed = False

    def _agreed(self) -> bool:
        """Whether any process has been asked to stop: a collective, which every process reaches
        at the same step end (or all of them after training)."""
        return bool(self._reduce_max(self.asked_at is not None))

    def on_train_begin(self, args, state, control, **kwargs):
        # Armed once the checkpoint resumed from is loaded: SIGTERM while loading ends the run at
        # once, there is no step to finish.
        self._arm()

    def on_step_end(self, args, state, control, **kwargs):
        if not self._agreed():
            return
        # The grace period is for the save: an evaluation due at this step is left out.
        control.should_evaluate = False
        if state.global_step >= state.max_steps and self.final_save_follows and self.late_sigterm_saves:
            return  # the last step, whose checkpoint a resume could not save as the model: the final save goes on
        self.stopped_at_step = state.global_step
        control.should_save = True
        control.should_training_stop = True
        if state.is_world_process_zero:
            step = state.global_step
            print(f"train: SIGTERM: step {step} done, saving checkpoint-{step}, then stopping (a second SIGTERM "
                  f"{REPEAT_WINDOW_S:g} s or more after the first, or Ctrl-C, stops at once)",
                  file=sys.stderr, flush=True)

    def on_save(self, args, state, control, **kwargs):
        self.saved_at_step = state.global_step
        # A SIGTERM during this periodic save (or the evaluation before it): the checkpoint just
        # saved holds the step reached; stopping here spares the grace period another step and
        # save. Every process saves, then calls this. The last step's save is left to what
        # follows training (`stopping_on_sigterm`).
        if self.stopped_at_step is not None or state.global_step >= state.max_steps or not self._agreed():
            return
        self.stopped_at_step = state.global_step
        control.should_training_stop = True
        if state.is_world_process_zero:
            print(f"train: SIGTERM: checkpoint-{state.global_step} saved, the step reached: stopping there",
                  file=sys.stderr, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        # Still armed: a SIGTERM from here until the body of `stopping_on_sigterm` is left is one
        # after the last step, whose checkpoint may yet have to be saved.
        self.ended_at_step = state.global_step


@contextlib.contextmanager
def stopping_on_sigterm(callback: StopOnSigterm, save_checkpoint: Callable[[], None]) -> Iterator[None]:
    """Runs the body (Trainer.train with `callback` added), then raises `StoppedAtCheckpoint`
    when it stopped on SIGTERM. A SIGTERM that came after the last step's end (during its
    evaluation or save: nothing left to stop) is a stop too, agreed on by all processes, before
    the final save: at the last step's checkpoint, which `save_checkpoint()` (Trainer's save, on
    every process) writes where the run saved none there (`--save-steps 0`, which a SIGTERM during
    the last step's evaluation left with neither a checkpoint nor a final model); or, where a
    resume could not make the final save from that checkpoint (`late_sigterm_saves`), no stop here:
    the final save goes on and the stop comes after it. The handler is given back however the body
    ends (it covers that save too), except to a final save that follows
    (`final_save_despite_sigterm`), which a run that ended normally hands it to."""
    handed_over = False
    try:
        yield
        late = callback.stopped_at_step is None and callback._agreed()
        if late and callback.final_save_follows and callback.late_sigterm_saves:
            late = False  # still asked: `final_save_despite_sigterm` stops after the save
        if late and callback.saved_at_step != callback.ended_at_step:
            save_checkpoint()
        handed_over = callback.final_save_follows and callback.stopped_at_step is None and not late
    finally:
        if not handed_over:
            callback._disarm()
    if callback.stopped_at_step is not None:
        raise StoppedAtCheckpoint(f"checkpoint-{callback.stopped_at_step} saved")
    if late:
        raise StoppedAtCheckpoint(f"after the last step, before the final save (checkpoint-{callback.ended_at_step} "
                                  "holds that step)")


@contextlib.contextmanager
def final_save_despite_sigterm(callback: StopOnSigterm, output_dir: str | os.PathLike, *,
                               late_sigterm_saves: bool = False) -> Iterator[Callable[[], None]]:
    """Runs the body: a run's training (`stopping_on_sigterm`, which hands its handler over rather
    than giving it back) and then its final save into `output_dir`. Yields `final_save_begins()`,
    to be called where the final save's part begins (the LoRA merge, the weight check, the save):
    it arms the handler where training did not (a resume that saves its last checkpoint's model
    and trains nothing). A SIGTERM from then on is noted and the save goes on (a second one
    `REPEAT_WINDOW_S` or more after it, or Ctrl-C, stops at once); after the body every process
    agrees on it and raises `StoppedAfterTheFinalSave`. `late_sigterm_saves`: a SIGTERM during the
    last step or after its end (in its evaluation or checkpoint save) goes on to the final save
    too, rather than stopping at that step's checkpoint, for a run whose resume could not make the
    final save from it (FSDP shards the model only in Trainer.train: `trainer.load_finished_run`),
    which a requeued job then failed on. The handler is given back however the body ends."""
    callback.final_save_follows, callback.late_sigterm_saves = True, late_sigterm_saves
    try:
        yield callback._arm
        asked = callback._agreed()
    finally:
        callback.final_save_follows = callback.late_sigterm_saves = False
        callback._disarm()
    if asked:
        raise StoppedAfterTheFinalSave(f"after training: the final save went on, the run is finished and its model "
                                       f"saved in {os.fspath(output_dir)!r}")


def workers_outlive_sigterm(loader: Any) -> Any:
    """`loader` (a DataLoader, or accelerate's wrapper of one), its worker processes made to ignore
    SIGTERM: SLURM signals every process of a job, and torch ends a worker on a SIGTERM that its
    parent did not send, which the parent then raised as "DataLoader worker (pid ...) is killed by
    signal: Terminated" in the middle of the step, before any save. The parent ends its workers
    itself, and a worker whose parent is gone (SIGKILL) ends on its own."""
    base = getattr(loader, "base_dataloader", loader)
    if getattr(base, "num_workers", 0) > 0:
        base.worker_init_fn = functools.partial(_ignore_sigterm_then, base.worker_init_fn)
    return loader


def _ignore_sigterm_then(init: Any, worker_id: int) -> None:
    """A DataLoader worker_init_fn: SIGTERM ignored, then the loader's own `init` (if any)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if init is not None:
        init(worker_id)


def reduce_max_over(accelerator: Any) -> Callable[[bool], bool]:
    """`StopOnSigterm`'s agreement through `accelerator` (the Trainer's): a flag's max over its
    processes, on its device (NCCL reduces only CUDA tensors)."""
    def reduce_max(flag: bool) -> bool:
        if accelerator.num_processes <= 1:
            return flag
        value = torch.tensor(int(flag), device=accelerator.device)
        return bool(accelerator.reduce(value, reduction="sum").item())

    return reduce_max
