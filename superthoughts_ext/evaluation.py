"""Benchmark evaluation: batched greedy decoding, answer grading, summaries and comparisons.

`evaluate` decodes every problem of a benchmark with `superthoughts_ext.generate.generate`
(left-padded batches), grades the last ``\\boxed{}`` answer, and writes one JSONL record
per problem plus a ``<output>.summary.json``. `compare` matches two such files by problem
and reports the accuracy difference and the chain-of-thought length reduction of B (its
decode steps) against A (its tokens) -- the paper's "CoT reduction" of a SuperThoughts
model against its token-by-token baseline.

The command line (``superthoughts eval``) is `superthoughts_ext.eval_cli`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from superthoughts_ext.eval_compare import (compare, compare_runs, format_comparison, format_runs, plot_tradeoff,
                                            summary_path)
from superthoughts_ext.eval_data import (BENCHES, Problem, build_prompt, check_limit, get_bench, json_lines,
                                         load_problems)
from superthoughts_ext.grading import extract_answer, extract_choice, is_correct

MODES = ("superthoughts", "pairs", "standard")

# Metadata keys naming what a run decoded (checkpoint, weights dtype, data file): every record
# carries them, and a resumed run must match them.
RUN_KEYS = ("model", "dtype", "data")

__all__ = [
    "BENCHES",
    "EvalSummary",
    "Problem",
    "compare",
    "compare_runs",
    "evaluate",
    "extract_answer",
    "format_comparison",
    "format_runs",
    "format_summary",
    "is_correct",
    "load_problems",
    "plot_tradeoff",
    "summary_path",
]


@dataclass
class EvalSummary:
    """Aggregate results of one `evaluate` run.

    ``cot_reduction`` = 1 - total decode steps / total generated tokens OF THIS RUN (0 for
    standard decoding, up to 0.5 when every step emits a pair): the steps pairs saved, not the
    paper's CoT reduction, which is against the baseline's tokens (`compare`). The field keeps
    its name for existing readers; the printed line says "steps saved vs tokens (this run)".
    ``generation_time`` sums the batch wall times reported by `generate` (of resumed records
    too); ``wall_time`` is this call's, tokenisation and grading included: after a resume it
    can be the shorter of the two. ``n_resumed`` records came from the earlier run (--resume).
    ``warmup_time``: this call's untimed warm-up (one short generate per batch size when the
    decode step is compiled, so that the compile is not charged to generation_time); part of
    wall_time.
    """

    bench: str
    mode: str
    threshold: float | None  # as decoded: the model's own when none was given (None: not superthoughts)
    threshold_main: float | None
    max_new_tokens: int  # the budget behind mean_tokens and most of n_hit_limit
    batch_size: int
    n: int
    n_correct: int
    accuracy: float
    n_no_box: int
    n_hit_limit: int  # outputs cut off (token budget or context): no stop token in them
    mean_tokens: float
    mean_steps: float
    mean_pair_steps: float
    cot_reduction: float
    generation_time: float
    wall_time: float
    tokens_per_s: float
    n_resumed: int = 0
    warmup_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# New tokens of the untimed warm-up call per batch size: decode steps enough for torch.compile
# to build the step, which then serves the timed calls of that size (prompt length and
# max_new_tokens are dynamic sizes of the compiled step).
WARMUP_TOKENS = 8


def _default_generate() -> Callable[..., Any]:
    from superthoughts_ext.generate import generate

    return generate


def _model_device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


def _check_prompts_fit(model: Any, problems: list[Problem], prompt_ids: list[list[int]]) -> None:
    """ValueError naming the problems whose prompt is longer than the model's context (generate
    refuses their batch, naming only a length), before any batch is decoded."""
    from superthoughts_ext.generate import model_context

    context = model_context(model)
    if context is None:
        return
    long = [f"{problems[i].id!r} ({len(ids)} tokens)" for i, ids in enumerate(prompt_ids) if len(ids) > context]
    if long:
        raise ValueError(f"evaluate: {len(long)} prompt(s) longer than the model's context (max_position_embeddings="
                         f"{context}): {', '.join(long[:5])}{' ...' if len(long) > 5 else ''}")


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """input_ids [B, T] left-padded with pad_id, attention_mask [B, T] (1 = real token)."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def _trim(sequence: Sequence[int], stop_ids: Collection[int]) -> list[int]:
    for position, token in enumerate(sequence):
        if token in stop_ids:
            return list(sequence[:position])
    return list(sequence)


def _thresholds_used(model: Any, mode: str, threshold: float | None) -> dict[str, float | None]:
    """The confidence thresholds generate decodes with, resolved as it does (the argument, else
    model.config's): None is not a setting, "the model's default" changes with the model."""
    if mode != "superthoughts":  # standard and pairs take no threshold
        return {"threshold": None, "threshold_main": None}
    config = getattr(model, "config", None)
    used = threshold if threshold is not None else getattr(config, "threshold", None)
    main = getattr(config, "threshold_main", 0.0)  # generate's default when the config has none
    return {"threshold": None if used is None else float(used), "threshold_main": float(main)}


def _setting_mismatch(record: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """What tells `record` apart from a record of this run (None when nothing does)."""
    for key, value in settings.items():
        if key not in record:
            return f"has no {key} (written by an older version?), this run has {key}={value!r}"
        if record[key] != value:
            return f"was written with {key}={record[key]!r}, this run has {key}={value!r}"
    return None


def _resumable_records(path: Path, problems: Sequence[Problem], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The records an interrupted `evaluate` left in `path` (none if it does not exist). Its
    last line may be torn by the crash and is then dropped; records of other settings, of
    problems outside `problems` or repeating a problem are an error, not something to mix in."""
    if not path.is_file():
        return []
    ids = {problem.id for problem in problems}
    lines = json_lines(path.read_text(encoding="utf-8"))
    records = []
    seen: dict[Any, int] = {}  # problem id -> line of its record
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"resume: {path}:{number} is not a JSON record") from None
        if mismatch := _setting_mismatch(record, settings):
            raise ValueError(f"resume: {path}:{number} {mismatch}; give another output file or leave out resume")
        if record.get("id") not in ids:
            raise ValueError(f"resume: {path}:{number} holds problem {record.get('id')!r}, which is not among the "
                             f"{len(ids)} problems of this run")
        if record["id"] in seen:  # a summary would count the problem twice
            raise ValueError(f"resume: {path}:{number} repeats problem {record['id']!r} of line {seen[record['id']]}; "
                             "give another output file or leave out resume")
        seen[record["id"]] = number
        records.append(record)
    return records


def evaluate(
    model: Any,
    tokenizer: Any,
    bench: str,
    rows: Sequence[Problem],
    *,
    mode: str = "superthoughts",
    threshold: float | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 2048,
    limit: int | None = None,
    output_jsonl: str | Path | None = None,
    progress: bool = True,
    generate_fn: Callable[..., Any] | None = None,
    metadata: dict[str, Any] | None = None,
    resume: bool = False,
    compile: bool | str = "auto",
) -> EvalSummary:
    """Greedy-decode and grade every problem of a benchmark.

    Args:
        model: a SuperThoughtsForCausalLM, or a plain HF causal LM with ``mode="standard"``.
        tokenizer: the checkpoint's tokenizer (its chat template renders the prompt).
        bench: a registry name (`BENCHES`); picks letter or math-verify grading.
        rows: problems from `load_problems`.
        mode: "superthoughts" (pairs with confidence fallback), "pairs" or "standard".
        threshold: confidence threshold for "superthoughts" (None: generate's default).
        batch_size: prompts per generate call; prompts are sorted by length so that each
            left-padded batch [B, T] wastes little padding.
        max_new_tokens: generation budget per problem.
        limit: evaluate only the first ``limit`` rows.
        output_jsonl: per-problem records (written batch by batch, so a crash keeps the
            finished ones; ``index`` gives the dataset order); the summary goes to
            `summary_path` of it.
        progress: show a tqdm bar.
        generate_fn: replaces `superthoughts_ext.generate.generate` (same signature and
            result fields: sequences, num_tokens, num_steps, num_pair_steps, wall_time). Its
            eos_token_id is `superthoughts_ext.stop_tokens.stop_token_ids(model, tokenizer)`.
        metadata: extra keys (model path, dtype...) stored in the summary JSON; those of
            `RUN_KEYS` (model, dtype, data) are also stored in every record.
        resume: keep the records an interrupted run left in ``output_jsonl`` and evaluate only
            the other problems; the summary covers all of them. The records must share this
            run's bench, mode, thresholds (as decoded: threshold / threshold_main),
            max_new_tokens and `RUN_KEYS` metadata, else ValueError naming the first that differs.
        compile: generate's `compile` ("auto": on for CUDA). One compile serves every batch
            of the same size, so on a CPU it pays off over a long benchmark. When it compiles,
            one short untimed generate per batch size runs first (``warmup_time``), so that
            tokens/s measures decoding, not compiling.
    """
    import torch
    from tqdm.auto import tqdm

    spec = get_bench(bench)
    if mode not in MODES:
        raise ValueError(f"evaluate: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"evaluate: batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    check_limit(limit)
    problems = list(rows)[:limit] if limit is not None else list(rows)
    if not problems:
        raise ValueError("evaluate: no problems to evaluate")
    if resume and output_jsonl is None:
        raise ValueError("evaluate: resume needs the output_jsonl of the interrupted run")
    generate_fn = generate_fn or _default_generate()

    started = time.perf_counter()
    from superthoughts_ext.generate import resolve_compile
    from superthoughts_ext.stop_tokens import stop_token_ids

    eos_ids = stop_token_ids(model, tokenizer)
    stop_ids = set(eos_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = _model_device(model)
    prompts = [build_prompt(tokenizer, problem.question) for problem in problems]
    prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    _check_prompts_fit(model, problems, prompt_ids)
    order = sorted(range(len(problems)), key=lambda i: -len(prompt_ids[i]))

    # Written into every record, so that a resumed run can tell whether it continues this one:
    # the same checkpoint, weights dtype and data file, decoded the same way.
    settings = {"bench": bench, "mode": mode, **_thresholds_used(model, mode, threshold),
                "max_new_tokens": max_new_tokens, **{key: (metadata or {}).get(key) for key in RUN_KEYS}}
    records = _resumable_records(Path(output_jsonl), problems, settings) if resume else []
    done = {r["id"] for r in records}
    order = [i for i in order if problems[i].id not in done]
    out_file = None
    if output_jsonl is not None:
        Path(output_jsonl).parent.mkdir(parents=True, exist_ok=True)
        out_file = open(output_jsonl, "w", encoding="utf-8")
        for record in records:  # rewritten: a line torn by the crash is dropped
            out_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        # On disk before any decoding: a process killed in the warm-up or the first batch (OOM,
        # preemption) must not take the kept records with it (the file was just truncated).
        out_file.flush()
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def decode(batch: list[int], new_tokens: int) -> Any:
        input_ids, attention_mask = _left_pad([prompt_ids[i] for i in batch], pad_id)
        with torch.inference_mode():
            return generate_fn(model, input_ids.to(device), attention_mask.to(device), max_new_tokens=new_tokens,
                               mode=mode, threshold=threshold, eos_token_id=eos_ids, compile=compile)

    bar = tqdm(total=len(problems), initial=len(records), desc=f"{bench} [{mode}]", disable=not progress)
    warmup_started = time.perf_counter()
    try:
        if resolve_compile(compile, torch.device(device), 0.0):
            # The first call of each batch size compiles; warmed up here, no timed batch pays it.
            for size, batch in {len(batch): batch for batch in batches}.items():
                bar.set_postfix_str(f"compiling the decode step for batch size {size}")
                decode(batch, min(max_new_tokens, WARMUP_TOKENS))
        warmup_time = time.perf_counter() - warmup_started
        for batch in batches:
            result = decode(batch, max_new_tokens)
            for row, index in enumerate(batch):
                problem = problems[index]
                text = tokenizer.decode(_trim(result.sequences[row], stop_ids), skip_special_tokens=True)
                # A multiple-choice answer boxed as an option's text is recorded as its letter.
                answer = extract_choice(text, problem.options) if spec.multiple_choice else extract_answer(text)
                record = {
                    "index": index,
                    "id": problem.id,
                    "prompt": prompts[index],
                    "output": text,
                    "extracted": answer,
                    "reference": problem.answer,
                    "correct": is_correct(answer, problem.answer, bench, question=problem.question),
                    "tokens": int(result.num_tokens[row]),
                    "steps": int(result.num_steps[row]),
                    "pair_steps": int(result.num_pair_steps[row]),
                    # No stop token anywhere: the token budget or the model's context (generate
                    # ends each row at its own) cut the chain of thought off.
                    "hit_limit": not any(token in stop_ids for token in result.sequences[row]),
                    # The batch decodes together; each problem is charged an equal share.
                    "time": float(result.wall_time) / len(batch),
                    **settings,
                }
                records.append(record)
                if out_file is not None:
                    out_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            if out_file is not None:
                out_file.flush()
            bar.update(len(batch))
            bar.set_postfix(acc=f"{sum(r['correct'] for r in records) / len(records):.3f}")
    finally:
        bar.close()
        if out_file is not None:
            out_file.close()

    # Each record holds its share of its batch's wall time: their sum is the decoding time,
    # resumed records included.
    generation_time = sum(r["time"] for r in records)
    total_tokens = sum(r["tokens"] for r in records)
    total_steps = sum(r["steps"] for r in records)
    n = len(records)
    summary = EvalSummary(
        bench=bench,
        mode=mode,
        threshold=settings["threshold"],
        threshold_main=settings["threshold_main"],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        n=n,
        n_correct=sum(r["correct"] for r in records),
        accuracy=sum(r["correct"] for r in records) / n,
        n_no_box=sum(r["extracted"] is None for r in records),
        n_hit_limit=sum(r["hit_limit"] for r in records),
        mean_tokens=total_tokens / n,
        mean_steps=total_steps / n,
        mean_pair_steps=sum(r["pair_steps"] for r in records) / n,
        cot_reduction=1.0 - total_steps / total_tokens if total_tokens else 0.0,
        generation_time=generation_time,
        wall_time=time.perf_counter() - started,
        tokens_per_s=total_tokens / generation_time if generation_time > 0 else 0.0,
        n_resumed=len(done),
        warmup_time=warmup_time,
    )
    if output_jsonl is not None:
        payload = {**summary.to_dict(), **(metadata or {}), "records": str(output_jsonl)}
        summary_path(output_jsonl).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: EvalSummary) -> str:
    """One line per run, as `superthoughts eval` prints it."""
    return (
        f"{summary.bench} [{summary.mode}]: accuracy {summary.accuracy:.4f} ({summary.n_correct}/{summary.n}), "
        f"no box {summary.n_no_box}, cut off (token budget or context) {summary.n_hit_limit}, "
        f"mean tokens {summary.mean_tokens:.1f}, mean steps {summary.mean_steps:.1f}, "
        # Not "CoT reduction": that one is measured against the baseline (`compare`).
        f"steps saved vs tokens (this run) {summary.cot_reduction:.2%}, {summary.tokens_per_s:.1f} tokens/s, "
        f"wall {summary.wall_time:.1f} s"
        + (f" (warm-up for the compiled step {summary.warmup_time:.1f} s, untimed)" if summary.warmup_time >= 0.05 else "")
        + (f" ({summary.n_resumed} records kept from the earlier run)" if summary.n_resumed else "")
    )
