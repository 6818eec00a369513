"""The training forward and the decode loop agree: teacher-forced on the units a decode emitted,
the forward's logits of both heads at every position equal those the decode loop computed there.

This ties the two sides that the other tests check apart (test_generate*.py: the loop against a
recompute written like it; test_modeling.py and test_mtp_next_token.py: the forward against hand
computations), through what neither of them shares: the forward's own inputs (the compressor over
the collated first / second ids; with mtp_input "next_token", `layers.next_first_ids` over the
right-padded batch) against what decoding feeds (a left-padded prompt, E[t1] from the step op's
first launch, `(t1, PAD)` units after a fallback, the prompt's MTP inputs at prefill).

Positions compared: the last prompt position (prefill's logits) and every unit fed while its row
was unfinished (single units among them), in every row of a left-padded batch of unequal prompts,
greedy and sampled, with EOS never emitted, emitted as the first token of a step (t1) or as its
second (t2). Tiny random Qwen2 and Llama models on CPU (test_generate.py's).
"""
from __future__ import annotations

import copy

import pytest
import torch

from superthoughts_ext import decode_loop
from superthoughts_ext.generate import generate
from superthoughts_ext.modeling import SuperThoughtsForCausalLM
from test_generate import EOS, MIXED_THRESHOLD, PAD, PROMPTS, left_pad, tiny_backbone
from test_mtp_next_token import perturbed

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
MAX_NEW_TOKENS = 23


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def backbone(request) -> torch.nn.Module:
    return tiny_backbone(request.param)


def model_with(backbone: torch.nn.Module, mtp_input: str) -> SuperThoughtsForCausalLM:
    """A SuperThoughts model of `backbone` whose heads disagree as after training (the same
    perturbed weights for either MTP input)."""
    return perturbed(SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone), mtp_input=mtp_input))


def recorded_decode(model, monkeypatch, eos: int, **kwargs) -> tuple[list[list[int]], list[tuple]]:
    """Decodes PROMPTS (left-padded) and records every `decode_loop.sample` call: (logits [2, B, V]
    fed to the step op, `finished` [B] before it, tokens emitted per row [B] by it)."""
    steps: list[tuple] = []
    sample = decode_loop.sample

    def recording(stepper, state, logits, cfg, offset) -> None:
        logits_in, finished, before = logits.clone(), state.finished.clone(), state.write_pos.clone()
        sample(stepper, state, logits, cfg, offset)
        steps.append((logits_in, finished, state.write_pos - before))

    monkeypatch.setattr(decode_loop, "sample", recording)
    ids, mask = left_pad(PROMPTS)
    out = generate(model, ids, mask, max_new_tokens=MAX_NEW_TOKENS, threshold=MIXED_THRESHOLD, eos_token_id=eos,
                   compile=False, **kwargs)
    monkeypatch.setattr(decode_loop, "sample", sample)
    return out.sequences, steps


def teacher_forced_batch(sequences: list[list[int]], steps: list[tuple]) -> tuple[dict, list[list[torch.Tensor]]]:
    """The training forward's right-padded batch (no labels) laying each row out as its decode did
    (one unit per step that emitted tokens: a pair, or (t1, PAD)); and per row, the decode's logits
    [2, V] of each position it fed, in order (the last prompt position first)."""
    rows, fed = [], []
    for row, (prompt, tokens) in enumerate(zip(PROMPTS, sequences)):
        first, second, is_unit, logits, start = list(prompt), [PAD] * len(prompt), [False] * len(prompt), [], 0
        for step_logits, finished, emitted in steps:
            if finished[row]:
                break
            logits.append(step_logits[:, row])
            size = int(emitted[row])
            if size:
                first.append(tokens[start])
                second.append(tokens[start + 1] if size == 2 else PAD)
                is_unit.append(True)
                start += size
        assert start == len(tokens), f"row {row}: the steps emitted {start} tokens, the output holds {len(tokens)}"
        rows.append((first, second, is_unit))
        fed.append(logits)
    width = max(len(first) for first, _, _ in rows)

    def padded(index: int, value, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([list(r[index]) + [value] * (width - len(r[index])) for r in rows], dtype=dtype)

    lengths = torch.tensor([len(first) for first, _, _ in rows])
    batch = {"first_ids": padded(0, PAD, torch.int64), "second_ids": padded(1, PAD, torch.int64),
             "is_unit": padded(2, False, torch.bool),
             "attention_mask": (torch.arange(width) < lengths[:, None]).to(torch.int64)}
    batch["position_ids"] = (torch.arange(width).expand(len(rows), width) * batch["attention_mask"])
    return batch, fed


def forced_eos(model, monkeypatch, slot: int, **kwargs) -> tuple[int, int]:
    """(row, token): a token that row emits as the `slot` token (0: t1, 1: t2) of a pair step, and
    not before; decoding again with it as EOS leaves the row's tokens up to it as they were and
    stops the row there (other rows may stop on it earlier)."""
    sequences, steps = recorded_decode(model, monkeypatch, EOS, **kwargs)
    for row, tokens in enumerate(sequences):
        start = 0
        for _, _, emitted in steps:
            size = int(emitted[row])
            if size == 2 and tokens[start + slot] not in (*tokens[: start + slot], PAD):
                return row, tokens[start + slot]
            start += size
    raise AssertionError(f"no row has a pair step whose token {slot} is new: {sequences}")


@pytest.mark.parametrize("eos_at", [None, 0, 1], ids=["no-eos", "eos-t1", "eos-t2"])
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("mtp_input", ["unit", "next_token"])
def test_teacher_forced_forward_gives_the_decode_loops_logits(backbone, monkeypatch, mtp_input: str,
                                                              temperature: float, eos_at: int | None) -> None:
    model = model_with(backbone, mtp_input)
    kwargs = dict(temperature=temperature, seed=5)
    row, eos = (None, EOS) if eos_at is None else forced_eos(model, monkeypatch, eos_at, **kwargs)
    sequences, steps = recorded_decode(model, monkeypatch, eos, **kwargs)
    if row is not None:
        assert sequences[row][-1] == eos and len(sequences[row]) < MAX_NEW_TOKENS
    batch, fed = teacher_forced_batch(sequences, steps)
    single_units = int((batch["is_unit"] & (batch["second_ids"] == PAD)).sum())
    assert single_units and int(batch["is_unit"].sum()) > single_units  # fallbacks among pairs
    with torch.no_grad():
        out = model(**batch, return_logits=True)
    for row, logits in enumerate(fed):
        last_prompt = len(PROMPTS[row]) - 1
        for k, (main, mtp) in enumerate(logits):
            position = last_prompt + k
            where = f"row {row}, position {position} (unit {k})"
            torch.testing.assert_close(out.logits_main[row, position], main, rtol=1e-4, atol=1e-4, msg=where)
            torch.testing.assert_close(out.logits_mtp[row, position], mtp, rtol=1e-4, atol=1e-4, msg=where)


def test_the_mtp_input_changes_the_mtp_logits_it_is_compared_on(backbone, monkeypatch) -> None:
    # The check above must tell the inputs apart: a next_token decode against the unit forward fails.
    decoded = model_with(backbone, "next_token")
    sequences, steps = recorded_decode(decoded, monkeypatch, EOS)
    batch, fed = teacher_forced_batch(sequences, steps)
    with torch.no_grad():
        unit = model_with(backbone, "unit")(**batch, return_logits=True)
    row = 0
    decoded_mtp = torch.stack([mtp for _, mtp in fed[row]])  # [K, V]
    start = len(PROMPTS[row]) - 1
    assert not torch.allclose(unit.logits_mtp[row, start: start + len(decoded_mtp)], decoded_mtp, atol=1e-2)
