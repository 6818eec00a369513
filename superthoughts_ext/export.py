"""`superthoughts export`: a LoRA run's `checkpoint-N/` (peft adapters, with the SuperThoughts
compressor and MTP as modules_to_save) merged into a model directory that `load_model`,
`superthoughts generate` and `superthoughts eval` read, with the files of a run's final output.

A LoRA checkpoint holds neither the frozen base weights nor how the model around the adapter
was built, so `SuperThoughtsTrainer` writes `EXPORT_FILE` beside each adapter (`export_record`):
the kind of run, its SuperThoughts config, the pad, the base model's path and the weight dtype.
The export rebuilds the model as `train` did, checks the base against the weights digest the
checkpoint recorded (`train_run_settings.BASE_WEIGHTS`), loads the adapter and merges it as the end of
training does: the last checkpoint of a run exports to that run's own final model, tensor for tensor.

    superthoughts export --checkpoint out/st/checkpoint-500 --output out/st-500
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from superthoughts_ext.file_writes import writing

EXPORT_FILE = "superthoughts_export.json"
ADAPTER_CONFIG = "adapter_config.json"


def export_record(model: nn.Module, pad_token_id: int | None, base_model: str | None) -> dict[str, Any]:
    """What `export` needs of a LoRA checkpoint that its files lack; `model` is the PeftModel."""
    from peft.tuners.lora import LoraLayer

    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    inner = model.get_base_model()
    superthoughts = isinstance(inner, SuperThoughtsForCausalLM)
    backbone = inner.backbone if superthoughts else inner
    # The names `train_utils.untie_adapted_embeddings` is given: a tied lm_head is untied again.
    targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                      if isinstance(module, LoraLayer)})
    return {"superthoughts": superthoughts, "superthoughts_config": inner.config.to_dict() if superthoughts else None,
            "pad_token_id": pad_token_id, "base_model": base_model, "lora_target_modules": targets,
            "dtype": str(backbone.get_input_embeddings().weight.dtype).removeprefix("torch.")}


def read_record(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The `export_record` of LoRA `checkpoint`; FileNotFoundError / ValueError saying why there is none."""
    from superthoughts_ext.checkpoint import checkpoint_folders

    folder = Path(os.fspath(checkpoint))
    name = os.fspath(checkpoint)
    if not folder.is_dir():
        raise FileNotFoundError(f"export: --checkpoint {name!r} is not a directory")
    if not (folder / ADAPTER_CONFIG).is_file():
        if (folder / "config.json").is_file():
            raise ValueError(f"export: {name!r} is a model directory (a full checkpoint or a run's output) and already "
                             "loads as a model (pass it as --model to generate or eval); nothing to export")
        inside = checkpoint_folders(folder)
        hint = f"; it holds a run's checkpoints, e.g. {os.fspath(inside[-1])!r}" if inside else ""
        raise FileNotFoundError(f"export: {name!r} is not a LoRA training checkpoint (no {ADAPTER_CONFIG}){hint}")
    if not (folder / "trainer_state.json").is_file():
        raise FileNotFoundError(f"export: {name!r} is not a complete checkpoint (no trainer_state.json: its save was "
                                "cut off?)")
    if not (folder / EXPORT_FILE).is_file():
        raise ValueError(f"export: {name!r} was written by an older release, which did not record how its model was "
                         f"built ({EXPORT_FILE}: the SuperThoughts settings, pad and base model); rerun the training "
                         "with this release to export its checkpoints (the run's final model is its output directory)")
    try:
        record = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"export: {folder / EXPORT_FILE}: not valid JSON: {error}") from None
    if not isinstance(record, dict) or "superthoughts" not in record:
        raise ValueError(f"export: {folder / EXPORT_FILE}: not an export record")
    return record


def _check_output(output: Path) -> Path:
    """`output` (a symlink's target), once checked to be a new or empty directory that can be
    written: a parent that is a file, a read-only one or a broken link failed after the merge."""
    from superthoughts_ext.run_info import write_problem

    if output.is_symlink():  # the model is moved in with os.replace, which takes no link for a folder
        if not output.exists():
            raise ValueError(f"export: --output {os.fspath(output)!r} is a symlink to nothing (or a loop)")
        output = output.resolve()
    if output.exists() and not output.is_dir():
        raise ValueError(f"export: --output {os.fspath(output)!r} is a file; give a new directory")
    if output.is_dir() and any(output.iterdir()):
        raise ValueError(f"export: --output {os.fspath(output)!r} exists and is not an empty directory; give a new one")
    if problem := write_problem(output.parent / f".{output.name}.write-check-{os.getpid()}"):
        raise ValueError(f"export: --output {os.fspath(output)!r} cannot be written: {problem}")
    return output


def _base_dir(model: str | os.PathLike | None, record: dict[str, Any], checkpoint: Path) -> str:
    """--model, else the base the run recorded; FileNotFoundError when neither is there."""
    from superthoughts_ext.checkpoint import read_model_dir

    if model is not None:
        return os.fspath(read_model_dir(model, "export: --model"))
    recorded = record.get("base_model")
    if not recorded:
        raise ValueError(f"export: the run of {os.fspath(checkpoint)!r} was given its base model as an object, not a "
                         "directory: pass that model's directory as --model")
    if not Path(recorded).is_absolute():  # a Hugging Face repo id, org/name@<commit>: its cached snapshot
        where = f"export: the run's base model (recorded in {os.fspath(checkpoint)!r})"
        return os.fspath(read_model_dir(recorded, where))
    if not (Path(recorded) / "config.json").is_file():
        raise FileNotFoundError(f"export: the run's base model {recorded!r} (recorded in {os.fspath(checkpoint)!r}) "
                                "is not there any more; pass its directory (the same weights) as --model")
    return recorded


def export(checkpoint: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike | None = None,
           dtype: str | None = None) -> nn.Module:
    """Writes the model of LoRA `checkpoint` (base + merged adapter, the compressor and MTP as
    trained) to `output`, a new or empty directory, with the checkpoint's tokenizer; returns the
    merged model. `model` (default: the recorded base) must hold the weights the run adapted,
    `dtype` (default: the run's) is the one the weights load and are saved in."""
    from peft import PeftModel

    from superthoughts_ext import train_run_settings, train_utils
    from superthoughts_ext.checkpoint import has_tokenizer_files, load_tokenizer
    from superthoughts_ext.train import DTYPES

    folder, out = Path(os.fspath(checkpoint)), Path(os.fspath(output))
    record = read_record(folder)
    out = _check_output(out)
    base = _base_dir(model, record, folder)
    dtype = dtype or record.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"export: dtype {dtype!r} is not one of {', '.join(sorted(DTYPES))}")
    if not has_tokenizer_files(folder):
        raise FileNotFoundError(f"export: {os.fspath(folder)!r} holds no tokenizer files (Trainer saves the run's "
                                "there); copy the run's tokenizer files into it")
    tokenizer = load_tokenizer(folder)
    superthoughts = bool(record["superthoughts"])
    overrides = record.get("superthoughts_config") or {}
    built = train_utils.build_model(base, baseline=not superthoughts, dtype=DTYPES[dtype], overrides=overrides)
    pad_id = record.get("pad_token_id")
    if pad_id is not None:
        tokenizer = train_utils.with_pad_token(tokenizer, pad_id)
    train_utils.record_special_tokens(built, tokenizer)
    backbone = built.backbone if superthoughts else built
    recorded = train_run_settings.recorded_base_weights(folder)
    if recorded and recorded != train_utils.weights_digest(backbone):
        raise ValueError(f"export: {base!r} holds other weights than the base model the run of "
                         f"{os.fspath(folder)!r} adapted (weights digest sha256 {recorded[:12]}...); pass that run's "
                         "--model as --model")
    train_utils.untie_adapted_embeddings(backbone, record.get("lora_target_modules") or [])
    try:
        with warnings.catch_warnings():  # as in train_utils.apply_lora: peft reads a deprecated attribute
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated",
                                    category=FutureWarning)
            adapted = PeftModel.from_pretrained(built, os.fspath(folder))
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"export: the adapter of {os.fspath(folder)!r} does not fit {base!r} ({error}); pass the "
                         "run's --model") from error
    merged = train_utils.merge_lora(adapted).eval()
    # Written aside and moved in whole: no half-written model under `output`.
    staging = out.parent / f".{out.name}.export"
    if staging.is_symlink():  # rmtree refuses a link (ignored here), and the model went into its target
        staging.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with writing(out):  # a full disk: one line naming it, not safetensors' bare I/O error
            merged.save_pretrained(os.fspath(staging))
            tokenizer.save_pretrained(os.fspath(staging))
            if (folder / "training_args.bin").is_file():  # as the run's final save writes it
                shutil.copy2(folder / "training_args.bin", staging / "training_args.bin")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `superthoughts export` flags."""
    from superthoughts_ext.train import DTYPES

    g = parser.add_argument
    g("--checkpoint", required=True, help="a LoRA run's checkpoint-N folder")
    g("--output", required=True, help="new (or empty) directory for the merged model")
    g("--model", default=None, help="the run's base model directory, or its Hugging Face repo id in the local "
      "hub cache (default: the one the run recorded)")
    g("--dtype", choices=sorted(DTYPES), default=None, help="weight dtype (default: the run's)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `superthoughts export`; returns the process exit code."""
    from superthoughts_ext.cli import transformers_progress_bars

    try:
        # transformers' loading and saving bars as whole lines when stderr is a log file.
        with transformers_progress_bars(True):
            export(args.checkpoint, args.output, model=args.model, dtype=args.dtype)
    except (ValueError, OSError) as error:  # OSError: FileNotFoundError, WriteFailed
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {args.output}")
    return 0
