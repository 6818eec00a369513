"""Losses of a linear LM head without materialising its logits: chunked cross-entropy and KL.

The training loss scores every position against a vocabulary of up to ~152k tokens, so the
[N, V] logits (and their gradient) would dominate a step's memory. `linear_cross_entropy` and
`linear_kl_divergence` walk the rows in chunks and compute each chunk's gradient in the forward
pass; `head_cross_entropy` / `head_kl_divergence` pick them for a plain Linear head and fall
back to the head's own forward otherwise (LoRA, bias). Kept apart from layers.py, the blocks
the model is built from, because these are losses over any head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _grad_buffers(ctx, hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients a chunked forward fills for hidden and weight (None where autograd wants none).

    grad_weight accumulates in the weight's dtype by addmm_ (float32 inside each chunk's GEMM, one
    rounding per chunk): a float32 buffer would cost [V, H] float32 of memory and a full
    read-modify-write of it per chunk, more than the chunk's GEMMs at V = 152k.
    """
    grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
    grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
    return grad_hidden, grad_weight


def _inputs_for_grad_mode(hidden: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden and weight, detached under no_grad / inference_mode.

    A Function's needs_input_grad follows requires_grad whatever the grad mode, so without this a
    loss-only forward (evaluation, a validation loss) would still fill [V, H] gradient buffers
    with two extra GEMMs per chunk that nothing reads.
    """
    if torch.is_grad_enabled():
        return hidden, weight
    return hidden.detach(), weight.detach()


def _add_chunk_grads(grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, grad_hidden: torch.Tensor | None,
                     grad_weight: torch.Tensor | None, start: int, end: int) -> None:
    """Folds one chunk's d loss / d logits [n, V] into the hidden and weight gradients (None: not wanted)."""
    if grad_hidden is not None:
        grad_hidden[start:end] = grad @ weight
    if grad_weight is not None:
        grad_weight.addmm_(grad.t(), h.to(weight.dtype))


def _scaled_saved_grads(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Backward of a loss whose forward stored its hidden and weight gradients: scale them."""
    return tuple(None if grad is None else grad * grad_loss.to(grad.dtype) for grad in ctx.saved_tensors)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * CE(hidden_i @ weight.T, target_i), computed chunk by chunk over the rows.

    The gradient of a weighted CE sum with respect to its logits is known in the forward pass
    (w_i * (softmax_i - onehot_i)), so each chunk's logits are turned into their gradient in
    place and folded into grad_hidden / grad_weight at once: no [N, V] tensor is ever held,
    exp runs once per logit, and backward only scales the two stored gradients.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor,
                chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        ce = torch.empty(rows, device=hidden.device, dtype=torch.float32)
        grad_hidden, grad_weight = _grad_buffers(ctx, hidden, weight)
        for start in range(0, rows, chunk_rows):
            end = min(start + chunk_rows, rows)
            h, t, w = hidden[start:end], targets[start:end, None], row_weight[start:end, None]
            logits = (h @ weight.t()).float()  # [n, V]
            target_logit = logits.gather(1, t)
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()
            total = probs.sum(dim=1, keepdim=True)
            ce[start:end] = (top + total.log() - target_logit).squeeze(1)
            if grad_hidden is None and grad_weight is None:
                continue
            grad = probs.mul_(w / total).scatter_add_(1, t, -w).to(weight.dtype)  # d loss / d logits
            _add_chunk_grads(grad, h, weight, grad_hidden, grad_weight, start, end)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(ce)
        return (ce * row_weight).sum(), ce

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, grad_ce: torch.Tensor | None):
        return *_scaled_saved_grads(ctx, grad_loss), None, None, None


# Logit elements per chunk of the chunked losses: 64 Mi float32 (256 MiB) bounds the transient
# memory whatever the vocabulary, while a chunk keeps enough rows (441 at V = 152k) for efficient
# GEMMs and few grad_weight updates.
CE_CHUNK_ELEMENTS = 1 << 26
# On a CPU, smaller chunks where the vocabulary allows. A chunk's [n, V] buffers larger than
# glibc's mmap threshold (32 MiB at most) are fresh pages from the kernel at every chunk of every
# step, each zeroed at its first touch: at bench_train's 1.5b-mini head (3982 rows, V = 12800) ~55k
# page faults per step in float32 and ~100k under bfloat16 autocast (bf16 logits, their float32
# copy, the bf16 gradient). 8 MiB chunks are reused from the heap and stay in cache: the whole
# SuperThoughts step of `bench train` ran 10-15% faster under bf16 autocast, 0.5-2% in float32 (2
# threads, 2-core AMD EPYC). Only while such a chunk still holds CPU_CE_MIN_ROWS rows (V <= 16384):
# fewer rows would re-read the [V, H] weight and grad_weight per chunk for too little GEMM work, and
# a chunk of that many rows of a larger vocabulary is past the mmap threshold anyway.
CPU_CE_CHUNK_ELEMENTS = 1 << 21
CPU_CE_MIN_ROWS = 128


def default_chunk_elements(device: torch.device, vocab: int) -> int:
    """Logit elements per chunk of `linear_cross_entropy` / `linear_kl_divergence` when the caller
    names none: CPU_CE_CHUNK_ELEMENTS on a CPU while that holds CPU_CE_MIN_ROWS rows of `vocab`,
    else CE_CHUNK_ELEMENTS."""
    if device.type == "cpu" and CPU_CE_CHUNK_ELEMENTS // max(vocab, 1) >= CPU_CE_MIN_ROWS:
        return CPU_CE_CHUNK_ELEMENTS
    return CE_CHUNK_ELEMENTS


def _chunk_rows(chunk_elements: int | None, weight: torch.Tensor) -> int:
    """Rows per chunk of a [V, H] head: `chunk_elements` logits, at least one row."""
    if chunk_elements is None:
        chunk_elements = default_chunk_elements(weight.device, weight.shape[0])
    return max(1, chunk_elements // weight.shape[0])


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         row_weight: torch.Tensor, chunk_elements: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy of a linear head without materialising the logits.

    Args:
        hidden: [N, H] rows to score; weight: [V, H] head weight (no bias);
        targets: [N] int64 in [0, V); row_weight: [N] float32 weight of each row's CE;
        chunk_elements: logit elements per chunk of rows (None: `default_chunk_elements`).
    Returns:
        loss: scalar sum_i row_weight_i * CE_i (differentiable in hidden and weight; the
        gradient is computed during the forward pass, so the op cannot be differentiated twice);
        ce: [N] float32 per-row CE, detached.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: expected hidden [N, H] and weight [V, H], got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1] or row_weight.shape != hidden.shape[:1]:
        raise ValueError(f"linear_cross_entropy: targets {tuple(targets.shape)} and row_weight "
                         f"{tuple(row_weight.shape)} must be [N] with N = {hidden.shape[0]}")
    chunk_rows = _chunk_rows(chunk_elements, weight)
    hidden, weight = _inputs_for_grad_mode(hidden, weight)
    return _LinearCrossEntropy.apply(hidden, weight, targets, row_weight.float(), chunk_rows)


class _LinearKLDivergence(torch.autograd.Function):
    """sum_i w_i * KL(p_i || softmax(hidden_i @ weight.T)), p_i = softmax(target_hidden_i @ target_weight.T)
    a fixed distribution (no gradient), chunk by chunk over the rows as in _LinearCrossEntropy:
    d KL_i / d logits_i = softmax_i - p_i is known in the forward pass."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target_hidden: torch.Tensor,
                target_weight: torch.Tensor, row_weight: torch.Tensor, chunk_rows: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = hidden.shape[0]
        kl = torch.empty(rows, device=hidden.device, dtype=torch.float32)
        grad_hidden, grad_weight = _grad_buffers(ctx, hidden, weight)
        for start in range(0, rows, chunk_rows):
            end = min(start + chunk_rows, rows)
            h, w = hidden[start:end], row_weight[start:end, None]
            log_p = torch.log_softmax((target_hidden[start:end] @ target_weight.t()).float(), dim=1)  # [n, V]
            log_q = torch.log_softmax((h @ weight.t()).float(), dim=1)  # [n, V]
            p = log_p.exp()
            kl[start:end] = (p * log_p.sub_(log_q)).sum(dim=1)
            if grad_hidden is None and grad_weight is None:
                continue
            grad = log_q.exp_().sub_(p).mul_(w).to(weight.dtype)  # d loss / d logits
            _add_chunk_grads(grad, h, weight, grad_hidden, grad_weight, start, end)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(kl)
        return (kl * row_weight).sum(), kl

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, grad_kl: torch.Tensor | None):
        return *_scaled_saved_grads(ctx, grad_loss), None, None, None, None


def linear_kl_divergence(hidden: torch.Tensor, weight: torch.Tensor, target_hidden: torch.Tensor,
                         target_weight: torch.Tensor, row_weight: torch.Tensor,
                         chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted KL(teacher || student) of two linear heads without materialising either's logits.

    Args:
        hidden: [N, H] student rows; weight: [V, H] student head weight (no bias);
        target_hidden: [N, H'] teacher rows; target_weight: [V, H'] teacher head weight (both
        treated as constants); row_weight: [N] float32 weight of each row's KL;
        chunk_elements: logit elements per chunk of rows (None: `default_chunk_elements`).
    Returns:
        loss: scalar sum_i row_weight_i * KL_i (differentiable in hidden and weight, once);
        kl: [N] float32 per-row KL, detached.
    """
    if (hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]
            or target_hidden.shape[0] != hidden.shape[0] or target_weight.shape[0] != weight.shape[0]
            or target_hidden.shape[1:] != target_weight.shape[1:] or row_weight.shape != hidden.shape[:1]):
        raise ValueError(f"linear_kl_divergence: expected hidden [N, H], weight [V, H], target_hidden [N, H'], "
                         f"target_weight [V, H'], row_weight [N]; got {tuple(hidden.shape)}, {tuple(weight.shape)}, "
                         f"{tuple(target_hidden.shape)}, {tuple(target_weight.shape)}, {tuple(row_weight.shape)}")
    chunk_rows = _chunk_rows(chunk_elements, weight)
    hidden, weight = _inputs_for_grad_mode(hidden, weight)
    return _LinearKLDivergence.apply(hidden, weight, target_hidden.detach(), target_weight.detach(),
                                     row_weight.float(), chunk_rows)


def _chunkable(head: nn.Module, rows: torch.Tensor) -> bool:
    """Whether `head` may take the chunked losses: a plain bias-free Linear, outside float16
    autocast. The chunked losses compute their gradients in the forward pass, before fp16 mixed
    precision's GradScaler multiplies the loss in backward: a logit's gradient of ~w * p (1e-9
    at 8k rows) underflows float16 there (a 5e-2 relative error in grad_hidden, N = 8192,
    against 3e-4 through autograd). bfloat16 has float32's range and keeps the chunked path."""
    device = rows.device.type
    fp16_autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    return type(head) is nn.Linear and head.bias is None and not fp16_autocast


def head_cross_entropy(head: nn.Module, rows: torch.Tensor, targets: torch.Tensor,
                       weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i weights_i * CE(head(rows_i), targets_i) and the detached per-row CE [N].

    A plain bias-free Linear head goes through the chunked `linear_cross_entropy`; any other
    head (a LoRA-wrapped lm_head, a bias), and any head under float16 autocast (`_chunkable`),
    through its own forward and F.cross_entropy.
    """
    if _chunkable(head, rows):
        return linear_cross_entropy(rows, head.weight, targets, weights)
    ce = F.cross_entropy(head(rows).float(), targets, reduction="none")
    return (ce * weights).sum(), ce.detach()


def head_kl_divergence(head: nn.Module, rows: torch.Tensor, target_head: nn.Module, target_rows: torch.Tensor,
                       weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i weights_i * KL(softmax(target_head(target_rows_i)) || softmax(head(rows_i))) and the
    detached per-row KL [N]; chunked (`linear_kl_divergence`) for plain bias-free Linear heads
    outside float16 autocast (`_chunkable`)."""
    if _chunkable(head, rows) and _chunkable(target_head, target_rows):
        return linear_kl_divergence(rows, head.weight, target_rows, target_head.weight, weights)
    with torch.no_grad():
        log_p = F.log_softmax(target_head(target_rows).float(), dim=-1)
    log_q = F.log_softmax(head(rows).float(), dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(dim=-1)
    return (kl * weights).sum(), kl.detach()
