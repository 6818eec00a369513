"""The files `superthoughts_ext.evaluation.evaluate` writes and reads back: one JSONL record per
problem, or per (problem, sample) in a sampled run (the records an interrupted run left are kept
by a resume), and `EvalSummary`, the aggregate of a run's records, written next to them as
``<output>.summary.json``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from superthoughts_ext.eval_data import SYSTEM_PROMPT, Problem, get_bench
from superthoughts_ext.eval_files import json_lines, read_records_text, remove_summaries, summary_path
from superthoughts_ext.eval_sampling import (record_key, resumed_record, sample_mismatch, sampled_grade_fields,
                                             sampling_of)
from superthoughts_ext.file_writes import remove_stale_temporaries, replace_text, writing
from superthoughts_ext.grading import extract_choice, is_correct
from superthoughts_ext.grading_boxes import extract_answer, visible_text


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

    A sampled run (``samples`` decodes per problem at ``temperature`` > 0) counts every sample:
    ``n`` records (n_problems x samples), ``accuracy`` = n_correct / n, which is the mean of
    ``accuracy_by_sample`` (avg@N); ``accuracy_std`` is the sample standard deviation of those
    per-sample accuracies, ``pass_at_n`` the share of problems any sample solved, ``maj_at_n``
    the share whose most frequent extracted answer is right (`eval_sampling.majority_correct`).
    Lengths and counts (mean_tokens, n_hit_limit...) are over all samples too. Greedy runs have
    temperature 0, samples 1, seed None and the sampled fields None.
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
    n_no_box: int  # outputs with no answer found: no box (multiple choice: no letter, boxed or named)
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
    system_prompt: str | None = SYSTEM_PROMPT  # of every prompt (None: the chat template's own)
    # Multiple choice over several option orders: the accuracy of each order's problems (order
    # 0 first); ``accuracy`` is their mean when every question ran in every order. None for one
    # order or a benchmark without options.
    accuracy_by_option_order: list[float] | None = None
    temperature: float = 0.0
    samples: int = 1
    seed: int | None = None  # the run's --seed (each sample's generate seed is in its record)
    n_problems: int | None = None
    accuracy_by_sample: list[float] | None = None
    accuracy_std: float | None = None
    pass_at_n: float | None = None
    maj_at_n: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The summary's fields; a greedy run's without the sampling ones, as its records have
        none: its summary reads as those of runs before sampling existed."""
        values = asdict(self)
        if self.temperature == 0.0 and self.samples == 1:
            for name in SAMPLING_FIELDS:
                del values[name]
        return values


# The summary fields of sampled runs alone (`EvalSummary.to_dict` leaves them out of greedy ones).
SAMPLING_FIELDS = ("temperature", "samples", "seed", "n_problems", "accuracy_by_sample", "accuracy_std",
                   "pass_at_n", "maj_at_n")


def grade_output(text: str, problem: Problem, bench: str) -> dict[str, Any]:
    """The graded fields of a record (extracted, reference, correct) for the decoded ``text`` of
    ``problem``: `evaluate` writes them, `superthoughts_ext.eval_regrade` rewrites them with the
    current grader, so that both always grade alike."""
    # A multiple-choice answer boxed as an option's text is recorded as its letter.
    multiple_choice = get_bench(bench).multiple_choice
    text = visible_text(text)  # the record keeps its output as decoded
    answer = extract_choice(text, problem.options) if multiple_choice else extract_answer(text)
    return {
        "extracted": answer,
        "reference": problem.answer,
        "correct": is_correct(answer, problem.answer, bench, question=problem.question),
    }


def _setting_mismatch(record: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """What tells `record` apart from a record of this run (None when nothing does). A setting the
    record lacks is named first: a record of an older version may keep another setting in another
    form (threshold None, the model's own, before the thresholds used were recorded), and naming
    that one took the file for a run of other settings."""
    for key, value in settings.items():
        if key not in record:
            return f"has no {key} (written by an older version?), this run has {key}={value!r}"
    for key, value in settings.items():
        if record[key] != value:
            return f"was written with {key}={record[key]!r}, this run has {key}={value!r}"
    return None


def resumable_records(path: Path, problems: Sequence[Problem], settings: dict[str, Any],
                      prompts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The records an interrupted `evaluate` left in `path` (none if it does not exist). Its
    last line may be torn by the crash and is then dropped; records of other settings, of
    problems outside `problems` or repeating a problem (a problem's sample) are an error, not
    something to mix in. A sampled run's ``samples`` may differ from the file's (a grown N, or a
    smaller one the file holds no sample beyond): its records then come back saying this run's
    (`eval_sampling.resumed_record`)."""
    if not path.is_file():
        return []
    ids = {problem.id for problem in problems}
    prompt_of = {} if prompts is None else {problem.id: prompt for problem, prompt in zip(problems, prompts)}
    lines = json_lines(read_records_text(path))
    records = []
    seen: dict[tuple[str, int], int] = {}  # (problem id, sample) -> line of its record
    sampling = sampling_of(settings)
    # `sample_mismatch` checks the sampling, whose samples may differ (a grown N); the rest must be equal.
    fixed = {key: value for key, value in settings.items() if key != "samples"}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"resume: {path}:{number} is not a JSON record") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), (int, str)):
            # Another file's lines (a number, a list, an id that is a list) failed on a TypeError.
            raise ValueError(f"resume: {path}:{number} is not a record of `superthoughts eval` (a JSON object with "
                             "an id); give another output file or leave out resume")
        # Sampling first: a greedy record lacks its keys, which is no sign of an older version.
        if mismatch := sample_mismatch(record, sampling) or _setting_mismatch(record, fixed):
            raise ValueError(f"resume: {path}:{number} {mismatch}; give another output file or leave out resume")
        if record.get("id") not in ids:
            hint = f" (give --option-orders {_orders_needed(lines)})" if record.get("option_order") else ""
            raise ValueError(f"resume: {path}:{number} holds problem {record.get('id')!r}, which is not among the "
                             f"{len(ids)} problems of this run{hint}")
        if record["id"] in prompt_of and "prompt" in record and record["prompt"] != prompt_of[record["id"]]:
            # Another tokenizer or chat template: one run would hold two prompt formats.
            raise ValueError(f"resume: {path}:{number} was decoded from another prompt than this run builds for "
                             f"problem {record['id']!r} (another tokenizer or chat template?); give another output "
                             "file or leave out resume")
        key = record_key(record)
        if key in seen:  # a summary would count the problem twice
            which = f" (sample {key[1]})" if sampling.sampled else ""
            raise ValueError(f"resume: {path}:{number} repeats problem {record['id']!r}{which} of line {seen[key]}; "
                             "give another output file or leave out resume")
        seen[key] = number
        records.append(resumed_record(record, sampling))
    return records


def _orders_needed(lines: list[str]) -> int:
    """The option orders a records file's lines hold: its highest order + 1 (the first unknown
    record's order alone named too low a count). Read only for that error message."""
    orders = [0]
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("option_order"), int):
            orders.append(record["option_order"])
    return max(orders) + 1


def record_line(record: dict[str, Any]) -> str:
    """``record`` as one JSON line (no newline), its non-ASCII text kept as is. A record holding a
    lone surrogate ("\\ud800" escaped in a file another tool wrote, read back by regrade or a
    resume) is escaped instead: UTF-8 cannot encode one, and the whole write failed on it."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record)
    return line


def write_records(output_jsonl: str | Path | None, records: list[dict[str, Any]]) -> None:
    """``output_jsonl`` made to hold ``records`` (those a resume kept) alone, its summary removed;
    nothing for None. `WriteFailed` naming the file when it cannot be written. Called under
    evaluate's `run_info.output_lock` of the file, which lets it remove what a killed run's writes
    left."""
    if output_jsonl is None:
        return
    with writing(output_jsonl):
        Path(output_jsonl).parent.mkdir(parents=True, exist_ok=True)
        for path in (output_jsonl, summary_path(output_jsonl)):
            remove_stale_temporaries(path)  # a run killed inside replace_text left its temporary file
        # Rewritten whole or not at all (a line torn by the crash is dropped): rewritten in place,
        # a full disk or a kill cut the kept records short, and the next resume lost the rest.
        # On disk before any decoding: a process killed in the warm-up or the first batch (OOM,
        # preemption) must not take them with it.
        replace_text(output_jsonl, "".join(record_line(record) + "\n" for record in records))
        # A summary describes a finished run; until this one finishes (and writes its own), an
        # earlier run's (an older version's name included) would label these records with its settings.
        remove_summaries(output_jsonl)


def append_records(output_jsonl: str | Path | None) -> IO[str] | None:
    """``output_jsonl`` opened for appending this run's records batch by batch (None for None)."""
    if output_jsonl is None:
        return None
    with writing(output_jsonl):
        return open(output_jsonl, "a", encoding="utf-8")


def grade_fields(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary fields that follow from the records' grades: n_correct, accuracy, n_no_box,
    accuracy_by_option_order, and for a sampled run those of `eval_sampling.sampled_grade_fields`
    (`summarize` and `superthoughts_ext.eval_regrade` both take them from here)."""
    n_correct = sum(bool(r["correct"]) for r in records)
    by_order: dict[int, list[bool]] = {}
    if any(record.get("option_order") is not None for record in records):
        for record in records:
            # A record of an older version (no option_order: its one order) is order 0's.
            by_order.setdefault(record.get("option_order") or 0, []).append(bool(record["correct"]))
    return {"n_correct": n_correct, "accuracy": n_correct / len(records),
            "n_no_box": sum(r["extracted"] is None for r in records),
            "accuracy_by_option_order": [sum(c) / len(c) for _, c in sorted(by_order.items())]
            if len(by_order) > 1 else None, **sampled_grade_fields(records)}


def summarize(records: list[dict[str, Any]], settings: dict[str, Any], *, batch_size: int, wall_time: float,
              n_resumed: int, warmup_time: float) -> EvalSummary:
    """The `EvalSummary` of a run's records, resumed ones included (``settings`` as in each record)."""
    # Each record holds its share of its batch's wall time: their sum is the decoding time,
    # resumed records included.
    generation_time = sum(r["time"] for r in records)
    total_tokens = sum(r["tokens"] for r in records)
    total_steps = sum(r["steps"] for r in records)
    n = len(records)
    sampling = sampling_of(settings)
    return EvalSummary(
        bench=settings["bench"],
        mode=settings["mode"],
        threshold=settings["threshold"],
        threshold_main=settings["threshold_main"],
        max_new_tokens=settings["max_new_tokens"],
        batch_size=batch_size,
        n=n,
        **grade_fields(records),
        n_hit_limit=sum(r["hit_limit"] for r in records),
        mean_tokens=total_tokens / n,
        mean_steps=total_steps / n,
        mean_pair_steps=sum(r["pair_steps"] for r in records) / n,
        cot_reduction=1.0 - total_steps / total_tokens if total_tokens else 0.0,
        generation_time=generation_time,
        wall_time=wall_time,
        tokens_per_s=total_tokens / generation_time if generation_time > 0 else 0.0,
        n_resumed=n_resumed,
        warmup_time=warmup_time,
        system_prompt=settings["system_prompt"],
        temperature=sampling.temperature,
        samples=sampling.samples,
        seed=sampling.seed if sampling.sampled else None,
        n_problems=len({str(r["id"]) for r in records}),
    )


def write_summary(output_jsonl: str | Path, summary: EvalSummary, metadata: dict[str, Any] | None) -> None:
    """The summary JSON next to the records: ``summary``'s fields, ``metadata`` and the records' path."""
    payload = {**summary.to_dict(), **(metadata or {}), "records": str(output_jsonl)}
    replace_text(summary_path(output_jsonl), json.dumps(payload, indent=2) + "\n")  # never left torn


def _accuracy_text(summary: EvalSummary) -> str:
    """The accuracy as the summary line gives it: of the one greedy pass, or avg@N of a sampled run
    with its spread over the samples, pass@N and maj@N."""
    if not summary.temperature:
        return f"accuracy {summary.accuracy:.4f} ({summary.n_correct}/{summary.n})"
    n = summary.samples
    spread = f" ± {summary.accuracy_std:.4f} (std over samples)" if summary.accuracy_std is not None else ""
    return (f"temperature {summary.temperature:g}, seed {summary.seed}: "
            f"accuracy avg@{n} {summary.accuracy:.4f}{spread} "
            f"({summary.n_correct}/{summary.n} outputs, {summary.n_problems} problems x {n}), "
            f"pass@{n} {summary.pass_at_n:.4f}, maj@{n} {summary.maj_at_n:.4f}")


def format_summary(summary: EvalSummary) -> str:
    """One line per run, as `superthoughts eval` prints it."""
    return (
        f"{summary.bench} [{summary.mode}]: {_accuracy_text(summary)}, "
        f"no answer found {summary.n_no_box}, cut off (token budget or context) {summary.n_hit_limit}, "
        f"mean tokens {summary.mean_tokens:.1f}, mean steps {summary.mean_steps:.1f}, "
        # Not "CoT reduction": that one is measured against the baseline (`compare`).
        f"steps saved vs tokens (this run) {summary.cot_reduction:.2%}, {summary.tokens_per_s:.1f} tokens/s, "
        f"wall {summary.wall_time:.1f} s"
        + (f" (warm-up for the compiled step {summary.warmup_time:.1f} s, untimed)" if summary.warmup_time >= 0.05 else "")
        + (f" ({summary.n_resumed} records kept from the earlier run)" if summary.n_resumed else "")
        + (f"; accuracy per option order {', '.join(f'{a:.4f}' for a in summary.accuracy_by_option_order)}"
           if summary.accuracy_by_option_order else "")
    )
