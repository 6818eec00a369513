"""A finished run's record in its output folder, and `--resume auto`'s check against it.

A job requeued after its run finished (a scheduler's requeue, or a script that runs the same
command until it exits 0) ran `superthoughts train ... --resume auto` on an output holding that
run's final model; it was refused like `--resume` (nothing left to train, or a trained model in
the way), exit status 2, and the job ended as failed. Where the output's record says that this
command's run finished there, `train` raises `RunFinished` instead, before anything loads, and
the command says so and exits 0. Any difference (another length, data, learning rate, base
model...) goes the way it went before: a resume where one is allowed, else the same refusal.

The final save writes FINISHED_RUN_FILE into its hidden folder (`trainer.save_final_model`), so
it is moved in before config.json, which goes last: a model whose config.json is in place has
the record of the run that saved it. It holds the run settings every checkpoint records
(`train_run_settings.run_settings`) and the options those leave out because a resume may change
them or a checkpoint's own files show them: the length, the base model, the kind of run and its
LoRA options, the loss weights, the precision and the optimizer. An output finished by a release
before the record existed has none, and is refused as before.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from superthoughts_ext.checkpoint import checkpoint_folders
from superthoughts_ext.hub_cache import repo_spec, snapshot_name
from superthoughts_ext.train_run_settings import BASE_WEIGHTS, read_json

# Written beside the final model; not a model file (train_resume.FINAL_MODEL_FILES).
FINISHED_RUN_FILE = "finished_run.json"


class RunFinished(Exception):
    """`train` with `--resume auto` on an output that holds this run, finished: nothing to train
    (not an error: `superthoughts train` prints the message and exits 0)."""

    def __init__(self, output_dir: str | os.PathLike, global_step: int) -> None:
        self.output_dir, self.global_step = os.fspath(output_dir), global_step
        steps = f"{global_step} step{'' if global_step == 1 else 's'}"
        super().__init__(f"train: --resume auto: the run is already finished: its model, saved after {steps}, is in "
                         f"{self.output_dir!r}; nothing to train")


def run_record(options: Any, settings: Mapping[str, Any], optimizer: str, lora: Mapping[str, Any] | None
               ) -> dict[str, Any]:
    """What sets the model a run of TrainOptions `options` trains, as JSON values: its run
    `settings` (`train_run_settings.run_settings`, without a LoRA run's base weights digest, known
    only once the model has loaded: the --model path stands for it), the `optimizer` class and
    `lora` (`train_utils.lora_settings`, None for a full run), and the options no checkpoint
    records. A model passed as a module (Python) is recorded as None, as is a tokenizer object."""
    record = {flag: value for flag, value in settings.items() if flag != BASE_WEIGHTS}
    record.update({
        "--model": _path(options.model), "--tokenizer": _path(options.tokenizer), "--baseline": options.baseline,
        # The length as given: --epochs counts only where --max-steps does not set it.
        "--max-steps": options.max_steps if options.max_steps > 0 else None,
        "--epochs": options.num_epochs if options.max_steps <= 0 else None,
        "--optim": optimizer, "--lora-r": options.lora_r, "lora": dict(lora) if lora else None,
        "--compressor-type": options.compressor_type, "--mtp-type": options.mtp_type,
        "--lambda-mtp": options.lambda_mtp, "--distill-weight": options.distill_weight, "--rho-max": options.rho_max,
        "--max-grad-norm": options.max_grad_norm, "--dtype": options.dtype, "--bf16": options.bf16,
        "training_args": options.training_args,
    })
    return json.loads(json.dumps(record, default=str))  # tuples as lists, as they read back


def _path(value: Any) -> str | None:
    """A directory option as its real path (a requeued job's command gives the same one), a
    Hugging Face cache snapshot as ``org/name@<commit>`` (`hub_cache.snapshot_name`); None for an
    object."""
    if not isinstance(value, (str, os.PathLike)):
        return None
    return snapshot_name(value) or os.path.realpath(value)


def write_record(folder: Path, record: Mapping[str, Any], global_step: int) -> None:
    """FINISHED_RUN_FILE in `folder` (the final save's hidden folder): `record` (`run_record`) and
    the step the run finished at."""
    text = json.dumps({"global_step": global_step, "run": dict(record)}, indent=2, sort_keys=True) + "\n"
    (folder / FINISHED_RUN_FILE).write_text(text, encoding="utf-8")


def finished_step(output_dir: str | os.PathLike, record: Mapping[str, Any]) -> int | None:
    """The step at which `output_dir` holds the finished run that `record` (`run_record`, this
    command's) describes: its final model is in place (config.json) with a FINISHED_RUN_FILE
    holding the same record, and no checkpoint past that step (a longer run resumed from it, under
    way there). None otherwise, also where the folder holds no record (an earlier release's)."""
    saved = _finished_there(Path(os.fspath(output_dir)))
    if saved is None or saved.get("run") != json.loads(json.dumps(dict(record), default=str)):
        return None
    return saved["global_step"]


def _finished_there(out: Path) -> dict[str, Any] | None:
    """FINISHED_RUN_FILE of the final model in `out` (config.json in place), with its step and no
    checkpoint past it; None otherwise."""
    saved = read_json(out / FINISHED_RUN_FILE) if (out / "config.json").is_file() else None
    step = saved.get("global_step") if saved is not None else None
    if not isinstance(step, int) or any(int(p.name[len("checkpoint-"):]) > step for p in checkpoint_folders(out)):
        return None
    return saved


def check_moved_revision(output_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """ValueError where `output_dir` holds a finished run whose record differs from this
    command's `record` (`run_record`) only in the commit of a Hugging Face repo id given as
    --model or --tokenizer (``org/name@<commit>``, `hub_cache.snapshot_name`): the same command
    requeued after a new download moved the branch it names: other weights, so not that run, and
    the refusal of a new run over its model would not say why."""
    saved = _finished_there(Path(os.fspath(output_dir)))
    run = saved.get("run") if saved is not None else None
    if not isinstance(run, dict):
        return
    this = json.loads(json.dumps(dict(record), default=str))
    moved = {flag: (run.get(flag), this.get(flag)) for flag in ("--model", "--tokenizer")
             if run.get(flag) != this.get(flag) and _same_repo(run.get(flag), this.get(flag))}
    if not moved or {**run, **{flag: now for flag, (_, now) in moved.items()}} != this:
        return
    changes = "; ".join(f"{flag} {before} there, {now} here" for flag, (before, now) in moved.items())
    keep = " ".join(f"{flag} {before}" for flag, (before, _) in moved.items())
    raise ValueError(f"train: --resume auto: {os.fspath(output_dir)!r} holds this command's run, finished, but "
                     f"trained from other weights: {changes} (a download since then moves the branch an id "
                     f"names, main by default); `{keep}` finds that run finished, and a run from these weights "
                     "needs another --output")


def _same_repo(before: Any, now: Any) -> bool:
    """Whether two recorded names are one Hugging Face repo id (at any revisions)."""
    specs = [repo_spec(value) if isinstance(value, str) else None for value in (before, now)]
    return None not in specs and specs[0][0] == specs[1][0]
