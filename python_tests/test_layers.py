"""The head losses of head_losses.py and the mask helper of layers.py, CPU: the chunked linear +
cross-entropy and linear + KL divergence (values and gradients against autograd, low precision,
frozen head, errors) and the right-padding mask shortcut."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from superthoughts_ext.head_losses import (head_cross_entropy, head_kl_divergence, linear_cross_entropy,
                                          linear_kl_divergence)
from superthoughts_ext.layers import causal_mask_for_right_padding


def _reference_ce(hidden, weight, targets, row_weight):
    ce = F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="none")
    return (ce * row_weight).sum(), ce


@pytest.mark.parametrize("rows,vocab,chunk_elements", [(1, 7, 1 << 24), (37, 53, 53 * 5), (37, 53, 1), (0, 11, 99),
                                                       (64, 1000, 1000 * 64)])
def test_linear_cross_entropy_matches_autograd(rows, vocab, chunk_elements):
    g = torch.Generator().manual_seed(rows + vocab)
    hidden = torch.randn(rows, 16, generator=g).requires_grad_()
    weight = torch.randn(vocab, 16, generator=g).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=g)
    row_weight = torch.rand(rows, generator=g)
    loss, ce = linear_cross_entropy(hidden, weight, targets, row_weight, chunk_elements)
    want_loss, want_ce = _reference_ce(hidden, weight, targets, row_weight)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(ce, want_ce.detach())
    assert not ce.requires_grad
    # A non-unit upstream gradient scales both stored gradients.
    got = torch.autograd.grad(2.5 * loss, (hidden, weight))
    want = torch.autograd.grad(2.5 * want_loss, (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_is_stable_at_large_logits():
    # Logits in the hundreds (a sharpened head; bf16 activations reach them): exp without the
    # row max subtracted overflows to inf. Values and gradients as F.cross_entropy's.
    g = torch.Generator().manual_seed(3)
    hidden = (40.0 * torch.randn(13, 16, generator=g)).requires_grad_()
    weight = torch.randn(57, 16, generator=g).requires_grad_()
    targets = torch.randint(0, 57, (13,), generator=g)
    row_weight = torch.rand(13, generator=g)
    loss, ce = linear_cross_entropy(hidden, weight, targets, row_weight, chunk_elements=57 * 4)
    want_loss, want_ce = _reference_ce(hidden, weight, targets, row_weight)
    assert (hidden @ weight.t()).abs().max() > 300 and torch.isfinite(ce).all()
    torch.testing.assert_close(ce, want_ce.detach())
    for a, b in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(want_loss, (hidden, weight))):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_a_head_with_a_bias_keeps_it():
    # Only a bias-free Linear takes the chunked losses, which read the weight alone: a biased
    # head there would lose its bias without a word.
    g = torch.Generator().manual_seed(4)
    head, teacher = torch.nn.Linear(8, 31), torch.nn.Linear(8, 31, bias=False)
    with torch.no_grad():
        head.bias.copy_(3.0 * torch.randn(31, generator=g))
    rows, target_rows = torch.randn(9, 8, generator=g), torch.randn(9, 8, generator=g)
    targets, weights = torch.randint(0, 31, (9,), generator=g), torch.full((9,), 1 / 9)
    ce = head_cross_entropy(head, rows, targets, weights)[1]
    torch.testing.assert_close(ce, F.cross_entropy(head(rows), targets, reduction="none").detach())
    kl = head_kl_divergence(head, rows, teacher, target_rows, weights)[1]
    want = F.kl_div(F.log_softmax(head(rows), -1), F.log_softmax(teacher(target_rows), -1), log_target=True,
                    reduction="none").sum(-1)
    torch.testing.assert_close(kl, want.detach())


def test_linear_cross_entropy_low_precision_and_frozen_inputs():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(29, 32, generator=g)
    weight = torch.randn(101, 32, generator=g)
    targets = torch.randint(0, 101, (29,), generator=g)
    row_weight = torch.full((29,), 1 / 29)
    want_loss, _ = _reference_ce(hidden.requires_grad_(), weight.requires_grad_(), targets, row_weight)
    want = torch.autograd.grad(want_loss, (hidden, weight))
    h16, w16 = hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()
    loss, _ = linear_cross_entropy(h16, w16, targets, row_weight, chunk_elements=101 * 4)
    got = torch.autograd.grad(loss, (h16, w16))
    assert got[0].dtype == got[1].dtype == torch.bfloat16
    torch.testing.assert_close(loss, want_loss.detach(), rtol=2e-2, atol=2e-2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-3)
    # Frozen head (e.g. LoRA on the backbone): only the hidden rows get a gradient.
    frozen = weight.detach()
    hidden_only = hidden.detach().requires_grad_()
    loss, _ = linear_cross_entropy(hidden_only, frozen, targets, row_weight)
    loss.backward()
    torch.testing.assert_close(hidden_only.grad, want[0])
    with pytest.raises(ValueError, match="linear_cross_entropy: expected hidden"):
        linear_cross_entropy(hidden, weight[:, :5], targets, row_weight)


@pytest.mark.parametrize("grad_off", [torch.no_grad, torch.inference_mode])
def test_chunked_losses_fill_no_gradients_without_grad_mode(grad_off, monkeypatch):
    # A loss-only forward (evaluation) of parameters that require grad must not pay for the
    # [V, H] gradient buffers and the two extra GEMMs per chunk.
    import superthoughts_ext.head_losses as head_losses
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(12, 16, generator=g).requires_grad_()
    weight = torch.randn(40, 16, generator=g).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(12, 8, generator=g), torch.randn(40, 8, generator=g)
    targets = torch.randint(0, 40, (12,), generator=g)
    row_weight = torch.rand(12, generator=g)
    want_ce = linear_cross_entropy(hidden, weight, targets, row_weight, 40 * 5)[0].detach()
    want_kl = linear_kl_divergence(hidden, weight, teacher_hidden, teacher_weight, row_weight, 40 * 5)[0].detach()
    chunk_grads = []
    monkeypatch.setattr(head_losses, "_add_chunk_grads", lambda *args: chunk_grads.append(args))
    with grad_off():
        ce = linear_cross_entropy(hidden, weight, targets, row_weight, 40 * 5)[0]
        kl = linear_kl_divergence(hidden, weight, teacher_hidden, teacher_weight, row_weight, 40 * 5)[0]
    assert chunk_grads == []
    assert not ce.requires_grad and not kl.requires_grad
    torch.testing.assert_close(ce, want_ce, rtol=0, atol=0)
    torch.testing.assert_close(kl, want_kl, rtol=0, atol=0)


def test_default_chunks_are_small_on_cpu_only_where_they_keep_enough_rows(monkeypatch):
    # On a CPU, chunks of up to 256 MiB of logits came from fresh, page-faulted memory at every
    # step; small vocabularies now take 8 MiB chunks, large ones (and GPUs) keep the default.
    import superthoughts_ext.head_losses as head_losses
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert head_losses.default_chunk_elements(cpu, 12800) == head_losses.CPU_CE_CHUNK_ELEMENTS
    assert head_losses.default_chunk_elements(cpu, 151936) == head_losses.CE_CHUNK_ELEMENTS
    assert head_losses.default_chunk_elements(cuda, 12800) == head_losses.CE_CHUNK_ELEMENTS
    # Without chunk_elements the CPU default applies, in both losses: rows of a 53-token head in
    # chunks of 130 rows (CPU_CE_MIN_ROWS 128 fit), and one chunk once they would not.
    monkeypatch.setattr(head_losses, "CPU_CE_CHUNK_ELEMENTS", 53 * 130)
    chunk_rows = []
    add_chunk_grads = head_losses._add_chunk_grads
    monkeypatch.setattr(head_losses, "_add_chunk_grads",
                        lambda grad, *args: chunk_rows.append(grad.shape[0]) or add_chunk_grads(grad, *args))
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(300, 8, generator=g).requires_grad_()
    weight, teacher_weight = torch.randn(53, 8, generator=g), torch.randn(53, 8, generator=g)
    targets, row_weight = torch.randint(0, 53, (300,), generator=g), torch.full((300,), 1 / 300)
    loss, _ = linear_cross_entropy(hidden, weight, targets, row_weight)
    want_loss, _ = _reference_ce(hidden, weight, targets, row_weight)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(torch.autograd.grad(loss, hidden)[0], torch.autograd.grad(want_loss, hidden)[0])
    linear_kl_divergence(hidden, weight, hidden.detach(), teacher_weight, row_weight)
    assert chunk_rows == [130, 130, 40] * 2
    chunk_rows.clear()
    linear_cross_entropy(hidden, torch.randn(60, 8, generator=g), targets, row_weight)
    assert chunk_rows == [300]


def test_head_cross_entropy_keeps_small_gradients_under_float16_autocast():
    """fp16 mixed precision scales the loss only in backward (GradScaler), after the chunked
    loss has computed its gradient in float16: there the small softmax terms underflowed."""
    g = torch.Generator().manual_seed(0)
    rows, hidden, vocab, loss_scale = 2048, 32, 8192, 65536.0
    x = torch.randn(rows, hidden, generator=g) * 0.3
    head = torch.nn.Linear(hidden, vocab, bias=False)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    weights = torch.full((rows,), 1.0 / rows)
    exact = torch.func.grad(lambda h: (F.cross_entropy(h @ head.weight.double().t(), targets, reduction="none")
                                       * weights.double()).sum())(x.double())

    def relative_error(loss_fn) -> float:
        h = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(h)
        (loss * loss_scale).backward()  # GradScaler.scale(loss).backward(), then unscaled below
        return ((h.grad.double() / loss_scale - exact).norm() / exact.norm()).item()

    # Through autograd (what head_cross_entropy now takes under fp16 autocast) the error is
    # float16 rounding; the chunked path alone loses the small terms.
    assert relative_error(lambda h: head_cross_entropy(head, h, targets, weights)[0]) < 2e-3
    assert relative_error(lambda h: linear_cross_entropy(h, head.weight, targets, weights)[0]) > 1e-2


def test_causal_mask_for_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.equal(causal_mask_for_right_padding(right), torch.ones_like(right))
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    holes = torch.tensor([[1, 0, 1, 0]])
    assert causal_mask_for_right_padding(left) is left and causal_mask_for_right_padding(holes) is holes


def _reference_kl(hidden, weight, target_hidden, target_weight, row_weight):
    log_p = F.log_softmax((target_hidden @ target_weight.t()).float(), dim=-1)
    log_q = F.log_softmax((hidden @ weight.t()).float(), dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    return (kl * row_weight).sum(), kl


@pytest.mark.parametrize("rows,vocab,chunk_elements", [(1, 7, 1 << 24), (37, 53, 53 * 5), (37, 53, 1), (0, 11, 99)])
def test_linear_kl_divergence_matches_autograd(rows, vocab, chunk_elements):
    g = torch.Generator().manual_seed(rows + vocab)
    hidden = torch.randn(rows, 16, generator=g).requires_grad_()
    weight = torch.randn(vocab, 16, generator=g).requires_grad_()
    target_hidden, target_weight = torch.randn(rows, 12, generator=g), torch.randn(vocab, 12, generator=g)
    row_weight = torch.rand(rows, generator=g)
    loss, kl = linear_kl_divergence(hidden, weight, target_hidden, target_weight, row_weight, chunk_elements)
    want_loss, want_kl = _reference_kl(hidden, weight, target_hidden, target_weight, row_weight)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(kl, want_kl.detach())
    assert not kl.requires_grad
    got = torch.autograd.grad(2.5 * loss, (hidden, weight))
    want = torch.autograd.grad(2.5 * want_loss, (hidden, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Identical heads and rows: zero KL, zero gradient.
    same, _ = linear_kl_divergence(hidden, weight, hidden.detach(), weight.detach(), row_weight, chunk_elements)
    torch.testing.assert_close(same, torch.zeros(()), atol=1e-5, rtol=0)


def test_head_kl_divergence_chunked_equals_module_path():
    g = torch.Generator().manual_seed(1)
    head, teacher = torch.nn.Linear(8, 31, bias=False), torch.nn.Linear(8, 31, bias=False)
    rows, target_rows = torch.randn(9, 8, generator=g), torch.randn(9, 8, generator=g)
    weights = torch.full((9,), 1 / 9)
    chunked = head_kl_divergence(head, rows, teacher, target_rows, weights)
    chunked_grad = torch.autograd.grad(chunked[0], head.weight)[0]
    # A biased head goes through its own forward; with a zero bias the result is the same.
    biased = torch.nn.Linear(8, 31, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
    plain = head_kl_divergence(biased, rows, teacher, target_rows, weights)
    torch.testing.assert_close(chunked[0], plain[0])
    torch.testing.assert_close(chunked[1], plain[1])
    torch.testing.assert_close(chunked_grad, torch.autograd.grad(plain[0], biased.weight)[0])
    with pytest.raises(ValueError, match="linear_kl_divergence: expected hidden"):
        linear_kl_divergence(rows, head.weight, target_rows[:3], teacher.weight, weights)


def test_a_teacher_head_with_a_bias_keeps_it():
    # The teacher head is checked like the student's: a biased teacher behind a bias-free
    # student must not take the chunked KL, which reads the teacher's weight alone and would
    # drop its bias from the target distribution.
    g = torch.Generator().manual_seed(5)
    head, teacher = torch.nn.Linear(8, 31, bias=False), torch.nn.Linear(8, 31)
    with torch.no_grad():
        teacher.bias.copy_(3.0 * torch.randn(31, generator=g))
    rows, target_rows = torch.randn(9, 8, generator=g), torch.randn(9, 8, generator=g)
    weights = torch.full((9,), 1 / 9)
    loss, kl = head_kl_divergence(head, rows, teacher, target_rows, weights)
    want = F.kl_div(F.log_softmax(head(rows), -1), F.log_softmax(teacher(target_rows), -1), log_target=True,
                    reduction="none").sum(-1).detach()
    torch.testing.assert_close(kl, want)
    torch.testing.assert_close(loss.detach(), (want * weights).sum())


def test_chunked_ce_gemm_dtypes_under_bf16_autocast_over_float32_weights():
    # Documents today's behaviour under `train --bf16` (float32 weights, bf16 autocast): autocast
    # casts the chunk's two out-of-place GEMMs (logits, grad_hidden) to bfloat16, but not the
    # in-place grad_weight addmm_, which runs in float32. On a GPU without TF32 that GEMM costs
    # ~10x a bfloat16 one; benchmarks/gpu/head_gemm_dtypes.py times it (session.sh stage
    # bench_train_autocast). A change of precision here should be measured there first.
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Gemms(TorchDispatchMode):  # below autocast: sees the dtypes after its casts
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm_.default):
                seen.append((func.__name__, [a.dtype for a in args if torch.is_tensor(a)]))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 16, generator=g).requires_grad_()
    weight = torch.randn(40, 16, generator=g).requires_grad_()
    targets, row_weight = torch.randint(0, 40, (6,), generator=g), torch.full((6,), 1 / 6)
    with torch.autocast("cpu", dtype=torch.bfloat16), Gemms():
        loss, _ = linear_cross_entropy(hidden, weight, targets, row_weight)  # one chunk
    bf16, fp32 = torch.bfloat16, torch.float32
    assert seen == [("mm.default", [bf16, bf16]),  # logits = h @ W.T
                    ("mm.default", [bf16, bf16]),  # grad_hidden = grad @ W
                    ("addmm_.default", [fp32, fp32, fp32])], seen  # grad_weight += grad.T @ h
    loss.backward()
    assert hidden.grad.dtype == weight.grad.dtype == fp32
