"""superthoughts_step: compiled kernels vs the plain-torch reference, sampling, errors.

Device "cuda_emulated" runs the CUDA kernel's source compiled for the CPU (python_tests/
cuda_emulation.py) on a few emulated blocks, so that machines without a GPU test its logic too.
"""
from __future__ import annotations

import functools

import pytest
import torch

import cuda_emulation

import superthoughts_ext
from superthoughts_ext.ops import superthoughts_step
from superthoughts_ext.reference import MIN_SAMPLING_TEMPERATURE, gumbel_noise, superthoughts_step_ref

EMULATED = "cuda_emulated"
TORCH_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DEVICES = TORCH_DEVICES + [EMULATED]
# Blocks of an emulated launch: odd, so that ranges cut rows at uneven places.
EMULATED_GRID = 7
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, V, H): every B in {1, 3, 64}, V in {7, 1000, 151936}, H in {8, 64, 1536}, odd sizes,
# and the real Qwen2.5 vocabulary with the 1.5B hidden size.
SHAPES = [(1, 7, 8), (3, 1000, 64), (64, 1000, 8), (3, 7, 1536), (64, 151936, 64), (1, 151936, 1536)]
MERGES = ["linear", "linear_no_bias", "raw_pair"]
PAD, EOS = 0, 2
NEXT_IN_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 1.6e-2), torch.float16: (2e-3, 1e-3)}


def tensor_device(device):
    return "cpu" if device == EMULATED else device


def step_on(device, grid=EMULATED_GRID, schedule_seed=0):
    """superthoughts_step as `device` runs it."""
    if device != EMULATED:
        return superthoughts_step
    if cuda_emulation.cuda_include_dir() is None:
        pytest.skip("the CUDA emulation needs the CUDA toolkit's headers")
    return functools.partial(cuda_emulation.emulated_step, grid=grid, schedule_seed=schedule_seed)


def make_inputs(batch, vocab, hidden, dtype, device, merge="linear", seed=0):
    device = tensor_device(device)
    gen = torch.Generator().manual_seed(seed)
    # Row-dependent sharpness so that one batch mixes accepted and rejected second tokens.
    scale = torch.linspace(0.5, 12.0, max(batch, 1))[:batch].view(1, batch, 1)
    logits = (torch.randn(2, batch, vocab, generator=gen) * scale).to(device, dtype)
    embed = torch.randn(vocab, hidden, generator=gen).to(device, dtype)
    weight = bias = None
    if merge != "raw_pair":
        weight = (torch.randn(hidden, 2 * hidden, generator=gen) / hidden**0.5).to(device, dtype)
    if merge == "linear":
        bias = torch.randn(hidden, generator=gen).to(device, dtype)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    return logits, embed, weight, bias, finished


def run_both(logits, embed, weight, bias, finished, device="cpu", grid=EMULATED_GRID, schedule_seed=0, **kw):
    args = dict(pad_id=PAD, eos_id=EOS, threshold=0.5, threshold_main=0.0, temperature=0.0, seed=0, offset=0)
    args.update(kw)
    fin_kernel, fin_ref = finished.clone(), finished.clone()
    got = step_on(device, grid, schedule_seed)(logits, embed, weight, bias, fin_kernel, **args)
    want = superthoughts_step_ref(logits, embed, weight, bias, fin_ref, **args)
    return got, want, fin_kernel, fin_ref


def assert_step_equal(got, want, fin_kernel, fin_ref, dtype):
    tokens, n_new, conf, next_in = got
    torch.testing.assert_close(tokens, want[0], rtol=0, atol=0)
    torch.testing.assert_close(n_new, want[1], rtol=0, atol=0)
    torch.testing.assert_close(conf, want[2], rtol=1e-5, atol=1e-6)
    rtol, atol = NEXT_IN_TOL[dtype]
    torch.testing.assert_close(next_in, want[3], rtol=rtol, atol=atol)
    torch.testing.assert_close(fin_kernel, fin_ref, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_V{}_H{}".format(*s))
@pytest.mark.parametrize("merge", MERGES)
def test_greedy_matches_reference(device, dtype, shape, merge):
    if merge != "linear" and shape[1] == 151936 and dtype != torch.float32:
        pytest.skip("merge variants are covered on the smaller vocabularies")
    inputs = make_inputs(*shape, dtype, device, merge)
    got, want, fin_kernel, fin_ref = run_both(*inputs, device=device)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)
    assert got[3].dtype == dtype and got[3].shape == (shape[0], shape[2] * (2 if merge == "raw_pair" else 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,hidden", [(2, 33), (5, 7), (6, 7), (7, 33), (17, 5), (5, 160)], ids=lambda v: str(v))
def test_merge_odd_sizes(device, dtype, batch, hidden):
    # Odd feature counts and batch rows that are not a multiple of the CPU merge's 2x4 register
    # block, so that its last block holds 1, 2 or 3 rows (and, for 17 rows, torch's GEMM path).
    # H = 160: a lane of the CUDA GEMV holds 2 or 3 of K's 16-byte chunks, so its batch of 4
    # chunk loads ends part way.
    got, want, fin_kernel, fin_ref = run_both(*make_inputs(batch, 1000, hidden, dtype, device), device=device)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)


def test_merge_widens_every_float16_weight_exactly():
    # Float16 weights are widened by the vector kernels themselves (vcvtph2ps, or bit arithmetic
    # in the baseline variant). With a one-hot first embedding (column j) and a zero second one,
    # next_in = W[:, j] exactly: every finite float16 value, subnormals and +-65504 included,
    # goes through once. B = 1: the merge stays in this kernel whatever the CPU's GEMM support.
    hidden = 1536
    finite = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.float16)
    finite = finite[torch.isfinite(finite)]
    columns = -(-finite.numel() // hidden)
    weight = torch.zeros(hidden, 2 * hidden, dtype=torch.float16)
    weight[:, :columns] = torch.cat([finite, finite[: columns * hidden - finite.numel()]]).view(columns, hidden).T
    embed = torch.cat([torch.eye(hidden), torch.zeros(1, hidden)]).to(torch.float16)  # row `hidden`: the pad
    pad = hidden
    for j in range(columns):
        logits = torch.full((2, 1, hidden + 1), -1.0, dtype=torch.float16)
        logits[:, 0, j] = 1.0
        tokens, _, _, next_in = superthoughts_step(
            logits, embed, weight, None, torch.zeros(1, dtype=torch.bool), pad, EOS, 1.0)
        assert tokens[0].tolist() == [j, -1]
        assert torch.equal(next_in[0].float(), weight[:, j].float()), f"column {j}"


@pytest.mark.parametrize("grid,schedule_seed", [(1, 0), (2, 0), (3, 12345), (80, 0)], ids=str)
@pytest.mark.parametrize(
    "shape,dtype",
    [((1, 151936, 64), torch.bfloat16), ((40, 1000, 96), torch.bfloat16), ((33, 7, 64), torch.float16),
     ((40, 1000, 96), torch.float32), ((5, 1000, 8), torch.float32)],
    ids=["B1_V151936_H64_bf16", "B40_V1000_H96_bf16", "B33_V7_H64_fp16", "B40_V1000_H96_fp32", "B5_V1000_H8_fp32"],
)
def test_emulated_cuda_kernel_grid_sizes(grid, schedule_seed, shape, dtype):
    # The GPU's grid (2 x SMs blocks) decides how rows are cut into partials and how merge tasks
    # are dealt out. 1 block does everything; 80 blocks cut a B = 1 row into 41 partials per
    # head, more than one for each of the 32 lanes that merge them. B = 40 and 33 leave the
    # tensor-core path partial batch tiles. A shuffled schedule resumes each block's threads in a
    # new order after every wait: code missing a barrier reads before the write it needs.
    inputs = make_inputs(*shape, dtype, EMULATED)
    got, want, fin_kernel, fin_ref = run_both(*inputs, device=EMULATED, grid=grid, schedule_seed=schedule_seed)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)


@pytest.mark.parametrize("dtype,sampling", [(torch.bfloat16, {}), (torch.float32, dict(temperature=0.8, seed=5, offset=9))],
                         ids=["bf16_greedy", "fp32_sampled"])
def test_emulated_cuda_kernel_h100_grid(dtype, sampling):
    # An H100 launches 2 x 132 blocks: a B = 1 row of Qwen's vocabulary is cut into ~134 partials
    # per head, more than the merge's first pass takes (32 lanes x 4 loads; 80 blocks never leave it).
    inputs = make_inputs(1, 151936, 64, dtype, EMULATED)
    got, want, fin_kernel, fin_ref = run_both(*inputs, device=EMULATED, grid=264, **sampling)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)


def test_emulator_reports_read_only_loads_of_written_memory():
    # On a GPU, __ldg (ld.global.nc) of memory the kernel itself writes may return stale data; the
    # emulator reports it, so every emulated run above also checks that the kernel's __ldg loads
    # (embed, weight) never touch the workspace, finished or the outputs.
    if cuda_emulation.cuda_include_dir() is None:
        pytest.skip("the CUDA emulation needs the CUDA toolkit's headers")
    assert cuda_emulation.ldg_check(0) is None
    error = cuda_emulation.ldg_check(4)
    assert error is not None and "__ldg at" in error and "emulated_step.cpp" in error


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threshold,threshold_main", [(0.0, 0.0), (1.0, 0.0), (0.3, 0.2), (0.0, 1.0)])
def test_thresholds(device, threshold, threshold_main):
    inputs = make_inputs(64, 1000, 64, torch.float32, device)
    got, want, fin_kernel, fin_ref = run_both(*inputs, device=device, threshold=threshold, threshold_main=threshold_main)
    assert_step_equal(got, want, fin_kernel, fin_ref, torch.float32)
    n_new = got[1]
    if threshold == 0.0 and threshold_main == 0.0:
        assert (n_new == 2).sum() >= 60  # only rows whose first token is EOS stay single
    if threshold == 1.0 or threshold_main == 1.0:
        assert (n_new == 1).all() and (got[0][:, 1] == -1).all()


@pytest.mark.parametrize("device", DEVICES)
def test_eos_and_finished_rows(device):
    logits, embed, weight, bias, finished = make_inputs(4, 50, 8, torch.float32, device)
    logits[0, 0, EOS] = 100.0  # row 0: main head emits EOS -> single token, row finishes
    logits[:, 1, :] = 0.0
    logits[0, 1, 5] = 100.0
    logits[1, 1, EOS] = 100.0  # row 1: confident MTP emits EOS as the second token
    finished[3] = True  # row 3 already done
    got, want, fin_kernel, fin_ref = run_both(logits, embed, weight, bias, finished, device, threshold=0.9)
    assert_step_equal(got, want, fin_kernel, fin_ref, torch.float32)
    tokens, n_new, conf, _ = got
    assert tokens[0].tolist() == [EOS, -1] and n_new[0] == 1
    assert tokens[1].tolist() == [5, EOS] and n_new[1] == 2
    assert tokens[3].tolist() == [PAD, -1] and n_new[3] == 0 and conf[3].tolist() == [0.0, 0.0]
    assert fin_kernel.tolist() == [True, True, False, True]


@pytest.mark.parametrize("device", DEVICES)
def test_finished_flags_of_any_nonzero_byte_count_as_finished(device):
    # A bool tensor viewed from uint8 (or left uninitialised) may hold bytes 2..255: loaded as a
    # C++ bool that was undefined behaviour (UBSan), taken as not finished at -O1.
    logits, embed, weight, bias, _ = make_inputs(3, 50, 8, torch.float32, device)
    finished = torch.tensor([2, 0, 255], dtype=torch.uint8, device=tensor_device(device)).view(torch.bool)
    got, want, fin_kernel, fin_ref = run_both(logits, embed, weight, bias, finished, device)
    assert_step_equal(got, want, fin_kernel, fin_ref, torch.float32)
    tokens, n_new, _, _ = got
    assert tokens[0].tolist() == tokens[2].tolist() == [PAD, -1] and n_new.tolist()[::2] == [0, 0]
    assert fin_kernel.view(torch.uint8).tolist()[::2] == [1, 1]  # stored back as true


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_logits(device, dtype):
    logits, embed, weight, bias, finished = make_inputs(4, 300, 8, dtype, device)
    logits[0, 0, :] = float("nan")  # all-NaN main row -> pad, conf 0
    logits[1, 1, ::3] = float("nan")  # some NaN -> ignored
    logits[1, 1, 7] = 50.0
    logits[0, 2, :] = float("-inf")  # all -inf
    logits[1, 3, 11] = float("inf")  # +inf has no finite maximum either
    got, want, fin_kernel, fin_ref = run_both(logits, embed, weight, bias, finished, device)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)
    tokens, _, conf, next_in = got
    assert tokens[0, 0] == PAD and conf[0, 0] == 0.0
    assert tokens[1, 1] in (7, -1) and conf[1, 1] > 0.99
    assert tokens[2, 0] == PAD and conf[2, 0] == 0.0
    assert conf[3, 1] == 0.0
    assert torch.isfinite(next_in.float()).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_far_below_the_max(device, dtype):
    # Masking with a large negative number instead of -inf: x - max in about (-1.7e7, -8.7e6)
    # overflowed the CPU exp's signed exponent arithmetic (UBSan; test_step_sanitized.py).
    logits, embed, weight, bias, finished = make_inputs(3, 1000, 8, dtype, device)
    logits[:, :, 1:] = torch.linspace(-2.5e7, -5e6, 999, dtype=dtype)
    logits[:, :, 0] = 0.0
    logits[1, 1, 500] = -80.0  # one term that still counts next to the masked ones
    got, want, fin_kernel, fin_ref = run_both(logits, embed, weight, bias, finished, device, threshold=1.0)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)
    assert got[1].tolist() == [2, 1, 2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab,steps", [(16384, 511), (32768, 1023), (151936, 255)])
def test_sum_of_many_equal_terms(device, vocab, steps):
    # One max and vocab - 1 logits steps * 2^-24 below it: every softmax term is the same float,
    # 1 - steps * 2^-24, so a float32 running sum rounds the same way at every addition (a
    # lane summing 1024 of them drifted by 1.5e-5 relative).
    logits = torch.full((2, 1, vocab), -steps * 2.0**-24)
    logits[:, :, 0] = 0.0
    embed = torch.zeros(vocab, 2)
    finished = torch.zeros(1, dtype=torch.bool)
    conf = step_on(device)(logits, embed, None, None, finished, PAD, EOS, 0.5)[2]
    exact = 1.0 / (1.0 + (vocab - 1) * (1.0 - steps * 2.0**-24))
    torch.testing.assert_close(conf, torch.full((1, 2), exact), rtol=2e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    logits, embed, weight, bias, finished = make_inputs(6, 1000, 64, torch.float32, device)
    wide_embed = torch.randn(1000, 96, device=tensor_device(device))
    wide_embed[:, :64] = embed
    strided_logits = logits[:, ::2, :]  # batch stride 2000
    strided_embed = wide_embed[:, :64]  # row stride 96
    got, want, fin_kernel, fin_ref = run_both(strided_logits, strided_embed, weight, bias, finished[:3].clone(), device)
    assert_step_equal(got, want, fin_kernel, fin_ref, torch.float32)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_empty_batch(device):
    logits, embed, weight, bias, finished = make_inputs(0, 100, 8, torch.float32, device)
    tokens, n_new, conf, next_in = superthoughts_step(logits, embed, weight, bias, finished, PAD, EOS, 0.5)
    assert tokens.shape == (0, 2) and n_new.shape == (0,) and conf.shape == (0, 2) and next_in.shape == (0, 8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 1000, 64), (2, 151936, 8)], ids=lambda s: "B{}_V{}_H{}".format(*s))
def test_sampling_matches_reference(device, dtype, shape):
    inputs = make_inputs(*shape, dtype, device)
    got, want, fin_kernel, fin_ref = run_both(*inputs, device=device, temperature=0.8, seed=1234, offset=77)
    assert_step_equal(got, want, fin_kernel, fin_ref, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_is_keyed_by_seed_and_offset(device):
    step, device = step_on(device), tensor_device(device)
    logits = torch.zeros(2, 64, 1000, device=device)  # uniform: samples are pure noise
    embed = torch.randn(1000, 8, device=device)

    def sample(seed, offset):
        finished = torch.zeros(64, dtype=torch.bool, device=device)
        return step(logits, embed, None, None, finished, PAD, EOS, 0.0, 0.0, 1.0, seed, offset)[0]

    first = sample(7, 3)
    torch.testing.assert_close(first, sample(7, 3), rtol=0, atol=0)
    assert (first != sample(7, 4)).float().mean() > 0.9
    assert (first != sample(8, 3)).float().mean() > 0.9
    assert (first[:, 0] != first[:, 1]).float().mean() > 0.9  # heads draw from different streams


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_distribution_chi_square(device):
    if device == EMULATED:
        pytest.skip("4 x 4096 rows take 30 s emulated; its samples equal the reference's (test_sampling_matches_reference)")
    scipy_stats = pytest.importorskip("scipy.stats")
    step, device = step_on(device), tensor_device(device)
    temperature, rows, vocab = 0.7, 4096, 7
    base = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, -1.0, 0.3])
    logits = base.expand(2, rows, vocab).contiguous().to(device)
    embed = torch.randn(vocab, 4, device=device)
    counts = torch.zeros(vocab)
    for offset in range(4):
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        tokens = step(logits, embed, None, None, finished, PAD, 6, 0.0, 0.0, temperature, 99, offset)[0]
        counts += torch.bincount(tokens[:, 0].cpu(), minlength=vocab).float()
    expected = torch.softmax(base / temperature, dim=0) * counts.sum()
    p_value = scipy_stats.chisquare(counts.numpy(), expected.numpy()).pvalue
    assert p_value > 1e-3, (counts, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_keeps_the_largest_noise(device):
    # At seed 0, offset 3552714 the word of (row 0, head 0, v = 2) is 0xfffffe2a, whose noise
    # (16.636) is the largest any word gives. The kernels skip elements that cannot win even
    # with the largest noise added; v = 2 must still beat v = 0, which leads by 16.30 before
    # noise. One emulated block: the same thread meets both.
    seed, offset, vocab = 0, 3552714, 8
    noise = gumbel_noise(1, vocab, seed, offset, torch.device("cpu"))[0, 0]
    assert noise[2] > 16.6 and noise.max() == noise[2]
    logits = torch.full((2, 1, vocab), -1e4)
    logits[0, 0, 0] = 16.30 - noise[0]
    logits[0, 0, 2] = 0.0
    embed = torch.randn(vocab, 4)
    step = step_on(device, grid=1)
    finished = torch.zeros(1, dtype=torch.bool)
    tokens = step(logits.to(tensor_device(device)), embed.to(tensor_device(device)), None, None,
                  finished.to(tensor_device(device)), PAD, 7, 0.5, 0.0, 1.0, seed, offset)[0]
    assert tokens[0, 0].item() == 2


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_noise_is_bit_identical_to_reference(device):
    # Row r scores noise[0] on v = 0 and x1 + noise[1] on v = 1, with x1 chosen so that the
    # two tie exactly under the reference's noise: ties go to v = 0. Noise one ulp off the
    # reference's (float32 logs of different libraries disagree that much on about one word
    # in seven) breaks the tie in about half of those rows.
    rows, seed, offset = 2048, 5, 32
    noise = gumbel_noise(rows, 2, seed, offset, torch.device("cpu"))[0]  # [rows, 2], head 0
    x1 = noise[:, 0] - noise[:, 1]
    tied = (x1 + noise[:, 1]) == noise[:, 0]
    assert tied.sum() > rows // 4
    logits = torch.zeros(2, rows, 2)
    logits[0, :, 1] = x1
    embed = torch.randn(2, 4)
    device_t = tensor_device(device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device_t)
    tokens = step_on(device)(logits.to(device_t), embed.to(device_t), None, None, finished, PAD, 1, 0.5, 0.0,
                             1.0, seed, offset)[0].cpu()
    want = superthoughts_step_ref(logits, embed, None, None, torch.zeros(rows, dtype=torch.bool), PAD, 1, 0.5,
                                  0.0, 1.0, seed, offset)[0]
    assert (want[tied, 0] == 0).all()
    torch.testing.assert_close(tokens[:, 0], want[:, 0], rtol=0, atol=0)


def test_noise_of_every_word_matches_reference_and_its_bound_holds():
    # philox.h's noise as the host builds it (the CPU kernel's), for all 2^23 distinct words:
    # bit-identical to the reference's, and gumbel_upper_bound (which lets the kernels skip
    # the double logs) above it, by little.
    if cuda_emulation.cuda_include_dir() is None:
        pytest.skip("the emulation library needs the CUDA toolkit's headers")
    exact, bound = cuda_emulation.gumbel_table()
    words = torch.arange(1 << 23, dtype=torch.int64) << 9
    u = ((words >> 9).double() + 0.5) * 2.0**-23
    want = (-torch.log(-torch.log(u))).float()
    assert torch.equal(exact, want)
    assert exact.max().item() == pytest.approx(16.6355, abs=1e-4)  # < kGumbelBound (17, philox.h)
    gap = bound - exact
    assert gap.min().item() > 0 and gap.max().item() < 2e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [1e-6, 1e-39, 1e-50])
def test_tiny_temperature_decodes_greedily(device, temperature):
    # Below MIN_SAMPLING_TEMPERATURE every backend decodes greedily. Without that floor, 1e-39
    # overflows logits / T (every positive logit tying at +inf) and 1e-50 is 0 in float.
    assert temperature < MIN_SAMPLING_TEMPERATURE
    logits, embed, weight, bias, _ = make_inputs(3, 1000, 8, torch.float32, device)
    logits[:, :, 0] = float("-inf")  # a masked token must not come out either
    step = step_on(device)

    def tokens(temp):
        finished = torch.zeros(3, dtype=torch.bool, device=logits.device)
        return step(logits, embed, weight, bias, finished, PAD, EOS, 0.5, 0.0, temp, 11, 3)[0]

    greedy = logits.argmax(dim=-1).t().cpu()  # [B, 2]
    got = tokens(temperature).cpu()
    torch.testing.assert_close(got[:, 0], greedy[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(got, tokens(0.0).cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("merge", MERGES)
def test_opcheck(device, merge):
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, device, merge)
    torch.library.opcheck(
        torch.ops.superthoughts_ext.superthoughts_step.default,
        (logits, embed, weight, bias, finished, PAD, EOS, 0.5, 0.0, 0.0, 0, 0),
    )
    torch.library.opcheck(
        torch.ops.superthoughts_ext.superthoughts_step.default,
        (logits, embed, weight, bias, finished.clone(), PAD, EOS, 0.5, 0.1, 0.9, 5, 6),
    )


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_compile_fullgraph(device):
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, device)

    @torch.compile(fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    def step(logits, finished):
        tokens, n_new, conf, next_in = superthoughts_step(logits * 2.0, embed, weight, bias, finished, PAD, EOS, 0.5)
        return tokens, n_new.sum(), next_in + 1.0

    fin_compiled, fin_eager = finished.clone(), finished.clone()
    tokens, total, shifted = step(logits, fin_compiled)
    want = superthoughts_step_ref(logits * 2.0, embed, weight, bias, fin_eager, PAD, EOS, 0.5, 0.0, 0.0, 0, 0)
    torch.testing.assert_close(tokens, want[0])
    assert int(total) == int(want[1].sum())
    torch.testing.assert_close(shifted, want[3] + 1.0)
    torch.testing.assert_close(fin_compiled, fin_eager)


def test_extension_built_with_cuda_when_gpu_present():
    info = superthoughts_ext.build_info()
    assert info["version"] == superthoughts_ext.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    if torch.version.cuda is not None and torch.cuda.is_available():
        assert info["with_cuda"], "a GPU is present but superthoughts_ext was built without CUDA"


def test_cpu_kernel_built_with_openmp_when_torch_uses_it():
    # ATen's parallel_for is inlined into the extension: built without OpenMP flags, the CPU
    # kernel would silently run on one thread.
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        assert superthoughts_ext.build_info()["openmp"], "the extension was built without OpenMP"
