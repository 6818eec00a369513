"""Writing the files other runs read back, and saying why a write failed.

`replace_text` writes a whole file or nothing (a resumed evaluation's records, summaries, the
benchmarks' results JSON, the demo's cache markers), and `replacing` so any file a library writes
by name (the plots). `writing` turns what a failed write raises (an OSError without the file's
name, safetensors' SafetensorError, torch.save's RuntimeError "unexpected pos 488512 vs 488404")
into `WriteFailed`, which names the file, the cause and the room left there, so that a command
can print one line instead of a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import secrets
import shutil
import stat
import string
import traceback
from collections.abc import Iterator
from pathlib import Path


class WriteFailed(OSError):
    """A file or folder a command writes could not be written (a full disk, a file size limit,
    a file system remounted read-only): the message names the path and the cause."""


def _torch_save_failure(error: BaseException) -> bool:
    """True for the RuntimeError torch.save raises when its file cannot be written: raised by
    torch's C++ zip writer, from within torch/serialization.py (its frame is the innermost)."""
    frames = traceback.extract_tb(error.__traceback__)
    return isinstance(error, RuntimeError) and bool(frames) and \
        Path(frames[-1].filename).as_posix().endswith("torch/serialization.py")


def _write_error(error: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(error, (OSError, SafetensorError)) or _torch_save_failure(error)


def _room_left(path: Path) -> str:
    """The free space on `path`'s file system, and the file size limit when one is set: the
    likely causes that torch's and safetensors' messages leave unnamed."""
    notes = []
    folder = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if folder is not None:
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(folder).free
            amount = f"{free / 2**30:.1f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"
            notes.append(f"{amount} free there")
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        notes.append(f"files are limited to {soft} bytes (ulimit -f)")
    return f" ({'; '.join(notes)})" if notes else ""


def failure_message(path: str | os.PathLike, error: BaseException) -> str:
    """`cannot write PATH: CAUSE (room left)` for the error a write of `path` raised."""
    cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
    return f"cannot write {os.fspath(path)}: {cause}{_room_left(Path(os.fspath(path)))}"


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Runs the body, which writes `path` (a file, or a folder's files), re-raising a failed
    write as `WriteFailed` naming `path` (the original error chained as its cause)."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as error:
        if not _write_error(error):
            raise
        failed = WriteFailed(failure_message(path, error))  # one argument: str() is the message alone
        failed.errno = error.errno if isinstance(error, OSError) else None
        raise failed from error


# The temporary files `replace_text` writes beside PATH: ".PATH.XXXXXXXX.tmp" (eight of
# tempfile's name characters, as mkstemp made them before).
_TEMPORARY_NAME = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"
_NAME_CHARACTERS = string.ascii_lowercase + string.digits + "_"


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty file in `path`'s folder, open for writing, created as open() creates `path`:
    mode 0o666, less the umask that the kernel applies (reading the umask from Python means
    setting it, which races with other threads creating files)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        random_part = "".join(secrets.choice(_NAME_CHARACTERS) for _ in range(8))
        temporary = path.parent / f".{path.name}.{random_part}.tmp"
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary file name beside {path.name}", os.fspath(path.parent))


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the path of a new, empty temporary file beside ``path`` for the body to write
    (by name: matplotlib's savefig, say), then moves it over ``path`` once the body returns, so
    that an interrupted or failed write (Ctrl-C, a full disk) leaves the old file whole and no
    temporary behind. A symlink's target is replaced, not the link; an existing file keeps its
    mode, and one that this process may not write is refused, as open(path, "w") refuses it.
    `WriteFailed` when it cannot be written (the folder too must be writable).

    A process killed mid-write (SIGKILL, an OOM kill) leaves its temporary file behind, a hidden
    ``.NAME.XXXXXXXX.tmp`` beside the file: `remove_stale_temporaries` removes them for a
    command that holds the file's lock (evaluate's records and summary); elsewhere they stay."""
    given, path = path, Path(os.path.realpath(path))
    with writing(given):
        existing_mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
        fd, temporary = _create_beside(path)  # first: on a read-only file system, EROFS says why
        try:
            with os.fdopen(fd, "wb") as file:
                # os.replace needs the folder alone: a read-only file (0444) would be overwritten
                # where open("w") refuses it. os.access answers for root as open() does (True).
                if existing_mode is not None and not os.access(path, os.W_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(given))
                if existing_mode is not None:
                    os.fchmod(file.fileno(), existing_mode)
            yield temporary
            with open(temporary, "rb") as file:  # on disk before it takes the old file's place
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8), as `replacing` writes a file: the old file
    whole, or the new one."""
    with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        file.write(text)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Removes the temporary files `replace_text` left beside ``path`` when its process was
    killed mid-write; returns them. Only for a caller that holds ``path``'s lock
    (`run_info.output_lock`): another process writing ``path`` meanwhile would lose its file."""
    path = Path(os.path.realpath(path))
    pattern = re.compile(_TEMPORARY_NAME.format(name=re.escape(path.name)))
    removed = []
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:  # failing, the write names why
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed
