"""Helpers of `superthoughts_ext.train`: tokenizer loading, input checks, model building, LoRA.

Kept apart from train.py so that the Trainer wiring there stays short; nothing here
depends on `transformers.Trainer`. The training examples are loaded and checked in
`superthoughts_ext.train_data`.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from superthoughts_ext.checkpoint import TOKENIZER_FILES, has_tokenizer_files, is_superthoughts_checkpoint

# Linear layers of Qwen2 / Llama style decoder layers: attention and MLP projections.
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
# SuperThoughts modules trained fully under LoRA (they are new, so no pretrained weights
# to adapt): saved with the adapter and merged back at the end.
SUPERTHOUGHTS_TRAINABLE_MODULES: tuple[str, ...] = ("compressor", "mtp")


def load_tokenizer(
    source: str | os.PathLike | PreTrainedTokenizerBase | None, model_source: Any
) -> PreTrainedTokenizerBase:
    """Return the tokenizer: `source` itself, loaded from `source`, or from the model directory.

    Raises ValueError when no directory is known (a model object and no tokenizer) or the
    tokenizer does not load, FileNotFoundError when the directory is missing or holds no
    tokenizer files.
    """
    if isinstance(source, PreTrainedTokenizerBase):
        return source
    path = source if source is not None else model_source
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            "train: the model was given as an object, so pass `tokenizer` (a path or a "
            "tokenizer object) in TrainOptions"
        )
    directory = Path(os.fspath(path))
    if not directory.is_dir():
        raise FileNotFoundError(f"train: directory {os.fspath(path)!r} does not exist")
    if not has_tokenizer_files(directory):
        # --tokenizer itself names a directory without one: asking for --tokenizer would go in circles.
        hint = "--tokenizer names a directory without one" if source is not None else "pass --tokenizer"
        raise FileNotFoundError(f"train: no tokenizer in {os.fspath(path)!r} (none of {', '.join(TOKENIZER_FILES)}); "
                                f"{hint}")
    try:
        from superthoughts_ext.modeling import load_tokenizer as load_saved_tokenizer

        return load_saved_tokenizer(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"train: could not load a tokenizer from {os.fspath(path)!r}: {exc}") from exc


def pad_and_eos_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(pad_id, eos_id) of a tokenizer; pad falls back to eos (as Qwen base models do)."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("train: the tokenizer has no eos_token; the response must end with one")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    return int(pad_id), int(eos_id)


def with_pad_token(tokenizer: PreTrainedTokenizerBase, pad_id: int) -> PreTrainedTokenizerBase:
    """`tokenizer` whose pad token is `pad_id`: itself when it already is, else a copy.

    transformers.Trainer.train writes tokenizer.pad_token_id into model.config (its
    align_special_tokens), and a SuperThoughts model saves that config: a tokenizer without a
    pad, or with another one, would leave the checkpoint a pad the run never padded with.
    Replacing a different existing pad warns.
    """
    if tokenizer.pad_token_id == pad_id:
        return tokenizer
    token = tokenizer.convert_ids_to_tokens(pad_id)
    if token is None:
        raise ValueError(f"train: the model pads with id {pad_id}, which the tokenizer ({len(tokenizer)} tokens) "
                         f"does not have")
    if tokenizer.pad_token_id is not None:
        warnings.warn(f"train: the tokenizer's pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) is "
                      f"replaced by {token!r} (id {pad_id}), the model's pad", stacklevel=2)
    # A copy: the caller's tokenizer object keeps its own settings.
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = token
    return tokenizer


def record_special_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Writes the tokenizer's bos / eos / pad ids into the configs and generation configs of
    `model` and, for a SuperThoughts model, of its backbone (the ones its checkpoint saves and
    `generate` reads its EOS from).

    transformers.Trainer.train aligns `model`'s the same way (its align_special_tokens) and warns
    on every run that the tokenizer's tokens "differ from the model config": a
    SuperThoughtsConfig holds no bos / eos, and a base model's config often names other ones.
    Done here, the checkpoint says which ids the run trained with and the Trainer finds nothing
    to change. A generation config keeps its other EOS ids (any of them ends generation), after
    the tokenizer's.
    """
    owners = [model] + ([model.backbone] if hasattr(model, "backbone") else [])
    for owner in owners:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(owner.config, name, getattr(tokenizer, name))
        generation = getattr(owner, "generation_config", None)
        if generation is not None:
            generation.bos_token_id = tokenizer.bos_token_id
            generation.pad_token_id = tokenizer.pad_token_id
            eos = generation.eos_token_id
            others = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
            generation.eos_token_id = [tokenizer.eos_token_id] + [i for i in others if i != tokenizer.eos_token_id]


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing of a transformers model, non-reentrant, through the
    method the installed version names: activation_checkpointing_enable from 5.23 on (where the
    older gradient_checkpointing_enable warns, and goes in v6), gradient_checkpointing_enable before."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_vocab(
    tokenizer: PreTrainedTokenizerBase, model: nn.Module, examples: list[dict[str, list[int]]]
) -> None:
    """Raise ValueError when tokenizer or data ids do not fit the model's embedding table."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(
            f"train: tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"{rows} rows: the tokenizer does not belong to this model"
        )
    for index, example in enumerate(examples):
        top = max(example["prompt_ids"] + example["response_ids"])
        if top >= rows:
            raise ValueError(f"{_example_name(examples, index)}: token id {top} >= vocabulary size {rows}")


def _example_name(examples: list[dict[str, list[int]]], index: int) -> str:
    """"FILE: line N" / "train: row N" for loaded `Examples`, "train: example N" (from 1) for a plain list."""
    numbers = getattr(examples, "numbers", None)
    if numbers is None:
        return f"train: example {index + 1}"
    return f"{examples.where}: {examples.unit} {numbers[index]}"


def check_resume(output_dir: str | os.PathLike, resume: str | os.PathLike | bool | None, *,
                 baseline: bool = False, lora_r: int = 0, max_steps: int = -1, lr_scheduler: str = "constant",
                 warmup_ratio: float = 0.0, lora: Mapping[str, Any] | None = None) -> Path | None:
    """Up front, before tokenising and loading: `resume` (a checkpoint path, or True for the
    last checkpoint-N in `output_dir`) must exist and be a checkpoint of this kind of run
    (SuperThoughts or baseline, full or LoRA of rank `lora_r`: Trainer loads another kind
    non-strictly and fails later, if at all, on an unrelated error) and, with `max_steps` > 0 and
    a learning-rate schedule that depends on the run's length, of a run of that many steps; a new run (no `resume`) must not start in a directory holding
    an earlier run's checkpoint-N folders. Trainer would write its own beside them, rotate by
    step number (keeping the old run's higher ones) and a later --resume would pick up the old run.
    A LoRA checkpoint's adapter must also have `lora` (`lora_settings`): peft loads another
    alpha or other target modules without a word (the adapter of the steps trained was dropped).
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
        if not resume and last is not None:
            raise ValueError(f"train: {os.fspath(out)!r} holds checkpoints of an earlier run (last: "
                             f"{Path(last).name}); --resume continues that run, a new one needs another --output "
                             "(or those folders removed)")
        if not resume:
            return None
        checkpoint = Path(last)
    _check_checkpoint_kind(checkpoint, baseline, lora_r)
    _check_lora_settings(checkpoint, lora)
    check_run_length(checkpoint, max_steps, lr_scheduler, warmup_ratio)
    return checkpoint


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
    try:
        planned = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8")).get("max_steps")
    except (ValueError, OSError):
        return  # not a state this check can read; Trainer says what is missing
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
    adapter, config = checkpoint / "adapter_config.json", checkpoint / "config.json"
    try:
        if adapter.is_file():
            values = json.loads(adapter.read_text(encoding="utf-8"))
            saved = set(values.get("modules_to_save") or [])
            written = (bool(saved & set(SUPERTHOUGHTS_TRAINABLE_MODULES)), int(values.get("r") or 0))
        elif config.is_file():
            written = (is_superthoughts_checkpoint(checkpoint), 0)
        else:
            return  # not a checkpoint this check can read; Trainer says what is missing
    except (ValueError, OSError):
        return
    if written != (not baseline, lora_r):
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} was written by {_run_kind(*written)}, and this is "
                         f"{_run_kind(not baseline, lora_r)}; resume with the options of the run that wrote it")


LORA_FLAGS = {"lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout", "target_modules": "--lora-target-modules"}


def lora_settings(alpha: float, dropout: float, targets: Sequence[str], superthoughts: bool) -> dict[str, Any]:
    """The adapter_config.json entries `apply_lora` writes for these options (what a resume must match)."""
    return {"lora_alpha": alpha, "lora_dropout": dropout,
            "target_modules": lora_target_pattern(targets, "backbone" if superthoughts else None)}


def _check_lora_settings(checkpoint: Path, lora: Mapping[str, Any] | None) -> None:
    """ValueError when the LoRA adapter in `checkpoint` has another alpha, dropout or target
    modules than `lora` (`lora_settings`); nothing to check without an adapter_config.json."""
    adapter = checkpoint / "adapter_config.json"
    if not lora or not adapter.is_file():
        return
    try:
        saved = json.loads(adapter.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return
    differ = []
    for key, wanted in lora.items():
        found = saved.get(key)
        if isinstance(found, list) and isinstance(wanted, list):  # peft writes a set of names in any order
            same = sorted(found) == sorted(wanted)
        elif isinstance(wanted, (int, float)) and isinstance(found, (int, float)):
            same = float(found) == float(wanted)
        else:
            same = found == wanted
        if not same:
            differ.append(f"{LORA_FLAGS[key]} {found!r} (this run: {wanted!r})")
    if differ:
        raise ValueError(f"train: --resume {os.fspath(checkpoint)!r} holds a LoRA adapter with {'; '.join(differ)}; "
                         "resume with the LoRA options of the run that wrote it")


def check_output_dir(output_dir: str | os.PathLike, model: Any, resume: str | os.PathLike | bool | None) -> None:
    """Up front: `output_dir` must not be a file nor the `model` directory the run starts from,
    and a new run (no `resume`) must not start in one holding a trained model (a finished run:
    a --save-steps 0 run leaves no checkpoint-N folder for `check_resume` to see). Trainer would
    overwrite either without a word."""
    out = Path(os.fspath(output_dir))
    if out.exists() and not out.is_dir():
        raise ValueError(f"train: --output {os.fspath(out)!r} is a file, not a directory")
    if isinstance(model, (str, os.PathLike)) and out.exists() and out.resolve() == Path(os.fspath(model)).resolve():
        raise ValueError(f"train: --output {os.fspath(out)!r} is the --model directory; the run would overwrite "
                         "the model it starts from")
    held = [name for name in ("config.json", "model.safetensors", "adapter_config.json") if (out / name).is_file()]
    if not resume and held:
        raise ValueError(f"train: {os.fspath(out)!r} holds a trained model ({', '.join(held)}); a new run needs "
                         "another --output (or that model removed)")


def lora_target_pattern(targets: Sequence[str], prefix: str | None) -> str | list[str]:
    """peft `target_modules`: plain names, or a full-match regex confined to `prefix.`.

    The SuperThoughts MTP block is a copy of a decoder layer with the same projection names,
    so LoRA must be confined to the backbone there (the MTP is trained fully instead).
    """
    if prefix is None:
        return list(targets)
    names = "|".join(sorted(set(targets)))
    # Any depth under the prefix, none included: "backbone.lm_head" as well as the layers' projections.
    return rf"{prefix}\.(?:.*\.)?({names})"


def untie_adapted_embeddings(backbone: nn.Module, targets: Sequence[str]) -> bool:
    """Unties the backbone's lm_head from its input embedding when LoRA `targets` name either of
    them; returns whether it did. Merging an adapter of one tied matrix writes its delta into
    both: the saved model's input embeddings (and the compressor's inputs) would change too, and
    it would no longer be the model that was trained."""
    head, embed = backbone.get_output_embeddings(), backbone.get_input_embeddings()
    if head is None or embed is None or head.weight is not embed.weight:
        return False
    names = [name for name, module in backbone.named_modules() if module is head or module is embed]
    if not any(name == t or name.endswith("." + t) for name in names for t in targets):
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone())
    backbone.config.tie_word_embeddings = False  # tie_weights() must not tie them again
    warnings.warn(f"LoRA targets {sorted(targets)} name the tied embedding / lm_head: untied them, so the merged "
                  "model's lm_head takes the adapter alone (the output directory stores both matrices)",
                  stacklevel=3)
    return True


def apply_lora(
    model: nn.Module, *, r: int, alpha: int, dropout: float, targets: Sequence[str],
    superthoughts: bool,
) -> nn.Module:
    """Wrap `model` in a peft LoRA model; for SuperThoughts the compressor and MTP train fully.
    A tied lm_head / embedding that the targets name is untied first (`untie_adapted_embeddings`)."""
    from peft import LoraConfig, get_peft_model

    untie_adapted_embeddings(model.backbone if superthoughts else model, targets)

    config = LoraConfig(
        r=r,
        **lora_settings(alpha, dropout, targets, superthoughts),  # what a resume is checked against
        modules_to_save=list(SUPERTHOUGHTS_TRAINABLE_MODULES) if superthoughts else None,
        bias="none",
    )
    with warnings.catch_warnings():
        # peft (0.21) reads a plain model's `is_gradient_checkpointing`, which transformers 5.25
        # deprecates with a FutureWarning the user can do nothing about (an error under -W error).
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA weights into the base layers and drop the peft wrappers (no-op without LoRA)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Counts of trainable and total parameters (shared tensors counted once)."""
    trainable = total = 0
    for name, p in model.named_parameters():  # each shared tensor once
        # peft keeps a frozen copy of every modules_to_save module beside the trained one; the
        # merged model drops it, so it is not counted.
        if ".original_module." in name:
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total}


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over a model's state dict (names, shapes, bytes), to compare ranks or runs."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def share_tied_entries(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` with every name of a tied parameter pointing at the first name's tensor.

    A gathered full state dict (FSDP) holds a separate copy under each name of a tied weight
    (embed_tokens / lm_head), so the checkpoint writer cannot see the tie by storage and would
    store the matrix twice; shared tensors make it store the weight once, as it does when it
    reads the module's own state dict.
    """
    shared = dict(state_dict)
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(param), name)
        if owner != name and owner in shared and name in shared:
            shared[name] = shared[owner]
    return shared


def without_fsdp_ram_efficient_loading(training_args: Mapping[str, Any]) -> dict[str, Any]:
    """Turns FSDP's cpu_ram_efficient_loading off, with a warning when it was asked for:
    in the environment `accelerate launch` sets (its default is on) and in the TrainingArguments
    `fsdp_config` of `training_args`; returns `training_args` (a copy when changed).

    With it on, transformers loads checkpoints on meta on every rank but 0, so the distillation
    teacher (outside the state dict, never broadcast) holds zeros there. accelerate also moves
    the model to meta, loads rank 0's weights back with new Parameter objects and re-ties
    shared weights only through `model.tie_weights()` (before SuperThoughtsForCausalLM had one,
    the tied embedding / lm_head came out as two matrices, trained and saved apart). Off, each
    process loads the full checkpoint (one host copy per process while loading).
    """
    env_on = (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
              and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true")
    fsdp_config = training_args.get("fsdp_config")
    args_on = (bool(training_args.get("fsdp")) and isinstance(fsdp_config, Mapping)
               and str(fsdp_config.get("cpu_ram_efficient_loading", "false")).lower() == "true")
    if not (env_on or args_on):
        return dict(training_args)
    warnings.warn("train: FSDP cpu_ram_efficient_loading turned off: it loads the distillation teacher "
                  "without its weights on ranks > 0 and rebuilds the tied embedding / lm_head "
                  "(pass --fsdp_cpu_ram_efficient_loading false to accelerate launch)", stacklevel=2)
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    if args_on:
        return {**training_args, "fsdp_config": {**fsdp_config, "cpu_ram_efficient_loading": False}}
    return dict(training_args)


def build_model(
    source: str | os.PathLike | nn.Module, *, baseline: bool, dtype: torch.dtype,
    overrides: Mapping[str, Any],
) -> nn.Module:
    """The model to train: the plain causal LM (baseline) or a SuperThoughts model.

    A plain checkpoint or module is wrapped with `SuperThoughtsForCausalLM.from_base(model,
    **overrides)`; a SuperThoughts one continues training with the run's settings
    (`continue_with`). Directories load in `dtype`; modules keep theirs.
    """
    from transformers import AutoModelForCausalLM

    from superthoughts_ext.checkpoint import read_model_dir
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM, is_superthoughts_checkpoint

    if isinstance(source, SuperThoughtsForCausalLM):
        if baseline:
            raise ValueError("train: baseline mode trains a plain causal LM; got a SuperThoughts model")
        return continue_with(source, overrides)
    if not isinstance(source, nn.Module):
        read_model_dir(source, "train")
        if is_superthoughts_checkpoint(source):
            if baseline:
                raise ValueError(f"train: baseline mode needs a plain checkpoint; {os.fspath(source)!r} is SuperThoughts")
            return continue_with(SuperThoughtsForCausalLM.from_pretrained(os.fspath(source), dtype=dtype), overrides)
        source = AutoModelForCausalLM.from_pretrained(os.fspath(source), dtype=dtype)
    return source if baseline else SuperThoughtsForCausalLM.from_base(source, **overrides)


# SuperThoughtsConfig fields a continued model takes from the run; its structure
# (compressor_type, mtp_type) and its pad stay those it was trained with.
RUN_FIELDS: tuple[str, ...] = ("lambda_mtp", "rho_max", "distill_weight")


def continue_with(model: nn.Module, overrides: Mapping[str, Any]) -> nn.Module:
    """`model` (a SuperThoughtsForCausalLM) with the run's loss settings in its config.

    distill_weight must always be given (the teacher is attached from the run's value, and
    the forward asks for one when the config's weight is > 0). A compressor_type or mtp_type
    other than the model's raises ValueError: the trained modules cannot change kind.
    """
    from superthoughts_ext.modeling import SuperThoughtsConfig

    config = model.config
    for name in ("compressor_type", "mtp_type"):
        wanted, have = overrides.get(name), getattr(config, name)
        if wanted is not None and wanted != have:
            raise ValueError(f"train: {name}={wanted!r} was asked for but the SuperThoughts model to continue has "
                             f"{name}={have!r}; drop the option or start from the plain base model")
    changes = {name: overrides[name] for name in RUN_FIELDS if overrides.get(name) is not None}
    checked = SuperThoughtsConfig.from_dict({**config.to_dict(), **changes})  # refuses bad values
    for name in changes:
        setattr(config, name, getattr(checked, name))
    return model


def attach_teacher(model: nn.Module, source: str | os.PathLike | nn.Module, dtype: torch.dtype) -> None:
    """Give a SuperThoughts model a frozen copy of the original backbone for distillation."""
    import copy

    from transformers import AutoModelForCausalLM

    from superthoughts_ext.modeling import is_superthoughts_checkpoint

    if isinstance(source, (str, os.PathLike)) and not is_superthoughts_checkpoint(source):
        teacher = AutoModelForCausalLM.from_pretrained(os.fspath(source), dtype=dtype)
    else:
        # No pristine checkpoint on disk: the backbone before any update is the teacher.
        teacher = copy.deepcopy(model.backbone)
    teacher.requires_grad_(False).eval()
    model.attach_teacher(teacher)
