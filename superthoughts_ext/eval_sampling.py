"""Sampled evaluation (``superthoughts eval --temperature T --samples N --seed S``): N decodes of
every problem at temperature T, reported as their mean accuracy (avg@N), the standard deviation
of the N per-sample accuracies, pass@N and maj@N.

Sample k of a problem is decoded with its own generate seed, `sample_seed(S, problem id, k)`,
passed per row (generate's per-row seeds), so what it decodes does not depend on the batch it
lands in, on --batch-size, on --limit or on a resume. Its record is one line like a greedy
record, plus ``sample`` (k) and ``sample_seed``; the run's ``temperature``, ``samples`` and
``seed`` are among the settings every record carries. Greedy runs (temperature 0) write
neither, so their records read as before, and a record without them reads as greedy.

A resume may grow ``samples`` (N), never change the temperature or seed: sample k's seed does
not depend on N, so samples 0..3 of an N=4 run are samples 0..3 of an N=16 run, and the resume
decodes only the samples its file lacks. The kept records then say ``samples`` 16 like the new
ones (`resumed_record`): a record's ``samples`` is the N of the run its file holds, and a record
kept that way is, but for its wall-time share, the one an N=16 run writes. A resume with a smaller
N is refused when the file holds a sample k >= N (`sample_mismatch`): dropping it would lose
decoded work, and keeping it in a file whose summary leaves it out would make `--regrade` and
`--compare`, which read every record of a file, disagree with that summary. The records of
samples < N copied to a file of their own resume as a run of N.
"""
from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Derived seeds stay below 2**53: a JSON reader that keeps numbers as doubles (jq, JavaScript)
# reads them back exactly, so a record's seed can be given to generate() to decode it again.
SEED_BITS = 53
# generate samples from this temperature up (reference.MIN_SAMPLING_TEMPERATURE); below it,
# N samples would be N copies of the greedy decode.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Sampling:
    """How a run decodes: greedy (temperature 0, one sample) or N samples at a temperature."""

    temperature: float = 0.0
    samples: int = 1
    seed: int = 0

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def settings(self) -> dict[str, Any]:
        """The keys every record of the run carries (none for greedy: its records stay as before)."""
        if not self.sampled:
            return {}
        return {"temperature": self.temperature, "samples": self.samples, "seed": self.seed}

    def describe(self) -> str:
        if not self.sampled:
            return "greedy decoding"
        return f"temperature={self.temperature:g}, samples={self.samples}, seed={self.seed}"


def check_sampling(temperature: float, samples: int, seed: int) -> Sampling:
    """The run's `Sampling`; ValueError for settings that cannot go together."""
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"--samples must be an integer >= 1, got {samples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"--seed must be an integer, got {seed!r}")
    temperature = float(temperature)
    if not temperature >= 0.0 or temperature == float("inf"):
        raise ValueError(f"--temperature must be finite and >= 0, got {temperature!r}")
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise ValueError(f"--temperature {temperature!r} is below {MIN_TEMPERATURE:g}, where generate decodes "
                         "greedily; give 0 for greedy decoding or a temperature of at least that")
    if samples > 1 and temperature == 0.0:
        raise ValueError(f"--samples {samples} needs --temperature > 0: greedy decoding gives the same output "
                         "every time (e.g. --temperature 0.6)")
    return Sampling(temperature, samples, seed) if temperature > 0 else Sampling()


def sampling_of(record: dict[str, Any]) -> Sampling:
    """The sampling a record (or a run's settings) was decoded with; greedy without the keys."""
    if not record.get("temperature"):
        return Sampling()
    return Sampling(float(record["temperature"]), int(record.get("samples", 1)), int(record.get("seed", 0)))


def sample_seed(seed: int, problem_id: Any, sample: int) -> int:
    """The generate seed of sample ``sample`` of problem ``problem_id`` in a run of seed ``seed``:
    a hash of the three, so that each sample has its own Philox key whatever else the run holds."""
    digest = hashlib.sha256(json.dumps([seed, str(problem_id), sample]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def sample_of(record: dict[str, Any]) -> int:
    """A record's sample index (0 for a greedy record)."""
    return int(record.get("sample", 0))


def record_key(record: dict[str, Any]) -> tuple[str, int]:
    """What a record stands for in a run: its problem and sample."""
    return str(record["id"]), sample_of(record)


def sample_mismatch(record: dict[str, Any], run: Sampling) -> str | None:
    """What keeps a resume from taking ``record`` into a run decoding with ``run`` (None: nothing).
    Its run's ``samples`` may differ from this run's: what a sample decodes does not depend on N.
    Only a sample this run does not draw (k >= N, a shrunk N) is refused."""
    written = sampling_of(record)
    if (written.temperature, written.seed) != (run.temperature, run.seed):
        return f"was written with {written.describe()}, this run has {run.describe()}"
    if not run.sampled:
        return None
    sample = sample_of(record)
    if sample >= run.samples:
        return (f"holds sample {sample} (of a run of samples={written.samples}), this run has samples={run.samples}: "
                "a resume can add samples, not drop them (the file would keep records that the summary leaves "
                f"out); resume with samples={max(written.samples, sample + 1)} or more, or copy the records with "
                f"sample < {run.samples} to another file and resume that")
    if sample < 0:
        return f"holds sample {sample}, this run draws samples 0-{run.samples - 1}"
    if record.get("sample_seed") != sample_seed(run.seed, record["id"], sample):
        return f"has sample_seed {record.get('sample_seed')!r}, not the seed this version derives for its sample"
    return None


def resumed_record(record: dict[str, Any], run: Sampling) -> dict[str, Any]:
    """``record``, which `sample_mismatch` let a resume keep, as ``run`` writes it: a sampled
    record of a run of other samples says this run's ``samples`` (all it decoded does not depend
    on N); any other record is returned as it is."""
    if run.sampled and record.get("samples") != run.samples:
        return {**record, "samples": run.samples}  # the key stays where it was: the line reads as a fresh one
    return record


def by_problem(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by problem id, each group in sample order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record["id"]), []).append(record)
    return {key: sorted(group, key=sample_of) for key, group in groups.items()}


def majority_correct(group: Sequence[dict[str, Any]]) -> bool:
    """Whether the answer most samples extracted is right: votes go by the extracted text as
    written (equivalent forms such as 1/2 and 0.5 vote apart), outputs without one do not vote,
    a tie goes to the answer of the lowest sample."""
    votes = Counter(record["extracted"] for record in group if record.get("extracted") is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(record for record in group if votes.get(record.get("extracted")) == top)
    return bool(winner["correct"])


def sampled_grade_fields(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The grade fields of a sampled run (empty for a greedy one): accuracy_by_sample (sample k's
    accuracy over the problems), accuracy_std (their sample standard deviation; None for one
    sample), pass_at_n (share of problems any sample solved) and maj_at_n (share whose majority
    answer, `majority_correct`, is right)."""
    if not any("sample" in record for record in records):
        return {}
    per_sample: dict[int, list[bool]] = {}
    for record in records:
        per_sample.setdefault(sample_of(record), []).append(bool(record["correct"]))
    accuracies = [sum(c) / len(c) for _, c in sorted(per_sample.items())]
    groups = by_problem(records).values()
    return {"accuracy_by_sample": accuracies,
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "pass_at_n": sum(any(r["correct"] for r in group) for group in groups) / len(groups),
            "maj_at_n": sum(majority_correct(group) for group in groups) / len(groups)}


def per_problem(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Records by problem id, for `superthoughts_ext.eval_compare`: a greedy file's as they are;
    a sampled file's samples of a problem as one record holding their means (correct, tokens,
    steps, hit_limit: the share cut off) and each sample's grade in ``correct_by_sample``."""
    if not any("sample" in record for record in records):
        return {str(record["id"]): record for record in records}
    merged = {}
    for key, group in by_problem(records).items():
        means = {field: sum(float(r.get(field) or 0) for r in group) / len(group)
                 for field in ("correct", "tokens", "steps", "hit_limit")}
        merged[key] = {**group[0], **means, "n_samples": len(group),
                       "correct_by_sample": {sample_of(r): bool(r["correct"]) for r in group}}
    return merged


def accuracy_std(records: dict[str, dict[str, Any]], keys: Sequence[str]) -> float | None:
    """The standard deviation of a sampled run's per-sample accuracies over the problems ``keys``
    (the samples every one of them has); None for a greedy run or one sample."""
    if not keys or "correct_by_sample" not in records[keys[0]]:
        return None
    shared = set.intersection(*(set(records[key]["correct_by_sample"]) for key in keys))
    accuracies = [sum(records[key]["correct_by_sample"][k] for key in keys) / len(keys) for k in sorted(shared)]
    return statistics.stdev(accuracies) if len(accuracies) > 1 else None
