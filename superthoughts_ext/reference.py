"""Plain-PyTorch oracles for the compiled ops.

`superthoughts_step_ref` defines the semantics of `torch.ops.superthoughts_ext.superthoughts_step`
bit for bit where integers are concerned: the tests compare the C++ and
CUDA kernels against it, and `generate(..., use_kernels=False)` runs on it. One exception: the
kernels sum the softmax terms in their own order with their own exp (about 1e-7 relative on
CPU; about 1e-6 on CUDA, whose kernel uses the hardware's approximate exp2), so a threshold within
that distance of a row's confidence may accept the pair on one side only.

Random numbers come from Philox4x32-10, counter based, so that every backend draws the same
Gumbel noise for the same (seed, offset, row, head, vocab index) without sharing any state:
    key     = (seed & 0xffffffff, seed >> 32)
    counter = (v >> 2, 2 * row + head, offset & 0xffffffff, offset >> 32)
    word    = philox(counter, key)[v & 3]
    u       = ((word >> 9) + 0.5) * 2**-23          # in (0, 1), exact in float32
    gumbel  = float32(-log(-log(u)))                  # logs in float64, rounded once
With per-row seeds (`row_seeds` [B] int64) row r's key is row_seeds[r] and its row index in the
counter is 0: it draws the noise of a batch of one with seed row_seeds[r], wherever it stands.
(The CUDA kernel's float64 log is not guaranteed correctly rounded, as no libm's is; a log 1 ulp
off moves the rounded noise for one of the 2^23 values of u, which can only matter on a near-tie.)
Temperatures below MIN_SAMPLING_TEMPERATURE decode greedily, like temperature 0.
"""
from __future__ import annotations

import operator

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
# Below this temperature the op decodes greedily, a deliberate floor: logits / T overflows
# float32 as T shrinks, and T itself rounds to 0 in float below 1.4e-45 (kMinSamplingTemperature
# in csrc/step_common.h).
MIN_SAMPLING_TEMPERATURE = 1e-5
FLOAT32_MAX = 3.4028234663852886e38
LARGEST_SUBNORMAL = 2.0**-126 - 2.0**-149  # float32's, just below its smallest normal FLT_MIN


def integer_or_none(value: object) -> int | None:
    """`value` as an int (an int, a numpy int, a 0-dim integer tensor); None for a bool, a float
    (3.7 must not pass as 3: seeds 1.2 and 1.9 would sample alike) or anything else."""
    try:
        if isinstance(value, bool) or getattr(value, "dtype", None) is torch.bool:  # a bool tensor indexes as 0 / 1
            return None
        return operator.index(value)
    except TypeError:
        return None


def number_or_none(value: object) -> float | None:
    """`value` as a float; None for a str (float() reads "0.5"), a bool (numpy's too) or anything else."""
    try:
        # numpy's bool is no subclass of bool (its dtype's kind is "b"), nor is a bool tensor.
        dtype = getattr(value, "dtype", None)
        if isinstance(value, (str, bytes, bool)) or dtype is torch.bool or getattr(dtype, "kind", None) == "b":
            return None
        return float(value)
    except (TypeError, ValueError):
        return None


def int64_of_low_64_bits(x: int) -> int:
    """The int64 with the same low 64 bits as the integer x. The Philox key and counter use only
    those bits, and the op's schema takes int64 (it refuses a larger Python int, unclearly), so
    the wrapper and generate() fold any seed or offset onto it: the same samples either way.
    A float is refused (TypeError), not truncated: seeds 1.2 and 1.9 must not sample alike."""
    return (operator.index(x) + 2**63) % 2**64 - 2**63


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # a * b for 32-bit a, b without overflowing int64: split a into 16-bit halves.
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p_lo = b * a_lo  # < 2**48
    p_hi = b * a_hi  # < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    lo = mid & MASK32
    hi = (p_hi >> 16) + (mid >> 32)
    return hi & MASK32, lo


def _as_float32(x: float) -> float:
    """x >= 0 rounded to float32's range as a float32 cast rounds it: inf from FLT_MAX + half an
    ulp (2^128 - 2^103) up, FLT_MAX just below (new_full refuses those instead of rounding)."""
    return float("inf") if x >= 2.0**128 - 2.0**103 else min(x, FLOAT32_MAX)


def confidence(shifted: torch.Tensor, valid: torch.Tensor,
               thresholds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's confidence and whether it reaches its threshold, from logits minus their
    row max ([2, B, V] float32, max 0 where `valid`) and thresholds (main, MTP).

    The softmax sum splits into `ones` (how many logits equal the max, each adding exactly 1)
    and `rest` (every other exp(x - max), in float32, below FLT_MIN = 2^-126 counted as 0 as the
    GPU's flush-to-zero exp does). Kept apart, a near one-hot row's small terms are not absorbed
    into the 1 they would be added to in float32. conf = 1 / (ones + rest) rounded to float32;
    a head reaches threshold t when 1 / (ones + rest) >= t, decided exactly as
    1 - t * ones >= t * rest in float64: threshold 1.0 is reached only when rest is 0. A head
    with no finite max has confidence 0 and reaches only t <= 0.
    """
    is_max = shifted == 0
    ones = is_max.sum(dim=-1).double()
    terms = shifted.masked_fill(is_max, float("-inf")).exp_()  # the maxima's terms are 0
    # threshold keeps x > LARGEST_SUBNORMAL: exactly the terms >= FLT_MIN.
    rest = torch.nn.functional.threshold(terms, LARGEST_SUBNORMAL, 0.0).sum(dim=-1).double()
    conf = torch.where(valid, (1.0 / (ones + rest)).float(), 0.0)
    # float32 as the kernels hold them, filled on the device: copying a host tensor there syncs,
    # which a CUDA graph capture refuses. A tensor, not .item(), so torch.compile keeps one graph.
    t = torch.stack([shifted.new_full((1,), value, dtype=torch.float32) for value in thresholds]).double()
    reaches = torch.where(valid, 1.0 - t * ones >= t * rest, t <= 0)
    return conf, reaches


def philox4x32(counter: list[torch.Tensor], seed: int | torch.Tensor) -> list[torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values; returns the 4 output words. `seed`
    is one key, or int64 keys that broadcast against the counter (one per element)."""
    c0, c1, c2, c3 = (c & MASK32 for c in counter)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for round_index in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if round_index + 1 < PHILOX_ROUNDS:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return [c0, c1, c2, c3]


def gumbel_noise(batch: int, vocab: int, seed: int, offset: int, device: torch.device,
                 row_seeds: torch.Tensor | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise [2, batch, vocab] float32, head-major like the logits. With row_seeds
    ([batch] int64) row r is keyed by row_seeds[r] as row 0 (the module docstring), not by seed."""
    v = torch.arange(vocab, device=device, dtype=torch.int64)
    head = torch.arange(2, device=device, dtype=torch.int64).view(2, 1)
    row = torch.arange(batch, device=device, dtype=torch.int64).view(1, batch)
    if row_seeds is not None:
        row, seed = torch.zeros_like(row), row_seeds.view(1, batch, 1)
    # stream index is 2 * row + head, while the logits are laid out [head, row]
    stream = (2 * row + head).expand(2, batch)
    shape = (2, batch, vocab)
    counter = [
        (v >> 2).expand(shape),
        stream.unsqueeze(-1).expand(shape),
        torch.full(shape, offset & MASK32, device=device, dtype=torch.int64),
        torch.full(shape, (offset >> 32) & MASK32, device=device, dtype=torch.int64),
    ]
    words = torch.stack(philox4x32(counter, seed), dim=0)  # [4, 2, B, V]
    word = words.gather(0, (v & 3).expand(shape).unsqueeze(0)).squeeze(0)
    u = ((word >> 9).to(torch.float64) + 0.5) * (2.0**-23)
    # float64 logs rounded once agree with the kernels' (see philox.h), float32 ones do not.
    return (-torch.log(-torch.log(u))).to(torch.float32)


def check_row_seeds(row_seeds: object, logits: torch.Tensor, seed: int, op: str) -> None:
    """RuntimeError (TypeError for a non-tensor) naming `op` unless `row_seeds` is an int64 [B]
    tensor on the logits' device, contiguous, and the scalar seed is 0 (the row seeds replace it).
    Every int64 value is a key, as every integer is a seed (only its low 64 bits count): fold a
    larger one with `int64_of_low_64_bits`. The kernels check the same (csrc/step_common.h)."""
    if not isinstance(row_seeds, torch.Tensor):
        raise TypeError(f"{op}: row_seeds must be an int64 tensor [B] or None, got {type(row_seeds).__name__}")
    batch = logits.shape[1]
    if row_seeds.dtype != torch.int64:
        raise RuntimeError(f"{op}: row_seeds must be int64, got {row_seeds.dtype}")
    if row_seeds.dim() != 1 or row_seeds.shape[0] != batch:
        raise RuntimeError(f"{op}: row_seeds must be [B] with B={batch}, got {list(row_seeds.shape)}")
    if row_seeds.device != logits.device:
        raise RuntimeError(f"{op}: row_seeds on {row_seeds.device} but logits on {logits.device}")
    if not row_seeds.is_contiguous():
        raise RuntimeError(f"{op}: row_seeds must be contiguous, got strides {list(row_seeds.stride())}")
    if int64_of_low_64_bits(seed) != 0:
        raise RuntimeError(f"{op}: seed={seed} given with row_seeds, which replace it; pass seed=0")


def superthoughts_step_ref(
    logits: torch.Tensor,
    embed: torch.Tensor,
    merge_weight: torch.Tensor | None,
    merge_bias: torch.Tensor | None,
    finished: torch.Tensor,
    pad_id: int,
    eos_id: int,
    threshold: float,
    threshold_main: float = 0.0,
    temperature: float = 0.0,
    seed: int = 0,
    offset: int = 0,
    *,
    row_seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference for `superthoughts_step` (the same arguments and defaults); updates `finished`
    in place like the op.

    logits [2, B, V] (head 0 = main, head 1 = MTP), embed [V, H], merge_weight [H, 2H] or None,
    merge_bias [H] or None, finished [B] bool, row_seeds [B] int64 or None (then seed must be 0).
    Returns tokens [B, 2] int64, n_new [B] int32, conf [B, 2] float32, next_in [B, H]
    (or [B, 2H] when merge_weight is None) in embed's dtype.

    NaN logits count as -inf. Confidences and the threshold rule: `confidence`. A head whose
    row has no finite maximum yields token pad_id and confidence 0. Rows already finished
    yield tokens (pad_id, -1), n_new 0, conf 0 and
    the merged input of (pad_id, pad_id).
    """
    for name, value in (("seed", seed), ("offset", offset)):
        if integer_or_none(value) is None:  # refused, not truncated, as by the op's wrapper
            raise TypeError(f"superthoughts_step_ref: {name} must be an integer, got {value!r}")
    _, batch, vocab = logits.shape
    if row_seeds is not None:
        check_row_seeds(row_seeds, logits, seed, "superthoughts_step_ref")
    device = logits.device
    scores = logits.float().nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    row_max = scores.amax(dim=-1)  # [2, B]
    valid = torch.isfinite(row_max)
    shifted = scores - torch.where(valid, row_max, torch.zeros_like(row_max)).unsqueeze(-1)
    conf, reaches = confidence(shifted, valid, (threshold_main, threshold))
    if temperature >= MIN_SAMPLING_TEMPERATURE:
        # Divided by a float32 tensor on the logits' device, as the kernels divide (x / T, T in
        # float32): CUDA divides by a Python scalar as a multiplication by its reciprocal,
        # which can be one ulp off. A temperature beyond float32's range is inf there, and
        # -inf / inf is NaN, which argmax would pick: a masked logit never wins a draw.
        scaled = scores / scores.new_full((), _as_float32(temperature))
        scaled = scaled.nan_to_num(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        scores = scaled + gumbel_noise(batch, vocab, seed, offset, device, row_seeds)
    picked = scores.argmax(dim=-1)  # [2, B], first index on ties like torch.argmax
    picked = torch.where(valid, picked, torch.full_like(picked, pad_id))

    was_finished = finished.clone()
    t1, t2 = picked[0], picked[1]
    accept = reaches[1] & reaches[0] & (t1 != eos_id) & ~was_finished
    t1 = torch.where(was_finished, torch.full_like(t1, pad_id), t1)
    second = torch.where(accept, t2, torch.full_like(t2, -1))
    tokens = torch.stack([t1, second], dim=1)
    n_new = torch.where(was_finished, 0, 1 + accept.to(torch.int32)).to(torch.int32)
    conf = torch.where(was_finished.unsqueeze(0), torch.zeros_like(conf), conf).t().contiguous()
    finished |= ~was_finished & ((t1 == eos_id) | (accept & (t2 == eos_id)))

    b_ids = torch.where(accept, t2, torch.full_like(t2, pad_id))
    pair = torch.cat([embed[t1], embed[b_ids]], dim=-1)  # [B, 2H]
    if merge_weight is None:
        next_in = pair
    else:
        bias = None if merge_bias is None else merge_bias.float()
        next_in = torch.nn.functional.linear(pair.float(), merge_weight.float(), bias).to(embed.dtype)
    return tokens, n_new, conf, next_in
