"""Benchmark evaluation: batched decoding, answer grading, summaries and comparisons.

`evaluate` decodes every problem of a benchmark with `superthoughts_ext.generate.generate`
(left-padded batches; greedy, or N samples per problem: `superthoughts_ext.eval_sampling`),
grades the last ``\\boxed{}`` answer, and writes one JSONL record per problem (per sample)
plus a ``<output>.summary.json``. `compare` matches two such files by problem
and reports the accuracy difference and the chain-of-thought length reduction of B (its
decode steps) against A (its tokens) -- the paper's "CoT reduction" of a SuperThoughts
model against its token-by-token baseline.

The records and the summary (and reading records back for a resume) are
`superthoughts_ext.eval_records`; the command line (``superthoughts eval``) is
`superthoughts_ext.eval_cli`; several processes under torchrun, `superthoughts_ext.eval_ranks`.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from superthoughts_ext.eval_compare import compare, compare_runs, format_comparison, format_runs, plot_tradeoff
from superthoughts_ext.eval_data import (BENCHES, SYSTEM_PROMPT, Problem, build_prompt, check_limit, get_bench,
                                         load_problems)
from superthoughts_ext.eval_files import summary_conflict, summary_path
from superthoughts_ext.eval_ranks import (Ranks, check_process_group, from_main, gather, merge_parts, on_every_rank,
                                          part_files, rank_share, records_file_of_rank, remove_parts, take_up_records)
from superthoughts_ext.eval_records import (EvalSummary, format_summary, grade_output, record_line, summarize,
                                            write_summary)
from superthoughts_ext.eval_sampling import Sampling, check_sampling, record_key, sample_seed
from superthoughts_ext.file_writes import writing
from superthoughts_ext.grading import is_correct
from superthoughts_ext.grading_boxes import extract_answer
from superthoughts_ext.run_info import output_lock, write_problem

MODES = ("superthoughts", "pairs", "standard")

# Metadata keys naming what a run decoded (checkpoint, weights dtype, data file): every record
# carries them, and a resumed run must match them.
RUN_KEYS = ("model", "dtype", "data")

__all__ = ["BENCHES", "EvalSummary", "Problem", "compare", "compare_runs", "evaluate", "extract_answer",
           "format_comparison", "format_runs", "format_summary", "is_correct", "load_problems", "plot_tradeoff",
           "summary_path"]


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


def _problems_to_evaluate(rows: Sequence[Problem], *, mode: str, batch_size: int, max_new_tokens: int,
                          limit: int | None, output_jsonl: str | Path | None, resume: bool,
                          overwrite: bool) -> list[Problem]:
    """The first ``limit`` rows; ValueError for arguments `evaluate` cannot run with, before any
    work (FileExistsError for the records of an earlier run, which neither resume nor overwrite
    lets it replace)."""
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
    check_records_file(output_jsonl, resume=resume, overwrite=overwrite)
    return problems


def check_records_file(output_jsonl: str | Path | None, *, resume: bool, overwrite: bool) -> None:
    """FileExistsError when ``output_jsonl`` holds the records of an earlier run and neither
    resume (continue it) nor overwrite (replace it) is given; ValueError for both at once."""
    if resume and overwrite:
        raise ValueError("evaluate: resume keeps the earlier records and overwrite drops them: give one")
    if output_jsonl is not None:
        # Before any decoding: a path that cannot be written failed once the first batch was
        # decoded, or (a sweep) after the thresholds before it.
        if Path(output_jsonl).is_dir():
            raise ValueError(f"evaluate: output {output_jsonl} is a directory; give the records file's path")
        if problem := summary_conflict(output_jsonl):
            raise ValueError(f"evaluate: {problem}")
        for path in (Path(output_jsonl), summary_path(output_jsonl)):
            # Both are rewritten by replace_text (the records too, holding those a resume keeps):
            # an existing file in a folder that is not writable failed once the model had loaded.
            if problem := write_problem(path, replaced=True):
                raise ValueError(f"evaluate: cannot write {path}: {problem}")
    if output_jsonl is not None and not (resume or overwrite):
        path = Path(output_jsonl)
        # A run of several processes cut off left its records in part files beside the output.
        holder = path if path.is_file() and path.stat().st_size > 0 else next(iter(part_files(path)), None)
        if holder is not None:
            raise FileExistsError(f"{holder} holds the records of an earlier run; resume (--resume) continues "
                                  "it, overwrite (--overwrite) replaces it, or give another output file")


@dataclass(frozen=True)
class _Run:
    """What every batch of one `evaluate` call shares: the model and how it decodes, the prompts
    (indexed like ``problems``) and the settings written into every record."""

    model: Any
    tokenizer: Any
    generate_fn: Callable[..., Any]
    bench: str
    mode: str
    threshold: float | None
    max_new_tokens: int
    compile: bool | str
    eos_ids: list[int]
    stop_ids: set[int]
    pad_id: int
    device: Any
    problems: list[Problem]
    prompts: list[str]
    prompt_ids: list[list[int]]
    settings: dict[str, Any]
    sampling: Sampling = Sampling()


# A unit of work: (index of the problem, sample number); greedy runs have sample 0 only.
Item = tuple[int, int]


def _prepare_run(model: Any, tokenizer: Any, generate_fn: Callable[..., Any], bench: str, problems: list[Problem],
                 *, mode: str, threshold: float | None, max_new_tokens: int, compile: bool | str,
                 system_prompt: str | None, metadata: dict[str, Any] | None, sampling: Sampling) -> _Run:
    """Stop and pad ids, the tokenised prompts (ValueError if one exceeds the context) and the settings."""
    from superthoughts_ext.stop_tokens import stop_token_ids

    eos_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = _model_device(model)
    prompts = [build_prompt(tokenizer, problem.question, system_prompt) for problem in problems]
    prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    _check_prompts_fit(model, problems, prompt_ids)
    # Written into every record, so that a resumed run can tell whether it continues this one:
    # the same checkpoint, weights dtype and data file, prompted and decoded the same way.
    settings = {"bench": bench, "mode": mode, **_thresholds_used(model, mode, threshold),
                "max_new_tokens": max_new_tokens, "system_prompt": system_prompt,
                **{key: (metadata or {}).get(key) for key in RUN_KEYS}, **sampling.settings()}
    return _Run(model=model, tokenizer=tokenizer, generate_fn=generate_fn, bench=bench, mode=mode,
                threshold=threshold, max_new_tokens=max_new_tokens, compile=compile, eos_ids=eos_ids,
                stop_ids=set(eos_ids), pad_id=pad_id, device=device, problems=problems, prompts=prompts,
                prompt_ids=prompt_ids, settings=settings, sampling=sampling)


def _decode(run: _Run, batch: list[Item], new_tokens: int) -> Any:
    """generate's result for the (problem, sample) items ``batch``: one left-padded [B, T] call."""
    import torch

    input_ids, attention_mask = _left_pad([run.prompt_ids[i] for i, _ in batch], run.pad_id)
    sampled_args = {}  # none for greedy runs: a generate_fn of the greedy signature keeps working
    if run.sampling.sampled:
        # A seed per row: generate then samples each row as it would alone, so an item decodes
        # alike whatever batch it lands in (--batch-size, the prompts beside it, a resume).
        sampled_args = {"temperature": run.sampling.temperature,
                        "seed": [sample_seed(run.sampling.seed, run.problems[i].id, k) for i, k in batch]}
    with torch.inference_mode():
        return run.generate_fn(run.model, input_ids.to(run.device), attention_mask.to(run.device),
                               max_new_tokens=new_tokens, mode=run.mode, threshold=run.threshold,
                               eos_token_id=run.eos_ids, compile=run.compile, **sampled_args)


def _warm_up(run: _Run, batches: list[list[Item]], bar: Any) -> float:
    """Seconds spent on one short untimed decode per batch size, when generate compiles the step."""
    import torch

    from superthoughts_ext.generate_settings import resolve_compile

    started = time.perf_counter()
    if resolve_compile(run.compile, torch.device(run.device), run.sampling.temperature):
        # The first call of each batch size compiles; warmed up here, no timed batch pays it.
        for size, batch in {len(batch): batch for batch in batches}.items():
            bar.set_postfix_str(f"compiling the decode step for batch size {size}")
            result = _decode(run, batch, min(run.max_new_tokens, WARMUP_TOKENS))
            if not getattr(result, "compiled", True):
                break  # generate decodes this model eagerly (superthoughts_ext.host_state): nothing to warm
    return time.perf_counter() - started


def _record(run: _Run, result: Any, row: int, batch: list[Item]) -> dict[str, Any]:
    """The graded record of item ``batch[row]`` from row ``row`` of its batch's generate result."""
    index, sample = batch[row]
    problem = run.problems[index]
    text = run.tokenizer.decode(_trim(result.sequences[row], run.stop_ids), skip_special_tokens=True)
    return {
        "index": index,
        "id": problem.id,
        # Multiple choice: which shuffle of the options this prompt lists (load_problems' option_orders).
        **({"option_order": problem.option_order} if problem.option_order is not None else {}),
        **({"sample": sample, "sample_seed": sample_seed(run.sampling.seed, problem.id, sample)}
           if run.sampling.sampled else {}),
        "prompt": run.prompts[index],
        "output": text,
        **grade_output(text, problem, run.bench),  # extracted, reference, correct
        "tokens": int(result.num_tokens[row]),
        "steps": int(result.num_steps[row]),
        "pair_steps": int(result.num_pair_steps[row]),
        # No stop token anywhere: the token budget or the model's context (generate
        # ends each row at its own) cut the chain of thought off.
        "hit_limit": not any(token in run.stop_ids for token in result.sequences[row]),
        # The batch decodes together; each problem is charged an equal share.
        "time": float(result.wall_time) / len(batch),
        **run.settings,
    }


def _decode_batches(run: _Run, batches: list[list[Item]], records: list[dict[str, Any]], out_file: IO[str] | None,
                    bar: Any) -> list[str]:
    """Decode and grade each batch into ``records``, on disk after every batch: a crash keeps them.
    Returns the ids of the problems whose decoding met non-finite main-head logits, each once
    (a sampled run's problem is a row per sample)."""
    nonfinite: dict[str, None] = {}  # ordered, as a set of ids
    for batch in batches:
        result = _decode(run, batch, run.max_new_tokens)
        nonfinite.update((run.problems[batch[row][0]].id, None) for row in getattr(result, "nonfinite_rows", []))
        batch_records = [_record(run, result, row, batch) for row in range(len(batch))]
        records.extend(batch_records)
        if out_file is not None:
            with writing(out_file.name):  # an OSError of write() names no file
                out_file.write("".join(record_line(record) + "\n" for record in batch_records))
                out_file.flush()
        # The accuracy first, without a redraw: update() then draws the bar once, with it.
        bar.set_postfix(acc=f"{sum(r['correct'] for r in records) / len(records):.3f}", refresh=False)
        bar.update(len(batch))
    return list(nonfinite)


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
    system_prompt: str | None = SYSTEM_PROMPT,
    overwrite: bool = False,
    label: str | None = None,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int = 0,
    ranks: Ranks | None = None,
) -> EvalSummary:
    """Decode (greedily, or ``samples`` times at ``temperature``) and grade every problem of a benchmark.

    Args:
        model: a SuperThoughtsForCausalLM, or a plain HF causal LM with ``mode="standard"``.
        tokenizer: the checkpoint's tokenizer (its chat template renders the prompt).
        bench: a registry name (`BENCHES`); picks letter or math-verify grading.
        rows: problems from `load_problems`.
        mode: "superthoughts" (pairs with confidence fallback), "pairs" or "standard".
        threshold: confidence threshold for "superthoughts" (None: generate's default).
        batch_size: prompts per generate call (samples of a problem count one each); prompts
            are sorted by length so that each left-padded batch [B, T] wastes little padding.
        max_new_tokens: generation budget per problem.
        limit: evaluate only the first ``limit`` rows.
        output_jsonl: per-problem records (written batch by batch, so a crash keeps the
            finished ones; ``index`` gives the dataset order); the summary goes to
            `summary_path` of it.
        progress: show a progress bar (`superthoughts_ext.progress`: whole lines in a log file).
        generate_fn: replaces `superthoughts_ext.generate.generate` (same signature and
            result fields: sequences, num_tokens, num_steps, num_pair_steps, wall_time). Its
            eos_token_id is `superthoughts_ext.stop_tokens.stop_token_ids(model, tokenizer)`;
            a sampled run also passes temperature and seed (a list: one per row).
        metadata: extra keys (model path, dtype...) stored in the summary JSON; those of
            `RUN_KEYS` (model, dtype, data) are also stored in every record.
        resume: keep the records an interrupted run left in ``output_jsonl`` and evaluate only
            the other problems (samples); the summary covers all of them. The records must share
            this run's bench, mode, thresholds (as decoded: threshold / threshold_main),
            max_new_tokens, system_prompt, temperature, seed and `RUN_KEYS` metadata, else
            ValueError naming the first that differs. ``samples`` may grow (N=4 resumed with 16
            decodes samples 4-15 only; the kept records then say samples 16), not drop a sample
            the file holds.
        label: the progress bar's (default "<bench> [<mode>]").
        overwrite: replace the records an earlier run left in ``output_jsonl``; without it (or
            resume) such a file is a FileExistsError, raised before any work.
        compile: generate's `compile` ("auto": on for CUDA). One compile serves every batch
            of the same size, so on a CPU it pays off over a long benchmark. When it compiles,
            one short untimed generate per batch size runs first (``warmup_time``), so that
            tokens/s measures decoding, not compiling.
        system_prompt: the system message of every prompt (`build_prompt`): by default the
            chain-of-thought prompt `train` uses by default; None leaves it to the chat
            template. Score a model on the prompt it was trained with.
        temperature, samples, seed: 0, 1 (greedy), or ``samples`` decodes of every problem at
            ``temperature`` > 0; sample k of a problem uses the generate seed
            `superthoughts_ext.eval_sampling.sample_seed` (seed, its id, k), per row, so it
            decodes alike in any batch and after a resume. One record per (problem, sample); the
            summary's accuracy is then the mean over samples (avg@N), with accuracy_std, pass@N
            and maj@N (`superthoughts_ext.eval_sampling.sampled_grade_fields`).
        ranks: this process among those of a torchrun launch (`eval_ranks.ranks_from_env`; their
            process group started, `eval_ranks.start_process_group`), each given the same
            arguments: each decodes its share of the problems into a part file beside
            ``output_jsonl`` (needed), and rank 0 merges them into it (`superthoughts_ext.eval_ranks`).
            Every rank returns the summary of the whole run; rank 0 alone shows the progress
            bar (its share) and the non-finite warning. None: this process alone.
    """
    from superthoughts_ext.generate import ContextStopWarning, NonFiniteLogitsWarning
    from superthoughts_ext.progress import progress_bar

    get_bench(bench)  # ValueError for an unknown benchmark, before any work
    sampling = check_sampling(temperature, samples, seed)
    if sampling.sampled and compile is True:
        # generate would refuse it at the first batch, once the records file was opened.
        raise ValueError("evaluate: compile=True needs greedy decoding (temperature 0); sampled decoding runs "
                         "uncompiled (compile='auto')")
    ranks = ranks or Ranks()
    check_process_group(ranks)
    if ranks.distributed and output_jsonl is None:
        raise ValueError("evaluate: several processes need output_jsonl: their records meet in its part files")
    # Held (by rank 0, for every rank) from the check of the records file to the summary: a second
    # run started meanwhile (during this one's model load) passed the check and interleaved its
    # records with these. A lock rank 0 is refused stops the other ranks too.
    with contextlib.ExitStack() as held:
        from_main(ranks, lambda: held.enter_context(output_lock(output_jsonl, "evaluate")))
        started = time.perf_counter()

        def prepare() -> _Run:  # every rank's; a prompt longer than the context, met by all, is printed once
            problems = _problems_to_evaluate(rows, mode=mode, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                             limit=limit, output_jsonl=output_jsonl, resume=resume,
                                             overwrite=overwrite)
            return _prepare_run(model, tokenizer, generate_fn or _default_generate(), bench, problems, mode=mode,
                                threshold=threshold, max_new_tokens=max_new_tokens, compile=compile,
                                system_prompt=system_prompt, metadata=metadata, sampling=sampling)

        run = on_every_rank(ranks, prepare)
        problems = run.problems
        kept: list[dict[str, Any]] = []  # rank 0's: the records of the earlier run a resume continues

        def take_up_earlier_records() -> set[tuple[str, int]]:
            kept.extend(take_up_records(output_jsonl, problems, run.settings, run.prompts, resume=resume))
            return {record_key(record) for record in kept}

        done = from_main(ranks, take_up_earlier_records)
        by_length = sorted(range(len(problems)), key=lambda i: -len(run.prompt_ids[i]))
        order = [(i, k) for i in by_length for k in range(sampling.samples) if (str(problems[i].id), k) not in done]
        mine = rank_share(order, ranks)
        records = [] if ranks.distributed else kept  # the summary's, and the progress bar's accuracy
        out_file = records_file_of_rank(ranks, output_jsonl)
        batches = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]

        share = f" (rank 0 of {ranks.world_size}: its share)" if ranks.distributed else ""
        bar = progress_bar(total=len(records) + len(mine), initial=len(records),
                           desc=(label or f"{bench} [{mode}]") + share, disable=not (progress and ranks.main))
        try:
            with warnings.catch_warnings():
                # Batch row numbers mean nothing here: the records' hit_limit and the summary count
                # context stops; problems that met non-finite logits are named once, below.
                warnings.simplefilter("ignore", ContextStopWarning)
                warnings.simplefilter("ignore", NonFiniteLogitsWarning)
                warmup_time = _warm_up(run, batches, bar)
                nonfinite = _decode_batches(run, batches, records, out_file, bar)
        finally:
            bar.close()
            if out_file is not None:
                with writing(out_file.name):  # flushes what a failed write left in the buffer
                    out_file.close()
        # Where the ranks meet: the warm-ups ran side by side, so the run waited for the longest.
        per_rank = gather(ranks, (warmup_time, nonfinite))
        warmup_time = max(seconds for seconds, _ in per_rank)
        nonfinite = list(dict.fromkeys(problem for _, ids in per_rank for problem in ids))
        if nonfinite and ranks.main:
            warnings.warn(f"evaluate: {len(nonfinite)} problems met main-head logits with no finite maximum (NaN, "
                          "all -inf, or +inf, as from a float16 model that overflows) and got the pad id there: "
                          f"{', '.join(nonfinite[:10])}{', ...' if len(nonfinite) > 10 else ''}; load the model in "
                          "bfloat16 or float32", NonFiniteLogitsWarning, stacklevel=2)

        def finish() -> EvalSummary:
            merged = merge_parts(output_jsonl, problems, run.settings, run.prompts) if ranks.distributed else records
            summary = summarize(merged, run.settings, batch_size=batch_size,
                                wall_time=time.perf_counter() - started, n_resumed=len(done), warmup_time=warmup_time)
            if output_jsonl is not None:
                write_summary(output_jsonl, summary, metadata)
                remove_parts(output_jsonl)  # their records are in the output now
            return summary

        return from_main(ranks, finish)
