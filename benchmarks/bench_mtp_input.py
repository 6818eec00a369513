"""mtp_input "unit" vs "next_token" on the demo task: accuracy, pair steps, CoT reduction, step time.

Trains the demo's initial SFT model (`superthoughts_ext/demo`, its default settings unless given
smaller ones), then fine-tunes it with the SuperThoughts objective twice, with the same steps,
learning rate, pad-split and seed, once per MTP input (the demo's `superthoughts` stage with only
mtp_input changed), and decodes the held-out problems with both.

--seed N seeds the models: the initial model's init, the initial SFT and both fine-tunes (batch
order, pad-split draws). The training and held-out problems stay those of the demo's seed
(DATA_SEED), so a second seed is an independent training run scored on the same 100 problems,
and its results compare problem set for problem set with the first.

Reported:

- accuracy, mean tokens, mean decode steps, pair-step share (pair steps / steps) and the CoT
  reduction (1 - steps / the initial SFT model's tokens in `standard` mode) at each threshold
  of --thresholds and in `pairs` mode;
- the decode step's cost: on the next_token model, the median wall time per forward pass of
  `generate` (all problems as one batch, and batch 1, ignore_eos, --timing-tokens new tokens)
  with its own stepper against the same weights run through the "unit" stepper (the one lm_head
  GEMM and one op launch; its tokens are not the model's, its work per step is the same but for
  the second GEMM and launch).

Models are trained into --root and reused when their marker is there; each fine-tune can run in
its own process (--only sft | unit | next_token), then a last call without --only evaluates.

    python benchmarks/bench_mtp_input.py --root /tmp/mtp_input [--seed 1] [--only unit] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from superthoughts_ext.demo.run import DONE_MARKER, DemoSettings, build_base, train_model
from superthoughts_ext.file_writes import replace_text
from superthoughts_ext.run_info import (add_output_arguments, add_threads_argument, apply_threads, device_name,
                                        git_commit, held_results_file, int_at_least)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MTP_INPUTS = ("unit", "next_token")
# The demo's seed of its train and test problems; --seed changes the models' seed only.
DATA_SEED = DemoSettings().seed
# In --root: the seed its models were trained with. Models are reused from their markers, so a
# root trained at one seed would otherwise be reported, silently, under another.
SEED_FILE = "models_seed.json"


def fine_tune(settings: DemoSettings, start: Path, data: Path, directory: Path, mtp_input: str) -> dict[str, Any]:
    """The demo's SuperThoughts fine-tuning of `start` with `mtp_input` (reused when done)."""
    from superthoughts_ext.demo.tokenizer import build_tokenizer
    from superthoughts_ext.train import TrainOptions, train

    marker = directory / DONE_MARKER
    if marker.exists():
        return json.loads(marker.read_text(encoding="utf-8"))
    started = time.perf_counter()
    result = train(TrainOptions(
        model=os.fspath(start), data=os.fspath(data), output_dir=os.fspath(directory), tokenizer=build_tokenizer(),
        max_steps=settings.superthoughts_steps, learning_rate=settings.superthoughts_learning_rate,
        rho_max=settings.rho_max, batch_size=settings.batch_size, warmup_ratio=settings.warmup_ratio,
        lr_scheduler="cosine", seed=settings.seed, logging_steps=max(settings.superthoughts_steps // 10, 1),
        save_steps=0, progress_bar=False, mtp_input=mtp_input, training_args={"use_cpu": True},
    ))
    metrics = {"train_seconds": time.perf_counter() - started, "global_step": result.global_step,
               "train_loss": result.metrics.get("train_loss"),
               "final_losses": [e for e in result.log_history if "loss" in e][-1:]}
    replace_text(marker, json.dumps(metrics) + "\n")
    return metrics


def evaluate_variants(settings: DemoSettings, root: Path, thresholds: list[float]) -> dict[str, Any]:
    """Both fine-tuned models at every threshold and in pairs mode, against the initial SFT model."""
    from superthoughts_ext import eval_data
    from superthoughts_ext.demo.task import make_split
    from superthoughts_ext.demo.tokenizer import build_tokenizer
    from superthoughts_ext.evaluation import evaluate
    from superthoughts_ext.modeling import load_model

    tokenizer = build_tokenizer()
    test = make_split("test", settings.eval_problems, seed=DATA_SEED)
    rows = [eval_data.Problem(id=f"demo-{i}", question=p.question, answer=p.answer) for i, p in enumerate(test)]
    common = dict(batch_size=settings.eval_batch_size, max_new_tokens=settings.max_new_tokens, progress=False)

    def scored(model: Any, mode: str, **kwargs: Any) -> dict[str, Any]:
        s = evaluate(model, tokenizer, "math500", rows, mode=mode, **kwargs, **common)
        steps = s.mean_steps * s.n
        return {"mode": mode, "threshold": s.threshold, "accuracy": s.accuracy, "mean_tokens": s.mean_tokens,
                "mean_steps": s.mean_steps, "pair_rate": s.mean_pair_steps * s.n / steps if steps else 0.0}

    sft = scored(load_model(root / "initial_sft"), "standard")
    out: dict[str, Any] = {"initial_sft": sft}
    for mtp_input in MTP_INPUTS:
        model = load_model(root / mtp_input)
        assert model.config.mtp_input == mtp_input
        runs = [scored(model, "superthoughts", threshold=t) for t in thresholds] + [scored(model, "pairs")]
        for run in runs:
            run["reduction"] = 1.0 - run["mean_steps"] / sft["mean_tokens"]
        out[mtp_input] = runs
    return out


def step_times(settings: DemoSettings, root: Path, threshold: float, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Median seconds per forward pass of the next_token model's generate, through its own stepper
    and through the unit stepper (config switched), at batch = all problems and batch 1."""
    from superthoughts_ext.demo.task import chat_messages, make_split
    from superthoughts_ext.demo.tokenizer import build_tokenizer
    from superthoughts_ext.generate import generate
    from superthoughts_ext.modeling import load_model

    tokenizer = build_tokenizer()
    model = load_model(root / "next_token")
    test = make_split("test", settings.eval_problems, seed=DATA_SEED)
    texts = [tokenizer.apply_chat_template(chat_messages(p), tokenize=False, add_generation_prompt=True) for p in test]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out: dict[str, Any] = {}
    kwargs = dict(max_new_tokens=new_tokens, threshold=threshold, ignore_eos=True, compile=False)
    for rows in (len(texts), 1):
        ids, mask = batch["input_ids"][:rows], batch["attention_mask"][:rows]
        per_step: dict[str, list[float]] = {"next_token": [], "unit": []}
        # Interleaved, after one warm-up call each: a load that drifts (a shared machine) hits both.
        for repeat in range(repeats + 1):
            for mtp_input, times in per_step.items():
                model.config.mtp_input = mtp_input
                result = generate(model, ids, mask, **kwargs)
                if repeat > 0:
                    times.append(result.wall_time / result.num_forward_passes)
        model.config.mtp_input = "next_token"
        for mtp_input, times in per_step.items():
            out[f"batch{rows}_{mtp_input}_s_per_step"] = statistics.median(times)
        out[f"batch{rows}_overhead"] = out[f"batch{rows}_next_token_s_per_step"] / out[f"batch{rows}_unit_s_per_step"] - 1
    return out


def bench_settings(args: argparse.Namespace) -> DemoSettings:
    """The demo's settings with the step and problem counts and the models' seed `args` gives."""
    changes = {name: getattr(args, name) for name in ("train_steps", "superthoughts_steps", "eval_problems", "seed")
               if getattr(args, name) is not None}
    return replace(DemoSettings(), **changes)


def claim_root(root: Path, seed: int) -> None:
    """Records in `root` the seed its models are trained with; SystemExit when it already holds
    models of another seed (they would be reused from their markers as if trained with `seed`)."""
    record = root / SEED_FILE
    if record.exists():
        held = json.loads(record.read_text(encoding="utf-8"))["seed"]
        if held != seed:
            raise SystemExit(f"--root {root} holds models trained with seed {held}, not --seed {seed}: "
                             "give another --root")
        return
    # "base" too: a run cut off in its initial SFT leaves the random init alone, reused from its marker.
    if any((root / name / DONE_MARKER).exists() for name in ("base", "initial_sft", *MTP_INPUTS)):
        # A root from before the record: its models can only be the default seed's.
        if seed != DemoSettings().seed:
            raise SystemExit(f"--root {root} holds models of unrecorded seed (the default, "
                             f"{DemoSettings().seed}), not --seed {seed}: give another --root")
    replace_text(record, json.dumps({"seed": seed}) + "\n")


def main(args: argparse.Namespace) -> int:
    if args.only is not None:  # a training phase alone writes no results file
        return run(args, None)
    # Checked and held before the hour of training, not found taken (or recorded) after it.
    with held_results_file(args.output, RESULTS_DIR / "mtp_input_demo_cpu.json", args.overwrite,
                           "bench_mtp_input") as path:
        return run(args, path)


def run(args: argparse.Namespace, path: Path | None) -> int:
    """Trains what `args` asks for; with `path` (no --only) evaluates both inputs into it."""
    threads = apply_threads(args)
    settings = bench_settings(args)
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    claim_root(root, settings.seed)
    data = root / "train.jsonl"
    if not data.exists():
        from superthoughts_ext.demo.task import make_split, write_jsonl

        write_jsonl(make_split("train", settings.train_problems, seed=DATA_SEED), data)
    training: dict[str, Any] = {}
    if args.only in (None, "sft"):
        base = build_base(settings, root / "base")
        training["initial_sft"] = train_model(settings, base, data, root / "initial_sft", baseline=True,
                                              steps=settings.train_steps, learning_rate=settings.learning_rate,
                                              device="cpu", retrain=False, progress=False).metrics
    for mtp_input in MTP_INPUTS:
        if args.only in (None, mtp_input):
            training[mtp_input] = fine_tune(settings, root / "initial_sft", data, root / mtp_input, mtp_input)
    if args.only is not None:
        return 0
    report = {
        # "seed" is the models' seed; "data_seed" the problems'.
        "settings": {**asdict(settings), "data_seed": DATA_SEED, "thresholds": args.thresholds},
        "training": training,
        "results": evaluate_variants(settings, root, args.thresholds),
        "step_time": {"threshold": args.thresholds[0], "new_tokens": args.timing_tokens,
                      **step_times(settings, root, args.thresholds[0], args.timing_tokens, args.repeats)},
        "device": device_name("cpu"), "threads": threads, "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "commit": git_commit(),
    }
    replace_text(path, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2), json.dumps(report["step_time"], indent=2), sep="\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of the data and the trained models")
    parser.add_argument("--only", choices=("sft", *MTP_INPUTS), default=None,
                        help="train this model only (and evaluate nothing)")
    parser.add_argument("--train-steps", type=int_at_least(1), default=None, help="initial SFT steps (demo: 900)")
    parser.add_argument("--superthoughts-steps", type=int_at_least(1), default=None,
                        help="fine-tuning steps of each variant (demo: 900)")
    parser.add_argument("--eval-problems", type=int_at_least(1), default=None, help="held-out problems (demo: 100)")
    parser.add_argument("--seed", type=int_at_least(0), default=None,
                        help=f"seed of the models: init, initial SFT and fine-tunes (demo: {DemoSettings().seed}; "
                             f"the problems keep seed {DATA_SEED})")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.999],
                        help="MTP thresholds to decode at (the first is the one timed)")
    parser.add_argument("--timing-tokens", type=int_at_least(1), default=128, help="new tokens per timed call")
    parser.add_argument("--repeats", type=int_at_least(1), default=7, help="timed calls per configuration")
    add_threads_argument(parser)
    add_output_arguments(parser, "benchmarks/results/mtp_input_demo_cpu.json")
    raise SystemExit(main(parser.parse_args()))
