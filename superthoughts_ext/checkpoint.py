"""The SuperThoughts checkpoint directory: config.json + model.safetensors, or shards
model-0000i-of-0000n.safetensors with model.safetensors.index.json past `max_shard_size` (+ the
backbone's generation_config.json), and its checks.

config.json is the backbone's own config (so tools that read e.g. hidden_size keep working)
with `architectures = ["SuperThoughtsForCausalLM"]` and a "superthoughts" section; the weights
hold backbone.* / compressor.* / mtp.* with tied aliases (lm_head.weight of a tied model)
stored once and re-tied by transformers at load time.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from superthoughts_ext.file_writes import writing
from superthoughts_ext.hub_cache import resolve_model_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# transformers' own save_pretrained default, so a SuperThoughts run's output splits where its
# baseline's does. One file held a 14B model in float32 (train's default dtype; 60.6 GB with
# the compressor and MTP), over the Hub's 50 GB per-file limit.
MAX_SHARD_SIZE = "50GB"
GENERATION_CONFIG_NAME = "generation_config.json"
SECTION = "superthoughts"


def checkpoint_folders(directory: Path) -> list[Path]:
    """The checkpoint-N folders Trainer wrote into `directory`, by step."""
    found = [p for p in directory.glob("checkpoint-*") if p.is_dir() and p.name[len("checkpoint-"):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len("checkpoint-"):]))


def read_model_dir(path: str | os.PathLike, where: str) -> Path:
    """`path` as a Path, or the snapshot folder of the Hugging Face repo id (``org/name``,
    ``org/name@revision``) it names in the local hub cache (`hub_cache.resolve_model_path`; a
    local path of that name wins); FileNotFoundError naming it when it is not a directory with
    config.json, or an id the cache does not hold whole."""
    directory = Path(os.fspath(resolve_model_path(path, where)))
    if directory.is_file():
        raise FileNotFoundError(f"{where}: {os.fspath(path)!r} is a file, not a model directory")
    if not directory.is_dir():
        raise FileNotFoundError(f"{where}: model directory {os.fspath(path)!r} does not exist (a Hugging Face "
                                "repo id, org/name, is read from the local hub cache; nothing is downloaded)")
    if not (directory / CONFIG_NAME).is_file():
        if (directory / "adapter_config.json").is_file():
            # The checkpoint-N/ folders of a `train --lora-r` run: peft adapters without the base.
            raise FileNotFoundError(f"{where}: {os.fspath(path)!r} is a LoRA adapter checkpoint (adapter_config.json, "
                                    f"no {CONFIG_NAME}); it resumes a run (--resume), and `superthoughts export "
                                    f"--checkpoint {os.fspath(path)} --output DIR` merges it into a model (the "
                                    "run's own merged model is its output directory)")
        checkpoints = checkpoint_folders(directory)
        if checkpoints:  # a training run's output whose final save has not been written (yet)
            raise FileNotFoundError(
                f"{where}: {os.fspath(path)!r} holds no model yet, only checkpoints (last: {checkpoints[-1].name}): "
                "its run is still training, or was stopped before its final save (`superthoughts train` with "
                "the run's options and --resume saves it); a full run's checkpoint-N loads as its model")
        raise FileNotFoundError(f"{where}: {os.fspath(path)!r} is not a model directory (no {CONFIG_NAME})")
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    with open(directory / CONFIG_NAME, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{directory / CONFIG_NAME}: not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{directory / CONFIG_NAME}: expected a JSON object")
    return values


def is_superthoughts_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a directory (or a repo id in the local Hugging Face cache) whose
    config.json has a "superthoughts" section."""
    try:
        directory = Path(os.fspath(resolve_model_path(path, "is_superthoughts_checkpoint", weights=False)))
    except FileNotFoundError:  # an id the cache lacks: no checkpoint, as a missing directory
        return False
    if not (directory / CONFIG_NAME).is_file():
        return False
    return SECTION in _read_config(directory)


def weight_files(directory: Path) -> list[Path]:
    """The weight files a model saved in `directory` may have left there, in either layout (one
    file, or shards and their index; safetensors or .bin), existing or not: what a save into it
    replaces."""
    return [*directory.glob("model-*-of-*.safetensors"), *directory.glob("pytorch_model*.bin"),
            directory / WEIGHTS_NAME, directory / INDEX_NAME, directory / "pytorch_model.bin.index.json"]


def _aliases(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """name -> the first name holding the same storage (tied weights share one tensor)."""
    first: dict[tuple[int, int, tuple[int, ...]], str] = {}
    canonical = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        canonical[name] = first.setdefault(key, name) if tensor.device.type != "meta" else name
    return canonical


def save_superthoughts_dir(model, save_directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None,
                           max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
    """Writes `model` (a SuperThoughtsForCausalLM) as config.json + generation_config.json +
    model.safetensors, or shards of at most `max_shard_size` (bytes, or "5GB") and their index,
    laid out as transformers lays out its own (huggingface_hub's splitter)."""
    state = state_dict if state_dict is not None else model.state_dict()
    # Adapters that peft injected (get_peft_model changes the model in place) rename the weights
    # (q_proj.base_layer.weight, compressor.modules_to_save.default.*): from_pretrained would
    # find none of the model's names.
    adapted = [name for name in state if ".base_layer." in name or ".modules_to_save." in name]
    if adapted:
        raise TypeError(f"save_pretrained: the model holds peft adapters ({adapted[0]}, ...), whose weight names "
                        "would not load; merge them first (peft_model.merge_and_unload()), or save the adapters "
                        "alone with the PeftModel's save_pretrained")
    directory = Path(os.fspath(save_directory))
    with writing(directory):  # a full disk: WriteFailed naming the file, not safetensors' bare I/O error
        _write_files(model, directory, state, max_shard_size)


def _write_files(model, directory: Path, state: dict[str, torch.Tensor], max_shard_size: int | str) -> None:
    """The files `save_superthoughts_dir` writes (see there) into `directory`, from the checked `state`."""
    directory.mkdir(parents=True, exist_ok=True)
    # generation_config.json carries the stop tokens (for Qwen2.5-Instruct <|im_end|>, which
    # config.json's eos_token_id does not name); without it a reloaded model runs past them.
    # Written first: transformers refuses to save an inconsistent one (as its own models'
    # save_pretrained does), and then nothing half-written is left behind.
    generation_config = getattr(model.backbone, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(directory)
    values = model.backbone.config.to_dict()
    # The dtype the weights are stored in (a config keeps the one it was built with, e.g. float32
    # for a model converted to bfloat16 after from_base), for tools that read it.
    values["dtype"] = str(model.backbone.get_input_embeddings().weight.dtype).removeprefix("torch.")
    values["architectures"] = ["SuperThoughtsForCausalLM"]
    values[SECTION] = model.config.to_dict()
    with open(directory / CONFIG_NAME, "w", encoding="utf-8") as f:
        f.write(json.dumps(values, indent=2, sort_keys=True) + "\n")
    # Weights of a model saved there before (shards, an index, .bin files) would sit beside ours,
    # and a loader that finds an index reads those (transformers' save_pretrained removes them too).
    # A sharded save over a single file (or the reverse) leaves both: a loader must not pick one.
    for stale in weight_files(directory):
        stale.unlink(missing_ok=True)
    canonical = _aliases(state)
    # safetensors refuses shared storage, and a tied lm_head would otherwise be stored twice.
    tensors = {name: t.detach() for name, t in state.items()
               if canonical[name] == name and not name.startswith("teacher")}
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        # Copied to the host one shard at a time: a model on a GPU needs one shard of host memory.
        shard = {name: tensors[name].to("cpu").contiguous() for name in names}
        with writing(directory / filename):
            save_file(shard, os.fspath(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:  # written last: an index whose shards are all there
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_safetensors(weights_path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(os.fspath(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"from_pretrained: {os.fspath(weights_path)!r} cannot be read ({error}); a truncated or "
                         "corrupt file, e.g. from an interrupted save") from error


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Every stored tensor of checkpoint `path`, from model.safetensors or from the shards its
    index names, and the file to name in errors."""
    single, index_path = path / WEIGHTS_NAME, path / INDEX_NAME
    if not index_path.is_file():
        if not single.is_file():
            raise FileNotFoundError(f"from_pretrained: {os.fspath(path)!r} has no {WEIGHTS_NAME} (nor {INDEX_NAME})")
        return _read_safetensors(single), single
    if single.is_file():  # our saves remove the other layout's files; someone else wrote these
        raise ValueError(f"from_pretrained: {os.fspath(path)!r} holds both {WEIGHTS_NAME} and {INDEX_NAME}; "
                         "remove the one that is not this model's")
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"from_pretrained: {os.fspath(index_path)!r} is not a weights index ({error!r})") from error
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"from_pretrained: {os.fspath(index_path)!r} names {name}, which is not there "
                                    "(a copy or download cut short?)")
        weights.update(_read_safetensors(path / name))
    return weights, index_path


def load_superthoughts_dir(model_cls, config_cls, directory: str | os.PathLike, dtype: torch.dtype | None):
    """Rebuilds the model saved by `save_superthoughts_dir`; every stored tensor must be used
    and every model tensor must be stored (or be a tied alias of a stored one)."""
    path = read_model_dir(directory, "from_pretrained")
    values = _read_config(path)
    if SECTION not in values:
        raise ValueError(f"from_pretrained: {os.fspath(directory)!r} is not a SuperThoughts checkpoint (its "
                         f"{CONFIG_NAME} has no {SECTION!r} section); wrap a plain model with from_base "
                         f"or load it with load_model")
    try:
        st_config = config_cls.from_dict(values.pop(SECTION))
    except ValueError as exc:
        raise ValueError(f"from_pretrained: {path / CONFIG_NAME}, section {SECTION!r}: {exc}") from exc
    values.pop("architectures", None)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"from_pretrained: {path / CONFIG_NAME} has no model_type")
    base_config = AutoConfig.for_model(model_type, **values)
    weights, weights_path = _read_weights(path)
    backbone_weights = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    embed_key = next((k for k in backbone_weights if k.endswith("embed_tokens.weight")), None)
    if dtype is None and embed_key is not None:
        dtype = backbone_weights[embed_key].dtype
    backbone_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(base_config)]
    # from_pretrained with a state dict builds the model without a random init and re-ties
    # shared weights the way the config says.
    backbone = backbone_cls.from_pretrained(None, config=base_config, state_dict=backbone_weights, dtype=dtype)
    if (path / GENERATION_CONFIG_NAME).is_file():
        backbone.generation_config = GenerationConfig.from_pretrained(path)
    model = model_cls(backbone, st_config)
    rest = {k: v for k, v in weights.items() if not k.startswith("backbone.")}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    expected = model.state_dict()
    canonical = _aliases(expected)
    absent = [k for k in expected if k not in weights and canonical[k] not in weights]
    unused = sorted(set(weights) - set(expected)) + list(unexpected)
    if absent or unused:
        raise ValueError(f"from_pretrained: {os.fspath(weights_path)!r} does not match the model: "
                         f"missing {absent[:5]}, unexpected {unused[:5]}")
    return model


# transformers imports an architecture it lacks from the model folder's own .py files (named by
# `auto_map` in config.json or tokenizer_config.json) when trust_remote_code is True, and, left
# unset, asks on the terminal whether to: one "y" and a downloaded folder ran its own code. Always
# False here: the SuperThoughts modules wrap transformers' own classes, so no folder's code is needed.
REMOTE_CODE_REFUSED = ("it names Python code of its own (auto_map in its config) for an architecture transformers "
                       "does not have, and superthoughts runs no Python code from model directories "
                       "(trust_remote_code is off)")


# transformers' refusal ("...contains custom code which must be executed ... Please pass the
# argument `trust_remote_code=True`...", or "...requires you to execute custom code ... set the
# option `trust_remote_code=True`...").
_REMOTE_CODE_REQUEST = re.compile(r"custom code.*`trust_remote_code=True`", re.S)


def _asks_for_remote_code(error: Exception) -> bool:
    """Whether transformers refused `error`'s load for want of trust_remote_code (its message,
    `_REMOTE_CODE_REQUEST`, names no option of ours). The phrase as transformers writes it, not
    the bare word: another error's message names the folder, which may hold the word
    ("Unrecognized model in /models/no_trust_remote_code...")."""
    return isinstance(error, ValueError) and _REMOTE_CODE_REQUEST.search(str(error)) is not None


# Tokenizer classes that mean "the tokenizer.json pipeline as saved", with no model-specific
# rebuilding. AutoTokenizer lets a config's model_type (e.g. qwen2 -> Qwen2Tokenizer) override
# them, which rebuilds a BPE pipeline from the vocabulary and breaks custom tokenizers such as
# the demo's word-level one.
_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


# Files that make a directory hold a tokenizer. Without any, transformers 5 builds an empty
# tokenizer from the model config instead of failing (every text then encodes to no tokens),
# and the caller fails later and elsewhere.
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
)


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved in a model directory (or a cached repo id's snapshot,
    `hub_cache.resolve_model_path`), loaded as the class it was saved as; FileNotFoundError when
    the directory holds no tokenizer file (`TOKENIZER_FILES`)."""
    path = resolve_model_path(path, "load_tokenizer", weights=False)
    if not has_tokenizer_files(path):
        raise FileNotFoundError(f"no tokenizer in {os.fspath(path)!r} (none of {', '.join(TOKENIZER_FILES)})")
    config_path = Path(path) / "tokenizer_config.json"
    if config_path.is_file():
        saved_class = json.loads(config_path.read_text()).get("tokenizer_class")
        if saved_class in _GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(os.fspath(path))
    try:
        return AutoTokenizer.from_pretrained(os.fspath(path), trust_remote_code=False)
    except ValueError as exc:
        if not _asks_for_remote_code(exc):
            raise
        raise ValueError(f"could not load a tokenizer from {os.fspath(path)!r}: {REMOTE_CODE_REFUSED}") from exc


def cast_weights(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """`model.to(dtype)` keeping its non-persistent buffers (RoPE frequencies) in their own dtype,
    as `from_pretrained(dtype=...)` builds them: rounded to bf16 they turn the angles by up to
    radians at long distances, and no checkpoint stores them, so a reload would not match."""
    kept = [(module, name, module._buffers[name]) for module in model.modules()
            for name in module._non_persistent_buffers_set if module._buffers.get(name) is not None]
    model.to(dtype)
    for module, name, buffer in kept:
        module._buffers[name] = buffer
    return model


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype, also from its name ("bfloat16", as from_pretrained takes it)."""
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype.removeprefix("torch."), None), torch.dtype):
        return getattr(torch, dtype.removeprefix("torch."))
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"from_base: dtype must be a torch.dtype or its name, got {dtype!r}")
    return dtype


# The first line of a Git LFS pointer file: what a model folder cloned without git-lfs holds in
# place of each weights file (a few lines of text naming the object).
_LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"


def _lfs_pointers(folder: Path) -> list[str]:
    """The names of the pytorch_model*.bin files in `folder` that are Git LFS pointers: torch
    reads one's text as pickle opcodes ("Unsupported operand 118", the "v"), which is no
    object of the file's own."""
    pointers = []
    for file in sorted(folder.glob("pytorch_model*.bin")):
        with contextlib.suppress(OSError), open(file, "rb") as handle:
            if handle.read(len(_LFS_POINTER_START)) == _LFS_POINTER_START:
                pointers.append(file.name)
    return pointers


def _unpickler_finding(error: pickle.UnpicklingError) -> str:
    """What torch's weights_only unpickler found, from its page-long message: the paragraph after
    "WeightsUnpickler error:" to its first sentence's end ("Unsupported global: GLOBAL exec was not
    an allowed global by default" on that line, "Unsupported operand 105" on a paragraph of its own)."""
    _, marker, rest = str(error).partition("WeightsUnpickler error:")
    paragraph = next((part for part in rest.split("\n\n") if part.strip()), "") if marker else ""
    return " ".join(paragraph.split()).split(". ")[0] or "not weights alone"


def load_plain(path: str | os.PathLike, dtype: torch.dtype | None, where: str) -> PreTrainedModel:
    """The plain causal LM saved in directory `path` (or a cached repo id's snapshot,
    `hub_cache.resolve_model_path`), of an architecture transformers has (`REMOTE_CODE_REFUSED`);
    ValueError starting with `where` when it does not load."""
    path = resolve_model_path(path, where)
    try:
        return AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=dtype, local_files_only=True,
                                                    trust_remote_code=False)
    except pickle.UnpicklingError as exc:
        if pointers := _lfs_pointers(Path(os.fspath(path))):
            raise ValueError(f"{where}: could not load a causal LM from {os.fspath(path)!r}: {pointers[0]} is a "
                             "Git LFS pointer, not the weights (the folder was cloned without git-lfs; "
                             "`git lfs pull` there fetches them)") from None
        # torch's weights_only load of a .bin holding objects other than tensors: its message, a
        # page long, offers weights_only=False and allowlists, which would run what the file names.
        raise ValueError(f"{where}: could not load a causal LM from {os.fspath(path)!r}: its pickled weights "
                         "(pytorch_model*.bin) hold more than tensors, which only an unpickling that may run "
                         f"code from the file would build; refused ({_unpickler_finding(exc)})") from None
    except (OSError, ValueError) as exc:
        reason = REMOTE_CODE_REFUSED if _asks_for_remote_code(exc) else exc
        raise ValueError(f"{where}: could not load a causal LM from {os.fspath(path)!r}: {reason}") from exc
