"""Typed Python wrappers of the compiled ops, each with its fake (meta) implementation.

Loading `superthoughts_ext._C` registers the schemas (csrc/torch_bindings.cpp) and the CPU
and, when built, CUDA kernels. `register_fake` lets torch.compile(fullgraph=True) trace them.
"""
from __future__ import annotations

import torch

from superthoughts_ext import load_core
from superthoughts_ext.reference import int64_of_low_64_bits

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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused SuperThoughts decode step (semantics: reference.py); updates `finished` in place.

    Args:
        logits: [2, B, V] fp32/bf16/fp16, head 0 = main, head 1 = MTP; last dim contiguous.
        embed: [V, H] input embedding table (fp32/bf16/fp16), last dim contiguous.
        merge_weight: [H, 2H] linear compressor weight in embed's dtype, or None.
        merge_bias: [H] compressor bias, or None (needs merge_weight).
        finished: [B] bool, rows that already emitted EOS; set for rows that emit it now.
        pad_id, eos_id: token ids in [0, V).
        threshold: MTP confidence needed to accept the second token, in [0, 1]; compared
            with the unrounded confidence (`reference.confidence`): 1.0 accepts only rows whose
            other probabilities all underflow float32.
        threshold_main: main-head confidence also needed, in [0, 1].
        temperature: 0 = greedy (argmax), > 0 = Gumbel-max sampling of logits / temperature;
            below 1e-5 (`reference.MIN_SAMPLING_TEMPERATURE`) greedy as well.
        seed, offset: key and counter of the Philox stream used when sampling; any integers,
            only their low 64 bits count (as in the reference).

    Returns:
        tokens [B, 2] int64 (tokens[:, 1] = -1 when the second token is not accepted),
        n_new [B] int32 (0 for rows finished before the step, else 1 or 2),
        conf [B, 2] float32 (max softmax probability of each head at temperature 1),
        next_in [B, H] in embed's dtype ([B, 2H] raw pair when merge_weight is None).
    """
    for name, value in (("pad_id", pad_id), ("eos_id", eos_id)):
        if isinstance(value, int) and not -(2**63) <= value < 2**63:  # the schema's int64 names neither
            raise RuntimeError(f"superthoughts_step: {name}={value} outside [0, V={logits.shape[-1]})")
    try:
        if isinstance(seed, bool) or isinstance(offset, bool):
            raise TypeError
        seed_bits, offset_bits = int64_of_low_64_bits(seed), int64_of_low_64_bits(offset)
    except TypeError:
        raise TypeError(f"superthoughts_step: seed and offset must be integers, got seed={seed!r}, "
                        f"offset={offset!r}") from None
    try:
        if any(isinstance(value, (str, bytes, bool)) for value in (threshold, threshold_main, temperature)):
            raise TypeError  # float() reads "0.5" and True
        numbers = float(threshold), float(threshold_main), float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"superthoughts_step: threshold, threshold_main and temperature must be numbers, got "
                        f"{threshold!r}, {threshold_main!r}, {temperature!r}") from None
    return torch.ops.superthoughts_ext.superthoughts_step(
        logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id, *numbers, seed_bits, offset_bits,
    )


@torch.library.register_fake("superthoughts_ext::superthoughts_step")
def _superthoughts_step_fake(logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id,
                             threshold, threshold_main, temperature, seed, offset):
    # This is also the Meta kernel: a meta tensor among CPU ones dispatches here, not to the
    # kernel whose device check would refuse the mix (uninitialised tokens came back).
    for name, tensor in (("embed", embed), ("merge_weight", merge_weight), ("merge_bias", merge_bias),
                         ("finished", finished)):
        if tensor is not None:
            torch._check(tensor.device == logits.device, lambda: f"superthoughts_step: tensors on different "
                         f"devices: logits on {logits.device}, {name} on {tensor.device}")
    batch = logits.shape[1]
    hidden = embed.shape[1] if merge_weight is not None else 2 * embed.shape[1]
    tokens = logits.new_empty((batch, 2), dtype=torch.int64)
    n_new = logits.new_empty((batch,), dtype=torch.int32)
    conf = logits.new_empty((batch, 2), dtype=torch.float32)
    next_in = embed.new_empty((batch, hidden))
    return tokens, n_new, conf, next_in
