"""Where the processes of a torchrun evaluation (`superthoughts_ext.eval_ranks`) wait for each other,
in short slices that a signal can cut.

A process blocked inside a gloo collective runs no Python signal handler until the collective
returns: a SIGTERM or Ctrl-C sent to one rank that waits for a slower one (its share decoded, the
others still decoding) took effect only once they came, maybe hours later. So the ranks first
meet on the rendezvous store (each sets its key, then checks for the others' and sleeps a few
milliseconds, and a signal cuts a sleep), and enter the collective only once all are there,
which then returns at once. The same wait serves the first meeting, which starts the gloo group:
a process not started by torchrun (WORLD_SIZE and MASTER_ADDR exported by an earlier job) says
after a few seconds what it waits for, and gives up after `FIRST_MEET_TIMEOUT`.

A rank killed outright (SIGKILL, the out-of-memory killer) cannot say it leaves (`Meetings.leave`).
torchrun's agent then stops the others; started otherwise (srun, a shell per node) nobody would,
so each rank beats a heartbeat on the store from its first meeting until it leaves (a thread of
its own, with its own connection to the store), and a rank waiting for another whose count has
not moved for `SILENT_FOR` seconds of its own clock takes it for dead.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

# How long a rank waits for the others where they meet: at the end that is the slowest rank's
# remaining decoding, which on a long sampled run can be hours.
MEET_TIMEOUT = timedelta(hours=24)
# The first meeting of processes no launcher started: each was started by hand (srun, a shell
# per node) at about the same time, before loading the model, or it is alone in a shell with
# another job's variables exported, and nobody is coming.
FIRST_MEET_TIMEOUT = timedelta(minutes=10)
# Seconds before such a process says what it waits for: ranks started together meet before.
NOTICE_AFTER = 5.0
# The longest sleep between two looks at the store: how late a rank notices the last arrival.
LONGEST_PAUSE = 0.2
# How often each rank adds one to its heartbeat count on the store (one small request).
BEAT_EVERY = 5.0
# Seconds without a beat after which a waiting rank takes another for dead: 12 beats missed. A live
# rank misses them only where its process gets no CPU that long (one call that keeps the GIL, a
# machine swapping hard); a minute is still nothing against the hours a rank may wait for another.
SILENT_FOR = 60.0
# torchrun, and accelerate launch through it, set these; a shell with another job's variables not.
LAUNCHER_VARIABLE = "TORCHELASTIC_RUN_ID"
RANK_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def wait_until(ready: Callable[[], bool], timeout: timedelta, *, notice: Callable[[], None] | None = None) -> bool:
    """Whether ``ready()`` came true within ``timeout``; it is asked again after sleeps of at most
    `LONGEST_PAUSE`, in which a signal's handler runs (a sleep returns for it), so that Ctrl-C or
    SIGTERM stops the wait at once. ``notice()`` is called once the wait lasts `NOTICE_AFTER`."""
    started, pause = time.monotonic(), 0.002
    while not ready():
        waited = time.monotonic() - started
        if waited >= timeout.total_seconds():
            return False
        if notice is not None and waited >= NOTICE_AFTER:
            notice()
            notice = None
        time.sleep(min(pause, max(timeout.total_seconds() - waited, 0.0)))
        pause = min(2 * pause, LONGEST_PAUSE)
    return True


class Meetings:
    """The meetings of this process with the others of its group, on their shared ``store``
    (rank ``rank`` of ``world_size``): the n-th meeting of every rank is the same one, as every
    rank runs the same collectives in the same order."""

    def __init__(self, store: Any, rank: int, world_size: int) -> None:
        import torch.distributed as dist

        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted run's keys are its own
        self.store = dist.PrefixStore(f"superthoughts_eval/{restart}/", store)
        self.rank, self.world_size, self.held = rank, world_size, 0
        self.heartbeat: threading.Thread | None = None  # from the first meeting until `leave`
        self.stop_beating = threading.Event()

    def meet(self, timeout: timedelta | None = None, *, notice: Callable[[], None] | None = None) -> None:
        """Waits until every rank came to this meeting (`MEET_TIMEOUT`, or ``timeout``).
        `OtherRankFailed` where one left the group first (`leave`: it stopped), gave no sign of
        life for `SILENT_FOR` seconds (killed outright) or did not come in time; TimeoutError for
        the first meeting (nobody is there yet)."""
        from superthoughts_ext.eval_ranks import OtherRankFailed

        self.held += 1
        keys = [f"meeting{self.held}/rank{rank}" for rank in range(self.world_size)]
        timeout = MEET_TIMEOUT if timeout is None else timeout
        # At the first meeting a rank not there yet may not have started: silence means nothing.
        heartbeats = Heartbeats(self.store) if self.held > 1 else None
        silent: list[int] = []

        def absent() -> list[int]:
            return [rank for rank, key in enumerate(keys) if not self.store.check([key])]

        def ready() -> bool:
            if self.store.check(keys) or self.store.add("left", 0) > 0:
                return True
            if heartbeats is not None and heartbeats.due():
                silent[:] = heartbeats.silent(absent())
            return bool(silent)

        try:
            self._start_heartbeat()
            self.store.set(keys[self.rank], "")
            if wait_until(ready, timeout, notice=notice) and self.store.check(keys):
                return
            left = [rank for rank in range(self.world_size) if self.store.check([f"left/rank{rank}"])]
            missing = absent()
        except RuntimeError as error:  # the store's host (rank 0 without torchrun) is gone
            raise OtherRankFailed(f"another process of this run stopped ({str(error).splitlines()[0]})") from None
        if left:
            raise OtherRankFailed(f"rank(s) {left} stopped before meeting this one")
        if silent:
            raise OtherRankFailed(f"rank(s) {silent} stopped answering: no sign of life for "
                                  f"{_duration(timedelta(seconds=SILENT_FOR))} (killed, out of memory?)")
        if self.held == 1:  # `rendezvous` says how long and where they were awaited
            raise TimeoutError(f"rank(s) {missing} did not come")
        raise OtherRankFailed(f"rank(s) {missing} did not come within {_duration(timeout)}")

    def _start_heartbeat(self) -> None:
        if self.heartbeat is None:  # a daemon: it keeps no process alive at its exit
            self.heartbeat = threading.Thread(target=_beat, name="superthoughts-eval-heartbeat", daemon=True,
                                              args=(self.store.clone(), f"alive/rank{self.rank}", self.stop_beating))
            self.heartbeat.start()

    def leave(self) -> None:
        """Tells the others this process left the group: one still waiting for it stops. Done once
        its last meeting is over (a run that finished), or on the way out of one that stopped."""
        self.stop_beating.set()
        try:
            self.store.set(f"left/rank{self.rank}", "")
            self.store.add("left", 1)  # one key for all, which a waiting rank reads in one look
        except RuntimeError:  # the store's host left first: nobody is waiting for this process
            pass


def _beat(store: Any, key: str, stop: threading.Event) -> None:
    """Adds one to ``key`` on ``store`` every `BEAT_EVERY` seconds until ``stop`` is set. ``store``
    is a connection of its own: sharing the main thread's would be safe (each TCPStore call holds
    one lock for its request and reply) but would make a beat wait behind a call that blocks there.
    Torch ops and store calls release the GIL: it beats on while the main thread decodes (measured:
    at most 5.1 s between beats through a 78 s decode)."""
    try:
        while True:
            store.add(key, 1)
            if stop.wait(BEAT_EVERY):
                return
    except RuntimeError:  # the store's host is gone: the main thread meets it too and says so
        return


class Heartbeats:
    """The others' heartbeat counts as one waiting rank sees them: per rank, its count and when it
    last changed, on this process's monotonic clock (never compared with another machine's)."""

    def __init__(self, store: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.clock = store, clock
        self.seen: dict[int, tuple[int, float]] = {}
        self.looked: float | None = None

    def due(self) -> bool:
        """Whether to look again: twice per beat, so that a change is seen within half a beat."""
        return self.looked is None or self.clock() - self.looked >= BEAT_EVERY / 2

    def silent(self, ranks: list[int]) -> list[int]:
        """Those of ``ranks`` whose count has not changed for `SILENT_FOR` seconds of this
        process's clock."""
        now = self.clock()
        if self.looked is not None and now - self.looked > 2 * BEAT_EVERY:
            # This process did not run meanwhile (stopped, a suspended job): nor, maybe, did the
            # others, so their silence counts from now.
            self.seen.clear()
        self.looked = now
        silent = []
        for rank in ranks:
            count = self.store.add(f"alive/rank{rank}", 0)
            if rank not in self.seen or self.seen[rank][0] != count:
                self.seen[rank] = (count, now)
            elif now - self.seen[rank][1] >= SILENT_FOR:
                silent.append(rank)
        return silent


def _duration(timeout: timedelta) -> str:
    seconds = timeout.total_seconds()
    unit, length = next((unit, length) for unit, length in (("hour", 3600), ("minute", 60), ("second", 1))
                        if seconds >= length or unit == "second")
    return f"{seconds / length:g} {unit}{'' if seconds == length else 's'}"  # "1 minute", "10 minutes"


def launched(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether torchrun (or accelerate launch, through it) started this process."""
    return LAUNCHER_VARIABLE in environ


def rendezvous(world_size: int, rank: int, environ: Mapping[str, str] = os.environ) -> tuple[Any, Meetings]:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT (made as torch.distributed's env:// makes
    it: torchrun's agent hosts it, or else rank 0 does) and the ranks' first meeting on it, once
    every rank is there. Launched by torchrun every rank is on its way (`MEET_TIMEOUT`); a process
    started otherwise waits at most `FIRST_MEET_TIMEOUT`, and says after `NOTICE_AFTER` seconds
    what it waits for and how to run alone instead. TimeoutError where they did not all come;
    OSError where the address cannot be hosted or reached."""
    import torch.distributed as dist

    address, port = environ["MASTER_ADDR"], int(environ["MASTER_PORT"])
    timeout = MEET_TIMEOUT if launched(environ) else FIRST_MEET_TIMEOUT
    deadline = time.monotonic() + timeout.total_seconds()
    said: list[bool] = []

    def notice() -> None:
        if not said and not launched(environ):
            said.append(True)
            _say_waiting(world_size, rank, environ)

    def left() -> timedelta:
        return timedelta(seconds=max(deadline - time.monotonic(), 0.0))

    hosted_by_agent = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    not_launched = "" if launched(environ) else ", not started by torchrun"
    try:
        if not hosted_by_agent and rank == 0:  # the others connect to it in their own time: no wait here
            store = dist.TCPStore(address, port, world_size, is_master=True, timeout=MEET_TIMEOUT,
                                  wait_for_workers=False, multi_tenant=True)
        else:
            # Looked for with a plain socket: TCPStore's own retries log a C++ traceback per try.
            if not hosted_by_agent and not wait_until(lambda: _listening(address, port), left(), notice=notice):
                raise TimeoutError("rank(s) [0] did not come")
            store = dist.TCPStore(address, port, world_size, is_master=False, timeout=MEET_TIMEOUT)
        meetings = Meetings(store, rank, world_size)
        meetings.meet(left(), notice=notice)
    except TimeoutError as error:
        raise TimeoutError(f"WORLD_SIZE={world_size}{not_launched}: {error} within {_duration(timeout)} to "
                           f"{address}:{port}"
                           f"{_how_to_run_alone(environ)}") from None
    except RuntimeError as error:  # a port another process holds, a host that cannot be reached
        raise OSError(f"WORLD_SIZE={world_size}: rank {rank} cannot {'host' if rank == 0 else 'reach'} the "
                      f"rendezvous at MASTER_ADDR:MASTER_PORT={address}:{port} ({str(error).splitlines()[0]})"
                      f"{_how_to_run_alone(environ)}") from None
    return store, meetings


def _say_waiting(world_size: int, rank: int, environ: Mapping[str, str]) -> None:
    from superthoughts_ext.cli import stderr_line

    others, where = world_size - 1, f" (rank {rank})" if rank else ""  # as eval_cli names a rank's errors
    stderr_line(f"superthoughts eval{where}: waiting for the {others} other process{'es' if others > 1 else ''} of "
                f"WORLD_SIZE={world_size} at {environ['MASTER_ADDR']}:{environ['MASTER_PORT']} (not started by "
                f"torchrun) for at most {_duration(FIRST_MEET_TIMEOUT)}; Ctrl-C stops it{_how_to_run_alone(environ)}")


def _how_to_run_alone(environ: Mapping[str, str]) -> str:
    if launched(environ):
        return ""
    return f"; to run one process alone: unset {' '.join(name for name in RANK_VARIABLES if name in environ)}"


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False
