"""superthoughts_step's per-row seeds (`row_seeds`, an int64 [B] tensor): one launch in which row r
samples exactly as a batch of one with seed row_seeds[r] does, on every backend (CPU kernel,
CUDA kernel, emulated CUDA kernel, reference); the op's checks of the tensor; opcheck, torch.compile
and CUDA graph capture with it.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from test_step import DEVICES, EMULATED, PAD, EOS, TORCH_DEVICES, assert_step_equal, make_inputs, step_on, tensor_device
from test_step_fuzz import INT64_EDGES, draw_case

from superthoughts_ext.ops import superthoughts_step
from superthoughts_ext.reference import int64_of_low_64_bits, superthoughts_step_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, V, H): a lone row, odd batches (17 fp32 rows: the CPU merge's GEMM path), a row of Qwen's
# vocabulary cut into several CPU chunks and emulated blocks.
SHAPES = [(1, 7, 8), (3, 1000, 64), (17, 1000, 8), (2, 151936, 8)]
# Rows of one batch: the int64 extremes, two rows with one seed, a seed past 2**63 folded.
SEEDS = [11, -(2**63), 2**63 - 1, 11, -1, 0, 2**32, 5, 2**32 - 1, 7, 8, 9, 10, 12, 13, 14, 15]
SAMPLED = dict(pad_id=PAD, eos_id=EOS, threshold=0.5, threshold_main=0.0, temperature=0.8, seed=0, offset=77)


def row_seeds_of(batch: int, device) -> torch.Tensor:
    return torch.tensor(SEEDS[:batch], dtype=torch.int64, device=tensor_device(device))


def row_by_row(step, logits, embed, weight, bias, finished, row_seeds, **scalars):
    """What per-row seeds cost before: one batch-of-one call per row, keyed by that row's seed;
    `finished` updated in place through each row's view. Returns the op's outputs, concatenated."""
    rows = [step(logits[:, r : r + 1], embed, weight, bias, finished[r : r + 1], **{**scalars, "seed": seed})
            for r, seed in enumerate(row_seeds.tolist())]
    return tuple(torch.cat(parts) for parts in zip(*rows))


def assert_same_draws(got, want, fin_got, fin_want):
    """Tokens, counts and finished flags bit for bit; conf and next_in to the kernels' tolerance:
    a batch of one may sum a row's softmax in other pieces and merge through another path."""
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[3].float(), want[3].float(), rtol=2e-2, atol=1.6e-2)
    torch.testing.assert_close(fin_got, fin_want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_V{}_H{}".format(*s))
def test_row_seeds_draw_as_one_launch_per_row(device, dtype, shape):
    if shape[1] == 151936 and dtype != torch.float32 and device == EMULATED:
        pytest.skip("the emulated kernel reads Qwen's vocabulary in float32 only (time)")
    logits, embed, weight, bias, finished = make_inputs(*shape, dtype, device)
    finished[1::4] = True  # finished rows draw nothing and keep their flag
    row_seeds = row_seeds_of(shape[0], device)
    step = step_on(device)
    fin_one, fin_rows, fin_ref = finished.clone(), finished.clone(), finished.clone()
    one = step(logits, embed, weight, bias, fin_one, **SAMPLED, row_seeds=row_seeds)
    rows = row_by_row(step, logits, embed, weight, bias, fin_rows, row_seeds, **SAMPLED)
    assert_same_draws(one, rows, fin_one, fin_rows)
    ref = superthoughts_step_ref(logits, embed, weight, bias, fin_ref, **SAMPLED, row_seeds=row_seeds)
    assert_step_equal(one, ref, fin_one, fin_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_row_seeds_equal_its_batch_of_one_calls(dtype):
    # The oracle itself: with row_seeds, the reference draws row r's noise as its own batch-of-one
    # call with seed row_seeds[r] does, bit for bit (tokens, counts, confidences: the same float
    # ops per row; next_in goes through a GEMM whose blocking depends on the batch).
    logits, embed, weight, bias, finished = make_inputs(17, 1000, 8, dtype, "cpu")
    row_seeds = row_seeds_of(17, "cpu")
    fin_one, fin_rows = finished.clone(), finished.clone()
    one = superthoughts_step_ref(logits, embed, weight, bias, fin_one, **SAMPLED, row_seeds=row_seeds)
    rows = row_by_row(superthoughts_step_ref, logits, embed, weight, bias, fin_rows, row_seeds, **SAMPLED)
    for got, want in zip((*one[:3], fin_one), (*rows[:3], fin_rows)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_same_draws(one, rows, fin_one, fin_rows)
    assert one[1].eq(2).any() and one[1].eq(1).any()  # the batch mixes pairs and single steps


@pytest.mark.parametrize("device", DEVICES)
def test_a_row_draws_the_same_wherever_it_stands(device):
    # Uniform logits: samples are pure noise. Rows that share a seed share their samples; other
    # seeds give others; a permutation of the batch permutes the samples; the scalar-seed launch
    # keys rows by their index, so only its row 0 samples as row_seeds does.
    step, device_t = step_on(device), tensor_device(device)
    logits = torch.zeros(2, 8, 1000, device=device_t)
    embed = torch.randn(1000, 4, device=device_t)

    def draw(row_seeds=None, seed=0, rows=logits):
        finished = torch.zeros(rows.shape[1], dtype=torch.bool, device=device_t)
        return step(rows, embed, None, None, finished, PAD, EOS, 0.0, 0.0, 1.0, seed, 3, row_seeds=row_seeds)[0].cpu()

    seeds = torch.tensor([5, 6, 5, 7, 8, 9, 10, 5], device=device_t)
    tokens = draw(seeds)
    assert torch.equal(tokens[0], tokens[2]) and torch.equal(tokens[0], tokens[7])
    assert (tokens[[1, 3, 4, 5, 6]] != tokens[0]).any(dim=1).all()
    order = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    assert torch.equal(draw(seeds[order.to(device_t)]), tokens[order])
    alone = draw(seed=5)
    assert torch.equal(alone[0], tokens[0]) and (alone[2] != tokens[2]).any()


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_steps_ignore_row_seeds(device):
    logits, embed, weight, bias, finished = make_inputs(3, 1000, 8, torch.float32, device)
    step = step_on(device)
    greedy = step(logits, embed, weight, bias, finished.clone(), PAD, EOS, 0.5)
    keyed = step(logits, embed, weight, bias, finished.clone(), PAD, EOS, 0.5, row_seeds=row_seeds_of(3, device))
    for got, want in zip(keyed, greedy):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(0, 40, 3))
def test_random_cases_with_row_seeds(device, index):
    # test_step_fuzz.py's cases (layouts, NaN / inf rows, extreme temperatures, finished rows, odd
    # grids) with row seeds at the int64 extremes: the backend against the reference, and the
    # reference against its own batch-of-one calls.
    (logits, embed, weight, bias, finished), scalars, grid, embed_dtype = draw_case(index)
    batch = logits.shape[1]
    row_seeds = torch.tensor([INT64_EDGES[(index + r) % len(INT64_EDGES)] for r in range(batch)])
    scalars = {**scalars, "seed": 0}
    if device not in ("cpu", EMULATED):
        logits, embed, finished, row_seeds = (t.to(device) for t in (logits, embed, finished, row_seeds))
        weight, bias = (None if t is None else t.to(device) for t in (weight, bias))
    fin_kernel, fin_ref, fin_rows = finished.clone(), finished.clone(), finished.clone()
    got = step_on(device, grid)(logits, embed, weight, bias, fin_kernel, **scalars, row_seeds=row_seeds)
    want = superthoughts_step_ref(logits, embed, weight, bias, fin_ref, **scalars, row_seeds=row_seeds)
    assert_step_equal(got, want, fin_kernel, fin_ref, embed_dtype)
    rows = row_by_row(superthoughts_step_ref, logits, embed, weight, bias, fin_rows, row_seeds, **scalars)
    assert_same_draws(want, rows, fin_ref, fin_rows)


def test_a_row_seed_is_the_int64_a_scalar_seed_folds_to():
    # A scalar seed counts modulo 2**64 (folded to the int64 of its low bits); a row seed is that
    # int64 already: the same samples either way.
    logits, embed, _, _, finished = make_inputs(4, 1000, 8, torch.float32, "cpu")
    big = [2**64 - 1, 2**63, 2**100 + 7, 2**64]
    row_seeds = torch.tensor([int64_of_low_64_bits(s) for s in big])
    got = superthoughts_step(logits, embed, None, None, finished.clone(), **SAMPLED, row_seeds=row_seeds)[0]
    for r, seed in enumerate(big):
        alone = superthoughts_step(logits[:, r : r + 1], embed, None, None, finished[r : r + 1].clone(),
                                   **{**SAMPLED, "seed": seed})[0]
        assert torch.equal(got[r], alone[0])


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_opcheck_with_row_seeds(device):
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, device)
    row_seeds = row_seeds_of(3, device)
    op = torch.ops.superthoughts_ext.superthoughts_step.default
    for temperature in (0.0, 0.9):
        torch.library.opcheck(op, (logits, embed, weight, bias, finished.clone(), PAD, EOS, 0.5, 0.1, temperature,
                                   0, 6), {"row_seeds": row_seeds})
    torch.library.opcheck(op, (logits, embed, None, None, finished.clone(), PAD, EOS, 0.5, 0.0, 0.9, 0, 6),
                          {"row_seeds": row_seeds})


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_compile_fullgraph_with_row_seeds(device):
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, device)

    @torch.compile(fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    def step(logits, finished, row_seeds):
        tokens, n_new, _, next_in = superthoughts_step(logits * 2.0, embed, weight, bias, finished, PAD, EOS, 0.5,
                                                       0.0, 0.9, 0, 4, row_seeds=row_seeds + 1)
        return tokens, n_new.sum(), next_in + 1.0

    row_seeds = row_seeds_of(3, device)
    fin_compiled, fin_eager = finished.clone(), finished.clone()
    tokens, total, shifted = step(logits, fin_compiled, row_seeds)
    want = superthoughts_step_ref(logits * 2.0, embed, weight, bias, fin_eager, PAD, EOS, 0.5, 0.0, 0.9, 0, 4,
                                  row_seeds=row_seeds + 1)
    torch.testing.assert_close(tokens, want[0], rtol=0, atol=0)
    assert int(total) == int(want[1].sum())
    torch.testing.assert_close(shifted, want[3] + 1.0)
    torch.testing.assert_close(fin_compiled, fin_eager)
    # Other seeds in the same tensor shape: the same graph, other samples.
    other = row_seeds_of(3, device) * 3 + 1
    tokens_other = step(logits, finished.clone(), other)[0]
    want_other = superthoughts_step_ref(logits * 2.0, embed, weight, bias, finished.clone(), PAD, EOS, 0.5, 0.0,
                                        0.9, 0, 4, row_seeds=other + 1)[0]
    torch.testing.assert_close(tokens_other, want_other, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_replays_read_the_row_seeds_then_held():
    # The seeds stay on the device: a captured launch reads whatever the tensor holds at replay.
    logits, embed, weight, bias, finished = make_inputs(5, 1000, 64, torch.bfloat16, "cuda")
    row_seeds = row_seeds_of(5, "cuda")
    static_finished = finished.clone()
    superthoughts_step(logits, embed, weight, bias, static_finished.clone(), **SAMPLED, row_seeds=row_seeds)  # warm-up
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = superthoughts_step(logits, embed, weight, bias, static_finished, **SAMPLED, row_seeds=row_seeds)
    for seeds in ([1, 2, 3, 4, 5], [-(2**63), 2**63 - 1, 0, 9, 9]):
        row_seeds.copy_(torch.tensor(seeds))
        static_finished.zero_()
        graph.replay()
        want = superthoughts_step(logits, embed, weight, bias, finished.clone(), **SAMPLED, row_seeds=row_seeds)
        torch.testing.assert_close(outputs[0], want[0], rtol=0, atol=0)


def _inputs(**change):
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cpu")
    kwargs = dict(logits=logits, embed=embed, merge_weight=weight, merge_bias=bias, finished=finished, pad_id=PAD,
                  eos_id=EOS, threshold=0.5, threshold_main=0.0, temperature=1.0, seed=0, offset=0,
                  row_seeds=torch.arange(3))
    kwargs.update(change)
    return kwargs


BAD_ROW_SEEDS = [
    ("int32", dict(row_seeds=torch.arange(3, dtype=torch.int32)), r"row_seeds must be int64, got (Int|torch\.int32)"),
    ("float", dict(row_seeds=torch.zeros(3)), r"row_seeds must be int64, got (Float|torch\.float32)"),
    ("short", dict(row_seeds=torch.arange(2)), r"row_seeds must be \[B\] with B=3, got \[2\]"),
    ("2d", dict(row_seeds=torch.arange(3).view(3, 1)), r"row_seeds must be \[B\] with B=3, got \[3, 1\]"),
    ("scalar", dict(row_seeds=torch.tensor(4)), r"row_seeds must be \[B\] with B=3, got \[\]"),
    ("strided", dict(row_seeds=torch.arange(6)[::2]), r"row_seeds must be contiguous, got strides \[2\]"),
    ("seed", dict(seed=5), r"seed=5 given with row_seeds, which replace it; pass seed=0"),
]


@pytest.mark.parametrize("mode", ["kernel", "fake", "meta", "reference"])
@pytest.mark.parametrize("name,change,message", BAD_ROW_SEEDS, ids=[b[0] for b in BAD_ROW_SEEDS])
def test_bad_row_seeds_are_refused(name, change, message, mode):
    # The kernels (csrc/step_common.h), the fake kernel that tracing and meta tensors run, and the
    # reference refuse the same input in the same words, greedy calls too (temperature 1 here).
    kwargs, context = _inputs(**change), contextlib.nullcontext()
    step, prefix = superthoughts_step, "superthoughts_step"
    if mode == "meta":  # strides kept: .to("meta") would make the strided row seeds contiguous
        kwargs = {k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta")
                  if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    elif mode == "fake":
        context = FakeTensorMode(allow_non_fake_inputs=True)
    elif mode == "reference":
        step, prefix = superthoughts_step_ref, "superthoughts_step_ref"
    with context, pytest.raises(RuntimeError, match=f"{prefix}: {message}"):
        step(**kwargs)


def test_row_seeds_on_another_device_are_refused():
    kwargs = _inputs(row_seeds=torch.arange(3, device="meta"))
    with pytest.raises(RuntimeError, match=r"superthoughts_step: row_seeds on meta but logits on cpu"):
        superthoughts_step(**kwargs)
    with pytest.raises(RuntimeError, match=r"superthoughts_step_ref: row_seeds on meta but logits on cpu"):
        superthoughts_step_ref(**kwargs)


@pytest.mark.parametrize("step", [superthoughts_step, superthoughts_step_ref], ids=["op", "reference"])
def test_a_list_of_row_seeds_is_refused(step):
    with pytest.raises(TypeError, match=r"row_seeds must be an int64 tensor \[B\] or None, got list"):
        step(**_inputs(row_seeds=[1, 2, 3]))


def test_a_scalar_seed_of_zero_modulo_2_64_goes_with_row_seeds():
    kwargs = _inputs()
    want = superthoughts_step(**{**kwargs, "finished": kwargs["finished"].clone()})[0]
    for step in (superthoughts_step, superthoughts_step_ref):
        got = step(**{**kwargs, "seed": 2**64, "finished": kwargs["finished"].clone()})[0]
        torch.testing.assert_close(got, want, rtol=0, atol=0)
