"""The processes of a training run under torchrun or accelerate launch: which one this is, its
errors printed once for all of them, and the process group closed as they leave.

Most errors of `superthoughts train` come from what every rank does alike: the option checks,
reading and tokenising --data, the --resume checks, the --model directory. Under
``torchrun --nproc_per_node 8`` each rank met the same one and printed it: the same line eight
times, between torchrun's own failure summary. A failing rank now tells the others its error
through torchrun's store (the TCPStore its agent keeps at MASTER_ADDR:MASTER_PORT: the option checks
come before a process group exists, and a collective would be taken by a rank still in the setup
for one of its own) and prints it only where no lower rank met the same one: rank 0 as before, another
rank prefixed with its rank (``[rank 3] error: ...``), for an error of its own (its GPU, a file
its machine lacks). Waits are bounded by `AGREEMENT_WAIT`:

- a rank > 0 waits for the ranks below it to fail alike before it prints, so that an error of
  its own comes that much later;
- every failing rank stays until each rank has failed or the wait is over, since torchrun stops
  the others (SIGTERM) once one has left, and a rank a little behind, about to meet the same
  error, printed "terminated (SIGTERM)" with a resume hint instead.

An error no other rank can meet (rank 0's output lock) is printed at once, without either wait.

Launched otherwise (no torchrun agent store: srun or mpirun setting RANK themselves), or where
the store cannot be reached, every rank prints its error as before.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NoReturn

from superthoughts_ext.cli import stderr_line

# Seconds a failing rank waits for the others (see the module docstring). It covers how far apart
# the ranks reach the same error (each tokenises the whole file, loads the same model); torchrun
# itself gives its workers 30 s to leave after its SIGTERM.
AGREEMENT_WAIT = 30.0
_POLL = 0.05  # seconds between looks at the store: short, and signals (Ctrl-C) are handled between
_KEY = "superthoughts_train_error"


def error_line(text: str, rank: int, lower_ranks_errors: Sequence[str]) -> str | None:
    """What rank `rank` prints for its error `text` (``error: ...``), given the errors the ranks
    below it reported: nothing where one of them met the same (the lowest of them prints it),
    rank 0's as it is, another rank's prefixed with its rank."""
    if text in lower_ranks_errors:
        return None
    return text if rank == 0 else f"[rank {rank}] {text}"


def report_error(text: str, *, this_rank_alone: bool = False) -> None:
    """Prints the error `text` (the whole line, ``error: ...``) on stderr, once for all the ranks
    of a torchrun launch that met it alike (`error_line`); one process alone prints it as is.
    Returns within about `AGREEMENT_WAIT` seconds. `this_rank_alone`: an error no other rank can meet
    (rank 0's output lock), printed as is at once: waiting for the others' would only make the
    command end `AGREEMENT_WAIT` later."""
    rank, world_size = _rank(), _world_size()
    if this_rank_alone and world_size > 1:
        stderr_line(error_line(text, rank, []))
        return
    store = _agent_store() if world_size > 1 else None
    if store is None:
        stderr_line(text)
        return
    deadline = time.monotonic() + AGREEMENT_WAIT
    keys = [f"{_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{r}" for r in range(world_size)]
    stored = text.encode("utf-8", "backslashreplace")  # lone surrogates of a path as \udcxx
    try:
        store.set(keys[rank], stored)
        lower = _reported(store, keys[:rank], deadline)
    except RuntimeError:  # the store went away (torchrun ends): nothing is known of the others
        lower = []
    if (line := error_line(stored.decode("utf-8"), rank, lower)) is not None:
        stderr_line(line)
    try:
        _reported(store, keys, deadline)  # stay while the others may still meet it (module docstring)
    except RuntimeError:
        pass


def _reported(store: Any, keys: Sequence[str], deadline: float) -> list[str]:
    """The errors stored under `keys`, once all are there or at `deadline` (those there then)."""
    while not all(store.check([key]) for key in keys) and time.monotonic() < deadline:
        time.sleep(_POLL)
    return [store.get(key).decode("utf-8") for key in keys if store.check([key])]


def _agent_store() -> Any | None:
    """A client of the store torchrun's agent keeps for its workers, or None where this process was
    not launched by torchrun (or accelerate launch, which runs it) or the store cannot be reached."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    try:
        from torch.distributed import TCPStore

        return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                        timeout=timedelta(seconds=AGREEMENT_WAIT), wait_for_workers=False)
    except (KeyError, ValueError, RuntimeError):
        return None


def main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or the one process of a plain run)."""
    return _rank() == 0


def first_on_its_machine() -> bool:
    """LOCAL_RANK 0: the process of each machine that draws bars and prints warnings."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def close_process_group() -> None:
    """Under torchrun / accelerate launch: wait for every rank, then tear the process group
    down before the interpreter exits (NCCL warns about, and can hang on, a group left for
    interpreter teardown). A no-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class OnceAcrossRanksParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage error (an unknown option, a value not among the choices) is
    printed by `report_error`: once under torchrun, where every rank parses the same command line."""

    def error(self, message: str) -> NoReturn:
        report_error(f"{self.format_usage()}{self.prog}: error: {message}")
        sys.exit(2)
