"""The loss and mask helpers of layers.py, CPU: the chunked linear + cross-entropy (values and
gradients against autograd, low precision, frozen head, errors) and the right-padding mask
shortcut."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from superthoughts_ext.layers import causal_mask_for_right_padding, linear_cross_entropy


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


def test_causal_mask_for_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.equal(causal_mask_for_right_padding(right), torch.ones_like(right))
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    holes = torch.tensor([[1, 0, 1, 0]])
    assert causal_mask_for_right_padding(left) is left and causal_mask_for_right_padding(holes) is holes
