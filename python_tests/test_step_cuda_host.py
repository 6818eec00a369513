"""superthoughts_step's CUDA host glue on a real GPU: the current stream, CUDA-graph capture and
replay of the op itself, misaligned inputs, and a device other than the current one.

The emulated kernel (test_step.py, device "cuda_emulated") checks the kernel's logic; these
need the driver, so they are skipped without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from superthoughts_ext.ops import superthoughts_step
from superthoughts_ext.reference import superthoughts_step_ref
from test_step import EOS, PAD, assert_step_equal, make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
ARGS = dict(pad_id=PAD, eos_id=EOS, threshold=0.5, threshold_main=0.0, temperature=0.0, seed=0, offset=0)


def reference(logits, embed, weight, bias, finished):
    return superthoughts_step_ref(logits, embed, weight, bias, finished, **ARGS)


def test_runs_on_the_current_stream():
    # The logits are written on a side stream after a long sleep: an op launched on any other
    # stream would read them before they exist.
    logits, embed, weight, bias, finished = make_inputs(3, 151936, 64, torch.bfloat16, "cuda")
    want_finished = finished.clone()
    want = reference(logits, embed, weight, bias, want_finished)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # cycles: ~0.1 s
        late_logits = logits * 1
        got = superthoughts_step(late_logits, embed, weight, bias, finished, **ARGS)
    side.synchronize()
    assert_step_equal(got, want, finished, want_finished, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_in_a_cuda_graph_and_replayed(dtype):
    logits, embed, weight, bias, finished = make_inputs(8, 151936, 1536, dtype, "cuda")
    side = torch.cuda.Stream()  # warm-up off the capture stream, as torch.cuda.graphs advises
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            superthoughts_step(logits, embed, weight, bias, finished.clone(), **ARGS)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = superthoughts_step(logits, embed, weight, bias, finished, **ARGS)
    for seed in (1, 2, 3):  # new logits into the captured buffer each replay
        logits.copy_(make_inputs(8, 151936, 1536, dtype, "cuda", seed=seed)[0])
        finished.zero_()
        graph.replay()
        torch.cuda.synchronize()
        want_finished = torch.zeros_like(finished)
        want = reference(logits, embed, weight, bias, want_finished)
        assert_step_equal(outputs, want, finished, want_finished, dtype)


@pytest.mark.parametrize("offset_elements", [1, 3])
def test_misaligned_inputs(offset_elements):
    # Views starting a few bf16 elements into their storage: not 16-byte aligned, so the
    # kernel must take its scalar paths for the logits' head and the embedding rows.
    batch, vocab, hidden = 5, 1000, 64
    logits, embed, weight, bias, finished = make_inputs(batch, vocab, hidden, torch.bfloat16, "cuda")
    flat = torch.empty(offset_elements + embed.numel(), dtype=embed.dtype, device="cuda")
    shifted_embed = flat[offset_elements:].view(vocab, hidden)
    shifted_embed.copy_(embed)
    flat_logits = torch.empty(offset_elements + logits.numel(), dtype=logits.dtype, device="cuda")
    shifted_logits = flat_logits[offset_elements:].view_as(logits)
    shifted_logits.copy_(logits)
    want_finished = finished.clone()
    want = reference(logits, embed, weight, bias, want_finished)
    got = superthoughts_step(shifted_logits, shifted_embed, weight, bias, finished, **ARGS)
    torch.cuda.synchronize()
    assert_step_equal(got, want, finished, want_finished, torch.bfloat16)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_a_device_other_than_the_current_one():
    inputs = make_inputs(3, 1000, 64, torch.bfloat16, "cpu")
    on_second = [None if t is None else t.to("cuda:1") for t in inputs]
    want_finished = inputs[4].clone()
    want = reference(*inputs[:4], want_finished)
    with torch.cuda.device(0):
        got = superthoughts_step(*on_second, **ARGS)
    torch.cuda.synchronize(1)
    assert got[0].device == torch.device("cuda:1")
    assert_step_equal([t.cpu() for t in got], want, on_second[4].cpu(), want_finished, torch.bfloat16)
