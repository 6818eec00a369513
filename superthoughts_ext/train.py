"""Fine-tune a SuperThoughts model (or the plain SFT baseline) with `transformers.Trainer`.

Checkpointing, resume, gradient accumulation, LR schedules, logging, bf16, gradient
checkpointing and multi-process training all come from Trainer / accelerate; this module
builds the model and data, runs the Trainer subclass of `superthoughts_ext.trainer` (which
logs the loss parts loss_main, loss_mtp, loss_distill separately, and with --eval-data the
held-out eval_loss and its parts: `superthoughts_ext.train_eval`), and writes a
self-contained output directory (weights + config + tokenizer) that
`superthoughts_ext.modeling.load_model` reads. LoRA runs are merged before the final
save; their intermediate `checkpoint-N/` folders are peft adapter folders (LoRA weights plus
the fully trained compressor and MTP), which `resume_from_checkpoint` reads.

Commands::

    # one process
    superthoughts train --model Qwen2.5-Math-1.5B-Instruct --data train.jsonl --output out/st
    # same data and hyperparameters, plain SFT of the backbone (no compression)
    superthoughts train --model Qwen2.5-Math-1.5B-Instruct --data train.jsonl --output out/sft --baseline
    # a held-out loss every 100 steps (and after the last), in the log and trainer_state.json
    superthoughts train --model M --data train.jsonl --eval-data val.jsonl --eval-steps 100 --output out/st
    # DDP, 2 GPUs on one node (batch size is per process)
    torchrun --nproc_per_node 2 -m superthoughts_ext.train --model M --data D --output O --bf16
    # FSDP2 (full fine-tuning of larger models), 2 GPUs
    accelerate launch --num_processes 2 --use_fsdp --fsdp_version 2 \\
        --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \\
        --fsdp_transformer_layer_cls_to_wrap Qwen2DecoderLayer \\
        --fsdp_state_dict_type FULL_STATE_DICT --fsdp_reshard_after_forward true \\
        --fsdp_cpu_ram_efficient_loading false \\
        -m superthoughts_ext.train --model M --data D --output O --bf16

torchrun also runs on a CPU-only machine (gloo backend): the test suite runs it with 2
processes and checks that both ranks end with identical weights. On CPU, accelerate 1.15
silently runs DDP instead of FSDP (it enables FSDP only for GPU-like device types); torch's
FSDP2 itself works there, and test_train_fsdp.py lifts accelerate's gate to check an FSDP2
run against DDP. cpu_ram_efficient_loading is turned off (see
`train_utils.without_fsdp_ram_efficient_loading`). Under FSDP train fully (no LoRA); checkpoint
activations with `--gradient-checkpointing`, not accelerate's FSDP activation checkpointing
flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from superthoughts_ext import (data_files, train_data, train_finished, train_precision, train_resume,
                               train_run_settings, train_utils)
from superthoughts_ext.checkpoint import read_model_dir
from superthoughts_ext.cli import module_main, resume_hint, transformers_progress_bars, utf8_text
from superthoughts_ext.file_writes import WriteFailed
from superthoughts_ext.hub_cache import snapshot_name
from superthoughts_ext.modeling_config import COMPRESSOR_TYPES, MTP_INPUTS, MTP_TYPES
from superthoughts_ext.run_info import LockRefused, output_lock
from superthoughts_ext.train_args import optimizer_class, optimizer_name, training_arguments
from superthoughts_ext.train_finished import RunFinished
from superthoughts_ext.train_options import DTYPES, TrainOptions
from superthoughts_ext.train_preemption import StoppedAfterTheFinalSave, StoppedAtCheckpoint
from superthoughts_ext.train_ranks import (OnceAcrossRanksParser, close_process_group, first_on_its_machine,
                                           main_process, report_error)
from superthoughts_ext.trainer import ResumedLengthCheck, SuperThoughtsTrainer, TrainingDiverged


@dataclass
class TrainResult:
    """What `train` returns. `model` is the trained (LoRA-merged) model on this process (left
    out of the repr, which would print its whole module tree)."""

    output_dir: str
    metrics: dict[str, float]
    log_history: list[dict[str, Any]]
    global_step: int
    num_examples: int
    model: nn.Module = field(repr=False)
    num_eval_examples: int = 0  # held-out rows scored (--eval-data), after drops


def train(options: TrainOptions) -> TrainResult:
    """Run one training job and write the final model, config and tokenizer to `output_dir`.
    Another job writing the same `output_dir` meanwhile is a ValueError (a lock beside it). With
    `resume_from_checkpoint="auto"`, an `output_dir` that holds this run finished raises
    `train_finished.RunFinished` before anything loads (a requeued job: nothing to do).

    Returns the Trainer metrics (train_loss, runtime, samples/s), the log history (with
    loss_main / loss_mtp in SuperThoughts mode, loss_distill when distill_weight > 0; with
    eval_data, entries of eval_loss and its parts eval_loss_main, ... at each evaluation), and the
    trained model.
    """
    # The main process holds it (torchrun's others write nothing of their own): a second run
    # into the same folder passed its checks before the first had saved anything, and the
    # two overwrote (and rotated away) each other's checkpoints.
    with output_lock(options.output_dir if main_process() else None, "train"):
        return _train(options)


def _train(options: TrainOptions) -> TrainResult:
    """`train`, once the output is locked."""
    from superthoughts_ext.data import SuperThoughtsCollator

    options = train_utils.with_cached_snapshots(options)  # before any check reads --model
    # --resume auto: the last checkpoint's path or a new run, before any check reads the option.
    auto = isinstance(options.resume_from_checkpoint, str) and \
        options.resume_from_checkpoint == train_resume.RESUME_IF_ANY
    # Every check that needs no data comes before tokenising it, which takes minutes on a large file.
    lora = train_utils.lora_settings(options.lora_alpha, options.lora_dropout, options.lora_target_modules,
                                     superthoughts=not options.baseline) if options.lora_r > 0 else None
    args = training_arguments(options)
    settings = train_run_settings.run_settings(options, args.world_size)
    record = train_finished.run_record(options, settings, optimizer_class(args), lora)
    if auto:
        if (finished_at := train_finished.finished_step(options.output_dir, record)) is not None:
            raise RunFinished(options.output_dir, finished_at)
        train_finished.check_moved_revision(options.output_dir, record)  # the same command, a newer download
    resume = train_resume.resolve_resume_if_any(options.output_dir, options.resume_from_checkpoint,
                                                main_process=main_process())
    options = dataclasses.replace(options, resume_from_checkpoint=resume)
    checkpoint = train_resume.check_resume(options.output_dir, options.resume_from_checkpoint,
                                           baseline=options.baseline, lora_r=options.lora_r,
                                           max_steps=options.max_steps, lr_scheduler=options.scheduler_name,
                                           warmup_ratio=options.warmup_ratio, lora=lora,
                                           optimizer=(optimizer_name(args), optimizer_class(args)), settings=settings,
                                           num_epochs=options.num_epochs,
                                           # The other ranks do not wait for the main one's removals.
                                           cut_off_removed=auto)
    train_resume.check_output_dir(options.output_dir, options.model, options.resume_from_checkpoint)
    tokenizer = train_utils.load_tokenizer(options.tokenizer, options.model)
    if not isinstance(options.model, nn.Module):  # checked again when it is loaded, after the data
        read_model_dir(options.model, "train")
    pad_id, eos_id = train_utils.pad_and_eos_ids(tokenizer)
    if data_files.is_paths(options.eval_data):  # a missing held-out file fails before tokenising
        train_data.check_data_files(options.eval_data, held_out=True, training=options.data)
    examples = _load_examples(options, options.data, tokenizer)
    # Before the model loads, as the training rows: a bad held-out row fails in seconds.
    held_out = None if options.eval_data is None else _load_examples(options, options.eval_data, tokenizer, True)
    torch.manual_seed(options.seed)
    # distill_weight always: a continued checkpoint's own weight must not outlive the run's.
    overrides: dict[str, Any] = {"pad_token_id": pad_id, "rho_max": options.rho_max,
                                 "distill_weight": options.distill_weight}
    for name in ("compressor_type", "mtp_type", "mtp_input", "lambda_mtp"):
        if getattr(options, name) is not None:
            overrides[name] = getattr(options, name)
    dtype = DTYPES[options.dtype]
    model = train_utils.build_model(options.model, baseline=options.baseline, dtype=dtype, overrides=overrides)
    superthoughts = not options.baseline
    # A continued SuperThoughts model keeps the pad it was trained with; the tokenizer is
    # made to agree, since Trainer copies its pad into the config that gets saved.
    pad_id = model.pad_token_id if superthoughts else pad_id
    tokenizer = train_utils.with_pad_token(tokenizer, pad_id)
    train_utils.record_special_tokens(model, tokenizer)
    backbone = model.backbone if superthoughts else model
    # The baseline and the distillation teacher read one position per token: all pairs split.
    split = options.rho_max if superthoughts and options.distill_weight == 0 else 1.0
    fit = dict(context=getattr(backbone.config, "max_position_embeddings", None), pad_id=pad_id, eos_id=eos_id,
               split=split, superthoughts=superthoughts)
    examples = _fit_to_model(examples, tokenizer, model, **fit)
    if held_out is not None:
        held_out = _fit_to_model(held_out, tokenizer, model, **fit, kind="evaluation")
    if superthoughts and options.distill_weight > 0:
        train_utils.attach_teacher(model, options.model, train_precision.teacher_dtype(dtype, options.bf16))
    if options.gradient_checkpointing:
        train_utils.enable_activation_checkpointing(backbone)
        if options.lora_r > 0:
            # With frozen embeddings no input requires grad, which checkpointing needs.
            backbone.enable_input_require_grads()
    if options.lora_r > 0:
        settings[train_run_settings.BASE_WEIGHTS] = train_utils.weights_digest(backbone)  # not the new compressor / MTP
        train_run_settings.check_base_weights(checkpoint, settings[train_run_settings.BASE_WEIGHTS])
        model = train_utils.apply_lora(
            model, r=options.lora_r, alpha=options.lora_alpha, dropout=options.lora_dropout,
            targets=options.lora_target_modules, superthoughts=superthoughts,
        )
    train_precision.check_no_float16_training(model)
    train_precision.warn_stalled_bf16_weights(model, options.learning_rate)
    train_precision.warn_bf16_adam_state(model, optimizer_class(args), args.adam_beta2)
    collator = SuperThoughtsCollator(
        pad_id, eos_id, rho_max=options.rho_max, baseline=options.baseline, seed=options.seed,
        with_distill=superthoughts and options.distill_weight > 0,
    )
    # Trainer sets the model config's use_cache to TrainingArguments.use_cache (False); the saved
    # config keeps the base model's.
    use_cache = getattr(backbone.config, "use_cache", None)
    # Each row's index keys its pad-split draws (SuperThoughtsCollator): a resumed run collates
    # its remaining steps as the uninterrupted run would have.
    # The rows share the examples' packed ids (4 bytes a token), not a copy of them.
    rows = train_data.TrainRows(examples)
    # Each held-out row's line keys its one fixed pad-split layout (SuperThoughtsCollator).
    eval_rows = None if held_out is None else train_data.EvalRows(held_out)
    trainer = SuperThoughtsTrainer(
        model=model, args=args, data_collator=collator, train_dataset=rows, eval_dataset=eval_rows,
        processing_class=tokenizer, run_settings=settings,
        base_model=None if isinstance(options.model, nn.Module)
        else snapshot_name(options.model) or os.path.abspath(options.model),
        # A run resumed in its own folder keeps its id; a new one, or a fork, draws its own (the
        # main process writes it).
        run_id=train_resume.continued_run_id(checkpoint, options.output_dir) or uuid.uuid4().hex,
    )
    if checkpoint is not None and options.max_steps <= 0:
        trainer.add_callback(ResumedLengthCheck(checkpoint, options.scheduler_name, options.warmup_ratio))
    # SIGTERM from the end of training on lets the final save finish (train_preemption).
    with trainer.final_save_despite_sigterm(options.output_dir) as final_save_begins:
        if checkpoint is not None and train_resume.final_save_pending(checkpoint, options.output_dir,
                                                                      options.max_steps, options.num_epochs):
            trainer.load_finished_run(checkpoint)
            metrics = {}
        else:
            metrics = dict(trainer.train(resume_from_checkpoint=options.resume_from_checkpoint).metrics)
        final_save_begins()
        # transformers' PrinterCallback (no progress bar) pops total_flos out of the metrics it logs.
        metrics.setdefault("total_flos", trainer.state.total_flos)
        metrics.update(train_utils.trainable_summary(model))
        # keep_fp32_wrapper=False: under --bf16 accelerate left its autocast wrapper on forward, so the
        # returned model computed in bfloat16 what the saved one computes in float32.
        final = train_utils.merge_lora(trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False))
        if options.lora_r > 0:
            trainer.model = trainer.model_wrapped = final
        if use_cache is not None:
            backbone.config.use_cache = use_cache
        trainer.check_finite_weights(final)
        trainer.save_final_model(options.output_dir, record)
    return TrainResult(
        output_dir=os.fspath(options.output_dir),
        metrics=metrics,
        log_history=list(trainer.state.log_history),
        global_step=trainer.state.global_step,
        num_examples=len(rows),
        model=final,
        num_eval_examples=len(eval_rows or ()),
    )


def _load_examples(options: TrainOptions, data: Any, tokenizer: Any, held_out: bool = False) -> train_data.Examples:
    """The tokenised rows of `data` (--data, or --eval-data when `held_out`), read as `options` say."""
    return train_data.load_examples(
        data, tokenizer, problem_field=options.problem_field,
        solution_field=options.solution_field, messages_field=options.messages_field,
        system_prompt=options.system_prompt, max_length=options.max_length,
        text_options=[name for name in ("problem_field", "solution_field", "messages_field", "system_prompt")
                      if options._changed(name)],
        progress=_bars_shown_here(options),
        held_out=held_out,
    )


def _bars_shown_here(options: TrainOptions) -> bool:
    """Whether this process draws the progress bars of tokenising and loading weights: one per
    machine, the first process of each (every process tokenises the whole file and loads the
    model; two ranks' bars in one log said everything twice)."""
    return options.progress_bar and first_on_its_machine()


def _fit_to_model(examples: train_data.Examples, tokenizer: Any, model: nn.Module, *, context: int | None,
                  pad_id: int, eos_id: int, split: float, superthoughts: bool,
                  kind: str = "training") -> train_data.Examples:
    """`examples` without the rows past the model's `context` (named in a warning; `split`: the
    pad-split fraction positions are counted at), checked against its vocabulary; a SuperThoughts
    run also names rows whose response holds the pad. The same for training and held-out rows, so
    that a held-out loss scores rows the run could have trained on."""
    examples = train_data.drop_beyond_context(examples, context, eos_id, split, kind=kind)
    if superthoughts:
        train_data.warn_pad_in_responses(examples, pad_id, eos_id)
    train_utils.check_vocab(tokenizer, model, examples)
    return examples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `superthoughts train` flags to `parser` (one flag per TrainOptions field)."""
    d = TrainOptions.__dataclass_fields__
    g = parser.add_argument
    g("--model", required=True, help="base (or SuperThoughts) checkpoint directory, or a Hugging Face repo id "
      "(org/name) in the local hub cache")
    g("--data", required=True, nargs="+", metavar="FILE",
      help="training files, JSON Lines or parquet (by a .parquet suffix or content), read in order; a directory "
           "stands for its .jsonl / .parquet files in name order (a folder of shards)")
    g("--eval-data", default=None, nargs="+", metavar="FILE",
      help="held-out files or directory, as --data (same fields, prompt, drops and checks): its loss, "
           "eval_loss (and eval_loss_main / _mtp / _distill), is logged every --eval-steps and after the last step, "
           "each row in one fixed pad-split layout")
    g("--output", required=True, dest="output_dir", help="output directory")
    g("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    g("--baseline", action="store_true", help="plain SFT of the backbone, no compression")
    g("--max-steps", type=int, default=d["max_steps"].default, help="optimizer steps; > 0 overrides --epochs (-1: train --epochs)")
    g("--epochs", type=float, dest="num_epochs", default=d["num_epochs"].default, help="passes over the data")
    g("--learning-rate", "--lr", type=float, default=d["learning_rate"].default, help="peak learning rate")
    g("--batch-size", type=int, default=d["batch_size"].default, help="per process")
    g("--grad-accum", type=int, default=d["grad_accum"].default, help="gradient accumulation steps")
    g("--warmup-ratio", type=float, default=d["warmup_ratio"].default, help="share of the steps spent warming up")
    g("--lr-scheduler", default=d["lr_scheduler"].default, help="transformers scheduler name")
    g("--lr-scheduler-kwargs", type=_json_object, default={}, metavar="JSON",
      help='arguments of the schedule, e.g. \'{"min_lr_rate": 0.1}\' for cosine_with_min_lr')
    g("--weight-decay", type=float, default=d["weight_decay"].default, help="AdamW weight decay")
    g("--optim", default=None, help="optimizer: a transformers OptimizerNames value (default adamw_torch_fused; "
                                    "adafactor, adamw_bnb_8bit with bitsandbytes, ...)")
    g("--max-grad-norm", type=float, default=d["max_grad_norm"].default, help="gradient clipping")
    g("--seed", type=int, default=d["seed"].default,
      help="shuffling, pad-split draws and LoRA's initialisation (the compressor and MTP start from the "
           "backbone's weights, not at random)")
    g("--bf16", action="store_true", help="bf16 autocast (mixed precision)")
    g("--dtype", choices=sorted(DTYPES), default=d["dtype"].default, help="weight dtype when loading")
    g("--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    g("--lora-r", type=int, default=d["lora_r"].default, help="LoRA rank; 0 = full fine-tuning")
    g("--lora-alpha", type=int, default=d["lora_alpha"].default, help="LoRA scaling numerator")
    g("--lora-dropout", type=float, default=d["lora_dropout"].default, help="dropout on the LoRA input")
    g("--lora-target-modules", nargs="+", default=list(train_utils.DEFAULT_LORA_TARGETS), metavar="MODULE",
      help="backbone module names that get LoRA adapters")
    g("--distill-weight", type=float, default=d["distill_weight"].default, help="stage-1 KL weight")
    g("--lambda-mtp", type=float, default=None, help="MTP loss weight (default: model config)")
    g("--rho-max", type=float, default=d["rho_max"].default, help="max pad-split fraction")
    g("--compressor-type", default=None, choices=COMPRESSOR_TYPES,
      help="compressor kind (default: model config; a continued model's must match)")
    g("--mtp-type", default=None, choices=MTP_TYPES,
      help="MTP head kind (default: model config; a continued model's must match)")
    g("--mtp-input", default=None, choices=MTP_INPUTS,
      help="what the MTP head reads besides h: 'unit' (the position's own input) or 'next_token' (E of the "
           "main head's token, as in DeepSeek-V3; default: model config; a continued model's must match)")
    g("--problem-field", default=d["problem_field"].default, help="field (parquet: column) holding the prompt")
    g("--solution-field", default=d["solution_field"].default, help="field (parquet: column) holding the response")
    g("--messages-field", default=None, metavar="NAME",
      help="rows of chat messages: the field holding a list of {role, content}, [system,] user, assistant; the "
           "user turn is the prompt, the assistant turn the response, a system turn must be --system-prompt's "
           "text (instead of --problem-field / --solution-field)")
    # One or the other: both write system_prompt, and the last given would win.
    system = parser.add_mutually_exclusive_group()
    system.add_argument("--system-prompt", default=d["system_prompt"].default, type=utf8_text, metavar="TEXT",
                        help="system message (default: the chain-of-thought prompt `superthoughts eval` sends, so "
                             "training and evaluation prompts match)")
    system.add_argument("--template-system-prompt", action="store_const", const=None, dest="system_prompt",
                        help="no system message of ours: the chat template writes its own default, if it has one")
    g("--max-length", type=int, default=None,
      help="drop rows (with a warning) longer than this many tokens, prompt + response; rows whose positions "
           "pass the model's context (max_position_embeddings; SuperThoughts rows without distillation count "
           "their compressed positions) are always dropped")
    g("--logging-steps", type=int, default=d["logging_steps"].default, help="log the losses every N steps")
    g("--save-steps", type=int, default=d["save_steps"].default, help="0 = final save only")
    g("--save-total-limit", type=int, default=d["save_total_limit"].default,
      help="checkpoints kept in --output, the oldest removed (0 = keep every one)")
    g("--eval-steps", type=int, default=None, metavar="N",
      help="optimizer steps between evaluations of --eval-data (default: --save-steps, so that each checkpoint "
           "has its held-out loss; --logging-steps when --save-steps is 0)")
    g("--resume", nargs="?", const=True, default=None, dest="resume_from_checkpoint", metavar="CHECKPOINT|auto",
      help="resume from the last checkpoint in --output, or from the given checkpoint; 'auto': from the last "
           "complete checkpoint in --output if there is one, else start a new run (for a job that is requeued "
           "with the same command)")
    g("--report-to", nargs="+", default=d["report_to"].default,
      help="transformers logging integrations (tensorboard, wandb, ...; several, all or none)")
    g("--no-progress", action="store_false", dest="progress_bar",
      help="hide the progress bars of tokenisation, training and evaluation (shown by default)")
    g("--num-workers", type=int, dest="dataloader_num_workers", default=0, help="DataLoader worker processes")


def _json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    """TrainOptions from parsed `superthoughts train` flags; its errors name the flags
    ("train: --epochs ..."), not the fields ("TrainOptions: num_epochs ...")."""
    names = {f.name for f in dataclasses.fields(TrainOptions)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["lora_target_modules"] = tuple(values["lora_target_modules"])
    for name in ("data", "eval_data"):  # one file stays a path, as a TrainOptions user gives it
        if isinstance(values[name], list):
            values[name] = values[name][0] if len(values[name]) == 1 else tuple(values[name])
    if isinstance(values["report_to"], list):
        values["report_to"] = tuple(values["report_to"])
    try:
        return TrainOptions(**values)
    except ValueError as error:
        raise ValueError(_with_flag_names(str(error))) from None


def _with_flag_names(message: str) -> str:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    # Names with an underscore, and the two plain ones messages use ("not dtype float16").
    fields = sorted((name for name in flags if "_" in name or name in ("dtype", "bf16")), key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, fields)) + r")\b")
    return pattern.sub(lambda match: flags[match.group(1)], message.replace("TrainOptions: ", "train: ", 1))


def run(args: argparse.Namespace) -> int:
    """Entry point of `superthoughts train`; returns the process exit code."""
    try:
        options = options_from_args(args)
        with transformers_progress_bars(_bars_shown_here(options)), warnings.catch_warnings():
            if not first_on_its_machine():  # one process a machine warns, as it draws the bars
                warnings.simplefilter("ignore")
            result = train(options)
    except (StoppedAtCheckpoint, StoppedAfterTheFinalSave):
        close_process_group()  # every process stopped at the same point: they can leave together
        raise
    except RunFinished as finished:  # a requeued job whose run had finished: exit 0, as when it finished
        if main_process():
            print(finished)
        close_process_group()
        return 0
    except WriteFailed as exc:  # a checkpoint or the final save met a full disk
        report_error(f"error: {exc}{resume_hint('train', args)}")
        return 2
    except (ValueError, FileNotFoundError, TrainingDiverged) as exc:
        # Once for the ranks of a torchrun launch that met it alike; the output's lock is rank 0's alone.
        report_error(f"error: {exc}", this_rank_alone=isinstance(exc, LockRefused))
        return 2
    if main_process():
        steps = f"{result.global_step} step{'' if result.global_step == 1 else 's'}"
        print(f"saved {result.output_dir} after {steps}: {result.metrics}")
    close_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m superthoughts_ext.train ...` (what torchrun and accelerate launch run)."""
    return module_main("train", __doc__, add_arguments, run, argv, OnceAcrossRanksParser)


if __name__ == "__main__":
    sys.exit(main())
