"""Per-row seeds of `generate` (seed=[s0, s1, ...]): each row samples as it would alone with its
own seed, wherever it stands in the batch, in one step op launch per step (the op's row_seeds);
what `superthoughts eval --samples` builds on. With one seed the noise is keyed by the batch row
as well (test_generate.py pins that schedule). Tiny random models of test_generate.py, on the CPU.
"""
from __future__ import annotations

import functools

import cuda_emulation
import pytest
import torch
from test_generate import HAS_KERNELS, MIXED_THRESHOLD, PROMPTS, left_pad, superthoughts_model, tiny_backbone

import superthoughts_ext.ops
import superthoughts_ext.reference
from superthoughts_ext.generate import MODES, generate
from superthoughts_ext.reference import int64_of_low_64_bits

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SEEDS = [11, 12, 2**64 + 13, -14]  # any integers, folded to 64 bits as a single seed is
KERNELS = [False, True] if HAS_KERNELS else [False]


@pytest.fixture(scope="module")
def model():
    return superthoughts_model(tiny_backbone("qwen2"))


def alone(model, prompt: list[int], seed: int, **kwargs) -> tuple[list[int], int, int]:
    out = generate(model, torch.tensor([prompt]), seed=seed, **kwargs)
    return out.sequences[0], out.num_steps[0], out.num_pair_steps[0]


@pytest.mark.parametrize("use_kernels", KERNELS, ids=lambda k: "kernels" if k else "reference")
@pytest.mark.parametrize("mode", MODES)
def test_each_row_samples_as_alone_with_its_seed(model, mode: str, use_kernels: bool) -> None:
    kwargs = dict(max_new_tokens=15, mode=mode, threshold=MIXED_THRESHOLD, temperature=1.0, use_kernels=use_kernels)
    ids, mask = left_pad(PROMPTS)
    batch = generate(model, ids, mask, seed=SEEDS, **kwargs)
    expected = [alone(model, prompt, seed, **kwargs) for prompt, seed in zip(PROMPTS, SEEDS)]
    assert list(zip(batch.sequences, batch.num_steps, batch.num_pair_steps)) == expected
    # The rows in another order (and another batch size) keep their samples.
    order = [2, 0, 3]
    ids, mask = left_pad([PROMPTS[i] for i in order])
    shuffled = generate(model, ids, mask, seed=[SEEDS[i] for i in order], **kwargs)
    assert shuffled.sequences == [expected[i][0] for i in order]
    # The seeds are what differ: one prompt under two seeds samples two ways.
    ids, mask = left_pad([PROMPTS[0], PROMPTS[0]])
    twice = generate(model, ids, mask, seed=SEEDS[:2], **kwargs)
    assert twice.sequences[0] == expected[0][0] and twice.sequences[0] != twice.sequences[1]


@pytest.mark.skipif(cuda_emulation.cuda_include_dir() is None,
                    reason="the CUDA emulation needs the CUDA toolkit's headers")
def test_the_cuda_kernel_reads_the_row_seeds(model, monkeypatch) -> None:
    # The op gets the batch's logits, `finished` (updated in place) and the [B] row seeds: the
    # CUDA kernel's source, emulated on the CPU, must key each row's noise as the reference does.
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=15, threshold=MIXED_THRESHOLD, temperature=1.0, seed=SEEDS)
    ref = generate(model, ids, mask, use_kernels=False, **kwargs)
    emulated_step = functools.partial(cuda_emulation.emulated_step, grid=3)
    monkeypatch.setattr(superthoughts_ext.ops, "superthoughts_step", emulated_step)
    emulated = generate(model, ids, mask, use_kernels=True, **kwargs)
    assert (emulated.sequences, emulated.num_pair_steps) == (ref.sequences, ref.num_pair_steps)


@pytest.mark.parametrize("use_kernels", KERNELS, ids=lambda k: "kernels" if k else "reference")
def test_one_step_op_launch_per_step_for_the_whole_batch(model, monkeypatch, use_kernels: bool) -> None:
    # Per-row seeds used to cost a batch-of-one launch per row and step; now every step is one
    # launch over all B rows with the seeds as a [B] int64 tensor.
    module, name = ((superthoughts_ext.ops, "superthoughts_step") if use_kernels
                    else (superthoughts_ext.reference, "superthoughts_step_ref"))
    step, calls = getattr(module, name), []

    def counted(logits, *args, **kwargs):
        calls.append((logits.shape[1], kwargs.get("row_seeds")))
        return step(logits, *args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    ids, mask = left_pad(PROMPTS)
    out = generate(model, ids, mask, max_new_tokens=15, threshold=MIXED_THRESHOLD, temperature=1.0, seed=SEEDS,
                   use_kernels=use_kernels)
    assert max(out.num_steps) <= len(calls) <= 15
    keys = torch.tensor([int64_of_low_64_bits(s) for s in SEEDS])
    assert all(batch == len(PROMPTS) and torch.equal(row_seeds, keys) for batch, row_seeds in calls)


def test_one_row_with_a_list_of_one_seed_is_that_seed(model) -> None:
    kwargs = dict(max_new_tokens=12, temperature=0.7, use_kernels=HAS_KERNELS)
    prompt = torch.tensor([PROMPTS[1]])
    assert generate(model, prompt, seed=[5], **kwargs).sequences == generate(model, prompt, seed=5, **kwargs).sequences


def test_greedy_decoding_ignores_per_row_seeds(model) -> None:
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=12, threshold=MIXED_THRESHOLD)
    assert generate(model, ids, mask, seed=SEEDS, **kwargs).sequences == generate(model, ids, mask, **kwargs).sequences


@pytest.mark.parametrize("seed, message", [
    ([1, 2, 3], r"3 per-row seeds for a batch of 4 rows"),
    ([1, 2, 3.5, 4], r"per-row seeds must be integers, got float 3.5"),
    ([1, True, 3, 4], r"per-row seeds must be integers, got bool True"),
])
def test_bad_per_row_seeds_are_refused(model, seed: list, message: str) -> None:
    ids, mask = left_pad(PROMPTS)
    with pytest.raises(ValueError, match=message):
        generate(model, ids, mask, max_new_tokens=4, temperature=1.0, seed=seed)
