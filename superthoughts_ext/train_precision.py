"""Weight precision checks of `superthoughts_ext.train`: float16 weights refused, bfloat16 weights
that would not train (steps below their rounding, AdamW's bfloat16 state) warned about, and the
dtype the distillation teacher is loaded in (and copied into).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn


# Why float16 weights are not trained: a gradient below ~2.4e-4 squares to 0 in AdamW's state
# and its eps (1e-8) rounds to 0, so the update is 0/0 (a tiny run went NaN at step 4).
FLOAT16_ADAMW = "AdamW's state underflows in float16 and its updates turn NaN"


def check_no_float16_training(model: nn.Module) -> None:
    """ValueError when any trainable parameter is float16 (a module given in float16; the
    `dtype` option is checked up front). peft's LoRA adapters are float32 over a float16 base."""
    halves = [name for name, p in model.named_parameters() if p.requires_grad and p.dtype == torch.float16]
    if halves:
        raise ValueError(f"train: {len(halves)} trainable weights are float16 (first: {halves[0]}) and "
                         f"cannot be trained ({FLOAT16_ADAMW}); cast the model to bfloat16 or float32 first")


# Elements read per tensor by `warn_stalled_bf16_weights`: an even sample keeps the check to
# milliseconds on a 14B model.
STALL_SAMPLE = 1 << 16


def stalled_bf16_share(model: nn.Module, learning_rate: float) -> tuple[float, int]:
    """(share, count) of the trainable bfloat16 weights that a step of `learning_rate` leaves
    unchanged, as it rounds away in bfloat16 (8 significant bits: at |w| ~ 0.02 any step below
    ~6e-5), estimated on an even sample of each tensor; count is the number of such weights."""
    stalled = total = 0.0
    for p in model.parameters():
        if not p.requires_grad or p.dtype != torch.bfloat16 or p.is_meta or p.numel() == 0:
            continue
        sample = p.detach().flatten()[:: max(1, p.numel() // STALL_SAMPLE)]
        wide = sample.float()
        unchanged = ((wide + learning_rate).to(torch.bfloat16) == sample) & (
            (wide - learning_rate).to(torch.bfloat16) == sample)
        stalled += unchanged.float().mean().item() * p.numel()
        total += p.numel()
    return (stalled / total if total else 0.0), int(total)


def warn_stalled_bf16_weights(model: nn.Module, learning_rate: float, threshold: float = 0.1) -> None:
    """Warns when over `threshold` of the trainable bfloat16 weights would not move at all:
    Trainer keeps no float32 copy of them, and AdamW's step is at most about the learning rate,
    so training stalls there without an error (seen: 84% of a tensor unchanged after 20 steps
    at 1e-5)."""
    share, count = stalled_bf16_share(model, learning_rate)
    if share > threshold:
        warnings.warn(f"train: about {share:.0%} of the {count:,} trainable bfloat16 weights are too large for a "
                      f"step of the learning rate ({learning_rate:g}) to change them (it rounds away in bfloat16), "
                      "so those will not train; keep float32 weights (--dtype float32) with --bf16 autocast, or "
                      "raise --learning-rate", stacklevel=2)


# Optimizers whose state takes each weight's dtype (torch's: Trainer's default adamw_torch_fused,
# and adamw_torch); transformers' Adafactor keeps float32 state for 16-bit weights.
BF16_STATE_OPTIMIZERS: tuple[str, ...] = ("torch.optim.adamw.AdamW", "torch.optim.adam.Adam")


def warn_bf16_adam_state(model: nn.Module, optimizer: str, beta2: float) -> None:
    """Warns when torch's Adam / AdamW (`optimizer`, its class path) trains bfloat16 weights,
    whatever the learning rate: their moment estimates are bfloat16 too, and the second moment's
    decay (x beta2, a change of 0.1% at 0.999) is under half a bfloat16 step (0.2-0.4%) and
    rounds away, so it never decreases. One large gradient then shrinks every later step of the
    weights it hit (test_train_precision.py checks this of torch's AdamW)."""
    count = sum(p.numel() for p in model.parameters() if p.requires_grad and p.dtype == torch.bfloat16)
    # 2^-8: the largest relative half step of bfloat16 (at a mantissa of 1); a faster decay survives.
    if count and optimizer in BF16_STATE_OPTIMIZERS and 1.0 - beta2 < 2.0 ** -8:
        warnings.warn(f"train: AdamW keeps its moment estimates of the {count:,} bfloat16 weights it trains in "
                      f"bfloat16, where the second moment never decreases (its decay by {beta2:g} a step rounds "
                      "away): a large gradient shrinks every later step of the weights it hit (one spike, then "
                      "1000 small gradients: it still held the spike's value, float32's 0.37 of it); keep float32 "
                      "weights (--dtype float32) with --bf16 autocast", stacklevel=2)


def teacher_dtype(dtype: torch.dtype, bf16_autocast: bool) -> torch.dtype:
    """The dtype the frozen distillation teacher is loaded in: bfloat16 under --bf16 autocast
    even when the trained weights are float32. Autocast runs its matmuls in bfloat16 whatever
    the weights' dtype, and it trains nothing, so float32 weights only cost memory (4 bytes a
    parameter: 28 GB for a 7B teacher, 14 GB in bfloat16)."""
    return torch.bfloat16 if bf16_autocast and dtype == torch.float32 else dtype


def copy_in_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of `module` with its floating parameters and persistent buffers in `dtype`,
    each made in `dtype` as it is copied: `copy.deepcopy(module).to(dtype)` held the whole copy in
    the module's own dtype first (a float32 7B backbone copied into a bfloat16 teacher: 28 GB,
    then 14 GB). Tensors that modules share (a tied embedding and lm_head) stay one tensor.

    Non-persistent buffers (RoPE frequencies) keep their dtype, as `from_pretrained(dtype=...)`
    builds them (and `checkpoint.cast_weights` keeps them): rounded to bfloat16 they turn the
    angles by radians within a few thousand positions, and the teacher loaded from a plain
    checkpoint has them in float32."""
    def made(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(dtype, copy=True) if tensor.is_floating_point() else tensor.detach().clone()

    # deepcopy takes what its memo holds for an object (by id) instead of copying it.
    memo: dict[int, Any] = {id(p): nn.Parameter(made(p), requires_grad=p.requires_grad) for p in module.parameters()}
    for owner in module.modules():
        for name, buffer in owner._buffers.items():
            if buffer is not None:
                kept = name in owner._non_persistent_buffers_set
                memo[id(buffer)] = buffer.detach().clone() if kept else made(buffer)
    return copy.deepcopy(module, memo)
