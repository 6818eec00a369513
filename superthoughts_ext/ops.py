"""Typed Python wrappers of the compiled ops, each with its fake (meta) implementation.

Loading `superthoughts_ext._C` registers the schemas (csrc/torch_bindings.cpp) and the CPU
and, when built, CUDA kernels. `register_fake` lets torch.compile(fullgraph=True) trace them.
"""
from __future__ import annotations

import math

import torch

from superthoughts_ext import load_core
from superthoughts_ext.reference import int64_of_low_64_bits, integer_or_none, number_or_none

load_core()  # registers torch.ops.superthoughts_ext (an ImportError if built for another torch)


def superthoughts_step(
    logits: torch.Tensor,
    embed: torch.Tensor,
    merge_weight: torch.Tensor | None,
    merge_bias: torch.Tensor | None,
    finished: torch.Tensor,
    pad_id: int,
    eos_id: int,
    threshold: float,
    threshold_main: float = 0.0,
    temperature: float = 0.0,
    seed: int = 0,
    offset: int = 0,
    *,
    row_seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused SuperThoughts decode step (semantics: reference.py); updates `finished` in place.

    Args:
        logits: [2, B, V] fp32/bf16/fp16, head 0 = main, head 1 = MTP; last dim contiguous.
        embed: [V, H] input embedding table (fp32/bf16/fp16), last dim contiguous.
        merge_weight: [H, 2H] linear compressor weight in embed's dtype, or None.
        merge_bias: [H] compressor bias, or None (needs merge_weight).
        merge_weight, merge_bias and finished must be contiguous.
        finished: [B] bool, rows that already emitted EOS; set for rows that emit it now.
        pad_id, eos_id: token ids in [0, V) (integers: a float or a bool is refused).
        threshold: MTP confidence needed to accept the second token, in [0, 1], rounded to
            float32 first (1e-50 is 0, 1 - 3e-9 is 1); compared with the unrounded confidence
            (`reference.confidence`): 1.0 accepts only rows whose other probabilities all
            underflow float32. A head with no finite logit has confidence 0 and reaches only 0.
        threshold_main: main-head confidence also needed, in [0, 1].
        temperature: 0 = greedy (argmax), > 0 = Gumbel-max sampling of logits / temperature;
            below 1e-5 (`reference.MIN_SAMPLING_TEMPERATURE`) greedy as well.
        seed, offset: key and counter of the Philox stream used when sampling; any integers,
            only their low 64 bits count (as in the reference).
        row_seeds: [B] int64 on the logits' device, contiguous, or None: one Philox key per row,
            in the same launch. Row r then samples exactly as a batch of one (its row index 0)
            with seed row_seeds[r] would: what it draws depends neither on its place in the
            batch nor on the other rows. Every int64 is a valid key (fold larger seeds with
            `reference.int64_of_low_64_bits`); `seed` must then be 0 (modulo 2**64). The values
            stay on the device (no host sync: the call can be captured in a CUDA graph, and a
            replay uses whatever the tensor then holds). Greedy steps ignore them.

    A row whose head has a NaN treats it as -inf; a head with a +inf logit or none finite
    takes token pad_id at confidence 0. The op is not differentiable: its outputs never require
    grad, even when embed or the merge weights do (train through the model's forward instead).

    Returns:
        tokens [B, 2] int64 (tokens[:, 1] = -1 when the second token is not accepted; rows
            finished before the step get (pad_id, -1) and confidence 0),
        n_new [B] int32 (0 for rows finished before the step, else 1 or 2),
        conf [B, 2] float32 (max softmax probability of each head at temperature 1),
        next_in [B, H] in embed's dtype ([B, 2H] raw pair when merge_weight is None).
    """
    ids = []
    for name, given in (("pad_id", pad_id), ("eos_id", eos_id)):
        value = integer_or_none(given)
        if value is None:  # a float tensor was truncated (3.7 -> 3), True taken as 1
            raise TypeError(f"superthoughts_step: {name} must be an integer, got {given!r}")
        if not -(2**63) <= value < 2**63:  # the schema's int64 would name neither
            raise RuntimeError(f"superthoughts_step: {name}={value} outside [0, V={logits.shape[-1]})")
        ids.append(value)
    counters = [integer_or_none(seed), integer_or_none(offset)]
    if None in counters:
        raise TypeError(f"superthoughts_step: seed and offset must be integers, got seed={seed!r}, offset={offset!r}")
    numbers = [number_or_none(value) for value in (threshold, threshold_main, temperature)]
    if None in numbers:
        raise TypeError(f"superthoughts_step: threshold, threshold_main and temperature must be numbers, got "
                        f"{threshold!r}, {threshold_main!r}, {temperature!r}")
    if row_seeds is not None and not isinstance(row_seeds, torch.Tensor):  # a list would reach the schema's own error
        raise TypeError(f"superthoughts_step: row_seeds must be an int64 tensor [B] or None, got "
                        f"{type(row_seeds).__name__} {row_seeds!r}")
    return torch.ops.superthoughts_ext.superthoughts_step(
        logits, embed, merge_weight, merge_bias, finished, *ids, *numbers, *map(int64_of_low_64_bits, counters),
        row_seeds=row_seeds,
    )


_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(condition, message: str) -> None:
    """torch._check with the kernel's prefix; the condition may be symbolic (a traced size)."""
    torch._check(condition, lambda: f"superthoughts_step: {message}")


def _check_fake_inputs(logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id,
                       threshold, threshold_main, temperature, seed, row_seeds) -> None:
    """The kernels' input checks (csrc/step_common.h, in the same words, with dtypes named as torch
    names them), for fake and meta tensors: without them a trace accepted calls the kernel
    refuses, and built plausible outputs for them."""
    _check(logits.dim() == 3 and logits.shape[0] == 2, f"logits must be [2, B, V] (main, mtp), got {list(logits.shape)}")
    _check(logits.dtype in _FLOAT_DTYPES, f"logits dtype must be float32, bfloat16 or float16, got {logits.dtype}")
    _check(embed.dim() == 2, f"embed must be [V, H], got {list(embed.shape)}")
    _check(embed.dtype in _FLOAT_DTYPES, f"embed dtype must be float32, bfloat16 or float16, got {embed.dtype}")
    vocab, hidden = logits.shape[2], embed.shape[1]
    _check(vocab > 0, f"logits have an empty vocab dim (V=0), shape {list(logits.shape)}")
    _check(embed.shape[0] == vocab, f"logits vocab size V={vocab} does not match embed rows {embed.shape[0]}")
    _check(vocab < 2**31, f"vocab size {vocab} exceeds 2^31")
    _check(logits.stride(2) == 1 or vocab == 1,
           f"logits must be contiguous along the vocab dim, got strides {list(logits.stride())}")
    _check(embed.stride(1) == 1 or hidden == 1,
           f"embed must be contiguous along the hidden dim, got strides {list(embed.stride())}")
    _check(finished.dim() == 1 and finished.shape[0] == logits.shape[1],
           f"finished must be [B] with B={logits.shape[1]}, got {list(finished.shape)}")
    _check(finished.dtype == torch.bool, f"finished must be bool, got {finished.dtype}")
    _check(finished.is_contiguous(), "finished must be contiguous")
    for name, tensor in (("embed", embed), ("merge_weight", merge_weight), ("merge_bias", merge_bias),
                         ("finished", finished)):
        # A meta tensor among CPU ones dispatches here (the Meta kernel), not to the kernel
        # whose device check would refuse the mix.
        if tensor is not None:
            _check(tensor.device == logits.device,
                   f"tensors on different devices: logits on {logits.device}, {name} on {tensor.device}")
    for name, value in (("pad_id", pad_id), ("eos_id", eos_id)):
        _check(0 <= value < vocab, f"{name}={value} outside [0, V={vocab})")
    for name, value in (("threshold", threshold), ("threshold_main", threshold_main)):
        _check(0.0 <= value <= 1.0, f"{name}={value!r} outside [0, 1]")
    _check(math.isfinite(temperature) and temperature >= 0.0,
           f"temperature must be finite and >= 0, got {temperature!r}")
    _check(merge_bias is None or merge_weight is not None, "merge_bias given without merge_weight")
    if merge_weight is not None:
        _check(merge_weight.dim() == 2 and merge_weight.shape[0] == hidden and merge_weight.shape[1] == 2 * hidden,
               f"merge_weight must be [H, 2H] with H={hidden}, got {list(merge_weight.shape)}")
        _check(merge_weight.dtype == embed.dtype,
               f"merge_weight dtype {merge_weight.dtype} differs from embed dtype {embed.dtype}")
        _check(merge_weight.is_contiguous(), "merge_weight must be contiguous")
    if merge_bias is not None:
        _check(merge_bias.dim() == 1 and merge_bias.shape[0] == hidden,
               f"merge_bias must be [H] with H={hidden}, got {list(merge_bias.shape)}")
        _check(merge_bias.dtype == embed.dtype,
               f"merge_bias dtype {merge_bias.dtype} differs from embed dtype {embed.dtype}")
        _check(merge_bias.is_contiguous(), "merge_bias must be contiguous")
    if row_seeds is not None:
        _check(row_seeds.dtype == torch.int64, f"row_seeds must be int64, got {row_seeds.dtype}")
        _check(row_seeds.dim() == 1 and row_seeds.shape[0] == logits.shape[1],
               f"row_seeds must be [B] with B={logits.shape[1]}, got {list(row_seeds.shape)}")
        _check(row_seeds.device == logits.device, f"row_seeds on {row_seeds.device} but logits on {logits.device}")
        _check(row_seeds.is_contiguous(), f"row_seeds must be contiguous, got strides {list(row_seeds.stride())}")
        _check(seed == 0, f"seed={seed} given with row_seeds, which replace it; pass seed=0")


@torch.library.register_fake("superthoughts_ext::superthoughts_step")
def _superthoughts_step_fake(logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id,
                             threshold, threshold_main, temperature, seed, offset, *, row_seeds=None):
    _check_fake_inputs(logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id,
                       threshold, threshold_main, temperature, seed, row_seeds)
    batch = logits.shape[1]
    hidden = embed.shape[1] if merge_weight is not None else 2 * embed.shape[1]
    tokens = logits.new_empty((batch, 2), dtype=torch.int64)
    n_new = logits.new_empty((batch,), dtype=torch.int32)
    conf = logits.new_empty((batch, 2), dtype=torch.float32)
    next_in = embed.new_empty((batch, hidden))
    return tokens, n_new, conf, next_in
