"""The settings one `generate` call decodes with (generate.py): its scalar arguments checked
(mode, max_new_tokens, temperature, seed; autocast around the call) and resolved into what the
decode loop takes: the decode steps the model's context leaves, whether the step samples, runs
in a CUDA graph and compiled, the confidence thresholds, and the steps the cache is sized for.

Kept apart from generate.py so that it reads as the decode itself (prefill, the loop, the
result); the prompt's checks (input_ids, attention_mask) are in generate_checks.py.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from superthoughts_ext.generate_checks import check_seed
from superthoughts_ext.host_state import host_state_reason
from superthoughts_ext.reference import MIN_SAMPLING_TEMPERATURE, integer_or_none, number_or_none
from superthoughts_ext.stop_tokens import is_superthoughts

MODES = ("superthoughts", "pairs", "standard")


def _check_autocast(backbone: Any, device: torch.device) -> None:
    """ValueError under torch.autocast to another dtype than the model's: the static KV cache
    holds the model's dtype, and the cache update failed deep in transformers (index_copy_
    dtype mismatch). Autocast to the model's own dtype decodes as without it."""
    if not torch.is_autocast_enabled(device.type):
        return
    wanted, weights = torch.get_autocast_dtype(device.type), backbone.get_input_embeddings().weight.dtype
    if wanted != weights:
        raise ValueError(f"generate: torch.autocast ({wanted}) is on over a {weights} model; decoding runs in the "
                         f"model's own dtype: load the model in {wanted} instead (load_model(..., dtype=...)) and "
                         "call generate() outside autocast")


def _check_args(model: Any, mode: str, max_new_tokens: int, temperature: float, seed: int | Sequence[int]) -> bool:
    """Validates mode, max_new_tokens, temperature and seed; returns whether `model` is a SuperThoughts model."""
    if mode not in MODES:
        raise ValueError(f"generate: mode must be one of {', '.join(MODES)}, got {mode!r}")
    superthoughts = is_superthoughts(model)
    if mode != "standard" and not superthoughts:
        raise ValueError(f"generate: mode {mode!r} needs a SuperThoughts model; a plain model supports 'standard'")
    if integer_or_none(max_new_tokens) is None:
        raise ValueError(f"generate: max_new_tokens must be an int, got {type(max_new_tokens).__name__} "
                         f"{max_new_tokens!r}")
    if number_or_none(temperature) is None:
        raise ValueError(f"generate: temperature must be a number, got {type(temperature).__name__} {temperature!r}")
    check_seed(seed)
    if max_new_tokens < 1 or not math.isfinite(temperature) or temperature < 0.0:
        raise ValueError(f"generate: max_new_tokens ({max_new_tokens}) must be >= 1 and temperature "
                         f"({temperature}) finite and >= 0")
    return superthoughts


def _context_steps(context: int | None, lengths: torch.Tensor, max_new_tokens: int) -> int:
    """Decode steps the loop may run after prefill: max_new_tokens - 1, fewer when even the
    shortest prompt's positions would pass the context. Longer prompts reach the context
    sooner; the loop finishes each row there (`decode_loop.advance`), not the whole batch.
    A prompt longer than the context is an error."""
    if context is None:
        return max_new_tokens - 1
    if int(lengths.max()) > context:
        raise ValueError(f"generate: a prompt has {int(lengths.max())} tokens, more than the model's context "
                         f"(max_position_embeddings={context})")
    # Step s feeds position L + s, which must stay below the context.
    return min(max_new_tokens - 1, context - int(lengths.min()))


def samples(temperature: float) -> bool:
    """Whether the step op samples at `temperature`: from MIN_SAMPLING_TEMPERATURE (1e-5) up;
    below it, 0 included, it decodes greedily."""
    return temperature >= MIN_SAMPLING_TEMPERATURE


def _use_graphs(cuda_graphs: bool | str, device: torch.device, temperature: float) -> bool:
    """Whether `generate(cuda_graphs=...)` captures the decode step on `device` (raises on a bad value)."""
    if cuda_graphs == "auto":
        # The op's seed/offset are baked in at capture, so sampling would repeat one Philox
        # stream every step: sampled decoding runs eagerly.
        return device.type == "cuda" and not samples(temperature)
    if cuda_graphs is True:
        if device.type != "cuda" or samples(temperature):
            raise ValueError(f"generate: cuda_graphs=True needs CUDA tensors and greedy decoding (temperature "
                             f"below {MIN_SAMPLING_TEMPERATURE:g}; device {device.type}, temperature "
                             f"{temperature}); use cuda_graphs='auto'")
        return True
    if cuda_graphs is False:
        return False
    raise ValueError(f"generate: cuda_graphs must be 'auto', True or False, got {cuda_graphs!r}")


def resolve_compile(compile: bool | str, device: torch.device, temperature: float) -> bool:
    """Whether `generate(compile=...)` compiles the decode step on `device` (raises on a bad value)."""
    if compile == "auto":
        return device.type == "cuda" and not samples(temperature)
    if compile is True:
        if samples(temperature):
            # The op's step offset is an int that torch.compile specializes on: sampling would
            # recompile every step.
            raise ValueError(f"generate: compile=True needs greedy decoding (temperature below "
                             f"{MIN_SAMPLING_TEMPERATURE:g}, got {temperature}); sampled decoding runs "
                             f"uncompiled, use compile='auto'")
        return True
    if compile is False:
        return False
    raise ValueError(f"generate: compile must be 'auto', True or False, got {compile!r}")


def _graphs_and_compile(model: Any, backbone: Any, mode: str, cuda_graphs: bool | str, compile: bool | str,
                        device: torch.device, temperature: float) -> tuple[bool, bool]:
    """Whether the decode step runs in a CUDA graph and compiled (raises on a bad value); neither
    for a model whose step reads host-side state (`host_state.host_state_reason`)."""
    graphs = _use_graphs(cuda_graphs, device, temperature)
    compiled = resolve_compile(compile, device, temperature)
    configs = [backbone.config] + ([model.mtp.layer_config] if hasattr(getattr(model, "mtp", None), "layer_config")
                                   and mode != "standard" else [])
    reason = host_state_reason(model if mode != "standard" else backbone, configs) if graphs or compiled else None
    if reason is not None:
        for name, value in (("cuda_graphs", cuda_graphs), ("compile", compile)):
            if value is True:
                raise ValueError(f"generate: {name}=True cannot run this model's decode step: {reason}; "
                                 f"use {name}='auto' (eager decoding for this model)")
        graphs = compiled = False
    return graphs, compiled


def _decode_budget(mode: str, max_new_tokens: int, max_steps: int, ignore_eos: bool,
                   always_pairs: bool) -> tuple[int, int]:
    """(check_at, max_steps): the step count after which the loop checks `finished` once
    (`decode_loop.decode`), and the decode steps to size the cache for (`always_pairs`: every
    step keeps its pair, unless its first token is an EOS)."""
    # Decode steps before every row can hold max_new_tokens: prefill's step and each later one
    # emit at most 1 token (standard) or 2.
    check_at = max_new_tokens - 1 if mode == "standard" else (max_new_tokens + 1) // 2 - 1
    if always_pairs and not ignore_eos:
        # Every pairs step emits two tokens or ends the row (EOS first vetoes the pair and
        # finishes), so the budget is used up after check_at steps: a shorter cache suffices.
        max_steps = min(max_steps, check_at)
    return check_at, max_steps


def _thresholds(model: Any, mode: str, threshold: float | None, threshold_main: float | None) -> tuple[float, float]:
    """The (MTP, main-head) confidence thresholds the step op applies in `mode` (raises outside [0, 1])."""
    if mode == "standard":
        # A confidence of 1 is never reached by the all -inf MTP row (confidence 0).
        return 1.0, 0.0
    if mode == "pairs":
        return 0.0, 0.0
    config = model.config
    given = {"threshold": config.threshold if threshold is None else threshold,
             "threshold_main": getattr(config, "threshold_main", 0.0) if threshold_main is None else threshold_main}
    # The kernels refuse them only at the first step (a RuntimeError after prefill), the
    # reference not at all; float() took True and "0.5".
    numbers = {name: number_or_none(value) for name, value in given.items()}
    for name, number in numbers.items():
        if number is None or not 0.0 <= number <= 1.0:
            value = given[name]
            raise ValueError(f"generate: {name} must lie in [0, 1] (a number), got {type(value).__name__} {value!r}")
    return numbers["threshold"], numbers["threshold_main"]
