"""superthoughts_step on randomised and extreme inputs: every backend against the reference.

test_step.py walks the parameter grid one axis at a time; here each case draws all of them at
once (seeded, so a failure reruns as it was): mixed logit and embedding dtypes, offset,
row-strided and head/batch-transposed views, NaN / +-inf / huge / tied / one-hot / flat rows,
pad == eos, eos at 0 or V - 1, thresholds 0, 1 and 1 / V (a uniform row's exact confidence),
mixed finished rows, seeds and offsets at the int64 extremes, grids of 1 to 40 emulated blocks.
"""
from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from test_step import DEVICES, EMULATED, NEXT_IN_TOL, assert_step_equal, step_on, tensor_device

from superthoughts_ext.ops import superthoughts_step
from superthoughts_ext.reference import superthoughts_step_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LARGEST = {torch.float32: 3e38, torch.bfloat16: 3e38, torch.float16: 65000.0}
INT64_EDGES = [0, 1, -1, 2**63 - 1, -(2**63), 2**32 - 1, 2**32]
CASES = 40


def draw_logits(rng: random.Random, gen: torch.Generator, batch: int, vocab: int, dtype) -> torch.Tensor:
    """[2, B, V] float32 values of one kind, with NaN / -inf / +inf sprinkled on some cases."""
    kind = rng.choice(["normal", "ties", "onehot", "flat", "huge"])
    if kind == "ties":  # many equal maxima: lowest index wins
        x = torch.randint(0, 3, (2, batch, vocab), generator=gen).float()
    elif kind == "flat":
        x = torch.zeros(2, batch, vocab)
    elif kind == "onehot":  # confidence exactly 1
        x = torch.full((2, batch, vocab), float("-inf"))
        x.scatter_(2, torch.randint(0, vocab, (2, batch, 1), generator=gen), 1.0)
    elif kind == "huge":  # x / T and x - max overflow
        x = torch.randn(2, batch, vocab, generator=gen).sign() * LARGEST[dtype] * torch.rand(2, batch, vocab, generator=gen)
    else:
        x = torch.randn(2, batch, vocab, generator=gen) * rng.choice([0.1, 1.0, 30.0])
    if rng.random() < 0.4:
        u = torch.rand(2, batch, vocab, generator=gen)
        x[u < 0.1] = float("nan")
        x[(u >= 0.1) & (u < 0.2)] = float("-inf")
        x[(u >= 0.2) & (u < 0.25)] = -0.0
        if rng.random() < 0.3:
            x[(u >= 0.25) & (u < 0.26)] = float("inf")
        x[rng.randrange(2), rng.randrange(batch)] = rng.choice([float("nan"), float("-inf")])
    return x


def lay_out(rng: random.Random, x: torch.Tensor, dtype) -> torch.Tensor:
    """x as `dtype` in one of the layouts the op accepts (vocab dim contiguous)."""
    layout = rng.choice(["contiguous", "row_strided", "transposed", "offset"])
    if layout == "row_strided":
        wide = torch.zeros(*x.shape[:2], x.shape[2] + rng.randrange(1, 9), dtype=dtype)
        wide[..., : x.shape[2]] = x.to(dtype)
        return wide[..., : x.shape[2]]
    if layout == "transposed":  # stored [B, 2, V]
        return x.transpose(0, 1).contiguous().to(dtype).transpose(0, 1)
    if layout == "offset":  # storage offset: no 16-byte alignment
        start = rng.randrange(1, 7)
        flat = torch.zeros(x.numel() + 8, dtype=dtype)
        flat[start : start + x.numel()] = x.reshape(-1).to(dtype)
        return flat[start : start + x.numel()].view(x.shape)
    return x.to(dtype)


def draw_case(index: int):
    rng, gen = random.Random(index), torch.Generator().manual_seed(index)
    batch, vocab = rng.choice([1, 2, 3, 5, 17, 33]), rng.choice([1, 2, 3, 7, 8, 9, 33, 257, 1000])
    hidden = rng.choice([1, 3, 8, 16, 32, 64])
    logits_dtype, embed_dtype = rng.choice(DTYPES), rng.choice(DTYPES)
    logits = lay_out(rng, draw_logits(rng, gen, batch, vocab, logits_dtype), logits_dtype)
    table = torch.randn(vocab, hidden + 3, generator=gen).to(embed_dtype)
    start = rng.randrange(4)
    embed = table[:, start : start + hidden] if rng.random() < 0.4 else table[:, :hidden].contiguous()
    merge = rng.choice(["linear", "linear_no_bias", "raw_pair"])
    weight = bias = None
    if merge != "raw_pair":
        weight = (torch.randn(hidden, 2 * hidden, generator=gen) / math.sqrt(hidden)).to(embed_dtype)
    if merge == "linear":
        bias = torch.randn(hidden, generator=gen).to(embed_dtype)
    finished = torch.rand(batch, generator=gen) < rng.choice([0.0, 0.3, 1.0])
    pad = rng.randrange(vocab)
    scalars = dict(
        pad_id=pad, eos_id=rng.choice([0, vocab - 1, pad, rng.randrange(vocab)]),
        threshold=rng.choice([0.0, 1.0, 0.5, 1.0 / vocab, rng.random()]),
        threshold_main=rng.choice([0.0, 1.0, rng.random()]),
        temperature=rng.choice([0.0, 0.0, 1e-5, 0.7, 1.0, 50.0, 1e30, 1e39]),
        seed=rng.choice(INT64_EDGES + [rng.getrandbits(63)]), offset=rng.choice(INT64_EDGES + [rng.getrandbits(40)]),
    )
    grid = rng.choice([1, 2, 3, 7, 40])
    return (logits, embed, weight, bias, finished), scalars, grid, embed_dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(CASES))
def test_random_case_matches_reference(device, index):
    (logits, embed, weight, bias, finished), scalars, grid, embed_dtype = draw_case(index)
    if device != "cpu" and device != EMULATED:
        logits, embed, finished = logits.to(device), embed.to(device), finished.to(device)
        weight = None if weight is None else weight.to(device)
        bias = None if bias is None else bias.to(device)
    fin_kernel, fin_ref = finished.clone(), finished.clone()
    got = step_on(device, grid)(logits, embed, weight, bias, fin_kernel, **scalars)
    want = superthoughts_step_ref(logits, embed, weight, bias, fin_ref, **scalars)
    assert_step_equal(got, want, fin_kernel, fin_ref, embed_dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [3.5e38, 1e39, 1e300])
def test_temperature_beyond_float32_never_draws_a_masked_token(device, temperature):
    # The kernels divide in float32, where these temperatures are inf: every finite logit scales
    # to 0 (a uniform draw) and a masked one to -inf / inf = NaN, which must not win (argmax
    # takes NaN for the maximum).
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 8, 40, generator=gen)
    logits[..., ::2] = float("-inf")
    logits[..., 1::4] = float("nan")
    embed = torch.randn(40, 4, generator=gen)
    args = (None, None)
    fin = torch.zeros(8, dtype=torch.bool)
    device_t = tensor_device(device)
    got = step_on(device)(logits.to(device_t), embed.to(device_t), *args, fin.to(device_t), 0, 2, 0.0, 0.0,
                          temperature, 5, 6)
    want = superthoughts_step_ref(logits, embed, *args, fin.clone(), 0, 2, 0.0, 0.0, temperature, 5, 6)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=0, atol=0)
    assert (want[0] % 4 == 3).all()  # the only unmasked tokens (EOS is masked: both always drawn)


# 17 fp32 rows take the BLAS path; 16-bit merges of 3+ (bf16) or 9+ (fp16) rows take torch's
# GEMM where the CPU multiplies that type in hardware (build_info()["cpu_16bit_matmul"]); fewer
# rows take the kernel's own loop.
@pytest.mark.parametrize("batch", [2, 3, 17])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_weight_that_requires_grad(batch, with_bias, dtype):
    # A model's parameters outside no_grad: the op is not differentiable, but it must run.
    gen = torch.Generator().manual_seed(1)
    logits, embed = torch.randn(2, batch, 50, generator=gen), torch.randn(50, 8, generator=gen).to(dtype)
    weight = torch.randn(8, 16, generator=gen).to(dtype).requires_grad_()
    bias = torch.randn(8, generator=gen).to(dtype).requires_grad_() if with_bias else None
    finished = torch.zeros(batch, dtype=torch.bool)
    got = superthoughts_step(logits, embed, weight, bias, finished.clone(), 0, 1, 0.5)
    want = superthoughts_step_ref(logits, embed, weight, bias, finished.clone(), 0, 1, 0.5, 0.0, 0.0, 0, 0)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    rtol, atol = NEXT_IN_TOL[dtype]
    torch.testing.assert_close(got[3].detach(), want[3].detach(), rtol=rtol, atol=atol)


def test_the_op_is_not_differentiable_and_bumps_the_version_of_finished():
    # As for argmax: outputs that never require grad (a backend-only op gave them a grad_fn that
    # returned no gradients, with a deprecation warning), and `finished`, written in place, has
    # its version bumped so autograd refuses a backward through a value saved from it before.
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 50, generator=gen).requires_grad_()
    weight = torch.randn(8, 16, generator=gen).requires_grad_()
    finished = torch.zeros(3, dtype=torch.bool)
    x = torch.ones(3, requires_grad=True)
    saved = torch.where(finished, 0.0, x)  # saves `finished` for its backward
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = superthoughts_step(logits, torch.randn(50, 8, generator=gen), weight, None, finished, 0, 1, 0.5)
    assert finished._version == 1
    assert [t.requires_grad for t in outputs] == [False] * 4
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


def test_integer_arguments_are_named_or_refused():
    logits, embed, finished = torch.randn(2, 2, 10), torch.randn(10, 4), torch.zeros(2, dtype=torch.bool)
    for name in ("pad_id", "eos_id"):  # beyond int64: the schema's own error named neither
        ids = {"pad_id": 0, "eos_id": 1, name: 2**63}
        with pytest.raises(RuntimeError, match=rf"superthoughts_step: {name}=9223372036854775808 outside \[0, V=10\)"):
            superthoughts_step(logits, embed, None, None, finished, ids["pad_id"], ids["eos_id"], 0.5)
    # A float seed was truncated by the op (1.2 and 1.9 sampled alike) and refused by the reference.
    for step in (superthoughts_step, superthoughts_step_ref):
        with pytest.raises(TypeError, match=r"seed|integer"):
            step(logits, embed, None, None, finished.clone(), 0, 1, 0.5, 0.0, 1.0, 1.9, 0)


@pytest.mark.parametrize("seed,offset,same_seed,same_offset",
                         [(2**64 - 1, 2**64 + 5, -1, 5), (2**63, -(2**63) - 1, -(2**63), 2**63 - 1), (2**100 + 7, 3, 7, 3)],
                         ids=["above_uint64", "int64_edges", "huge"])
def test_seed_and_offset_beyond_int64(seed, offset, same_seed, same_offset):
    # Only the low 64 bits key the noise (reference.py), so every Python int is a seed: the
    # wrapper folds it onto the int64 of the same bits instead of the schema refusing it.
    gen = torch.Generator().manual_seed(2)
    logits, embed = torch.randn(2, 16, 100, generator=gen), torch.randn(100, 4, generator=gen)

    def tokens(step, s, o):
        return step(logits, embed, None, None, torch.zeros(16, dtype=torch.bool), 0, 1, 0.5, 0.0, 1.0, s, o)[0]

    got = tokens(superthoughts_step, seed, offset)
    torch.testing.assert_close(got, tokens(superthoughts_step, same_seed, same_offset), rtol=0, atol=0)
    torch.testing.assert_close(got, tokens(superthoughts_step_ref, seed, offset), rtol=0, atol=0)


# (MTP row, threshold, accepted): a near one-hot row's small terms must not be rounded away
# against the max's own 1 (reference.confidence). exp(-87) is a normal float32, exp(-88) is
# below the smallest one and counts as 0 (the GPU flushes it), so that row is exactly one-hot.
NEAR_ONE_HOT = [
    ([0.0] + [-17.0] * 7, 1.0, False),
    ([0.0, -80.0], 1.0, False),
    ([0.0, -87.0], 1.0, False),
    ([0.0, -88.0], 1.0, True),
    ([-88.0, 0.0, float("-inf")], 1.0, True),
    ([0.0, float("-inf"), float("nan")], 1.0, True),
    ([3.0, 3.0, float("-inf")], 0.5, True),  # two maxima: exactly 1/2
    ([3.0, 3.0, float("-inf")], 0.50000006, False),  # the next float32 above 1/2
    ([0.0, -17.0], 0.99999994, True),  # conf 1 - 4.1e-8 reaches the largest float32 below 1
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row,threshold,accepted", NEAR_ONE_HOT, ids=lambda v: str(v)[:24])
def test_confidence_of_near_one_hot_rows(device, row, threshold, accepted):
    vocab = len(row)
    logits = torch.zeros(2, 1, vocab)
    logits[1, 0] = torch.tensor(row)
    embed = torch.randn(vocab, 4, generator=torch.Generator().manual_seed(0))
    device_t = tensor_device(device)
    eos = vocab - 1  # the main head picks token 0 (a row of zeros): EOS does not veto the pair
    got = step_on(device)(logits.to(device_t), embed.to(device_t), None, None,
                          torch.zeros(1, dtype=torch.bool, device=device_t), 0, eos, threshold)
    want = superthoughts_step_ref(logits, embed, None, None, torch.zeros(1, dtype=torch.bool), 0, eos, threshold,
                                  0.0, 0.0, 0, 0)
    assert want[1].item() == 1 + accepted
    assert got[1].item() == 1 + accepted
    torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("small_at,max_at", [(0, 39999), (39999, 0), (20000, 39999)], ids=str)
@pytest.mark.parametrize("gap,accepted", [(80.0, False), (100.0, True), (17.0, False)])
def test_confidence_across_vocab_pieces(device, small_at, max_at, gap, accepted):
    # The max and a small term in different CPU chunks (16384 logits) and emulated blocks: the
    # piece without the max is rescaled at the merge, where a max that falls below the smallest
    # term takes its whole piece with it. At gap 17 the terms are spread over every piece.
    vocab = 40000
    logits = torch.full((2, 1, vocab), float("-inf"))
    logits[0, 0, 5] = 0.0
    logits[1, 0, max_at] = 0.0
    if gap == 17.0:
        logits[1, 0, ::997] = -gap
        logits[1, 0, max_at] = 0.0
    logits[1, 0, small_at] = -gap
    embed = torch.randn(vocab, 4, generator=torch.Generator().manual_seed(0))
    device_t = tensor_device(device)
    for grid in ([5, 40] if device == EMULATED else [None]):
        step = step_on(device) if grid is None else step_on(device, grid)
        got = step(logits.to(device_t), embed.to(device_t), None, None, torch.zeros(1, dtype=torch.bool, device=device_t),
                   0, 1, 1.0)
        want = superthoughts_step_ref(logits, embed, None, None, torch.zeros(1, dtype=torch.bool), 0, 1, 1.0, 0.0, 0.0, 0, 0)
        assert want[1].item() == got[1].item() == 1 + accepted
        torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", [3, 7, 40000], ids=lambda k: f"{k}_maxima")
def test_confidence_of_tied_maxima(device, ties):
    # k equal maxima and nothing else: conf is exactly 1/k, so the largest float32 threshold
    # at or below 1/k is reached and the next float32 above it is not. The maxima sit in one
    # vector, in a chunk's tail, in other CPU chunks and emulated blocks; 40000 is a row of
    # nothing but maxima.
    vocab = 40000
    logits = torch.full((2, 1, vocab), float("-inf"))
    logits[0, 0, 5] = 0.0
    places = torch.tensor([1, 2, 16383, 16384, 20001, 39999, 9][:ties]) if ties < vocab else torch.arange(vocab)
    logits[1, 0, places] = 2.5
    embed = torch.randn(vocab, 4, generator=torch.Generator().manual_seed(0))
    device_t = tensor_device(device)
    below = torch.tensor(1.0 / ties, dtype=torch.float32)
    if below.double() > 1.0 / ties:
        below = torch.nextafter(below, torch.tensor(0.0))
    above = torch.nextafter(below, torch.tensor(2.0))
    for threshold, accepted in ((below.item(), True), (above.item(), False)):
        got = step_on(device)(logits.to(device_t), embed.to(device_t), None, None,
                              torch.zeros(1, dtype=torch.bool, device=device_t), 0, 1, threshold)
        want = superthoughts_step_ref(logits, embed, None, None, torch.zeros(1, dtype=torch.bool), 0, 1, threshold,
                                      0.0, 0.0, 0, 0)
        assert want[1].item() == got[1].item() == 1 + accepted
        assert got[0][0, 1].item() == (int(places.min()) if accepted else -1)  # lowest index wins the tie
        assert got[2][0, 1].item() == want[2][0, 1].item() == torch.tensor(1.0 / ties, dtype=torch.float32).item()


def test_reference_compiles_in_one_graph():
    # generate(use_kernels=False) can run the reference inside a fullgraph compiled step: the
    # confidence rule must not leave tensor land (an .item() would break the graph).
    gen = torch.Generator().manual_seed(4)
    logits, embed = torch.randn(2, 3, 50, generator=gen), torch.randn(50, 4, generator=gen)
    logits[1, 0] = float("-inf")
    logits[1, 0, 7], logits[1, 0, 9] = 0.0, -20.0  # near one-hot: rejected at threshold 1.0
    logits[1, 1] = float("-inf")
    logits[1, 1, 3] = 0.0  # one-hot: accepted
    args = (None, None)
    compiled = torch.compile(superthoughts_step_ref, fullgraph=True, backend="aot_eager")
    got = compiled(logits, embed, *args, torch.zeros(3, dtype=torch.bool), 0, 1, 1.0, 0.0, 0.0, 0, 0)
    want = superthoughts_step_ref(logits, embed, *args, torch.zeros(3, dtype=torch.bool), 0, 1, 1.0, 0.0, 0.0, 0, 0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert want[1][:2].tolist() == [1, 2]
