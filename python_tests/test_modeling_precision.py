"""SuperThoughtsForCausalLM in bfloat16, as users train Qwen2.5-Math (bfloat16 weights, or float32
weights under bfloat16 autocast): the compressor's init is the sum of the two embeddings to
bfloat16 rounding, the losses are float32 (the softmax over the vocabulary runs in float32 whatever
the logits' dtype), the logged parts add up to the loss, the chunked head's gradients are those of
autograd through full logits, and a batch without targets gives zero loss and zero, finite
gradients. Tiny random models from test_modeling.py, CPU; the float32 checks are there.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

pytest.importorskip("transformers")
from test_modeling import VOCAB, make_backbone, make_model, training_batch  # noqa: E402

from superthoughts_ext import head_losses  # noqa: E402
from superthoughts_ext.modeling import SuperThoughtsForCausalLM  # noqa: E402

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: the widest relative step of bfloat16


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_compressor_init_is_the_sum_to_bf16_rounding(kind):
    model = SuperThoughtsForCausalLM.from_base(make_backbone("qwen2"), compressor_type=kind, dtype=torch.bfloat16)
    assert model.compressor.merge_pair(torch.zeros(1, 2 * model.backbone.config.hidden_size,
                                                   dtype=torch.bfloat16)).dtype == torch.bfloat16
    a, b = torch.randint(0, VOCAB, (4, 9)), torch.randint(0, VOCAB, (4, 9))
    embed = model.get_input_embeddings()
    exact = embed(a).float() + embed(b).float()
    z = model.embed_units(a, b)
    if kind == "linear":  # [I, I] is exact in bfloat16, the GEMM accumulates in float32: one rounding
        assert torch.equal(z, exact.bfloat16())
    else:  # SiLU(s) - SiLU(-s), each rounded: within two bfloat16 steps of the sum
        torch.testing.assert_close(z.float(), exact, rtol=2 * BF16_EPS, atol=0.0)


def _bf16(model: SuperThoughtsForCausalLM,
          precision: str) -> tuple[SuperThoughtsForCausalLM, contextlib.AbstractContextManager]:
    """A copy of `model` as the precision trains it, and the context to run it in."""
    if precision == "bf16-weights":
        return copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext()
    return copy.deepcopy(model), torch.autocast("cpu", dtype=torch.bfloat16)


def _loss_and_grads(model, batch, context, chunked: bool, monkeypatch):
    with monkeypatch.context() as patch:
        if not chunked:  # the head's own forward and F.cross_entropy / F.kl_div through autograd
            patch.setattr(head_losses, "_chunkable", lambda head, rows: False)
        with context:
            out = model(**batch, return_logits=False)
    params = [p for p in model.parameters() if p.requires_grad]
    return out, torch.cat([g.double().flatten() for g in torch.autograd.grad(out.loss, params)])


@pytest.mark.parametrize("precision", ["bf16-weights", "bf16-autocast"])
def test_bf16_losses_are_float32_add_up_and_match_autograd(precision, monkeypatch):
    reference = make_model("qwen2", lambda_mtp=0.7, distill_weight=0.3).train()
    reference.attach_teacher(make_backbone("qwen2"))  # the unperturbed base: a KL well above 0
    batch = training_batch(with_distill=True)
    want = reference(**batch, return_logits=False)
    model, context = _bf16(reference, precision)
    model.attach_teacher(make_backbone("qwen2").to(next(model.parameters()).dtype))
    out, grads = _loss_and_grads(model, batch, context, chunked=True, monkeypatch=monkeypatch)
    for name in ("loss", "loss_main", "loss_mtp", "loss_distill"):
        got = getattr(out, name)
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.detach(), getattr(want, name).detach(), rtol=3e-2, atol=1e-3, msg=name)
    # What is logged is what is backpropagated: main + lambda_mtp * mtp + distill_weight * KL.
    torch.testing.assert_close(out.loss.detach(), out.loss_main + 0.7 * out.loss_mtp + 0.3 * out.loss_distill)
    autograd_out, autograd_grads = _loss_and_grads(model, batch, context, chunked=False, monkeypatch=monkeypatch)
    torch.testing.assert_close(out.loss.detach(), autograd_out.loss.detach(), rtol=1e-4, atol=1e-5)
    assert (grads - autograd_grads).norm() <= 2e-2 * autograd_grads.norm()


@pytest.mark.parametrize("precision", ["bf16-weights", "bf16-autocast"])
def test_bf16_batch_without_targets_gives_zero_loss_and_zero_gradients(precision, monkeypatch):
    reference = make_model("qwen2", distill_weight=0.3).train()
    model, context = _bf16(reference, precision)
    model.attach_teacher(make_backbone("qwen2").to(next(model.parameters()).dtype))
    batch = training_batch(with_distill=True)
    batch["labels_main"].fill_(-100)
    batch["labels_mtp"].fill_(-100)
    out, grads = _loss_and_grads(model, batch, context, chunked=True, monkeypatch=monkeypatch)
    assert out.loss == 0 and out.loss_main == 0 and out.loss_mtp == 0 and out.loss_distill == 0
    assert torch.isfinite(grads).all() and not grads.any()
