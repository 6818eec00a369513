"""The transformers TrainingArguments of a `superthoughts_ext.train` run, built and checked
before anything is tokenised or loaded: a scheduler that needs arguments, an optimizer whose
package is missing or a logging integration that is not installed fails here, in seconds,
not after minutes of tokenising (Trainer checks them only when it builds them). Also the names
of the optimizer they ask for (`optimizer_name`, `optimizer_class`), which checkpoints record.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainingArguments

from superthoughts_ext import train_utils
from superthoughts_ext.modeling_config import COMPRESSOR_TYPES, MTP_INPUTS, MTP_TYPES

if TYPE_CHECKING:
    from superthoughts_ext.train_options import TrainOptions


def value_checks(options: TrainOptions) -> list[tuple[bool, str]]:
    """(holds, message) for option values no run can use, checked before loading in TrainOptions'
    names (transformers and the model config refuse some only after it, in their own names)."""
    o, finite = options, math.isfinite
    return [
        # An infinite rate or decay saved a model of NaN weights after one logged finite loss.
        (finite(o.learning_rate) and o.learning_rate > 0,
         f"learning_rate must be a finite number > 0, got {o.learning_rate}"),
        (finite(o.weight_decay) and o.weight_decay >= 0,
         f"weight_decay must be a finite number >= 0, got {o.weight_decay}"),
        (finite(o.num_epochs), f"num_epochs must be finite, got {o.num_epochs}"),  # an OverflowError in Trainer
        (not math.isnan(o.max_grad_norm), "max_grad_norm must be a number (0 or less: no clipping), got nan"),
        (0 <= o.seed < 2**32, f"seed must be in [0, 2**32), got {o.seed}"),
        (o.logging_steps >= 1, f"logging_steps must be >= 1, got {o.logging_steps}"),
        (o.eval_steps is None or o.eval_steps >= 1,
         f"eval_steps must be >= 1 (unset: save_steps, or logging_steps without checkpoints), got {o.eval_steps}"),
        (o.dataloader_num_workers >= 0, f"dataloader_num_workers must be >= 0, got {o.dataloader_num_workers}"),
        (o.lambda_mtp is None or (finite(o.lambda_mtp) and o.lambda_mtp >= 0),
         f"lambda_mtp must be a finite number >= 0, got {o.lambda_mtp}"),
        (finite(o.distill_weight) and o.distill_weight >= 0,
         f"distill_weight must be a finite number >= 0, got {o.distill_weight}"),
        (o.compressor_type in (None, *COMPRESSOR_TYPES),
         f"compressor_type must be one of {', '.join(COMPRESSOR_TYPES)}, got {o.compressor_type!r}"),
        (o.mtp_type in (None, *MTP_TYPES), f"mtp_type must be one of {', '.join(MTP_TYPES)}, got {o.mtp_type!r}"),
        (o.mtp_input in (None, *MTP_INPUTS),
         f"mtp_input must be one of {', '.join(MTP_INPUTS)}, got {o.mtp_input!r}"),
        (os.fspath(o.output_dir) != "", "output_dir must name a directory, got ''"),
    ]


def training_arguments(options: TrainOptions) -> TrainingArguments:
    """TrainingArguments for `options` (gradient checkpointing is enabled on the model instead).

    Turns FSDP's cpu_ram_efficient_loading off (`train_utils.without_fsdp_ram_efficient_loading`).
    ValueError for a value TrainingArguments refuses (a scheduler name, logging_steps 0) or a
    report_to integration Trainer does not know.
    """
    from transformers.integrations import get_reporting_integration_callbacks

    kwargs: dict[str, Any] = dict(
        output_dir=os.fspath(options.output_dir),
        max_steps=options.max_steps,
        num_train_epochs=options.num_epochs,
        learning_rate=options.learning_rate,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        # A float below 1 is a fraction of the total steps in transformers 5.
        warmup_steps=float(options.warmup_ratio),
        lr_scheduler_type=options.lr_scheduler,
        lr_scheduler_kwargs=dict(options.lr_scheduler_kwargs),
        weight_decay=options.weight_decay,
        **({"optim": options.optim} if options.optim else {}),
        max_grad_norm=options.max_grad_norm,
        seed=options.seed,
        data_seed=options.seed,
        bf16=options.bf16,
        logging_steps=options.logging_steps,
        logging_first_step=True,
        # A NaN loss is logged as NaN (Trainer's default logs the mean of the earlier steps since
        # the last log instead, 0 when logging every step): the trainer stops on it.
        logging_nan_inf_filter=False,
        save_strategy="steps" if options.save_steps > 0 else "no",
        save_steps=max(options.save_steps, 1),
        save_total_limit=options.save_total_limit or None,  # 0: keep every checkpoint
        # Held-out loss only (no compute_metrics), in batches of the training's per-process size.
        eval_strategy="steps" if options.eval_data is not None else "no",
        eval_steps=options.eval_interval if options.eval_data is not None else None,
        per_device_eval_batch_size=options.batch_size,
        prediction_loss_only=True,
        report_to=options.report_to if isinstance(options.report_to, str) else list(options.report_to),
        disable_tqdm=not options.progress_bar,
        remove_unused_columns=False,
        label_names=[] if not options.baseline else ["labels"],
        dataloader_num_workers=options.dataloader_num_workers,
        # Every parameter of both model kinds takes part in each step; the frozen teacher
        # has no gradients, which DDP ignores.
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(train_utils.without_fsdp_ram_efficient_loading(options.training_args))
    _check_names(options)
    args = TrainingArgumentsCpuFix(**kwargs)
    _warn_launcher_settings(options, args)
    _check_scheduler(args)
    _check_optimizer(args)
    # Trainer checks report_to only when it is built, after the model is loaded and the data
    # tokenised; building each callback is its check that the integration is installed.
    for callback in get_reporting_integration_callbacks(args.report_to):
        try:
            callback()
        except (ImportError, RuntimeError) as error:
            raise ValueError(f"train: --report-to: {error}") from error
    return args


class TrainingArgumentsCpuFix(TrainingArguments):
    """TrainingArguments whose CPU device carries no index.

    accelerate names the CPU of a multi-process run `cpu:0`, and Trainer's resume loads the
    optimizer state with that as `map_location`, which torch.load cannot map to ("don't
    know how to restore data location ... cpu:0"). `cpu` is the same device.
    """

    @property
    def device(self) -> torch.device:
        device = super().device
        return torch.device("cpu") if device.type == "cpu" else device


def optimizer_name(args: TrainingArguments) -> str:
    """TrainingArguments.optim as a plain name (an OptimizerNames enum once parsed)."""
    return str(getattr(args.optim, "value", args.optim))


def optimizer_class(args: TrainingArguments) -> str:
    """The class Trainer builds for args.optim ("torch.optim.adamw.AdamW" for adamw_torch and
    adamw_torch_fused alike: one state layout); "" when it needs the model to tell (GaLore)."""
    try:
        cls = Trainer.get_optimizer_cls_and_kwargs(args)[0]
    except (ImportError, ValueError):
        return ""
    return f"{cls.__module__}.{cls.__qualname__}"


def _warn_launcher_settings(options: TrainOptions, args: TrainingArguments) -> None:
    """accelerate launch hands its config to the run as environment variables: its mixed
    precision applies (TrainingArguments reads it) where --bf16 is not given, its gradient
    accumulation does not (Trainer hands accelerate --grad-accum). Each said, not silently
    taken or dropped."""
    steps = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "")
    if steps.isdigit() and int(steps) not in (1, options.grad_accum):
        warnings.warn(f"train: accelerate's gradient_accumulation_steps {steps} is not used; this run accumulates "
                      f"--grad-accum {options.grad_accum} micro-batches per step", UserWarning, stacklevel=3)
    precision = getattr(args, "mixed_precision", "no")
    if not options.bf16 and precision in ("bf16", "fp16"):
        warnings.warn(f"train: accelerate's mixed_precision {precision} (its launch config) applies to this run, "
                      "though --bf16 is not given", UserWarning, stacklevel=3)


def _check_names(options: TrainOptions) -> None:
    """ValueError naming the flag whose scheduler, optimizer or logging integration transformers
    does not know (TrainingArguments refused them in the words of its own enums)."""
    import transformers
    from transformers.integrations import get_reporting_integration_callbacks
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for flag, name, known in (("--lr-scheduler", options.lr_scheduler, SchedulerType),
                              ("--optim", options.optim, OptimizerNames)):
        names = [member.value for member in known]
        if name is not None and name not in names:
            raise ValueError(f"train: {flag} {name!r} is none of transformers {transformers.__version__}'s: "
                             f"{', '.join(names)}")
    names = [options.report_to] if isinstance(options.report_to, str) else list(options.report_to)
    if len(names) > 1 and {"none", "all"} & set(names):  # TrainingArguments reads them only alone
        raise ValueError(f"train: --report-to: 'none' and 'all' stand alone, got {' '.join(names)}")
    try:  # a lone "none" or "all" TrainingArguments reads itself (the check takes them only as a string)
        get_reporting_integration_callbacks([name for name in names if name not in ("none", "all")])
    except ValueError as error:
        raise ValueError(f"train: --report-to: {error}") from None


def _check_optimizer(args: TrainingArguments) -> None:
    """The optimizer class resolved now: one whose package is missing (bitsandbytes, ...) fails
    here, not when Trainer builds it after the data is tokenised and the model loaded."""
    try:
        Trainer.get_optimizer_cls_and_kwargs(args)
    except ImportError as error:
        raise ValueError(f"train: --optim {optimizer_name(args)}: {error}") from error
    except ValueError as error:
        # transformers reports some missing packages as a ValueError ("Please install ...");
        # others need the model (GaLore's target modules): Trainer checks those when it builds it.
        if "install" in str(error).lower():
            raise ValueError(f"train: --optim {optimizer_name(args)}: {error}") from error


def _check_scheduler(args: TrainingArguments) -> None:
    """The learning-rate schedule, built once on a stand-in optimizer: a schedule that needs
    arguments (cosine_with_min_lr, warmup_stable_decay) fails here, not after tokenising
    (TrainingArguments itself refuses the ones that need an evaluation strategy)."""
    from transformers.optimization import get_scheduler

    name = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(name, probe, num_warmup_steps=0, num_training_steps=10,
                      scheduler_specific_kwargs=dict(args.lr_scheduler_kwargs or {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"train: --lr-scheduler {name}: {error} (--lr-scheduler-kwargs takes its arguments as "
                         "a JSON object)") from error
