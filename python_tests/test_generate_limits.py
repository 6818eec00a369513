"""Where decoding stops: the context limit per row, every EOS id of a model, bad arguments.

Tiny random models from test_generate (CPU, no weights downloaded).
"""
from __future__ import annotations

import pytest
import torch

from superthoughts_ext.generate import MODES, generate
from test_generate import (BOS, CONTEXT, HAS_KERNELS, MIXED_THRESHOLD, PROMPTS, check_stats, left_pad,
                           superthoughts_model, tiny_backbone)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
KERNELS = [pytest.param(True, marks=pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")),
           False]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def backbone(request) -> torch.nn.Module:
    return tiny_backbone(request.param)


@pytest.fixture(scope="module")
def model(backbone) -> torch.nn.Module:
    return superthoughts_model(backbone)


@pytest.mark.parametrize("use_kernels", KERNELS, ids=["kernels", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_context_limit_is_per_row(model, backbone, mode: str, use_kernels: bool) -> None:
    # A prompt near the context stops its own row early; the short rows still get their
    # max_new_tokens, as they would alone.
    prompts = [PROMPTS[2], [BOS, *([7] * (CONTEXT - 6))], PROMPTS[0]]
    ids, mask = left_pad(prompts)
    target = backbone if mode == "standard" else model
    kwargs = dict(max_new_tokens=30, mode=mode, threshold=MIXED_THRESHOLD, use_kernels=use_kernels, ignore_eos=True)
    batch = generate(target, ids, mask, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = generate(target, torch.tensor([prompt]), **kwargs)
        assert alone.sequences[0] == batch.sequences[row], f"row {row}"
        assert (alone.num_steps[0], alone.num_pair_steps[0]) == (batch.num_steps[row], batch.num_pair_steps[row])
    assert batch.num_tokens[0] == batch.num_tokens[2] == 30
    assert batch.num_steps[1] == 1 + 5  # prefill's step, then positions CONTEXT - 5 .. CONTEXT - 1
    check_stats(batch, 30)
    # Without ignore_eos, too: the rows end where they end alone.
    kwargs["ignore_eos"] = False
    batch = generate(target, ids, mask, **kwargs)
    assert batch.sequences == [generate(target, torch.tensor([p]), **kwargs).sequences[0] for p in prompts]


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
def test_context_limit_is_per_row_compiled() -> None:
    # The per-row context check and position clamp run inside the compiled step.
    model = superthoughts_model(tiny_backbone("qwen2"))
    ids, mask = left_pad([PROMPTS[2], [BOS, *([7] * (CONTEXT - 6))]])
    kwargs = dict(max_new_tokens=30, threshold=MIXED_THRESHOLD, ignore_eos=True)
    compiled = generate(model, ids, mask, compile=True, **kwargs)
    eager = generate(model, ids, mask, compile=False, **kwargs)
    assert compiled.sequences == eager.sequences and compiled.num_tokens[0] == 30
    assert (compiled.num_steps, compiled.num_pair_steps) == (eager.num_steps, eager.num_pair_steps)
