"""Prompt validation for `generate` (generate.py): the checks on input_ids / attention_mask."""
from __future__ import annotations

import warnings

import torch


def warn_unmasked_pads(input_ids: torch.Tensor, pad: int) -> None:
    """Rows starting with the pad id and no attention_mask: a padded batch whose mask was left
    out, its pads read as prompt tokens (transformers' generate infers the mask there)."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        return  # check_prompt names what is wrong with such a batch
    rows = torch.nonzero(input_ids[:, 0] == pad).flatten().tolist()
    if rows:
        named = f"{rows[:10]}" + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")
        warnings.warn(f"generate: rows {named} start with the pad id {pad} but no attention_mask was given: the "
                      "pads are read as prompt tokens; pass the tokenizer's attention_mask", stacklevel=4)


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
