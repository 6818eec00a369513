"""Checks made before a training run starts or resumes, ahead of any tokenising or loading:
the output directory (`check_output_dir`) and the checkpoint resumed from (`check_resume`: its
kind of run, its LoRA options, its length where the learning-rate schedule depends on it).

Trainer itself loads a checkpoint of another run loosely and fails late, if at all; these turn
each mismatch into an error naming the option to change. `check_run_length` also runs once
Trainer knows a length given in epochs (`trainer.ResumedLengthCheck`). The checks against the
settings a checkpoint recorded (learning rate, data, batch, optimizer...) are in
train_run_settings.py.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from superthoughts_ext.checkpoint import checkpoint_folders, is_superthoughts_checkpoint
from superthoughts_ext.run_info import write_problem
from superthoughts_ext.train_run_settings import _check_optimizer, _check_settings, _recorded, read_json
from superthoughts_ext.train_utils import SUPERTHOUGHTS_TRAINABLE_MODULES, lora_target_pattern


def check_resume(output_dir: str | os.PathLike, resume: str | os.PathLike | bool | None, *,
                 baseline: bool = False, lora_r: int = 0, max_steps: int = -1, lr_scheduler: str = "constant",
                 warmup_ratio: float = 0.0, lora: Mapping[str, Any] | None = None,
                 optimizer: tuple[str, str] | None = None, settings: Mapping[str, Any] | None = None,
                 num_epochs: float = 0.0, cut_off_removed: bool = False) -> Path | None:
    """Up front, before tokenising and loading: `resume` (a checkpoint path, or True for the
    last checkpoint-N in `output_dir`) must exist and be a checkpoint of this kind of run
    (SuperThoughts or baseline, full or LoRA of rank `lora_r`: Trainer loads another kind
    non-strictly and fails later, if at all, on an unrelated error) and, with `max_steps` > 0 and
    a learning-rate schedule that depends on the run's length, of a run of that many steps; a
    new run (no `resume`) must not start in a directory holding an earlier run's checkpoint-N
    folders. Trainer would write its own beside them, rotate by step number (keeping the old
    run's higher ones) and a later --resume would pick up the old run. A LoRA checkpoint's
    adapter must also have `lora` (`train_utils.lora_settings`): peft loads another alpha or
    other target modules without a word (the adapter of the steps trained was dropped). The
    checkpoint must leave steps to train (`check_steps_left`; or be the last step of this run,
    whose final save was cut off: `final_save_pending`), and have been trained with an
    optimizer of the class of `optimizer` ((--optim name, class)) and with the same `settings`
    (`run_settings`) where it recorded them (`trainer.RunSettings`). `cut_off_removed`: a new run
    that `--resume auto` chose, for which checkpoints whose save was cut off are no earlier run
    (`resolve_resume_if_any`: the main process removes them, maybe while this one looks).
    Returns the checkpoint resumed from (None for a new run); a run whose length is set in epochs
    is checked against it once Trainer knows that length (`check_run_length` in a callback)."""
    from transformers.trainer_utils import get_last_checkpoint

    if isinstance(resume, (str, os.PathLike)):
        checkpoint = Path(os.fspath(resume))
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"train: --resume {os.fspath(resume)!r}: no such checkpoint directory")
    else:
        out = Path(os.fspath(output_dir))
        last = get_last_checkpoint(os.fspath(out)) if out.is_dir() else None
        if resume and last is None:
            raise FileNotFoundError(f"train: --resume: no checkpoint-N folder in {os.fspath(out)!r} to resume from; "
                                    "leave out --resume to start a new run")
        if not resume and last is not None and (not cut_off_removed or _complete_checkpoints(out)):
            # The last complete one: --resume names it too (one whose save was cut off is refused).
            complete = _complete_checkpoints(out)
            shown = complete[-1].name if complete else Path(last).name
            raise ValueError(f"train: {os.fspath(out)!r} holds checkpoints of an earlier run (last: {shown}); "
                             "--resume continues that run, a new one needs another --output (or those folders "
                             "removed)")
        if not resume:
            return None
        checkpoint = Path(last)
    _check_complete(checkpoint)
    _check_checkpoint_kind(checkpoint, baseline, lora_r)
    _check_lora_settings(checkpoint, lora)
    # Settings before the length: a finished run's command requeued on another number of GPUs
    # reads as another run (--resume auto) and comes here; its global batch is what differs,
    # not "nothing is left to train".
    _check_optimizer(checkpoint, optimizer)
    _check_settings(checkpoint, settings)
    check_run_length(checkpoint, max_steps, lr_scheduler, warmup_ratio)
    if not final_save_pending(checkpoint, output_dir, max_steps, num_epochs):
        check_steps_left(checkpoint, max_steps)
    return checkpoint


# `--resume auto`: resume when --output holds a checkpoint, else start a new run.
RESUME_IF_ANY = "auto"


def resolve_resume_if_any(output_dir: str | os.PathLike, resume: str | os.PathLike | bool | None, *,
                          main_process: bool = True) -> str | os.PathLike | bool | None:
    """`resume` as the other checks take it: for `RESUME_IF_ANY` (the string "auto"; a checkpoint
    folder of that name is given as "./auto") the last complete checkpoint-N of `output_dir` (its
    path), else None: a new run. What a requeued job needs, whose command is the same whether the
    run was preempted before its first save or after it. The checkpoint-N folders after that one
    that are not complete (no trainer_state.json: a save SIGKILL cut off, which --resume alone
    refuses) are removed by the main process: each would stop a new run, and Trainer would rotate
    the complete ones away before them. One that is a symlink is a ValueError, left as it is.
    Says on stderr (main process) which it does; other values are returned as they are. Called
    with `output_dir` locked (`run_info.output_lock`)."""
    if not isinstance(resume, str) or resume != RESUME_IF_ANY:
        return resume
    out = Path(os.fspath(output_dir))
    folders = checkpoint_folders(out) if out.is_dir() else []
    complete = [p for p in folders if read_json(p / "trainer_state.json") is not None]
    last = complete[-1] if complete else None
    cut_off = [p for p in folders if last is None or _step(p) > _step(last)]
    if linked := [p for p in cut_off if p.is_symlink()]:
        # Not one Trainer wrote: removing the folder it names would delete outside --output.
        raise ValueError(f"train: --resume auto: {os.fspath(linked[0])!r} is a symlink to "
                         f"{os.fspath(linked[0].resolve())!r}, a checkpoint without trainer_state.json (not "
                         "complete); remove the link or complete that folder, it is left as it is")
    if main_process:
        for folder in cut_off:
            print(f"train: --resume auto: removing {os.fspath(folder)!r}, a checkpoint whose save was cut off",
                  file=sys.stderr, flush=True)
            try:
                shutil.rmtree(folder)
            except OSError as failed:  # left there, it would stand beside the new run's checkpoints
                raise OSError(f"train: --resume auto: cannot remove {os.fspath(folder)!r}, a checkpoint whose save "
                              f"was cut off: {failed}") from failed
        doing = (f"resuming from {os.fspath(last)!r}" if last is not None
                 else f"no checkpoint in {os.fspath(out)!r}, starting a new run")
        print(f"train: --resume auto: {doing}", file=sys.stderr, flush=True)
    return os.fspath(last) if last is not None else None


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name[len("checkpoint-"):])


def _complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint-N folders of `folder` holding a readable trainer_state.json, by step."""
    return [p for p in checkpoint_folders(folder) if read_json(p / "trainer_state.json") is not None]


def _check_complete(checkpoint: Path) -> None:
    """FileNotFoundError naming a checkpoint folder without trainer_state.json, the file Trainer
    writes last (a save cut off, or a run's output folder given for one of its checkpoints):
    Trainer failed on the bare missing path after the data and the model had loaded."""
    if read_json(checkpoint / "trainer_state.json") is not None:  # torn by a kill mid-write: not complete
        return
    inside = _complete_checkpoints(checkpoint)
    if inside:
        raise FileNotFoundError(f"train: --resume {os.fspath(checkpoint)!r} is a run's output folder, not one of "
                                f"its checkpoints; resume from its last one, {os.fspath(inside[-1])!r} (or give "
                                "that folder as --output and --resume alone)")
    others = [p for p in _complete_checkpoints(checkpoint.parent) if p != checkpoint]
    hint = f"resume from another one, such as {os.fspath(others[-1])!r}" if others else "start a new run"
    raise FileNotFoundError(f"train: --resume {os.fspath(checkpoint)!r} is not a complete checkpoint (no "
                            f"readable trainer_state.json: its save was cut off?); remove it and {hint}")


def continued_run_id(checkpoint: Path | None, output_dir: str | os.PathLike) -> str:
    """The run id a run resumed from `checkpoint` into `output_dir` keeps: the checkpoint's, where
    it continues that run in its own folder (the checkpoint's parent, or one whose latest
    checkpoint has that id); "" for a new run, a fork into another folder (which may change loss
    weights: another run) or a checkpoint written before ids were kept."""
    run = str(_recorded(checkpoint).get("run_id") or "") if checkpoint is not None else ""
    if not run:
        return ""
    out = Path(os.fspath(output_dir)).resolve()
    own = _complete_checkpoints(out) if out.is_dir() else []
    return run if checkpoint.resolve().parent == out or (own and _recorded(own[-1]).get("run_id") == run) else ""


# The files of a finished run's model in its output folder (full, or a LoRA run's merged model,
# in one file or in shards; an adapter_config.json from a run of older releases, which saved the
# adapter alone).
FINAL_MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter_config.json")


def final_save_pending(checkpoint: Path, output_dir: str | os.PathLike, max_steps: int, num_epochs: float) -> bool:
    """True when `checkpoint`, in `output_dir`, is the last step of its run and that run is this
    one's length (`max_steps`, or `num_epochs` when it is 0 or less), while `output_dir` holds no
    final model: the run was stopped after its last checkpoint, in or before the final save. A
    resume then saves that checkpoint's model (a LoRA checkpoint holds the adapter alone, which
    no loader takes) instead of training a step past the end."""
    state = read_json(checkpoint / "trainer_state.json") or {}
    done, end = state.get("global_step"), state.get("max_steps")
    if not (isinstance(done, int) and isinstance(end, int) and end > 0 and done >= end):
        return False
    if max_steps > 0:
        same_length = end == max_steps
    else:  # Trainer records the epochs rounded up (1.5 as 2), and the epoch it reached (1.5)
        epoch = state.get("epoch")
        same_length = (state.get("num_train_epochs") == math.ceil(num_epochs) and isinstance(epoch, (int, float))
                       and epoch >= num_epochs - 1e-6)
    out = Path(os.fspath(output_dir))
    # config.json is moved in last: weights without it are a save cut off while moving in.
    return (same_length and checkpoint.resolve().parent == out.resolve()
            and not any((out / name).is_file() for name in ("config.json", "adapter_config.json")))


def check_steps_left(checkpoint: Path, max_steps: int, *, length: str | None = None) -> None:
    """ValueError when `checkpoint` is at or past this run's `max_steps` (> 0; a length Trainer
    worked out from epochs is described by `length`): Trainer checks for the last step only
    after taking one, so it would train a step past the end and save that model over the
    finished one (each restart of a finished job one more)."""
    done = (read_json(checkpoint / "trainer_state.json") or {}).get("global_step")
    if max_steps > 0 and isinstance(done, int) and done >= max_steps:
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} is at step {done} and this run ends at "
                         f"{length or f'--max-steps {max_steps}'}: nothing is left to train (Trainer would still "
                         "take a step past the end and save over the finished model); train further from the "
                         "finished model (--model) as a new run, or resume with a longer run where the schedule "
                         "allows")


# transformers' schedules whose shape is set by the run's length (decays to the last step), and
# those whose warmup is (warmup_ratio of the length); constant, reduce_lr_on_plateau, greedy and
# warmup-free inverse_sqrt are not.
LENGTH_SHAPED_SCHEDULES = frozenset({"linear", "cosine", "cosine_with_restarts", "polynomial", "cosine_with_min_lr",
                                     "cosine_warmup_with_min_lr", "warmup_stable_decay"})
WARMUP_SCHEDULES = frozenset({"constant_with_warmup", "inverse_sqrt"})


def check_run_length(checkpoint: Path, max_steps: int, lr_scheduler: str, warmup_ratio: float, *,
                     length: str | None = None) -> None:
    """ValueError when this run's `max_steps` (its --max-steps; <= 0: unknown yet, not checked)
    differs from the length of the run that wrote `checkpoint` (its trainer_state.json) and the
    learning-rate schedule depends on that length (LENGTH_SHAPED_SCHEDULES, or a warmup of
    WARMUP_SCHEDULES): Trainer would go on under a schedule rebuilt for the new length from the
    middle of the old one (seen: a 4-step linear run resumed to 6 steps logged lr 0, then
    9.5e-5), not under either run's. `length` describes a length Trainer worked out (epochs)."""
    shaped = lr_scheduler in LENGTH_SHAPED_SCHEDULES or (warmup_ratio > 0 and lr_scheduler in WARMUP_SCHEDULES)
    if not shaped or max_steps <= 0:
        return
    planned = (read_json(checkpoint / "trainer_state.json") or {}).get("max_steps")
    if isinstance(planned, int) and planned != max_steps:
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} is from a run of {planned} steps, and this one "
                         f"has {length or f'--max-steps {max_steps}'}; resume with --max-steps {planned}, or train "
                         "further from the finished model (--model) as a new run with its own schedule")


def _run_kind(superthoughts: bool, lora_r: int | None) -> str:
    return f"{'a SuperThoughts' if superthoughts else 'a baseline'} {f'LoRA r={lora_r}' if lora_r else 'full'} run"


def _check_checkpoint_kind(checkpoint: Path, baseline: bool, lora_r: int) -> None:
    """ValueError when `checkpoint` was written by another kind of run than this one. A LoRA
    checkpoint holds adapter_config.json (SuperThoughts: the compressor and MTP among its
    modules_to_save), a full one config.json (SuperThoughts: with its section)."""
    adapter = read_json(checkpoint / "adapter_config.json")
    if adapter is not None:
        saved = set(adapter.get("modules_to_save") or [])
        written = (bool(saved & set(SUPERTHOUGHTS_TRAINABLE_MODULES)), int(adapter.get("r") or 0))
    elif (checkpoint / "config.json").is_file():
        written = (is_superthoughts_checkpoint(checkpoint), 0)
    else:
        return  # not a checkpoint this check can read; Trainer says what is missing
    if written != (not baseline, lora_r):
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} was written by {_run_kind(*written)}, and this is "
                         f"{_run_kind(not baseline, lora_r)}; resume with the options of the run that wrote it")


LORA_FLAGS = {"lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "target_modules": "--lora-target-modules"}


# The regex a SuperThoughts LoRA run wrote as peft's target_modules before commit b69032d
# (2026-12-05), `backbone\..*\.(names)`: it adapts what today's `backbone\.(?:.*\.)?(names)`
# (`train_utils.lora_target_pattern`) adapts, but for a module directly under the backbone, which
# it never reached: backbone.lm_head, though --lora-target-modules named it.
_PRE_B69032D_TARGETS = re.compile(r"([\w.]+)\\\.\.\*\\\.\(([\w|]+)\)")


def _target_names(targets: Any) -> str:
    """LoRA target modules as --lora-target-modules takes them: names, not the regex confining
    them to the backbone (`train_utils.lora_target_pattern`)."""
    if isinstance(targets, str) and (confined := re.fullmatch(r"[\w.]+\\\.\(\?:\.\*\\\.\)\?\(([\w|]+)\)", targets)):
        targets = confined.group(1).split("|")
    return " ".join(sorted(targets)) if isinstance(targets, list) else repr(targets)


def _older_targets(found: Any) -> tuple[Any, str]:
    """`found`, an adapter's target_modules, as this release writes the modules it adapted (with
    why a resume must name other ones, "" when it need not): a pattern of releases before b69032d
    adapted its names but lm_head, which it never reached (resuming with lm_head would add an
    untrained adapter to it); other values as they are."""
    old = _PRE_B69032D_TARGETS.fullmatch(found) if isinstance(found, str) else None
    if old is None:
        return found, ""
    names = old.group(2).split("|")
    adapted = [name for name in names if name != "lm_head"]
    why = ""
    if len(adapted) < len(names):
        why = (f" (an adapter written before 2026-12-05, whose pattern never reached backbone.lm_head: it adapted "
               f"{' '.join(sorted(adapted))} alone; resume with --lora-target-modules {' '.join(sorted(adapted))})")
    return lora_target_pattern(adapted, old.group(1)), why


def _check_lora_settings(checkpoint: Path, lora: Mapping[str, Any] | None) -> None:
    """ValueError when the LoRA adapter in `checkpoint` has another alpha, dropout or target
    modules than `lora` (`train_utils.lora_settings`); nothing to check without an adapter_config.json."""
    saved = read_json(checkpoint / "adapter_config.json")
    if not lora or saved is None:
        return
    differ = []
    for key, wanted in lora.items():
        found, why = saved.get(key), ""
        if key == "target_modules":  # a pattern of an older release: the modules it adapted
            found, why = _older_targets(found)
        if isinstance(found, list) and isinstance(wanted, list):  # peft writes a set of names in any order
            same = sorted(found) == sorted(wanted)
        elif isinstance(wanted, (int, float)) and isinstance(found, (int, float)):
            same = float(found) == float(wanted)
        else:
            same = found == wanted
        if not same:
            shown = _target_names if key == "target_modules" else repr
            differ.append(f"{LORA_FLAGS[key]} {shown(found)} (this run: {shown(wanted)}){why}")
    if differ:
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} holds a LoRA adapter with {'; '.join(differ)}; "
                         "resume with the LoRA options of the run that wrote it")


def check_output_dir(output_dir: str | os.PathLike, model: Any, resume: str | os.PathLike | bool | None) -> None:
    """Up front: `output_dir` must not be a file nor the `model` directory the run starts from,
    a new run (no `resume`) must not start in one holding a trained model (a finished run:
    a --save-steps 0 run leaves no checkpoint-N folder for `check_resume` to see), and a
    checkpoint outside `output_dir` must not be resumed into one holding another run (a model,
    or checkpoints whose latest records another run id than it: `trainer.RunSettings`). Trainer
    would overwrite each without a word."""
    out = Path(os.fspath(output_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"train: --output {os.fspath(out)!r} is a file, not a directory")
    # Trainer makes the folder at its first save: a read-only one failed after training. A probe
    # of this process's own (another rank's check below would take a probe config.json for a model).
    if (problem := write_problem(out / f".write-check-{os.getpid()}")) is not None:
        raise ValueError(f"train: --output {os.fspath(out)!r} cannot be written: {problem}")
    if isinstance(model, (str, os.PathLike)) and out.exists() and out.resolve() == Path(os.fspath(model)).resolve():
        raise ValueError(f"train: --output {os.fspath(out)!r} is the --model directory; the run would overwrite "
                         "the model it starts from")
    held = [name for name in FINAL_MODEL_FILES if (out / name).is_file()]
    if not resume and held:
        raise ValueError(f"train: {os.fspath(out)!r} holds a trained model ({', '.join(held)}); a new run needs "
                         "another --output (or that model removed)")
    checkpoint = Path(os.fspath(resume)) if isinstance(resume, (str, os.PathLike)) else None
    if checkpoint is not None and out.is_dir() and checkpoint.resolve().parent != out.resolve():
        # Another run's checkpoint resumed into this folder: its saves went over this run's
        # model and same-numbered checkpoints, and rotation deleted others. A checkpoint of this
        # run kept elsewhere (copied to scratch) records the run id of its checkpoints.
        held += sorted(p.name for p in out.glob("checkpoint-*") if p.is_dir())
        own = _complete_checkpoints(out)
        run = _recorded(checkpoint).get("run_id")
        if own and run and _recorded(own[-1]).get("run_id") == run:
            return
        if held:
            which = ("is not one of its checkpoints (nor a copy of one)" if run else "records no run id (written "
                     "before they were kept), so it cannot be told for a copy of one of its checkpoints")
            raise ValueError(f"train: --output {os.fspath(out)!r} holds another run ({', '.join(held[:4])}"
                             f"{', ...' if len(held) > 4 else ''}), and --resume {os.fspath(resume)!r} {which}: the "
                             "resumed run would write over it; give an empty --output")
