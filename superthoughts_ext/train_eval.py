"""Held-out evaluation during `superthoughts_ext.train` (--eval-data): the part of the Trainer
subclass that scores the eval set, mixed into `trainer.SuperThoughtsTrainer`.

Trainer computes eval_loss, the mean over eval batches of each batch's loss weighted by its
rows (the padding of the last batch across processes cut), and logs it with its runtime. This
adds the SuperThoughts loss parts beside it, averaged the same way and named as the training
log names them with Trainer's prefix (eval_loss_main, eval_loss_mtp, eval_loss_distill), so
that eval_loss = eval_loss_main + lambda_mtp * eval_loss_mtp (+ distill_weight * eval_loss_distill)
as the training loss adds up. Batches are laid out once and for all (each held-out row's
pad-split is keyed by its line: `data.SuperThoughtsCollator`), so the same weights always score
the same loss, and an evaluation leaves the training's random state as it found it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.trainer_utils import EvalLoopOutput

LOSS_PARTS: tuple[str, ...] = ("loss_main", "loss_mtp", "loss_distill")


class HeldOutEvaluation:
    """Mixin for a transformers.Trainer subclass whose compute_loss returns (loss, outputs) with
    the loss parts of LOSS_PARTS as attributes or keys (a baseline's outputs have none), and whose
    `_superthoughts` says that its model takes `return_logits` (trainer.SuperThoughtsTrainer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._eval_parts: dict[str, list[torch.Tensor]] = {}  # per batch, gathered, of the evaluation running

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Trainer.evaluate, on a fork of torch's random state: each DataLoader iterator draws its
        base seed from the global generator, so an evaluation in the middle of training shifted
        the training's later random draws: a LoRA run with --lora-dropout 0.3 logged other losses
        from the first step after an evaluation on than the same run without --eval-data."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kwargs: Any) -> EvalLoopOutput:
        """Trainer.evaluation_loop, with the mean of each loss part beside `{prefix}_loss`."""
        self._eval_parts = {}
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        for name, values in self._eval_parts.items():
            output.metrics[f"{metric_key_prefix}_{name}"] = torch.cat(values).float().mean().item()
        self._eval_parts = {}
        return output

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[torch.Tensor, None, None]:
        """The batch's loss alone (no logits: there are no metrics to compute from them).

        Trainer's own step scores a loss only with label_names or a model whose forward takes
        `return_loss`; a SuperThoughts model has neither (its labels are labels_main / labels_mtp),
        so it returned no loss and eval_loss was never logged."""
        inputs = self._prepare_inputs(inputs)
        if getattr(self, "_superthoughts", False):
            inputs = {**inputs, "return_logits": False}  # skip the [B, T, V] logits of both heads
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        self._gather_eval_parts(outputs)
        return loss.detach().mean(), None, None

    def _gather_eval_parts(self, outputs: Any) -> None:
        # Gathered as evaluation_loop gathers the batch loss just after: repeated eval_batch_size
        # times, the last batch's duplicated rows cut, so the parts weigh batches as eval_loss does.
        # Every process holds the same parts (one model), so each gather is met on all of them.
        for name in LOSS_PARTS:
            value = outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)
            if value is not None:
                repeated = value.detach().float().reshape(1).repeat(self.args.eval_batch_size)
                self._eval_parts.setdefault(name, []).append(self.gather_function(repeated))
