"""`superthoughts eval`: evaluate a checkpoint on a benchmark (one threshold or a sweep with the
model loaded once), compare result files (`--compare`, `--plot`), set runs on several benches in
one table (`--table`), or grade their stored outputs again with the current grader (`--regrade`).

    superthoughts eval --model DIR --bench math500 --data math500.jsonl --output st.jsonl
    superthoughts eval --model DIR --bench math500 --data math500.jsonl --output st.jsonl --threshold 0.9 0.99
    superthoughts eval --model DIR --bench amc23 --data amc23.jsonl --output st.jsonl --temperature 0.6 --samples 8
    superthoughts eval --compare baseline.jsonl st-t0.9.jsonl st-t0.99.jsonl --plot sweep.png
    superthoughts eval --regrade baseline.jsonl st.jsonl
    superthoughts eval --table math500/sft.jsonl math500/st.jsonl amc23/sft.jsonl amc23/st.jsonl
    # 8 GPUs, each process a share of the problems, one records file (superthoughts_ext.eval_ranks)
    torchrun --nproc_per_node 8 -m superthoughts_ext.eval_cli --model DIR --bench math500 --output st.jsonl
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from superthoughts_ext.cli import (TypedBooleanOptional, module_main, record_typed_options, resume_hint,
                                   transformers_progress_bars, typed_options, utf8_text)
from superthoughts_ext.eval_compare import (compare_runs, format_comparison, format_runs, plot_tradeoff, record_suffix,
                                            run_name, threshold_label)
from superthoughts_ext.eval_data import BENCHES, SYSTEM_PROMPT, Problem, load_problems
from superthoughts_ext.eval_ranks import (OtherRankFailed, Ranks, ReportedByAnotherRank, close_process_group,
                                          on_every_rank, rank_device, ranks_from_env, start_process_group)
from superthoughts_ext.eval_sampling import check_sampling
from superthoughts_ext.eval_table import TABLE_FORMATS
from superthoughts_ext.evaluation import MODES, check_records_file, evaluate, format_summary, summary_path
from superthoughts_ext.file_writes import WriteFailed
from superthoughts_ext.hub_cache import resolve_model_path, snapshot_name
from superthoughts_ext.run_info import write_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``superthoughts eval``; each notes when it is typed (`cli.typed_options`),
    so that --table and --regrade refuse what they would ignore, defaults included."""
    record_typed_options(parser)
    parser.add_argument("--model", help="checkpoint directory (SuperThoughts or plain HF causal LM), or a "
                        "Hugging Face repo id (org/name) in the local hub cache")
    parser.add_argument("--tokenizer", help="directory of the tokenizer (default: the checkpoint's own)")
    parser.add_argument("--bench", choices=sorted(BENCHES), help="benchmark name")
    parser.add_argument("--data", help="local JSONL/JSON/CSV/parquet copy of the benchmark (else the hub)")
    parser.add_argument(
        "--mode",
        choices=MODES,
        help="decoding mode (default: superthoughts for SuperThoughts checkpoints, standard otherwise)",
    )
    parser.add_argument(
        "--threshold", type=float, nargs="+",
        help="confidence threshold for superthoughts mode (default: the model's); several values sweep them with "
             "the model loaded once, one output file per threshold (OUTPUT-t0.99.jsonl)",
    )
    # One or the other (as in train): both write system_prompt, and the last given would win.
    system = parser.add_mutually_exclusive_group()
    system.add_argument("--system-prompt", default=SYSTEM_PROMPT, type=utf8_text, metavar="TEXT",
                        help="system message of every prompt (default: the chain-of-thought prompt `superthoughts "
                             "train` uses by default); give the one the model was trained with")
    system.add_argument("--template-system-prompt", action="store_const", const=None, dest="system_prompt",
                        help="no system message of ours: the chat template writes its own default, if any (for "
                             "models trained with train's --template-system-prompt)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N problems")
    parser.add_argument("--option-orders", type=int, default=1, metavar="N",
                        help="multiple-choice benchmarks (gpqa_diamond): ask each question with its options in N "
                             "distinct orders (1-24) and average the accuracy over them (default 1; order 0 is the "
                             "same in every run)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="sampling temperature (default 0: greedy decoding, one pass)")
    parser.add_argument("--samples", type=int, default=1, metavar="N",
                        help="decode every problem N times (needs --temperature > 0; with --option-orders, every "
                             "order N times); the accuracy is then the mean over samples (avg@N), reported with "
                             "its std over the N samples, pass@N and maj@N")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of a sampled run: sample k of a problem decodes with a seed derived from (S, "
                             "its id, k), written in its record, whatever the batch or a resume (greedy runs "
                             "ignore it)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (each sample counts one)")
    parser.add_argument("--max-new-tokens", type=int, default=2048, help="response budget per problem")
    parser.add_argument("--output", help="per-problem JSONL (default eval-<bench>-<mode>.jsonl)")
    parser.add_argument("--problem-field", help="column holding the problem text (default: the bench's, e.g. "
                        "problem / question)")
    parser.add_argument("--answer-field", help="column holding the reference answer (default: the bench's, e.g. "
                        "answer / final_answer)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu... (default: cuda when available)")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
        help="model weights dtype; auto = the checkpoint's"
    )
    parser.add_argument("--compile", action=TypedBooleanOptional, default=None,
                        help="torch.compile the decode step (default: on for CUDA, off on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: keep the records already in the output file "
                             "(same model, dtype, data, bench, mode, threshold, max-new-tokens, temperature, seed; "
                             "--samples may grow, adding samples to each problem, not drop samples the file holds) "
                             "and evaluate the rest")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the records an earlier run left in the output file (else that is an error)")
    parser.add_argument(
        "--compare", nargs="+", metavar="RUN.jsonl",
        help="compare result files, the first one the baseline (no model needed); "
             "more than two: one table over the problems present in every file",
    )
    parser.add_argument("--plot", help="with --compare: write an accuracy vs CoT length plot (PNG) here")
    parser.add_argument(
        "--table", nargs="+", metavar="RUN.jsonl",
        help="one table over several benches, a row per method (no model needed): each run's accuracy and CoT "
             "reduction against the baseline's run of its bench, and their mean over the benches",
    )
    parser.add_argument("--table-labels", nargs="+", metavar="LABEL",
                        help="with --table: the method of each file, in order (default: the checkpoint's name "
                             "with the mode and threshold its records keep)")
    parser.add_argument("--table-baseline", metavar="LABEL",
                        help="with --table: the method the CoT reduction is measured against (default: the one "
                             "method whose runs all decode in standard mode)")
    parser.add_argument("--table-output", metavar="FILE",
                        help="with --table: also write the table here, as CSV (.csv), JSON (.json) or Markdown")
    parser.add_argument("--table-format", choices=TABLE_FORMATS,
                        help="with --table-output: the file's format (default: by its suffix)")
    parser.add_argument(
        "--regrade", nargs="+", metavar="RUN.jsonl",
        help="grade the outputs stored in result files again with the current grader, without decoding "
             "(--bench, --data and --option-orders default to those the records name); rewrites their "
             "records and summaries",
    )


def _run_compare(paths: list[str], plot: str | None) -> int:
    if len(paths) < 2:
        raise ValueError(f"--compare needs a baseline and at least one more result file, got {len(paths)}")
    if plot and Path(plot).is_dir():
        raise ValueError(f"--plot {plot} is a directory; give the PNG file's path")
    if plot and (problem := write_problem(Path(plot))):
        raise ValueError(f"--plot {plot} cannot be written: {problem}")
    results = compare_runs(paths[0], paths[1:])  # with two files: exactly compare(A, B), plus labels
    print(format_comparison(results[0]) if len(paths) == 2 else format_runs(results))
    if plot:
        print(f"plot: {plot_tradeoff(results, plot)}")
    return 0


# The options that only --table reads: argparse dest -> option.
TABLE_OPTIONS = {"table_labels": "--table-labels", "table_baseline": "--table-baseline",
                 "table_output": "--table-output", "table_format": "--table-format"}
# What --table reads; it refuses any other option typed beside it, which it would ignore
# (--output wrote no table, --bench kept every bench, --batch-size decodes nothing).
TABLE_READS = {"table", *TABLE_OPTIONS, "no_progress"}


def _ignored_options(args: argparse.Namespace, reads: set[str]) -> list[str]:
    """The options typed on the command line (as typed: ``--no-compile``), in the order typed,
    whose dest is not in ``reads``: a value equal to the default counts, ``--batch-size 8`` too."""
    return [option for dest, option in typed_options(args).items() if dest not in reads]


def _run_table(args: argparse.Namespace) -> int:
    from superthoughts_ext.eval_table import build_table, format_markdown, write_table

    others = _ignored_options(args, TABLE_READS)
    if others:
        hint = " (--table-output FILE writes the table)" if "--output" in others else ""
        raise ValueError(f"--table does not go with {', '.join(others)}{hint}: it reads finished result files")
    if args.table_format and not args.table_output:
        raise ValueError("--table-format goes with --table-output FILE (stdout gets the Markdown table)")
    # write_table replaces the file through a new one in its folder: that must be writable too.
    if args.table_output and (problem := write_problem(Path(args.table_output), replaced=True)):
        raise ValueError(f"--table-output {args.table_output} cannot be written: {problem}")
    table = build_table(args.table, args.table_labels, args.table_baseline)
    print(format_markdown(table))
    if args.table_output:
        print(f"table: {write_table(table, args.table_output, args.table_format)}")
    return 0


# What --regrade reads; it refuses any other option typed beside it (a regrade keeps the model,
# decoding and sampling the records were made with).
REGRADE_READS = {"regrade", "bench", "data", "option_orders", "problem_field", "answer_field", "no_progress"}


def _run_regrade(args: argparse.Namespace) -> int:
    from superthoughts_ext.eval_regrade import format_regrade, regrade_runs, stored_settings

    conflicts = _ignored_options(args, REGRADE_READS)
    if conflicts:
        raise ValueError(f"--regrade does not go with {', '.join(conflicts)}: it grades the stored outputs "
                         "again, without a model or decoding")
    # What the options leave out comes from the records (each keeps its bench, data file and
    # option order), so a regrade of local data never falls back to the hub.
    stored = stored_settings(args.regrade, ["bench"] + (["data"] if args.data is None else []))
    if args.bench and stored["bench"] and args.bench != stored["bench"]:
        raise ValueError(f"--regrade: the records were evaluated on {stored['bench']!r}, not {args.bench!r}")
    bench = args.bench or stored["bench"]
    if not bench:
        missing = [path for path in args.regrade if not Path(path).is_file()]
        if missing:  # not a file whose records fail to name their benchmark
            raise FileNotFoundError(f"evaluation results not found: {missing[0]}")
        raise ValueError("--regrade needs --bench (the records do not name the benchmark they were evaluated on)")
    data = args.data or stored["data"]
    if args.data is None and data is not None and not Path(data).is_file():
        raise FileNotFoundError(f"--regrade: the records were evaluated on {data}, which is not there now; "
                                "give --data (a copy of it)")
    option_orders = args.option_orders if "option_orders" in typed_options(args) else stored["option_orders"]
    # Every problem: the grader needs the questions (and GPQA's options), which records lack.
    problems = load_problems(bench, data, problem_field=args.problem_field, answer_field=args.answer_field,
                             option_orders=option_orders)
    for result in regrade_runs(args.regrade, bench, problems, progress=not args.no_progress):
        print(format_regrade(result))
    return 0


def _is_superthoughts(model: Any) -> bool:
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    return isinstance(model, SuperThoughtsForCausalLM)


def _error(message: object, ranks: Ranks = Ranks(), *, every_rank: bool = False) -> int:
    """Prints the error and returns exit status 2. Under torchrun rank 0 alone prints what every
    rank meets alike (the options, the data); ``every_rank``: an error that may be this rank's
    own (its GPU, a collective), printed by each rank that meets it, naming it."""
    if ranks.main or every_rank:
        where = f" (rank {ranks.rank})" if ranks.distributed and not ranks.main else ""
        print(f"superthoughts eval{where}: error: {message}", file=sys.stderr)
    return 2


def _checked_problems(args: argparse.Namespace) -> list[Problem]:
    """The problems to decode, once the options that need no model are checked (ValueError)."""
    if args.plot:
        raise ValueError("--plot goes with --compare A.jsonl B.jsonl [...]")
    if not args.model or not args.bench:
        raise ValueError("--model and --bench are required (or --compare A.jsonl B.jsonl, or --regrade RUN.jsonl)")
    check_thresholds(args.threshold)  # before loading the model
    check_sampling(args.temperature, args.samples, args.seed)
    if args.temperature and args.compile:
        raise ValueError("--compile goes with greedy decoding: sampled decoding runs uncompiled")
    if args.threshold and args.mode not in (None, "superthoughts"):
        raise ValueError(f"--threshold applies to superthoughts mode, not {args.mode}")
    if args.mode in ("superthoughts", "pairs"):
        from superthoughts_ext.checkpoint import is_superthoughts_checkpoint

        directory = Path(resolve_model_path(args.model, "--model"))  # a cached repo id: its snapshot folder
        if (directory / "config.json").is_file() and not is_superthoughts_checkpoint(directory):
            raise ValueError(f"{args.model} is a plain model; use --mode standard")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError(f"--batch-size ({args.batch_size}) and --max-new-tokens ({args.max_new_tokens}) "
                         "must be >= 1")
    return load_problems(
        args.bench, args.data, problem_field=args.problem_field, answer_field=args.answer_field, limit=args.limit,
        option_orders=args.option_orders,
    )


def _decoding_mode(args: argparse.Namespace, model: Any) -> str:
    """--mode, else the checkpoint's own (superthoughts or standard); ValueError where the model
    or --threshold cannot take it."""
    superthoughts = _is_superthoughts(model)
    mode = args.mode or ("superthoughts" if superthoughts else "standard")
    if mode != "standard" and not superthoughts:
        raise ValueError(f"{args.model} is a plain model; use --mode standard")
    if args.threshold and mode != "superthoughts":
        raise ValueError(f"--threshold applies to superthoughts mode, not {mode}")
    return mode


def _evaluate_each_threshold(args: argparse.Namespace, model: Any, tokenizer: Any, device: str,
                             problems: list[Problem], mode: str, ranks: Ranks) -> int:
    """One `evaluate` per --threshold (one output file each), the model loaded once."""
    thresholds = args.threshold or [None]
    outputs = output_files(args, mode)
    if not args.output:  # run() checked --output's files before the model loaded; the default names need the mode
        for path in outputs:  # every file of a sweep before its first threshold decodes
            check_records_file(path, resume=args.resume, overwrite=args.overwrite)
    for threshold, path in zip(thresholds, outputs):
        summary = evaluate(
            model,
            tokenizer,
            args.bench,
            problems,
            mode=mode,
            threshold=threshold,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            output_jsonl=path,
            progress=not args.no_progress,
            metadata=run_metadata(args, model, device, ranks),
            resume=args.resume,
            overwrite=args.overwrite,
            compile="auto" if args.compile is None else args.compile,
            system_prompt=args.system_prompt,
            temperature=args.temperature,
            samples=args.samples,
            seed=args.seed,
            ranks=ranks,
        )
        if ranks.main:
            print(format_summary(summary))
            print(f"records: {path}; summary: {summary_path(path)}")
    if len(outputs) > 1 and ranks.main:
        print("against a baseline: superthoughts eval --compare BASELINE.jsonl "
              + " ".join(str(path) for path in outputs) + " --plot tradeoff.png")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``superthoughts eval``; returns the exit status (2 for a usage or data error). Under
    torchrun (WORLD_SIZE > 1) every process runs it: see `superthoughts_ext.eval_ranks`."""
    try:
        ranks = ranks_from_env()
    except ValueError as error:
        return _error(error)
    with transformers_progress_bars(not args.no_progress and ranks.main), warnings.catch_warnings():
        if not ranks.main:
            # Rank 0 warns for all of the data and model every rank reads (skipped rows came N times);
            # evaluate gathers a share's own warnings (non-finite logits) to rank 0.
            warnings.simplefilter("ignore")
        return _run(args, ranks)


# Options that read finished result files: one process does all there is to do.
FILE_READERS = {"table": "--table", "regrade": "--regrade", "compare": "--compare"}


def _run(args: argparse.Namespace, ranks: Ranks) -> int:
    try:
        readers = [option for dest, option in FILE_READERS.items() if getattr(args, dest)]
        if ranks.distributed and readers:
            raise ValueError(f"{readers[0]} reads finished result files and decodes nothing: run it as one process "
                             f"(superthoughts eval {readers[0]} ...), not under torchrun")
        if args.table:
            return _run_table(args)
        given = [option for dest, option in TABLE_OPTIONS.items() if getattr(args, dest)]
        if given:
            raise ValueError(f"{', '.join(given)} goes with --table RUN.jsonl [...]")
        if args.regrade:
            return _run_regrade(args)
        if args.compare:
            return _run_compare(args.compare, args.plot)
        problems = _checked_problems(args)
        if args.output:  # the default name needs the mode, which the checkpoint decides
            for path in output_files(args, args.mode or "standard"):  # before the weights load (minutes)
                check_records_file(path, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError, RuntimeError) as error:
        return _error(error, ranks)

    from superthoughts_ext.generate_cli import load_checkpoint

    # A cached repo id pinned to the commit it names now (org/name@<commit>): a download moving its
    # branch while the weights load does not make the records name other weights than were decoded.
    args.model = snapshot_name(args.model) or args.model

    def load() -> tuple[Any, Any, str, str]:
        model, tokenizer, device = load_checkpoint(args.model, rank_device(args.device, ranks), args.dtype,
                                                   args.tokenizer)
        return model, tokenizer, device, _decoding_mode(args, model)

    started = False
    try:
        started = start_process_group(ranks)
        # Under torchrun an error every rank meets alike (no checkpoint there) is printed once.
        model, tokenizer, device, mode = on_every_rank(ranks, load)
        # A ValueError from evaluate: e.g. --resume on a file of other settings.
        return _evaluate_each_threshold(args, model, tokenizer, device, problems, mode, ranks)
    except ReportedByAnotherRank:  # the rank that met the error printed it
        return 2
    except (WriteFailed, OtherRankFailed) as error:  # a full disk mid-run, or a rank gone: resume once fixed
        return _error(f"{error}{resume_hint('eval', args)}", ranks, every_rank=True)
    except (ValueError, OSError) as error:
        return _error(error, ranks, every_rank=True)
    finally:
        if started:
            close_process_group()


def weights_dtype(model: Any) -> str | None:
    """The dtype the model's weights were loaded in, e.g. "bfloat16": its first parameter's (a
    model without parameters: its ``dtype``; None when it has neither)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    dtype = first.dtype if first is not None else getattr(model, "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def run_metadata(args: argparse.Namespace, model: Any, device: str, ranks: Ranks = Ranks()) -> dict[str, Any]:
    """What a run decoded, as `evaluate` stores it (its RUN_KEYS are checked by --resume): the
    checkpoint and data file as absolute paths and the dtype the weights were loaded in, so that
    ``out/st``, ``out/st/`` and ``/abs/out/st``, or ``--dtype auto`` and the checkpoint's own
    dtype named explicitly, are one run; a Hugging Face repo id, or its snapshot folder, as
    ``org/name@<commit>``. Under torchrun: rank 0's device, and ``processes``."""
    return {"model": snapshot_name(args.model) or str(Path(args.model).resolve()), "dtype": weights_dtype(model),
            "device": device,
            "data": None if args.data is None else str(Path(args.data).resolve()),
            **({"processes": ranks.world_size} if ranks.distributed else {})}


def check_thresholds(thresholds: list[float] | None) -> None:
    """ValueError for a --threshold outside [0, 1] or given twice: a sweep writes one file per
    threshold, so a repeat would overwrite the run before it."""
    thresholds = thresholds or []
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"--threshold values must lie in [0, 1], got {' '.join(f'{t:g}' for t in thresholds)}")
    labels = [threshold_label(t) for t in thresholds]
    repeated = list(dict.fromkeys(label for label in labels if labels.count(label) > 1))
    if repeated:
        raise ValueError(f"--threshold {' '.join(repeated)} given more than once; give each threshold once")


def output_files(args: argparse.Namespace, mode: str) -> list[Path]:
    """The records file of each --threshold (one without a sweep): --output, or by default
    eval-<bench>-<mode>.jsonl."""
    output = Path(args.output or f"eval-{args.bench}-{mode}.jsonl")
    return [output] if len(args.threshold or [None]) == 1 else [sweep_output(output, t) for t in args.threshold]


def sweep_output(output: str | Path, threshold: float) -> Path:
    """Where one threshold of a sweep goes: ``st.jsonl`` -> ``st-t0.99.jsonl``."""
    output = Path(output)
    suffix = record_suffix(output) or ".jsonl"
    return output.with_name(f"{run_name(output)}-t{threshold_label(threshold)}{suffix}")


def main(argv: list[str] | None = None) -> int:
    """`python -m superthoughts_ext.eval_cli ...`: ``superthoughts eval`` with its arguments, the
    module torchrun runs (``torchrun --nproc_per_node N -m superthoughts_ext.eval_cli ...``)."""
    return module_main("eval", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
