"""The transformers.Trainer subclass behind `superthoughts_ext.train`: logs the SuperThoughts
loss parts (loss_main, loss_mtp, loss_distill) averaged over processes, scores the held-out set
of --eval-data with its parts (`train_eval.HeldOutEvaluation`), saves and resumes
SuperThoughts models in their own checkpoint format, hands the epoch to the collator's
pad-split draws, stops a run whose loss turns NaN / inf (TrainingDiverged), and records the
optimizer and the run's settings in every checkpoint (RunSettings) for the resume checks of
`train_resume`, and draws its progress bars as whole lines in a log file (`train_progress`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState, TrainerState

from superthoughts_ext import train_finished, train_preemption, train_resume, train_run_settings, train_utils
from superthoughts_ext.checkpoint import weight_files
from superthoughts_ext.file_writes import WriteFailed, failure_message, writing
from superthoughts_ext.layers import causal_mask_for_right_padding
from superthoughts_ext.train_args import optimizer_class, optimizer_name
from superthoughts_ext.train_eval import LOSS_PARTS, HeldOutEvaluation
from superthoughts_ext.train_progress import use_line_progress

# Options that shape the trained model beyond the kind of run check_resume compares.
_RESUME_HINT = "resume with the --model, --compressor-type and --mtp-type of the run that wrote it"


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm of a training run turned NaN or infinite."""


class RunSettings(TrainerCallback, ExportableState):
    """Records in every checkpoint's trainer_state.json (under stateful_callbacks) what a resume
    must keep that the checkpoint's files do not show: the optimizer (another one loads the
    saved state without a word and fails at its first step: Adafactor over AdamW's state,
    KeyError 'beta1') and the run's settings (`train_run_settings.run_settings`: learning rate,
    schedule, data, ...) and its id (one per run, kept by its resumes: a checkpoint of this run
    copied elsewhere is told from another run's). `train_resume` compares them up front."""

    def __init__(self, optim: str = "", optimizer: str = "", settings: dict[str, Any] | None = None,
                 run_id: str = "") -> None:
        self.optim, self.optimizer, self.settings, self.run_id = optim, optimizer, settings, run_id

    def state(self) -> dict[str, Any]:
        args = {"optim": self.optim, "optimizer": self.optimizer}
        args.update({"settings": self.settings} if self.settings else {})
        args.update({"run_id": self.run_id} if self.run_id else {})
        return {"args": args, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        # A state resumed from a checkpoint written before this record existed lacks the entry
        # that Trainer's checkpoint save updates in place (KeyError 'RunSettings').
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())


class SplitEpochCallback(TrainerCallback):
    """Hands the epoch at each epoch start to the collator's pad-split generators.

    DataLoader workers start after this (at the epoch's `iter`), so they see the new value. A
    resumed run restores the checkpoint's fractional epoch; its floor is the epoch it resumes in.
    """

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch counts finished steps / steps per epoch: k at the start of epoch k (the
        # tolerance absorbs a last-place rounding), k + a fraction when resuming within it.
        self.collator.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class RunStartCallback(TrainerCallback):
    """Remembers the global step a run starts from (that of the checkpoint when resuming)."""

    start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step


class IntervalsOfThisRun(TrainerCallback):
    """A resumed Trainer logs, evaluates and saves at the intervals of the checkpoint's
    trainer_state.json, not this run's --logging-steps / --eval-steps / --save-steps (only a log
    line says they differ): resumed with --eval-data from a run without, it evaluated every 500
    steps, TrainerState's default, and another --save-steps was ignored. None of them changes what
    is trained (`train_eval.HeldOutEvaluation` leaves the random state alone), so a resume takes
    this run's."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class ResumedLengthCheck(TrainerCallback):
    """Refuses, before the first step, a resumed run whose length in epochs (known once Trainer
    has counted the batches) differs from the checkpoint's run where the learning-rate schedule
    depends on it (train_resume.check_run_length; --max-steps is checked before loading), or
    that has no step left (train_resume.check_steps_left)."""

    def __init__(self, checkpoint: os.PathLike, lr_scheduler: str, warmup_ratio: float) -> None:
        self.checkpoint, self.lr_scheduler, self.warmup_ratio = checkpoint, lr_scheduler, warmup_ratio

    def on_train_begin(self, args, state, control, **kwargs):
        length = f"{state.max_steps} steps (--epochs {args.num_train_epochs:g} of this data and batch size)"
        train_resume.check_run_length(self.checkpoint, state.max_steps, self.lr_scheduler, self.warmup_ratio,
                                      length=length)
        train_resume.check_steps_left(self.checkpoint, state.max_steps, length=length)


class SuperThoughtsTrainer(HeldOutEvaluation, Trainer):
    """Trainer that logs the loss parts (of training and of evaluation) and saves SuperThoughts
    models in their own format."""

    def __init__(self, *args: Any, run_settings: dict[str, Any] | None = None, run_id: str = "",
                 base_model: str | None = None, **kwargs: Any) -> None:
        """Trainer's arguments, and the run's settings and id to record in each checkpoint (RunSettings);
        `base_model`, the directory the model was loaded from, is recorded beside each LoRA adapter
        (`export.EXPORT_FILE`, what `superthoughts export` merges it with)."""
        self._base_model = base_model
        model = kwargs["model"] if "model" in kwargs else (args[0] if args else None)
        # Trainer sets the model config's use_cache to False for training; checkpoints keep the
        # model's own (a baseline checkpoint saved false: a plain forward then returned no cache).
        self._use_cache = getattr(getattr(model, "config", None), "use_cache", None)
        super().__init__(*args, **kwargs)
        from peft import PeftModel

        inner = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        self._superthoughts = _is_superthoughts(inner)
        # Both modes optimise the mean over micro-batches (and processes) of each micro-batch's
        # token mean. The SuperThoughts loss is already a per-batch mean of its parts, which
        # token-count rescaling (num_items_in_batch) would double-normalise; the baseline gives
        # up transformers' token weighting across the accumulated batch so that it trains on
        # the same objective whatever --grad-accum and the number of processes.
        self.model_accepts_loss_kwargs = False
        self._part_sums: dict[str, torch.Tensor] = {}  # loss parts of the steps since the last log
        self._part_steps = 0.0  # those optimizer steps
        if hasattr(self.data_collator, "set_epoch"):
            self.add_callback(SplitEpochCallback(self.data_collator))
        self._run_start = RunStartCallback()
        self.add_callback(self._run_start)
        self.add_callback(IntervalsOfThisRun())
        self.add_callback(RunSettings(optimizer_name(self.args), optimizer_class(self.args), run_settings, run_id))
        self._sigterm_stop = train_preemption.StopOnSigterm(train_preemption.reduce_max_over(self.accelerator))
        self.add_callback(self._sigterm_stop)
        use_line_progress(self)

    def train(self, *args: Any, **kwargs: Any):
        """Trainer.train, returning the training loss of the steps this run trained (see
        _correct_resumed_summary: the metrics dict is the one log() corrected). Stopped by SIGTERM,
        it saves a checkpoint at the step it reached and raises train_preemption.StoppedAtCheckpoint."""
        with train_preemption.stopping_on_sigterm(self._sigterm_stop, self._checkpoint_after_the_last_step):
            output = super().train(*args, **kwargs)
        return output._replace(training_loss=output.metrics.get("train_loss", output.training_loss))

    def final_save_despite_sigterm(self, output_dir: str | os.PathLike) -> AbstractContextManager[Callable[[], None]]:
        """`train_preemption.final_save_despite_sigterm` with this trainer's SIGTERM handling (under
        FSDP a SIGTERM in or after the last step goes on to the final save: `load_finished_run`)."""
        return train_preemption.final_save_despite_sigterm(self._sigterm_stop, output_dir,
                                                           late_sigterm_saves=self.is_fsdp_enabled)

    def _checkpoint_after_the_last_step(self) -> None:
        """The checkpoint of the last step, saved on a SIGTERM after that step's end in a run that
        saved none there (train_preemption.stopping_on_sigterm): the resume makes the final save."""
        if self.is_world_process_zero():
            step = self.state.global_step
            print(f"train: SIGTERM after the last step: saving checkpoint-{step}, then stopping before the final save",
                  file=sys.stderr, flush=True)
        self._save_checkpoint(self.model_wrapped, trial=None)

    def _correct_resumed_summary(self, logs: dict[str, float]) -> None:
        """After a resume transformers (up to 5.18) divides the run's summed loss by every step, the
        checkpoint's too, and counts every step's samples in the run's samples/s and steps/s
        (12 of 18 steps resumed: a third of the true loss, 3x the true speed). Rescaled here,
        in the summary log itself, so log_history and report_to see the true values too.
        transformers 5.19+ counts the steps of this call itself (it records `_initial_global_step`)."""
        start, total = self._run_start.start_step, self.state.max_steps
        steps_run = self.state.global_step - start
        if start == 0 or steps_run <= 0 or hasattr(self, "_initial_global_step"):
            return
        logs["train_loss"] = logs["train_loss"] * self.state.global_step / steps_run
        for name in ("train_samples_per_second", "train_steps_per_second"):
            if name in logs:
                logs[name] = round(logs[name] * steps_run / total, 3)

    def get_train_dataloader(self):
        return train_preemption.workers_outlive_sigterm(super().get_train_dataloader())

    def get_eval_dataloader(self, eval_dataset=None):
        return train_preemption.workers_outlive_sigterm(super().get_eval_dataloader(eval_dataset))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._superthoughts and model.training:
            # Training needs the loss alone: skip the [B, T, V] logits of both heads.
            inputs = {**inputs, "return_logits": False}
        elif not self._superthoughts and "attention_mask" in inputs:
            # The baseline gets the same right-padding shortcut the SuperThoughts forward takes.
            inputs = {**inputs, "attention_mask": causal_mask_for_right_padding(inputs["attention_mask"])}
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            # Weighted as Trainer weights `loss`: each micro-batch by 1 / the micro-batches of its
            # optimizer step (a short last step of an epoch has fewer), the window's sum then
            # divided by its optimizer steps (the shares add up to them); so the logged parts add
            # up to the logged loss.
            share = 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
            self._part_steps += share
            for name in LOSS_PARTS:
                value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
                if value is not None:
                    self._part_sums[name] = self._part_sums.get(name, 0.0) + share * value.detach().float()
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Trainer logs training loss on every process at the same step, so the mean over
        # processes below is a collective that all ranks reach together.
        if "loss" in logs and self._part_sums:
            for name in sorted(self._part_sums):
                mean = self._part_sums[name] / self._part_steps
                logs[name] = round(self.accelerator.reduce(mean, reduction="mean").item(), 4)
            self._part_sums.clear()
            self._part_steps = 0.0
        if "train_loss" in logs and "train_runtime" in logs:
            # The end-of-training summary (Trainer._finalize_training logs it, then returns the
            # same dict as TrainOutput.metrics).
            self._correct_resumed_summary(logs)
        super().log(logs, start_time)
        self._stop_if_diverged(logs)

    def check_finite_weights(self, model: nn.Module) -> None:
        """TrainingDiverged, on every process, when a weight of `model` is NaN or infinite: the
        logged losses vouch for the weights each step started from, not for the last update
        (a run of one step at learning rate inf saved a model of NaN). Each process checks its
        own shards (FSDP); the count is summed so that all of them stop together."""
        local = [name for name, parameter in model.named_parameters()
                 if not torch.isfinite(parameter.to_local() if hasattr(parameter, "to_local") else parameter).all()]
        count = self.accelerator.reduce(torch.tensor(len(local), device=self.accelerator.device), reduction="sum")
        if int(count):
            names = ", ".join(local[:3]) + (", ..." if len(local) > 3 else "") if local else "on another process"
            raise TrainingDiverged(f"train: the weights hold NaN or inf after the last step ({names}); the model was "
                                   "not saved. Lower the learning rate, or resume from an earlier checkpoint")

    def _stop_if_diverged(self, logs: Mapping[str, float]) -> None:
        """TrainingDiverged once a logged loss (or part) or gradient norm is NaN or infinite:
        without a loss scaler nothing skips such a step, so the weights are NaN from then on and
        every later step, checkpoint and the final save would be too. Every process logs the
        same reduced values, so all of them stop at the same step. Not under float16 mixed
        precision: its GradScaler skips overflowing steps, routinely early in a run."""
        if self.args.fp16 or getattr(self.args, "mixed_precision", "no") == "fp16":  # the latter: accelerate's config
            return
        watched = ("loss", "grad_norm", *LOSS_PARTS)
        bad = {name: logs[name] for name in watched if name in logs and not math.isfinite(logs[name])}
        if "loss" in logs and not bad:
            self._last_finite_step = self.state.global_step
        if bad:
            values = ", ".join(f"{name} {value}" for name, value in bad.items())
            # A finite log at step N vouches for the weights step N started from: checkpoint-N
            # already holds step N's update. Else the step this run started (or resumed) from.
            last = getattr(self, "_last_finite_step", self._run_start.start_step)
            raise TrainingDiverged(
                f"train: training diverged by step {self.state.global_step} ({values}); stopped without saving the "
                f"model (checkpoints from step {max(last, 1)} on may hold diverged weights). Try a lower "
                "--learning-rate or --max-grad-norm, or float32 weights with --bf16 autocast")

    def load_finished_run(self, checkpoint: os.PathLike) -> None:
        """The model and state of `checkpoint`, the last step of a run whose final save was cut
        off (train_resume.final_save_pending), loaded in place of training: Trainer.train would
        take a step past the end. FSDP shards the model only in train(): refused there."""
        if self.is_fsdp_enabled:
            raise ValueError(f"train: {os.fspath(checkpoint)!r} is the last step of its run, whose final save was cut "
                             "off: resume it in one process without FSDP to save its model")
        if self.args.should_save:
            warnings.warn(f"train: {os.fspath(checkpoint)!r} is the last step of its run and {self.args.output_dir!r} "
                          "holds no model (the final save was cut off): saving the checkpoint's model, no step "
                          "trained", UserWarning, stacklevel=2)
        self._load_from_checkpoint(os.fspath(checkpoint))
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint save, a failed write (a full disk) raised as `WriteFailed` naming
        the folder. A save cut off (a failed write, Ctrl-C, SIGTERM: `cli.Terminated`) removes its
        folder: half written, it held the room a rerun needs, and a --resume picked it as the last
        checkpoint only to refuse it, until it was removed by hand."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        try:
            with writing(folder):
                super()._save_checkpoint(model, trial)
        except BaseException as failed:
            if not self.args.should_save:
                raise
            # Trainer writes trainer_state.json last: a folder without it is not whole.
            if train_run_settings.read_json(folder / "trainer_state.json") is None:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            if not isinstance(failed, WriteFailed):
                raise
            # A whole folder: what failed came after it, rotating older checkpoints away
            # (--save-total-limit; transformers ignores a failed removal there, not a folder that
            # vanished while it sorted them), and the message names what could not be removed.
            cause = failed.__cause__
            other = getattr(cause, "filename", None) or folder.parent
            rotation = WriteFailed(f"{failure_message(other, cause)}: removing older checkpoints "
                                   f"(--save-total-limit) failed after {folder.name} was saved")
            rotation.errno = failed.errno
            raise rotation from cause

    def save_final_model(self, output_dir: str | os.PathLike, record: Mapping[str, Any] | None = None) -> None:
        """save_model into a hidden folder of `output_dir`, then its files moved in, config.json
        last: a run killed while saving in place left a 0-byte config.json and no weights, a
        folder the checks took for a finished model (a new run refused it) that loads as none.
        `record` (`train_finished.run_record`) is saved with the model, for `--resume auto` to
        tell this run finished. Every process takes part (FSDP gathers the weights); the main one
        moves the files."""
        out = Path(os.fspath(output_dir))
        staging = out / ".final-save"
        if self.args.should_save and staging.exists():  # left by a killed run
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        try:
            with writing(out):
                self.save_model(os.fspath(staging))
                if record is not None and self.args.should_save:
                    train_finished.write_record(staging, record, self.state.global_step)
        except BaseException:  # a full disk, Ctrl-C, SIGTERM (`cli.Terminated`)
            if self.args.should_save:  # the room it takes (a whole model); nothing in `out` was touched yet
                shutil.rmtree(staging, ignore_errors=True)
            raise
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # An earlier final save's weights in the other layout (a single file before shards, or
            # the reverse) would stay beside these, and the folder load as neither. config.json
            # goes first: a kill from here on leaves a folder the checks take for a save cut off,
            # not a model of mixed weights.
            (out / "config.json").unlink(missing_ok=True)
            (out / train_finished.FINISHED_RUN_FILE).unlink(missing_ok=True)  # an earlier run's
            for stale in weight_files(out):
                stale.unlink(missing_ok=True)
            for name in sorted((p.name for p in staging.iterdir()), key=lambda name: name == "config.json"):
                os.replace(staging / name, out / name)
            staging.rmdir()
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from peft import PeftModel

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if isinstance(model, PeftModel) or not _is_superthoughts(model):
            config = getattr(model, "config", None)
            training_value = getattr(config, "use_cache", None)
            if self._use_cache is not None and training_value is not None:
                config.use_cache = self._use_cache
            try:
                super()._save(output_dir, state_dict=state_dict)
            finally:
                if self._use_cache is not None and training_value is not None:
                    config.use_cache = training_value
            if isinstance(model, PeftModel) and self.args.should_save:
                self._save_export_record(model, output_dir if output_dir is not None else self.args.output_dir)
            return
        if not self.args.should_save:
            # transformers 5.25 calls _save on every rank under FSDP and checks here: another
            # rank's empty state dict would overwrite the gathered one written by rank 0.
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        # Under FSDP the Trainer hands over the gathered full state dict (the module's own
        # parameters are shards there); otherwise state_dict is None and the module's is used.
        if state_dict is not None:
            state_dict = train_utils.share_tied_entries(model, state_dict)
        model.save_pretrained(output_dir, state_dict=state_dict)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _save_export_record(self, model: nn.Module, output_dir: str) -> None:
        """The adapter alone does not rebuild a model: what `superthoughts export` needs beside it."""
        from superthoughts_ext.export import EXPORT_FILE, export_record

        pad = getattr(self.processing_class, "pad_token_id", None)
        record = export_record(model, pad, self._base_model)
        with open(os.path.join(output_dir, EXPORT_FILE), "w", encoding="utf-8") as file:
            file.write(json.dumps(record, indent=2, sort_keys=True) + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        target = model if model is not None else self.model
        if _is_superthoughts(target) and not self.is_fsdp_enabled:
            from superthoughts_ext.modeling import SuperThoughtsForCausalLM

            # Reading through the model's own loader keeps the checkpoint layout private to
            # modeling.py (tied weights, sub-folders), whatever files it writes.
            loaded = SuperThoughtsForCausalLM.from_pretrained(resume_from_checkpoint)
            try:
                target.load_state_dict(loaded.state_dict())
            except RuntimeError as exc:
                raise ValueError(f"resume: checkpoint {resume_from_checkpoint} does not match the model: {exc}; "
                                 f"{_RESUME_HINT}") from exc
            return
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except (KeyError, RuntimeError) as exc:  # peft's adapter loader: a module the model lacks
            raise ValueError(f"resume: checkpoint {resume_from_checkpoint} does not match the model ({exc!r}); "
                             f"{_RESUME_HINT}") from exc

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ValueError as exc:  # torch: "... parameter group that doesn't match the size of optimizer's group"
            raise ValueError(f"resume: the optimizer state in {checkpoint} does not fit the model's parameters "
                             f"({exc}); {_RESUME_HINT}") from exc


def _is_superthoughts(model: nn.Module) -> bool:
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    return isinstance(model, SuperThoughtsForCausalLM)
