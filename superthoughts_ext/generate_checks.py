"""Prompt validation for `generate` (generate.py): the checks on input_ids / attention_mask."""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn


def check_model_and_inputs(model: Any, input_ids: Any, attention_mask: Any) -> None:
    """What generate's later checks and errors take for granted: a model (not a DataParallel /
    DDP wrapper, which hid what it wraps: "needs a SuperThoughts model"), tensors, real devices,
    and inputs on the model's device."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise ValueError(f"generate: got a {type(model).__name__} wrapper; pass the model it wraps (.module)")
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if (value is not None or name == "input_ids") and not isinstance(value, torch.Tensor):
            raise ValueError(f"generate: {name} must be a torch.Tensor [B, T] (tokenizer(..., "
                             f"return_tensors='pt')), got {type(value).__name__}")
    weight = next((p for p in model.parameters()), None) if isinstance(model, nn.Module) else None
    devices = {"input_ids": input_ids.device, "the model": weight.device if weight is not None else input_ids.device}
    if attention_mask is not None:
        devices["attention_mask"] = attention_mask.device
    if any(device.type == "meta" for device in devices.values()):
        raise ValueError(f"generate: cannot decode on the meta device ({', '.join(f'{n} on {d}' for n, d in devices.items())}"
                         "): load the model's weights and move the inputs to its device")
    if len(set(devices.values())) > 1:
        raise ValueError(f"generate: {', '.join(f'{n} on {d}' for n, d in devices.items())}: move the inputs to the "
                         "model's device (input_ids.to(device))")


def warn_training_mode(model: nn.Module) -> None:
    """A model left in training mode with dropout: decoding, greedy too, gives other tokens each
    call (transformers' generate does not switch to eval either; from_config models start in train)."""
    if not model.training:
        return
    rates = set()
    for module in model.modules():
        # nn.Dropout layers, and attention modules that pass their rate to SDPA (transformers').
        rate = module.p if isinstance(module, nn.Dropout) else getattr(module, "attention_dropout", None)
        if module.training and isinstance(rate, (int, float)) and rate > 0:
            rates.add(float(rate))
    if rates:
        warnings.warn(f"generate: the model is in training mode with dropout (p={sorted(rates)}): every call decodes "
                      "differently; call model.eval() first", stacklevel=4)


def warn_unmasked_pads(input_ids: torch.Tensor, pad: int, eos_ids: list[int]) -> None:
    """Rows starting (or ending: right padding) with the pad id and no attention_mask: a padded
    batch whose mask was left out, its pads read as prompt tokens (transformers' generate infers
    the mask for left padding and warns about right padding). A pad that is an EOS id may end a
    prompt once, on purpose: right padding then shows as two of them (many models' pad is an EOS)."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        return  # check_prompt names what is wrong with such a batch
    trailing = 2 if pad in eos_ids else 1
    checks = [(input_ids[:, :1], "start", "pass the tokenizer's attention_mask")]
    if input_ids.shape[1] >= trailing:
        checks.append((input_ids[:, -trailing:], "end", "a right-padded batch continues after its pads: tokenize "
                                                        "with padding_side='left' and pass the attention_mask"))
    for columns, where, advice in checks:
        rows = torch.nonzero((columns == pad).all(dim=1)).flatten().tolist()
        if rows:
            named = f"{rows[:10]}" + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
            warnings.warn(f"generate: rows {named} {where} with the pad id {pad} but no attention_mask was given: "
                          f"the pads are read as prompt tokens; {advice}", stacklevel=4)
            return


def check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """Validates a left-padded batch of ids in [0, vocab); returns the prompt length per row [B]
    (on the host)."""
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"generate: input_ids must be [B, T] int64 or int32, got {tuple(input_ids.shape)} "
                         f"{input_ids.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"generate: attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    mask = attention_mask.detach().cpu()
    # Checked before the cast: a float 1.5 or 0.7 became 1 or 0 there.
    if ((mask != 0) & (mask != 1)).any():
        bad = mask[(mask != 0) & (mask != 1)][:5].tolist()
        raise ValueError(f"generate: attention_mask must hold 0/1 values, got {bad}")
    mask = mask.to(torch.int64)
    lengths = mask.sum(dim=1)
    if (lengths == 0).any():
        raise ValueError(f"generate: rows {torch.nonzero(lengths == 0).flatten().tolist()} have no prompt token")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("generate: attention_mask is not left-padded (padding after a prompt token); "
                         "tokenize with padding_side='left'")
    # The embedding lookup's own error names neither the id nor where it is. Pads are embedded
    # too (and masked), so they must be ids of the vocabulary as well.
    ids = input_ids.detach().cpu()
    outside = torch.nonzero((ids < 0) | (ids >= vocab))[:5].tolist()
    if outside:
        named = ", ".join(f"{ids[row, col].item()} at [{row}, {col}]" for row, col in outside)
        raise ValueError(f"generate: input_ids hold ids outside the model's vocabulary [0, {vocab}): {named} "
                         "(a tokenizer of another model, or a pad id such as -100?)")
    return lengths


def check_seed(seed: Any, batch: int | None = None) -> None:
    """ValueError unless `seed` is an integer, or (per-row seeds) a list or tuple of `batch`
    integers; `batch` None checks the entries alone (generate checks the length once it has the
    batch). Checked in greedy decoding too, which ignores the seed: a bad one would fail once sampled."""
    from superthoughts_ext.reference import integer_or_none

    if not isinstance(seed, (list, tuple)):
        if integer_or_none(seed) is None:
            raise ValueError(f"generate: seed must be an integer, got {type(seed).__name__} {seed!r}")
        return
    bad = [value for value in seed if integer_or_none(value) is None]
    if bad:
        raise ValueError(f"generate: per-row seeds must be integers, got {type(bad[0]).__name__} {bad[0]!r}")
    if batch is not None and len(seed) != batch:
        raise ValueError(f"generate: {len(seed)} per-row seeds for a batch of {batch} rows; give one per row")
