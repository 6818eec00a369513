"""Helpers of `superthoughts_ext.train`: tokenizer loading, vocabulary checks, model building, LoRA.

Kept apart from train.py so that the Trainer wiring there stays short; nothing here
depends on `transformers.Trainer`. The training examples are loaded and checked in
`superthoughts_ext.train_data`, the output directory and resumed checkpoint in
`superthoughts_ext.train_resume`.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from superthoughts_ext.checkpoint import TOKENIZER_FILES, has_tokenizer_files, is_superthoughts_checkpoint, load_plain
from superthoughts_ext.hub_cache import resolve_model_path
from superthoughts_ext.train_precision import copy_in_dtype

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


def with_cached_snapshots(options: Any) -> Any:
    """TrainOptions `options` with a model or tokenizer that names a Hugging Face repo id in the
    local hub cache replaced by its snapshot folder (`hub_cache.resolve_model_path`: a local path
    of that name wins; FileNotFoundError for an id the cache lacks, or a model snapshot without
    its weights). Every check and load of the run then reads one local folder, and its records
    name it ``org/name@<commit>`` (`hub_cache.snapshot_name`), as a requeued command names it."""
    changes = {}
    if isinstance(options.model, (str, os.PathLike)):
        changes["model"] = resolve_model_path(options.model, "train: --model")
    if isinstance(options.tokenizer, (str, os.PathLike)):
        changes["tokenizer"] = resolve_model_path(options.tokenizer, "train: --tokenizer", weights=False)
    return dataclasses.replace(options, **changes) if changes else options


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
    if not hasattr(examples, "row_name"):
        return f"train: example {index + 1}"
    return examples.row_name(index)  # its file's, when several were read


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


def lora_settings(alpha: float, dropout: float, targets: Sequence[str], superthoughts: bool) -> dict[str, Any]:
    """The adapter_config.json entries `apply_lora` writes for these options (what a resume must match)."""
    return {"lora_alpha": alpha, "lora_dropout": dropout,
            "target_modules": lora_target_pattern(targets, "backbone" if superthoughts else None)}


def _hf_conv1d() -> type:
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def untie_adapted_embeddings(backbone: nn.Module, targets: Sequence[str]) -> bool:
    """Unties the backbone's lm_head from its input embedding when LoRA `targets` name either of
    them; returns whether it did. Merging an adapter of one tied matrix writes its delta into
    both: the saved model's input embeddings (and the compressor's inputs) would change too, and
    it would no longer be the model that was trained."""
    head, embed = backbone.get_output_embeddings(), backbone.get_input_embeddings()
    if head is None or embed is None or head.weight is not embed.weight:
        return False
    embed_name, head_name = (next(name for name, m in backbone.named_modules() if m is module) for module in (embed, head))
    adapted = [name for name in (embed_name, head_name) if any(name == t or name.endswith("." + t) for t in targets)]
    if not adapted:
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone())
    backbone.config.tie_word_embeddings = False  # tie_weights() must not tie them again
    if len(adapted) == 2:
        effect = f"LoRA adapts {embed_name} and {head_name}, which are tied: untied them, so each takes its own adapter"
    else:
        other = head_name if adapted == [embed_name] else embed_name
        effect = (f"LoRA adapts {adapted[0]}, tied to {other}: untied them, so {adapted[0]} alone takes the adapter "
                  f"and {other} keeps its weights")
    warnings.warn(f"{effect} in the merged model (the output directory stores both matrices)", stacklevel=3)
    return True


# The layers LoRA adapts (peft's LoRA layer types; GPT-2's Conv1D is transformers' own linear).
_LORA_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, _hf_conv1d())


def check_lora_targets(scope: nn.Module, targets: Sequence[str]) -> None:
    """Each of `targets` must match a module of `scope` the way peft matches a name (the
    module's name, or its end after a dot): peft drops a name that matches nothing without a
    word as long as another one matches (a misspelt "v_prj" trained q_proj alone). Given
    targets: ValueError naming those. The defaults (DEFAULT_LORA_TARGETS, Llama / Qwen2 names)
    only warn, naming what they left out: Phi-3 fuses q/k/v into qkv_proj, gate/up into
    gate_up_proj, so they adapt o_proj and down_proj alone there."""
    modules = [(name, module) for name, module in scope.named_modules() if name]
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name, _ in modules)]
    layers = " ".join(sorted({name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, _LORA_LAYERS)}))
    # peft refuses a matched module it cannot adapt by printing the module's whole tree.
    containers = {f"{t} ({type(module).__name__})" for t in targets for name, module in modules
                  if (name == t or name.endswith("." + t)) and not isinstance(module, _LORA_LAYERS)}
    if containers:
        raise ValueError(f"train: --lora-target-modules {', '.join(sorted(containers))}: not a layer LoRA adapts; "
                         f"name linear or embedding layers (the backbone's: {layers})")
    if not missing:
        return
    if tuple(targets) != DEFAULT_LORA_TARGETS or len(missing) == len(targets):
        raise ValueError(f"train: --lora-target-modules {' '.join(missing)}: no module of the backbone has that name "
                         f"(its linear and embedding layers: {layers})")
    warnings.warn(f"train: the default LoRA targets {' '.join(missing)} name no module of this backbone, so LoRA "
                  f"adapts {' '.join(t for t in targets if t not in missing)} alone; its linear and embedding "
                  f"layers are {layers}: name the ones to adapt with --lora-target-modules", stacklevel=3)


def weights_digest(model: nn.Module) -> str:
    """sha256 identifying a model's weights (`train_run_settings.check_base_weights`): each parameter's
    name, shape and first and last 256 values rounded to bfloat16 (the same weights loaded in
    another dtype agree). Reads a few KB per tensor, not the gigabytes of a 7B model: another
    initialisation or fine-tune differs in all of them."""
    import hashlib

    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        flat = parameter.detach().reshape(-1)
        ends = torch.cat([flat[:256], flat[-256:]]).to(device="cpu", dtype=torch.bfloat16)
        digest.update(f"{name}:{tuple(parameter.shape)}".encode())
        digest.update(ends.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def apply_lora(
    model: nn.Module, *, r: int, alpha: int, dropout: float, targets: Sequence[str],
    superthoughts: bool,
) -> nn.Module:
    """Wrap `model` in a peft LoRA model; for SuperThoughts the compressor and MTP train fully.
    A tied lm_head / embedding that the targets name is untied first (`untie_adapted_embeddings`)."""
    from peft import LoraConfig, get_peft_model

    scope = model.backbone if superthoughts else model
    check_lora_targets(scope, targets)
    untie_adapted_embeddings(scope, targets)

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
    from superthoughts_ext.checkpoint import read_model_dir
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    if isinstance(source, SuperThoughtsForCausalLM):
        if baseline:
            raise ValueError("train: baseline mode trains a plain causal LM; got a SuperThoughts model")
        return continue_with(source, overrides)
    if not isinstance(source, nn.Module):
        source = read_model_dir(source, "train")  # a cached repo id: its snapshot folder
        if is_superthoughts_checkpoint(source):
            if baseline:
                raise ValueError(f"train: baseline mode needs a plain checkpoint; {os.fspath(source)!r} is SuperThoughts")
            return continue_with(SuperThoughtsForCausalLM.from_pretrained(os.fspath(source), dtype=dtype), overrides)
        source = load_plain(source, dtype, "train")
    return source if baseline else SuperThoughtsForCausalLM.from_base(source, **overrides)


# SuperThoughtsConfig fields a continued model takes from the run; its structure
# (compressor_type, mtp_type, mtp_input) and its pad stay those it was trained with.
RUN_FIELDS: tuple[str, ...] = ("lambda_mtp", "rho_max", "distill_weight")


def continue_with(model: nn.Module, overrides: Mapping[str, Any]) -> nn.Module:
    """`model` (a SuperThoughtsForCausalLM) with the run's loss settings in its config.

    distill_weight must always be given (the teacher is attached from the run's value, and
    the forward asks for one when the config's weight is > 0). A compressor_type, mtp_type or mtp_input
    other than the model's raises ValueError: the trained modules cannot change kind.
    """
    from superthoughts_ext.modeling import SuperThoughtsConfig

    config = model.config
    for name in ("compressor_type", "mtp_type", "mtp_input"):
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
    """Give a SuperThoughts model a frozen copy of the original backbone, in `dtype`, for
    distillation."""
    if isinstance(source, (str, os.PathLike)) and not is_superthoughts_checkpoint(source):
        teacher = load_plain(source, dtype, "train: the distillation teacher")
    else:
        # No pristine checkpoint on disk: the backbone before any update is the teacher.
        teacher = copy_in_dtype(model.backbone, dtype)
    teacher.requires_grad_(False).eval()
    model.attach_teacher(teacher)
