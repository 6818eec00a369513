"""The options of one `superthoughts_ext.train` run (`TrainOptions`, one field per `superthoughts
train` flag) and the checks of their values that need neither the data nor the model: a run
refuses them before anything is tokenised or loaded.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from superthoughts_ext import train_precision, train_utils
from superthoughts_ext.eval_data import SYSTEM_PROMPT
from superthoughts_ext.train_args import value_checks
from superthoughts_ext.train_run_settings import METRIC_DRIVEN_SCHEDULES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainOptions:
    """Everything one training run needs; fields mirror the `superthoughts train` flags.

    `model` is a checkpoint directory or an nn.Module (a plain HF causal LM, or a
    SuperThoughtsForCausalLM to continue training). `data` is a JSONL or parquet path, a
    directory of such files (shards, read in name order), a list of those, or a list of rows
    (raw {problem_field, solution_field}, or with `messages_field` a list of chat messages
    [system,] user, assistant under that field, or tokenised {"prompt_ids", "response_ids"}).
    `max_steps` > 0 overrides `num_epochs`. `batch_size` is per process. `lora_r` = 0 means
    full fine-tuning. Rows longer than `max_length` tokens (prompt + response) are dropped with
    a warning, and so are rows whose positions do not fit the model's context: one per token for a
    baseline or a distillation run (its teacher reads every token), else prompt tokens + units at
    the largest pad-split (a row that fits only compressed is kept, with a warning that a baseline
    run would drop it). SuperThoughts fields left as None keep the SuperThoughtsConfig default
    (a continued SuperThoughts model: its own). A continued model takes distill_weight,
    rho_max and a given lambda_mtp from these options, keeps its pad, and refuses another
    compressor_type, mtp_type or mtp_input. `system_prompt` defaults to the chain-of-thought prompt that
    evaluation sends (eval_data.SYSTEM_PROMPT), so a model is trained on the prompts it is scored
    on; None leaves the system turn to the chat template's default (a row's own system turn must
    say `system_prompt`: chat_rows.py). `eval_data` (a JSONL or parquet path or rows, as `data`:
    the same fields, prompt and drops) is the held-out set whose loss is logged (eval_loss, and its
    parts in SuperThoughts mode) every `eval_steps` optimizer steps (None: `eval_interval`) and
    after the last one. Options the run would not read
    (SuperThoughts fields in a baseline run, LoRA fields without lora_r, eval_steps without
    eval_data) are refused.
    """

    model: str | os.PathLike | nn.Module
    data: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Mapping[str, Any]]
    output_dir: str | os.PathLike
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None
    baseline: bool = False
    max_steps: int = -1
    num_epochs: float = 1.0
    learning_rate: float = 1e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    optim: str | None = None  # a transformers OptimizerNames value; None: Trainer's default (adamw_torch_fused)
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = False
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    lora_r: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = train_utils.DEFAULT_LORA_TARGETS
    distill_weight: float = 0.0
    lambda_mtp: float | None = None
    rho_max: float = 0.25
    compressor_type: str | None = None
    mtp_type: str | None = None
    mtp_input: str | None = None
    problem_field: str = "problem"
    solution_field: str = "solution"
    messages_field: str | None = None  # rows of chat messages instead of problem_field / solution_field
    system_prompt: str | None = SYSTEM_PROMPT
    max_length: int | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    eval_data: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Mapping[str, Any]] | None = None
    eval_steps: int | None = None  # None: `eval_interval`
    resume_from_checkpoint: str | bool | None = None
    report_to: str | Sequence[str] = "none"  # one integration, several, "all" or "none"
    progress_bar: bool = True
    dataloader_num_workers: int = 0
    training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            *value_checks(self),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.max_steps > 0 or self.num_epochs > 0, "set max_steps > 0 or num_epochs > 0"),
            # transformers trains num_epochs only for a negative max_steps: 0 took one step.
            (self.max_steps != 0, "max_steps must be > 0, or -1 (the default) to train num_epochs; got 0"),
            (0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.max_length is None or self.max_length >= 1,
             f"max_length must be >= 1 (None: the model's context), got {self.max_length}"),
            (0.0 <= self.rho_max <= 1.0, f"rho_max must be in [0, 1], got {self.rho_max}"),
            (self.lora_r >= 0, f"lora_r must be >= 0, got {self.lora_r}"),
            # alpha 0 scales every adapter to nothing: only the compressor and MTP would train.
            (self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}"),
            (0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}"),
            (self.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}"),
            (not (self.baseline and self.distill_weight > 0), "distill_weight needs SuperThoughts mode, not baseline"),
            (not (self.bf16 and self.dtype == "float16"), "bf16 autocast needs float32 or bfloat16 weights, "
                                                          "not dtype float16"),
            # AdamW on float16 weights: a gradient below ~2.4e-4 squares to 0 in its state and its eps
            # (1e-8) rounds to 0, so the update is 0/0 = NaN (a tiny run went NaN at step 4). peft
            # keeps LoRA adapters in float32; SuperThoughts also trains its compressor and MTP fully.
            (self.dtype != "float16" or (self.baseline and self.lora_r > 0),
             f"dtype float16 weights cannot be trained ({train_precision.FLOAT16_ADAMW}); it only suits a baseline "
             "LoRA run, whose adapters stay float32. Use dtype bfloat16, or float32 with bf16 autocast"),
            # A module trains as it is: build_model loads only directories in `dtype`.
            (not (isinstance(self.model, nn.Module) and self._changed("dtype")),
             f"dtype {self.dtype} applies to a model directory; a model given as a module trains in its own "
             "dtype (cast it first)"),
            (self.save_steps >= 0, f"save_steps must be >= 0 (0 = final save only), got {self.save_steps}"),
            (self.save_total_limit is None or self.save_total_limit >= 0,
             f"save_total_limit must be >= 0 (0 = keep every checkpoint), got {self.save_total_limit}"),
        ]
        # Options a run of this kind would not read: refused rather than silently dropped.
        if self.baseline:
            unread = [name for name in ("lambda_mtp", "compressor_type", "mtp_type", "mtp_input")
                      if getattr(self, name) is not None]
            unread += ["rho_max"] if self._changed("rho_max") else []
            checks.append((not unread, f"{', '.join(unread)} {_apply(unread)} to SuperThoughts mode, not baseline"))
        if self.lora_r == 0:
            unread = [name for name in ("lora_alpha", "lora_dropout", "lora_target_modules") if self._changed(name)]
            checks.append((not unread, f"{', '.join(unread)} {_apply(unread)} to LoRA runs: set lora_r > 0"))
        # The messages hold both texts: the two fields would not be read.
        fields = [name for name in ("problem_field", "solution_field") if self._changed(name)]
        checks.append((self.messages_field is None or not fields,
                       f"{', '.join(fields)} {_apply(fields)} to problem/solution rows, not to messages_field rows"))
        checks.append((self.messages_field != "", "messages_field must name a field, got ''"))
        checks.append((self.eval_data is not None or self.eval_steps is None,
                       "eval_steps applies to runs with eval_data (a held-out set to evaluate)"))
        checks.append((self.eval_data is not None or self.scheduler_name not in METRIC_DRIVEN_SCHEDULES,
                       f"lr_scheduler {self.scheduler_name} steps on the held-out loss: give eval_data"))
        # transformers' constant schedule has no warmup, nor have the two that follow the eval loss
        # (they need eval_data), and it and constant_with_warmup drop any scheduler arguments
        # without a word. The default ratio (0.03) goes with the default cosine: not asked for.
        scheduler = self.scheduler_name
        if scheduler in ("constant", *METRIC_DRIVEN_SCHEDULES):
            checks.append((self.warmup_ratio == 0 or not self._changed("warmup_ratio"),
                           f"warmup_ratio {self.warmup_ratio} needs a schedule with a warmup (constant_with_warmup), "
                           f"not {scheduler}"))
        if scheduler in ("constant", "constant_with_warmup"):
            checks.append((not self.lr_scheduler_kwargs, f"lr_scheduler {scheduler} takes no arguments, got "
                                                         f"{dict(self.lr_scheduler_kwargs)}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainOptions: {message}")

    @property
    def eval_interval(self) -> int:
        """Optimizer steps between evaluations of eval_data: eval_steps, else save_steps (each
        checkpoint gets the held-out loss to choose it by; logging_steps, the default of
        transformers, would evaluate every 10 steps, often costing more than the training), or
        logging_steps when save_steps is 0 (no checkpoint to follow)."""
        if self.eval_steps is not None:
            return self.eval_steps
        return self.save_steps if self.save_steps > 0 else self.logging_steps

    @property
    def scheduler_name(self) -> str:
        """`lr_scheduler` as a plain name (transformers' SchedulerType enum is accepted too)."""
        return str(getattr(self.lr_scheduler, "value", self.lr_scheduler))

    def _changed(self, name: str) -> bool:
        """Whether field `name` differs from its default."""
        default = next(f for f in dataclasses.fields(self) if f.name == name).default
        value = getattr(self, name)
        return (tuple(value) if isinstance(value, list) else value) != default


def _apply(names: list[str]) -> str:
    return "apply" if len(names) > 1 else "applies"
