"""`superthoughts eval` over several processes (torchrun): which problems each rank decodes, the
part files its records go to, and how rank 0 meets the others and merges the parts into one
records file.

    torchrun --nproc_per_node 8 -m superthoughts_ext.eval_cli --model DIR --bench math500 --output st.jsonl

Each rank decodes every N-th problem (sample) not done yet, in the length order a single process
uses, so that every rank gets long and short prompts alike; its records go to its own part file
``<output>.rank<R>.part`` beside the output (no two processes append to one file). At the end
the ranks meet, and rank 0 merges the output's records and the parts into the output in problem
order, writes the summary and removes the parts. A run cut off before that leaves the parts: a
resume with any number of processes (one included) counts their records as done
(`gathered_records`). The ranks talk over gloo: small Python objects only, which need no GPU
memory and also run on a CPU-only machine (the tests). Before each exchange they meet on the
rendezvous store (`superthoughts_ext.eval_meetings`), where a rank waiting for the others still
acts on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from superthoughts_ext.eval_data import Problem
from superthoughts_ext.eval_meetings import MEET_TIMEOUT, Meetings, rendezvous
from superthoughts_ext.eval_records import append_records, record_line, resumable_records, write_records
from superthoughts_ext.eval_sampling import record_key, sample_of
from superthoughts_ext.file_writes import replace_text, writing

T = TypeVar("T")

PART_SUFFIX = ".part"
# The meetings of the process group `start_process_group` started (None: one process alone, or a
# group of the caller's own, whose collectives are entered at once as before). A rank that leaves
# is not waited for: it says so on its way out (`close_process_group`), and where it is killed
# outright torchrun stops the others, or else its heartbeat falls silent (`eval_meetings.SILENT_FOR`).
_meetings: Meetings | None = None


@dataclass(frozen=True)
class Ranks:
    """The processes of one evaluation: this one's ``rank`` among ``world_size``, and its
    ``local_rank`` on this node (its GPU: cuda:LOCAL_RANK). The default is one process alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: it holds the output's lock, merges the parts, and alone prints the result."""
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The `Ranks` torchrun (or accelerate launch) sets in RANK, WORLD_SIZE and LOCAL_RANK; one
    process alone where they are unset. ValueError for values that are not such a launch's."""
    try:
        ranks = Ranks(*(int(environ.get(name, "0")) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")))
    except ValueError:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got RANK={environ.get('RANK')!r}, "
                         f"WORLD_SIZE={environ.get('WORLD_SIZE')!r}, LOCAL_RANK={environ.get('LOCAL_RANK')!r}") \
            from None
    ranks = Ranks(ranks.rank, max(ranks.world_size, 1), ranks.local_rank)
    if not 0 <= ranks.rank < ranks.world_size or ranks.local_rank < 0:
        raise ValueError(f"RANK={ranks.rank} does not lie in [0, WORLD_SIZE={ranks.world_size})")
    return ranks


class OtherRankFailed(Exception):
    """Another process of the run stopped (an error, or it is gone): this one stops too."""


class ReportedByAnotherRank(OtherRankFailed):
    """Another rank's error, which that rank prints, stops this one too: this one stops quietly."""


class MainRankFailed(ReportedByAnotherRank):
    """Rank 0's error, relayed to the other ranks; rank 0 reports it, the others need not."""


def part_path(output_jsonl: str | Path, rank: int) -> Path:
    """Where rank ``rank`` writes its records: ``st.jsonl`` -> ``st.jsonl.rank3.part``."""
    output = Path(output_jsonl)
    return output.with_name(f"{output.name}.rank{rank}{PART_SUFFIX}")


def part_files(output_jsonl: str | Path) -> list[Path]:
    """The part files beside ``output_jsonl`` (of a run of any number of processes), by rank."""
    output = Path(output_jsonl)
    pattern = re.compile(re.escape(output.name) + r"\.rank(\d+)" + re.escape(PART_SUFFIX))
    if not output.parent.is_dir():
        return []
    # Listed and matched, not globbed: an output named ``st[1].jsonl`` is no glob pattern.
    found = [(int(match.group(1)), path) for path in output.parent.iterdir()
             if (match := pattern.fullmatch(path.name)) and path.is_file()]
    return [path for _, path in sorted(found)]


def rank_share(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's items: every ``world_size``-th from its rank on. ``items`` come longest prompt
    first, so each rank gets long and short ones alike (a block each would leave one rank all
    the long ones)."""
    return list(items[ranks.rank :: ranks.world_size])


def gathered_records(output_jsonl: str | Path, problems: Sequence[Problem], settings: dict[str, Any],
                     prompts: Sequence[str]) -> list[dict[str, Any]]:
    """The records of ``output_jsonl`` and its part files, each file checked as a resume checks it
    (`eval_records.resumable_records`), in problem order (then sample). A record found in two files
    is kept once where both are equal (a run stopped between writing the merged output and
    removing the parts); records that differ are an error naming both files."""
    found: dict[tuple[str, int], tuple[dict[str, Any], Path]] = {}
    for path in [Path(output_jsonl), *part_files(output_jsonl)]:
        for record in resumable_records(path, problems, settings, prompts):
            key = record_key(record)
            if key in found and _decoded(found[key][0]) != _decoded(record):
                which = f" (sample {key[1]})" if "sample" in record else ""
                raise ValueError(f"resume: {found[key][1]} and {path} hold different records of problem "
                                 f"{record['id']!r}{which}; give another output file or leave out resume")
            found.setdefault(key, (record, path))
    position = {str(problem.id): index for index, problem in enumerate(problems)}
    return sorted((record for record, _ in found.values()),
                  key=lambda record: (position[str(record["id"])], sample_of(record)))


def _decoded(record: dict[str, Any]) -> str:
    """A record without its time share, which a batch of other size gives it."""
    return json.dumps({key: value for key, value in record.items() if key != "time"}, sort_keys=True)


def remove_parts(output_jsonl: str | Path | None) -> None:
    """Removes the part files beside ``output_jsonl``, once their records are in it."""
    for path in part_files(output_jsonl) if output_jsonl is not None else []:
        path.unlink(missing_ok=True)


def take_up_records(output_jsonl: str | Path | None, problems: Sequence[Problem], settings: dict[str, Any],
                    prompts: Sequence[str], *, resume: bool) -> list[dict[str, Any]]:
    """The records an earlier run left: with resume those of the output and of part files a run of
    several processes left (`gathered_records`), which the output then holds alone (the parts are
    removed); without, none (an earlier run's parts removed too: overwrite). Rank 0's work, under
    the output's lock."""
    kept = gathered_records(output_jsonl, problems, settings, prompts) if resume and output_jsonl else []
    write_records(output_jsonl, kept)
    remove_parts(output_jsonl)
    return kept


def records_file_of_rank(ranks: Ranks, output_jsonl: str | Path | None) -> IO[str] | None:
    """Where this rank appends its records: one process alone to the output (after the records
    `take_up_records` kept), each of several to its own new part file, which rank 0 merges into
    the output at the end (`merge_parts`)."""
    if not ranks.distributed or output_jsonl is None:
        return append_records(output_jsonl)
    part = part_path(output_jsonl, ranks.rank)
    write_records(part, [])
    return append_records(part)


def merge_parts(output_jsonl: str | Path, problems: Sequence[Problem], settings: dict[str, Any],
                prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Rank 0, once every rank is done: the output's records (those a resume kept) and those of
    every part, written into the output in problem order (then sample); the records. The parts
    stay until the summary is written (`remove_parts`): a run stopped before still has them."""
    merged = gathered_records(output_jsonl, problems, settings, prompts)
    with writing(output_jsonl):
        replace_text(output_jsonl, "".join(record_line(record) + "\n" for record in merged))
    return merged


def start_process_group(ranks: Ranks) -> bool:
    """Joins the other ranks (gloo, from torchrun's MASTER_ADDR / MASTER_PORT), unless one process
    runs alone or the group exists (a caller's own); whether it started one, which its caller
    closes (`close_process_group`). ValueError where no launcher set the address; TimeoutError
    where the others did not come (`eval_meetings.rendezvous`: a process not started by torchrun
    gives up after FIRST_MEET_TIMEOUT)."""
    global _meetings
    import torch.distributed as dist

    if not ranks.distributed or dist.is_initialized():
        return False
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={ranks.world_size} but {' and '.join(missing)} unset: launch the processes "
                         "with torchrun (torchrun --nproc_per_node N -m superthoughts_ext.eval_cli ...)")
    store, meetings = rendezvous(ranks.world_size, ranks.rank)
    # Every rank is there: gloo connects them at once. "default_pg" is the prefix torch's own
    # rendezvous gives the group's keys.
    dist.init_process_group("gloo", store=dist.PrefixStore("default_pg", store), rank=ranks.rank,
                            world_size=ranks.world_size, timeout=MEET_TIMEOUT)
    _meetings = meetings
    return True


def close_process_group() -> None:
    """Leaves the group and tears it down (a no-op without one): left to interpreter teardown,
    gloo can abort. A rank still waiting for this one stops (`eval_meetings.Meetings.leave`)."""
    global _meetings
    import torch.distributed as dist

    if _meetings is not None:
        _meetings.leave()
        _meetings = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_process_group(ranks: Ranks) -> None:
    """ValueError where ``ranks`` has several processes but this one joined no group."""
    import torch.distributed as dist

    if ranks.distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"evaluate: ranks of {ranks.world_size} processes, but no torch.distributed process group "
                         "(eval_ranks.start_process_group starts one)")


def _collective(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A collective of torch.distributed, entered once every rank came to it (`Meetings.meet`:
    blocked in gloo, a rank would run no signal handler while it waits); a peer that left
    (killed, or an error of its own) makes it fail, which comes out as `OtherRankFailed` rather
    than a traceback of gloo's."""
    if _meetings is not None:
        _meetings.meet()
    try:
        call(*args, **kwargs)
    except RuntimeError as error:  # gloo's DistBackendError, or a plain RuntimeError of its transport
        raise OtherRankFailed(f"another process of this run stopped ({str(error).splitlines()[0]})") from None


def from_main(ranks: Ranks, work: Callable[[], T]) -> T:
    """``work()`` on rank 0 and its result on every rank (the others wait). An exception of
    ``work`` is raised on rank 0 and, as `MainRankFailed` with its message, on the others, so that
    none is left waiting for a rank that left. One process alone: just ``work()``."""
    if not ranks.distributed:
        return work()
    import torch.distributed as dist

    outcome: list[Any] = [None]
    failure: Exception | None = None
    if ranks.main:
        try:
            outcome = [(True, work())]
        except Exception as error:  # noqa: BLE001 - relayed, then raised again below
            failure, outcome = error, [(False, f"{type(error).__name__}: {error}")]
    _collective(dist.broadcast_object_list, outcome, src=0)
    if failure is not None:
        raise failure
    succeeded, value = outcome[0]
    if not succeeded:
        raise MainRankFailed(f"rank 0 stopped: {value}")
    return value


def on_every_rank(ranks: Ranks, work: Callable[[], T]) -> T:
    """``work()`` on every rank, which all go on only where it succeeded on all. An error every
    rank met alike (a prompt longer than the model's context, a checkpoint that is no model) is
    raised on rank 0 and quietly (`ReportedByAnotherRank`) on the others, so that it is printed
    once, not once per rank; an error of one rank's own (its GPU) is raised on that rank, and
    stops the others quietly. One process alone: just ``work()``."""
    if not ranks.distributed:
        return work()
    value: Any = None
    failure: Exception | None = None
    try:
        value = work()
    except Exception as error:  # noqa: BLE001 - compared with the other ranks', then raised again below
        failure = error
    errors = gather(ranks, None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None and (ranks.main or errors[ranks.rank] != errors[0]):
        raise failure
    if failed := [rank for rank, error in enumerate(errors) if error is not None]:
        raise ReportedByAnotherRank(f"rank {failed[0]} stopped: {errors[failed[0]]}")
    return value


def gather(ranks: Ranks, value: T) -> list[T]:
    """``value`` of every rank, by rank, on every rank (also where they meet); one process: [value]."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * ranks.world_size
    _collective(dist.all_gather_object, values, value)
    return values


def rank_device(device: str | None, ranks: Ranks) -> str | None:
    """--device of this process. Under torchrun each rank decodes on its own GPU, cuda:LOCAL_RANK
    (also made the current device: CUDA graphs capture on the current device's stream), where
    --device is cuda or left out on a machine with CUDA; --device cpu stays. ValueError for one
    GPU named (every rank would load the model onto it) or more ranks on this node than GPUs."""
    if not ranks.distributed:
        return device
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and device != "cuda":
        raise ValueError(f"--device {device}: under torchrun each process decodes on its own GPU, cuda:LOCAL_RANK; "
                         "give --device cuda or leave it out (CUDA_VISIBLE_DEVICES picks the GPUs)")
    if device != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch has no CUDA device (torch.cuda.is_available() is False)")
    if ranks.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={ranks.local_rank}, but this node has {torch.cuda.device_count()} GPU(s): "
                         "give torchrun --nproc_per_node at most that many")
    torch.cuda.set_device(ranks.local_rank)
    return f"cuda:{ranks.local_rank}"
