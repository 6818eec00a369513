"""What the benchmarks share: where a measurement ran (device name and git commit, recorded in
every results JSON) and the check of their count flags."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

_CHECKOUT = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """HEAD of the source checkout this package runs from, with "-dirty" appended when tracked
    files differ from it (what ran is then not that commit), or "unknown" outside a checkout:
    also for a package installed into a venv that lies inside another project's checkout, whose
    HEAD git would report from there."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             cwd=_CHECKOUT, timeout=10, check=True).stdout.strip()
        if not top or Path(top).resolve() != Path(_CHECKOUT).resolve():
            return "unknown"
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=_CHECKOUT, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, cwd=_CHECKOUT, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}-dirty" if changed else head


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """GPU name, or the CPU model with its logical CPU count (os.cpu_count: hardware threads,
    not cores) and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"


def results_file(output: Path | None, default: Path, overwrite: bool) -> Path:
    """Where a benchmark writes its JSON: `output` when given, else `default` under
    benchmarks/results/, which holds the recorded runs docs/benchmarks.md quotes: a file already there
    is replaced only with `overwrite`. Checked before anything is measured, and so is that the
    file can be written (its folder is made here): a bad path surfaced as a traceback once the
    first measurement was written, minutes into the run."""
    if output is None and default.exists() and not overwrite:
        raise SystemExit(f"{default} holds a recorded run; give --output PATH for this one, or --overwrite "
                         "to replace it")
    path = default if output is None else output
    if path.is_dir():
        raise SystemExit(f"--output {path} is a directory; give the JSON file's path")
    if problem := write_problem(path, replaced=True):  # written by file_writes.replace_text
        raise SystemExit(f"cannot write the results to {path}: {problem}")
    return path


@contextlib.contextmanager
def held_results_file(output: Path | None, default: Path, overwrite: bool, command: str) -> Iterator[Path]:
    """`results_file`, held under `output_lock` while the benchmark runs: two runs on one file
    (one path given twice, or the recorded default both found free) each rewrote it after every
    measurement, and the last to finish left its rows alone, silently. SystemExit naming the file
    and the holder when another run holds it. Locked before the check, so that a run finishing
    between the two cannot leave a recorded default for this one to replace."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(output_lock(default if output is None else output, command))
        except ValueError as error:
            raise SystemExit(str(error)) from None
        yield results_file(output, default, overwrite)


def write_problem(path: Path, *, replaced: bool = False) -> str | None:
    """Why a file cannot be written at `path` (None when it can), found by making its folders
    and opening it for appending (a new file is removed again): permission bits do not tell
    (root, read-only file systems, /sys). `replaced`: the file is written by
    `file_writes.replace_text`, through a new file in its folder, which must be writable too
    (an existing file opens for appending in a folder that is not)."""
    try:
        path = path.resolve()  # a symlink's target: the link itself must not be removed below
    except (RuntimeError, OSError) as error:  # a symlink loop (RuntimeError before Python 3.13)
        return f"{error} ({path})" if str(path) not in str(error) else str(error)
    folder = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.stat(path).st_mode):  # a directory, or a FIFO that open() would wait on
            return f"{path} is not a regular file"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if _opens_for_appending(path):
            path.unlink(missing_ok=True)
    except OSError as error:
        return f"{error.strerror} ({error.filename or path})"
    if replaced:
        try:
            fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".write-check")
        except OSError as error:
            return f"{error.strerror} (the folder {path.parent}, where the file is replaced by a new one)"
        os.close(fd)
        os.unlink(probe)
    return None


def _opens_for_appending(path: Path) -> bool:
    """Opens `path` for appending and closes it; whether this made the file (the caller removes
    it). Several processes probe one path at once (the ranks of a torchrun job): a probe that saw
    no file and then opened another's, which that one removed, left an empty file; one that saw a
    file that was gone when it looked at its kind called the output "not a regular file". Only a
    file this call made (O_EXCL) is its to remove, and a file gone between the two opens was
    another probe's, in a folder that takes new files."""
    if not path.exists():  # a file there is opened, not created: its folder may take no new ones
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            pass
    with contextlib.suppress(FileNotFoundError):
        # O_NONBLOCK: a FIFO put there meanwhile fails (ENXIO) rather than waiting for a reader.
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    return False


class LockRefused(ValueError):
    """`output_lock`'s refusal: another process holds the lock, or its lock file is a symlink."""


def _refuse_symlinked_lock(lock_path: Path, target: str | os.PathLike, command: str) -> None:
    """ValueError when `output_lock`'s lock file is a symlink (only that name: the folders above
    it are resolved, so a records folder linked elsewhere is locked where it lies)."""
    with contextlib.suppress(OSError):  # gone again, or not readable: open() says what it finds
        if lock_path.is_symlink():
            raise LockRefused(f"{command}: {lock_path}, the lock file of {os.fspath(target)!r}, is a symlink (to "
                             f"{os.readlink(lock_path)}); remove it")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike | None, command: str) -> Iterator[None]:
    """Holds an exclusive lock on a hidden file beside `target` (None: nothing to lock) while a
    command writes it: two evaluations, or two training runs, with one output interleaved their
    records or checkpoints, and each checked the output before the other had written anything.
    `LockRefused` (a ValueError) naming the holder when another process has it. The lock goes beside what a
    symlink points to: a run given the link and one given its target write one file."""
    if target is None:
        yield
        return
    import fcntl

    real = Path(os.path.realpath(target))
    lock_path = real.parent / f".{real.name}.lock"
    # A symlink there is never one of ours. Planted in a folder from elsewhere, the lock truncated
    # the file it names (and wrote a pid there); O_NOFOLLOW refuses one that appears meanwhile.
    _refuse_symlinked_lock(lock_path, target, command)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        handle = os.fdopen(os.open(lock_path, flags, 0o666), "a+", encoding="utf-8")
    except OSError:
        # O_NOFOLLOW's ELOOP: the command would run holding no lock at all.
        _refuse_symlinked_lock(lock_path, target, command)
        yield  # an output that cannot be written: the command's own check names why
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A holder removes the file as it lets go: one opened before that is no lock any more.
            if not lock_path.exists() or os.stat(lock_path).st_ino != os.fstat(handle.fileno()).st_ino:
                raise BlockingIOError
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LockRefused(f"{command}: {os.fspath(target)!r} is being written by {holder}; wait for it to finish "
                             "or choose another output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)  # before letting go (see above): no file is left behind
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_output_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """--output and --overwrite of a benchmark whose JSON goes to `default` (see results_file)."""
    parser.add_argument("--output", type=Path, default=None, help=f"JSON path (default: {default})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the default path's recorded run when it exists (else give --output)")


def add_threads_argument(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--threads of a benchmark: torch's intra-op CPU threads for everything it times
    (`apply_threads`); CPU times compare only at the same count."""
    parser.add_argument("--threads", type=int_at_least(1), default=None,
                        help=f"CPU threads (default: torch's, one per physical core){note}")


def apply_threads(args: argparse.Namespace) -> int:
    """Sets torch's intra-op threads to --threads when it was given; returns the count in use,
    which the result JSON records as "threads"."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def int_at_least(low: int):
    """argparse type: an int >= low, refused at parse time (before any model is built)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its message: "invalid int value: '1.5'"
    return parse


def distinct(key=lambda value: value) -> type[argparse.Action]:
    """argparse action of a list option whose values must differ (by `key`): a repeated one was
    measured twice and recorded under one name, the last run overwriting the first."""

    class Distinct(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:
            keys = [key(value) for value in values]
            if repeated := sorted({str(k) for k in keys if keys.count(k) > 1}):
                parser.error(f"argument {option_string}: {', '.join(repeated)} given more than once")
            setattr(namespace, self.dest, values)

    return Distinct


def unit_float(text: str) -> float:
    """argparse type: a float in [0, 1] (a confidence threshold), refused at parse time."""
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (a time budget, a learning rate), refused at parse time."""
    value = float(text)
    if not 0.0 < value < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = float(text)
    if not 0.0 <= value < math.inf:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value
