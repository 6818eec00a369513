"""Training data for SuperThoughts: the unit layout, pad-split augmentation, collator.

Tokenised examples come from data_jsonl.py (chat-template formatting, JSONL loading).

Layout. A sequence is prompt tokens p_1..p_m (ordinary positions)
followed by response units u_1..u_k, each a pair (a, b) or a single (a, PAD). The response
always ends with exactly one EOS: `build_units` appends it when missing and rejects an EOS
anywhere else (the decoder would stop there). Targets:

    position            main target   MTP target
    p_1 .. p_{m-1}      -100          -100
    p_m (last prompt)   a_1           the token after a_1 (b_1 when u_1 is a pair)
    u_j (no EOS)        a_{j+1}       the token after a_{j+1}, -100 when a_{j+1} is EOS
    u_k (holds EOS)     -100          -100

The MTP target is the token that follows a_{j+1} in the response whether u_{j+1} is a pair
or a single: a single unit is a decoding fallback, not the end of the text, and at decode
time the MTP head is asked for that token at every step (its confidence decides the
fallback), after single units as much as after pairs. This departs from the method's first
design ("MTP target ignored when b_{j+1} is PAD"): with that rule the head never learned the token
after a single unit (the demo's earlier model, trained that way with the first pad-split and
from scratch, reached 41% at threshold 0.9).

Pad-split mirrors the decoder's fallback: a single unit shifts every later pair by one
token, so singles sit anywhere in the response (not only as both halves of a pair of the
unsplit layout) and pairs straddle the unsplit layout's pair boundaries. The number of pairs
split is rho * (pairs of the unsplit layout) rounded stochastically (down or up, up with
probability its fractional part), so that its mean is exactly rho * pairs: round() never
split a response of one or two pairs at rho <= 0.25, and split short responses less than
rho on average, though decoding falls back on them too.

"Single" is a structural flag (`is_pair`), not `b == PAD`: pad may equal eos (Qwen base
tokenizers), and a final pair (x, EOS) must still teach the MTP head to emit EOS.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE = -100


@dataclass
class UnitSequence:
    """One training sequence in unit layout; every tensor is [T] (T = prompt length + units)."""

    first_ids: torch.Tensor  # int64: prompt token, or a of the unit
    second_ids: torch.Tensor  # int64: b of a pair; PAD for prompt positions and single units
    is_unit: torch.Tensor  # bool: response unit (input C(E[a], E[b])) vs prompt token (input E[p])
    is_pair: torch.Tensor  # bool: unit with two tokens
    position_ids: torch.Tensor  # int64: 0..T-1
    labels_main: torch.Tensor  # int64: a of the next unit, -100 = no target
    labels_mtp: torch.Tensor  # int64: the token after the next unit's a, -100 = none (a is EOS)
    source_index: torch.Tensor  # int64: index in `token_ids` of the last token this position holds
    token_ids: torch.Tensor  # [m + n] int64: the uncompressed sequence, prompt + response (with EOS)

    def tokens(self) -> list[int]:
        """The uncompressed token sequence read back from the layout (prompt + response)."""
        out: list[int] = []
        for first, second, pair in zip(self.first_ids.tolist(), self.second_ids.tolist(), self.is_pair.tolist()):
            out.extend((first, second) if pair else (first,))
        return out

    def teacher_index(self) -> torch.Tensor:
        """[T]: the uncompressed position whose next token is this position's main target; -1 if none."""
        return torch.where(self.labels_main != IGNORE, self.source_index, torch.full_like(self.source_index, -1))


def _response_with_eos(response_ids: Sequence[int], eos_id: int) -> list[int]:
    response = [int(t) for t in response_ids]
    if not response or response[-1] != eos_id:
        response.append(eos_id)
    if eos_id in response[:-1]:
        raise ValueError(f"response holds EOS ({eos_id}) at position {response.index(eos_id)} before its end; "
                         f"EOS may only close the response")
    return response


def _unit_counts(n_tokens: int, split_fraction: float, u: float) -> tuple[int, int]:
    """(units before a trailing single, pairs split) of a response of `n_tokens` (EOS included).

    The unsplit layout is n // 2 pairs, then a single when n is odd; pad-split turns
    floor(rho * pairs) of those pairs, plus one more when u < the fractional part, into two
    singles each, so one more unit per split pair. With u ~ U[0, 1) the mean is rho * pairs;
    u = 0 gives the most, ceil(rho * pairs).
    """
    n_pairs = n_tokens // 2
    # floor and compare rather than floor(x + u): x + u rounds up to the next integer in
    # floating point when u is within 2^-53 of 1, which would split one pair more than ceil(x).
    exact = split_fraction * n_pairs
    n_split = math.floor(exact) + (u < exact - math.floor(exact))
    return n_pairs + n_split, n_split


def build_units(prompt_ids: Sequence[int], response_ids: Sequence[int], *, pad_id: int, eos_id: int,
                split_fraction: float = 0.0, rng: random.Random | None = None) -> UnitSequence:
    """Lays out one example as prompt positions + response units (rules in the module docstring).

    Args:
        prompt_ids: prompt tokens (m >= 1: the last prompt position predicts the first unit).
        response_ids: response tokens; EOS appended when it does not end with one. An empty
            response becomes the single unit (EOS, PAD).
        pad_id, eos_id: token ids (may be equal).
        split_fraction: rho; rho * (number of pairs) pairs of the unsplit layout, rounded
            down or up at random (mean exactly rho * pairs; 0 = none, 1.0 = every unit
            single), become two single units each, and the singles are placed uniformly at
            random among the remaining pairs (pad-split augmentation).
        rng: source of the rounding and the split places; None = random.Random(0) (deterministic).
    """
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("build_units: empty prompt; the last prompt position is what predicts the first unit")
    if not 0.0 <= split_fraction <= 1.0:
        raise ValueError(f"build_units: split_fraction must be in [0, 1], got {split_fraction}")
    response = _response_with_eos(response_ids, eos_id)

    # Unit sizes (1 or 2) in order: the singles of split pairs sit among the pairs at random,
    # as fallback steps fall during decoding, and an odd response ends with a single.
    rng = rng or random.Random(0)
    n_units, n_split = _unit_counts(len(response), split_fraction, rng.random())
    singles = set(rng.sample(range(n_units), 2 * n_split)) if n_split else set()
    sizes = [1 if j in singles else 2 for j in range(n_units)] + [1] * (len(response) % 2)
    units: list[tuple[int, int]] = []  # (start index in the response, size)
    start = 0
    for size in sizes:
        units.append((start, size))
        start += size

    m = len(prompt)
    first = prompt + [response[s] for s, _ in units]
    second = [pad_id] * m + [response[s + 1] if size == 2 else pad_id for s, size in units]
    is_pair = [False] * m + [size == 2 for _, size in units]
    source = list(range(m)) + [m + s + size - 1 for s, size in units]
    labels_main = [IGNORE] * len(first)
    labels_mtp = [IGNORE] * len(first)
    # Position m - 1 + j (j = 0 is the last prompt token) predicts unit j + 1; the EOS unit
    # is last and has no successor, so it keeps -100.
    for j, (start, _) in enumerate(units):
        labels_main[m - 1 + j] = response[start]
        if start + 1 < len(response):
            labels_mtp[m - 1 + j] = response[start + 1]
    length = len(first)
    return UnitSequence(
        first_ids=torch.tensor(first, dtype=torch.int64),
        second_ids=torch.tensor(second, dtype=torch.int64),
        is_unit=torch.tensor([False] * m + [True] * len(units)),
        is_pair=torch.tensor(is_pair),
        position_ids=torch.arange(length, dtype=torch.int64),
        labels_main=torch.tensor(labels_main, dtype=torch.int64),
        labels_mtp=torch.tensor(labels_mtp, dtype=torch.int64),
        source_index=torch.tensor(source, dtype=torch.int64),
        token_ids=torch.tensor(prompt + response, dtype=torch.int64),
    )


def layout_length(prompt_ids: Sequence[int], response_ids: Sequence[int], eos_id: int,
                  split_fraction: float = 0.0) -> int:
    """The most positions (prompt tokens + units) `build_units` gives with the same arguments,
    over every rng: an upper bound, reached when the split count rounds up (exact for
    split_fraction 0 and 1, and whenever split_fraction * pairs is a whole number)."""
    # len() and a last element, not truthiness: numpy arrays and tensors are accepted as ids too.
    n = len(response_ids) + (0 if len(response_ids) and int(response_ids[-1]) == eos_id else 1)
    return len(prompt_ids) + _unit_counts(n, split_fraction, 0.0)[0] + n % 2


def build_baseline(prompt_ids: Sequence[int], response_ids: Sequence[int], eos_id: int) -> tuple[list[int], list[int]]:
    """Plain SFT layout: input_ids = prompt + response (+ EOS), labels = -100 on the prompt.

    Labels are unshifted (transformers causal LMs shift them), so the response tokens and the
    EOS are the supervised targets, as in the SuperThoughts layout.
    """
    prompt = [int(t) for t in prompt_ids]
    response = _response_with_eos(response_ids, eos_id)
    return prompt + response, [IGNORE] * len(prompt) + response


def _process_rank() -> int:
    """Rank of this process in a distributed run (DataLoader workers inherit it), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _pad(rows: list[list[int]] | list[torch.Tensor], value: int | bool, dtype: torch.dtype) -> torch.Tensor:
    """Right-pads 1-D rows into [B, max_len]."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
    return out


class SuperThoughtsCollator:
    """transformers.Trainer data_collator: features {"prompt_ids", "response_ids"} -> a padded batch.

    SuperThoughts mode returns [B, T] first_ids, second_ids, is_unit, position_ids,
    attention_mask, labels_main, labels_mtp (right padding; labels -100 on padding), plus with
    `with_distill` teacher_input_ids / teacher_attention_mask [B, T'] (uncompressed sequences)
    and teacher_index [B, T]. Baseline mode returns input_ids, attention_mask, labels for a
    plain HF causal LM.

    rho ~ U[0, rho_max], the rounding of the split count and the split places are drawn per
    sequence. A feature with a "row" (its index in the training set; `train` adds it) draws
    them from a generator keyed by (`seed`, `set_epoch` value, row): the same row gets the same
    splits within an epoch whichever process, DataLoader worker or step collates it, so a
    resumed run collates its remaining steps exactly as the uninterrupted run would have, and
    `--num-workers` changes nothing. Other features draw from a generator keyed by (`seed`,
    process rank, `set_epoch` value, DataLoader worker seed), built lazily in the process that
    collates: each worker draws its own splits (a generator made in the main process would be
    copied into every worker and draw the same ones there), each rank its own, and each
    DataLoader iterator of a worker its own, since PyTorch gives every worker of every iterator
    a fresh seed from the main process's RNG. The same seeds give the same splits.

    A feature with an "eval_row" instead (a held-out row: `train_data.EvalRows`) draws them as
    training does, rho ~ U[0, rho_max] and all, but from a generator keyed by that number alone:
    not by `seed`, the epoch, the process or the call. Each held-out row thus has one fixed
    layout, drawn from the training distribution: evaluating the same weights twice gives the
    same loss, the held-out loss estimates the training loss's objective, and runs with the same
    rho_max (any seed) are scored on the same layouts.
    """

    def __init__(self, pad_id: int, eos_id: int, rho_max: float = 0.25, baseline: bool = False, seed: int = 0,
                 with_distill: bool = False) -> None:
        if not 0.0 <= rho_max <= 1.0:
            raise ValueError(f"SuperThoughtsCollator: rho_max must be in [0, 1], got {rho_max}")
        if baseline and with_distill:
            raise ValueError("SuperThoughtsCollator: with_distill applies to SuperThoughts mode, not baseline")
        self.pad_id, self.eos_id, self.rho_max = int(pad_id), int(eos_id), float(rho_max)
        self.baseline, self.with_distill = baseline, with_distill
        self.seed = int(seed)
        self._epoch = 0
        self._rng_key: tuple[int, ...] | None = None
        self._rng = random.Random()

    def set_epoch(self, epoch: int) -> None:
        """Mixes the epoch into the split generators (the trainer passes it at each epoch start),
        so that a row seen again in a later epoch gets fresh splits."""
        self._epoch = int(epoch)

    def _split_rng(self, feature: dict[str, Any]) -> random.Random:
        """The generator of this held-out row; of this row and epoch; or else of this process
        (main or DataLoader worker), rank and epoch."""
        # A str seed goes through SHA-512: nearby keys give unrelated streams, and the result
        # does not depend on PYTHONHASHSEED.
        if "eval_row" in feature:
            return random.Random(f"superthoughts-eval-split/{int(feature['eval_row'])}")
        if "row" in feature:
            return random.Random(f"superthoughts-pad-split/{self.seed}/{self._epoch}/row/{int(feature['row'])}")
        worker = torch.utils.data.get_worker_info()
        key = (self.seed, _process_rank(), self._epoch, -1 if worker is None else worker.seed)
        if key != self._rng_key:
            self._rng = random.Random("superthoughts-pad-split/" + "/".join(map(str, key)))
            self._rng_key = key
        return self._rng

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("SuperThoughtsCollator: empty batch")
        for i, f in enumerate(features):
            if "prompt_ids" not in f or "response_ids" not in f:
                raise KeyError(f"SuperThoughtsCollator: feature {i} needs 'prompt_ids' and 'response_ids', got {sorted(f)}")
        if self.baseline:
            return self._baseline(features)
        seqs = [self._units(f) for f in features]
        batch = {
            "first_ids": _pad([s.first_ids for s in seqs], self.pad_id, torch.int64),
            "second_ids": _pad([s.second_ids for s in seqs], self.pad_id, torch.int64),
            "is_unit": _pad([s.is_unit for s in seqs], False, torch.bool),
            "position_ids": _pad([s.position_ids for s in seqs], 0, torch.int64),
            "attention_mask": _pad([torch.ones(len(s.first_ids)) for s in seqs], 0, torch.int64),
            "labels_main": _pad([s.labels_main for s in seqs], IGNORE, torch.int64),
            "labels_mtp": _pad([s.labels_mtp for s in seqs], IGNORE, torch.int64),
        }
        if self.with_distill:
            batch["teacher_input_ids"] = _pad([s.token_ids for s in seqs], self.pad_id, torch.int64)
            batch["teacher_attention_mask"] = _pad([torch.ones(len(s.token_ids)) for s in seqs], 0, torch.int64)
            batch["teacher_index"] = _pad([s.teacher_index() for s in seqs], -1, torch.int64)
        return batch

    def _units(self, feature: dict[str, Any]) -> UnitSequence:
        rng = self._split_rng(feature)
        return build_units(feature["prompt_ids"], feature["response_ids"], pad_id=self.pad_id, eos_id=self.eos_id,
                           split_fraction=rng.uniform(0.0, self.rho_max) if self.rho_max > 0 else 0.0, rng=rng)

    def _baseline(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [build_baseline(f["prompt_ids"], f["response_ids"], self.eos_id) for f in features]
        return {
            "input_ids": _pad([ids for ids, _ in pairs], self.pad_id, torch.int64),
            "attention_mask": _pad([[1] * len(ids) for ids, _ in pairs], 0, torch.int64),
            "labels": _pad([labels for _, labels in pairs], IGNORE, torch.int64),
        }
