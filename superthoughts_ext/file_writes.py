"""Writing the files other runs read back, and saying why a write failed.

`replace_text` writes a whole file or nothing (a resumed evaluation's records, summaries, the
benchmarks' results JSON, the demo's cache markers). `writing` turns what a failed write raises
(an OSError without the file's name, safetensors' SafetensorError, torch.save's RuntimeError
"unexpected pos 488512 vs 488404") into `WriteFailed`, which names the file, the cause and the
room left there, so that a command can print one line instead of a traceback.
"""
from __future__ import annotations

import contextlib
import os
import resource
import shutil
import stat
import tempfile
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


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then
    os.replace, so that an interrupted or failed write (a kill, a full disk) leaves the old file
    whole. A symlink's target is replaced, not the link. `WriteFailed` when it cannot be written."""
    given, path = path, Path(os.path.realpath(path))
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    else:  # what open() would create; mkstemp's own file is private (0600)
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with writing(given):
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
