"""What a training run records about itself in every checkpoint (`trainer.RunSettings`), and the
checks that compare a resumed run with that record: the settings a resume would not apply as
asked (`run_settings`, `RESUMED_SETTINGS`), a LoRA run's base weights (`check_base_weights`) and
the optimizer's class. `read_json` reads a checkpoint's JSON files, for these checks and for
train_resume's.

Kept apart from train_resume.py (the output folder; the checkpoint's kind, LoRA adapter and
length), whose `check_resume` calls the checks here: the record, what it holds and how a
mismatch is shown read as one piece.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from superthoughts_ext import parquet_rows


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing or unreadable: these checks then pass
    and Trainer (or peft) says what is wrong with the checkpoint."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return values if isinstance(values, dict) else None


def _recorded(checkpoint: Path) -> dict[str, Any]:
    """What `trainer.RunSettings` recorded in `checkpoint` ({} when nothing: written before the
    record was kept, or by another trainer)."""
    state = read_json(checkpoint / "trainer_state.json") or {}
    recorded = (state.get("stateful_callbacks") or {}).get("RunSettings")
    recorded = recorded[0] if isinstance(recorded, list) and recorded else recorded
    saved = recorded.get("args", {}) if isinstance(recorded, dict) else {}
    return saved if isinstance(saved, dict) else {}


# TrainOptions fields a resumed run must share with the run that wrote the checkpoint (flag ->
# field), those a resume would not apply as asked. Trainer restores the optimizer's and the
# schedule's state: another --learning-rate or --weight-decay was ignored without a word, and
# another schedule or warmup took over in the middle of the old one. It skips the batches the
# checkpoint trained by count: with other data (file, fields, prompt, length limit), another seed
# (the shuffle) or another global batch it skipped rows never trained and trains others twice.
# The number of processes may change where the global batch stays (2 x 4 resumed as 1 x 8);
# loss weights, --rho-max and --max-grad-norm apply from the next step (lowered after a spike).
# The held-out set (--eval-data, --eval-steps) changes only what is logged, and may change too
# (another set with a warning; a resume takes this run's interval: trainer.IntervalsOfThisRun),
# except under METRIC_DRIVEN_SCHEDULES. --mtp-input changes what the MTP head reads but no weight
# shape: a checkpoint of the other input would load without a word.
RESUMED_SETTINGS = {
    "--learning-rate": "learning_rate", "--weight-decay": "weight_decay", "--lr-scheduler": "scheduler_name",
    "--lr-scheduler-kwargs": "lr_scheduler_kwargs", "--warmup-ratio": "warmup_ratio", "--seed": "seed",
    "--max-length": "max_length", "--problem-field": "problem_field", "--solution-field": "solution_field",
    "--messages-field": "messages_field", "--system-prompt": "system_prompt", "--mtp-input": "mtp_input",
}
GLOBAL_BATCH = "global batch (--batch-size x --grad-accum x processes)"
# transformers' schedules that step on the eval loss (TrainingArguments refuses them without an
# evaluation): there the held-out set and the steps it is scored at steer the learning rate, and
# a resume must keep them.
METRIC_DRIVEN_SCHEDULES = ("reduce_lr_on_plateau", "greedy")


def run_settings(options: Any, world_size: int) -> dict[str, Any]:
    """The settings of a run (`RESUMED_SETTINGS` of TrainOptions `options`, the global batch,
    the data's sha256; the held-out set's sha256, and its interval under METRIC_DRIVEN_SCHEDULES)
    as RunSettings records them in every checkpoint (JSON values)."""
    settings = {flag: getattr(options, name) for flag, name in RESUMED_SETTINGS.items()}
    settings["--mtp-input"] = _mtp_input_built(options)
    settings[GLOBAL_BATCH] = options.batch_size * options.grad_accum * world_size
    settings["--data"] = data_digest(options.data)
    if options.eval_data is not None:
        settings["--eval-data"] = data_digest(options.eval_data)
        if options.scheduler_name in METRIC_DRIVEN_SCHEDULES:
            settings["--eval-steps"] = options.eval_interval
    return json.loads(json.dumps(settings))  # tuples as lists, as they read back


def _mtp_input_built(options: Any) -> str | None:
    """The MTP input the run's model gets (None for the baseline): --mtp-input, else a continued
    SuperThoughts model's own, else the config default. The value built, not the flag as typed:
    a run started without the flag and resumed with `--mtp-input unit` trains the same model."""
    from superthoughts_ext.modeling_config import SuperThoughtsConfig

    if options.baseline:
        return None
    if options.mtp_input is not None:
        return options.mtp_input
    model = options.model
    config = getattr(model, "config", None)
    if isinstance(config, SuperThoughtsConfig):  # an already-built SuperThoughts model
        return config.mtp_input
    # A directory: a SuperThoughts checkpoint's own; a plain one (or one that cannot be read:
    # loading it says why) gets the default.
    found = _checkpoint_mtp_input(Path(os.fspath(model))) if isinstance(model, (str, os.PathLike)) else None
    return found or SuperThoughtsConfig.mtp_input


def _checkpoint_mtp_input(checkpoint: Path) -> str | None:
    """The MTP input of the model `checkpoint` holds, from its model config: config.json's
    SuperThoughts section (a full run) or the export record's (a LoRA run), "unit" where that
    config predates the field; None for a baseline checkpoint or one holding neither file."""
    from superthoughts_ext.checkpoint import SECTION
    from superthoughts_ext.export import EXPORT_FILE
    from superthoughts_ext.modeling_config import SuperThoughtsConfig

    section = (read_json(checkpoint / "config.json") or {}).get(SECTION)
    if section is None:
        section = (read_json(checkpoint / EXPORT_FILE) or {}).get("superthoughts_config")
    if not isinstance(section, dict):
        return None
    value = section.get("mtp_input", SuperThoughtsConfig.mtp_input)
    return value if isinstance(value, str) else None


def data_digest(data: Any) -> str | None:
    """sha256 of the training rows, each as canonical JSON: a JSONL file's lines parsed, a parquet
    file's rows with every column (so the rows of a file and the same rows given in memory agree,
    whatever the file's spacing or encoding); several files (a directory of shards) as their rows
    one file after the other, in the order they are read, so another file, a file less or another
    order is another digest. None for files that cannot be read or parsed (loading says why)."""
    from superthoughts_ext import data_files

    digest = hashlib.sha256()

    def add(row: Any) -> None:
        digest.update(json.dumps(row, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist")
                                 else repr(v)).encode() + b"\n")

    if not data_files.is_paths(data):
        for row in data:
            add(row)
        return digest.hexdigest()
    try:
        for path in data_files.data_files(data):
            if parquet_rows.is_parquet(path):
                for _, row in parquet_rows.numbered_rows(path):
                    add(row)
                continue
            with open(path, encoding="utf-8") as file:
                for line in file:
                    if line.strip():
                        add(json.loads(line))
    except (OSError, ValueError):
        return None
    return digest.hexdigest()


# The run setting a LoRA run records for its base model: a LoRA checkpoint holds the adapters
# (and the compressor and MTP), not the frozen weights they adapt, so a resume loads those from
# --model, whatever model it names.
BASE_WEIGHTS = "--model weights"


# Settings recorded as a sha256 (None: a data file that could not be read, not compared).
_DIGESTS = ("--data", "--eval-data", BASE_WEIGHTS)


def check_base_weights(checkpoint: Path | None, digest: str) -> None:
    """ValueError when LoRA `checkpoint` recorded a base model whose weights
    (`train_utils.weights_digest`) differ from `digest`, those of this run's --model: the adapters
    resumed on another base trained on without a word (a full checkpoint holds every weight)."""
    from superthoughts_ext.export import EXPORT_FILE

    recorded = recorded_base_weights(checkpoint) if checkpoint is not None else None
    if recorded and recorded != digest:
        # The base as the run named it: a cached repo id at its commit (org/name@<commit>) after a new
        # download moved the branch the command names, or a directory since overwritten.
        base = (read_json(checkpoint / EXPORT_FILE) or {}).get("base_model")
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} holds LoRA adapters trained on another base "
                         f"model (weights {_shown(BASE_WEIGHTS, recorded)}; this --model's: "
                         f"{_shown(BASE_WEIGHTS, digest)}); resume with the --model of the run that wrote it"
                         f"{f' ({base})' if isinstance(base, str) else ''}")


def recorded_base_weights(checkpoint: Path) -> str | None:
    """The base model's weights digest that LoRA `checkpoint` recorded (None: a full run's, or
    one written before the record was kept)."""
    saved = _recorded(checkpoint).get("settings")
    recorded = saved.get(BASE_WEIGHTS) if isinstance(saved, dict) else None
    return recorded if isinstance(recorded, str) else None


def _shown(flag: str, value: Any) -> str:
    if flag in _DIGESTS:
        return f"sha256 {value[:12]}..."
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_settings(checkpoint: Path, settings: Mapping[str, Any] | None) -> None:
    """ValueError naming every setting of `settings` (`run_settings`) that `checkpoint` recorded
    with another value; settings it did not record, or a data file unread, are not compared, and a
    checkpoint that recorded none warns that nothing was checked. Another --eval-data only warns
    (the log's eval_loss changes sets there), except under METRIC_DRIVEN_SCHEDULES."""
    saved = _recorded(checkpoint).get("settings")
    if settings and not isinstance(saved, dict):
        # Written before checkpoints recorded their settings (before commit 8df6e74), or by another
        # trainer: another learning rate or schedule is ignored, other data or batch skips other rows.
        warnings.warn(f"train: --resume {os.fspath(checkpoint)!r} records no run settings (written by an older "
                      f"release?): whether this run's {', '.join(RESUMED_SETTINGS)}, data and global batch are "
                      "those it was trained with is not checked; Trainer restores its optimizer and schedule, so "
                      "another learning rate or schedule is ignored and other data or batches skip other rows. "
                      "Resume only with the options of the run that wrote it", stacklevel=2)
    if not settings or not isinstance(saved, dict):
        return
    if "--mtp-input" in settings and "--mtp-input" not in saved:
        # Recorded since the flag exists; an older checkpoint's own model config says which input
        # its MTP head was trained with ("unit", the only one then).
        found = _checkpoint_mtp_input(checkpoint)
        saved = saved if found is None else {**saved, "--mtp-input": found}
    differ, logged_only = [], []
    steered = settings.get("--lr-scheduler") in METRIC_DRIVEN_SCHEDULES
    for flag, value in settings.items():
        if flag not in saved or saved[flag] == value or (flag in _DIGESTS and None in (value, saved[flag])):
            continue
        text = f"{flag} {_shown(flag, saved[flag])} (this run: {_shown(flag, value)})"
        (logged_only if flag == "--eval-data" and not steered else differ).append(text)
    if logged_only:
        warnings.warn(f"train: --resume {os.fspath(checkpoint)!r} was evaluated on {logged_only[0]}: the eval_loss "
                      "entries from here on score this run's held-out rows, not those of the earlier entries of "
                      "its log", UserWarning, stacklevel=2)
    if differ:
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} was trained with {'; '.join(differ)}; resume "
                         "with the settings of the run that wrote it, or start a new run from the finished model "
                         "(--model)")


def _check_optimizer(checkpoint: Path, optimizer: tuple[str, str] | None) -> None:
    """ValueError when `checkpoint` recorded an optimizer of another class than `optimizer`'s
    (--optim name, class): its state would not fit. adamw_torch and adamw_torch_fused are one
    class, AdamW, and resume each other. Checkpoints without the record (written before it was
    kept, or by another trainer) and optimizers whose class needs the model are not checked."""
    saved = _recorded(checkpoint)
    if optimizer is None or not saved.get("optimizer") or not optimizer[1]:
        return
    if saved["optimizer"] != optimizer[1]:
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} was trained with --optim {saved.get('optim')} "
                         f"({saved['optimizer']}), and this run uses {optimizer[0]} ({optimizer[1]}): its optimizer "
                         f"state would not fit (resume with --optim {saved.get('optim')})")
