"""Fixtures shared by several test modules."""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Run a module's tests on one CPU thread.

    Tiny models are dispatch-bound: extra threads only add OpenMP barriers, which stall badly
    on a busy machine (5x slower here).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def file_size_limit() -> Callable[[int], contextlib.AbstractContextManager[None]]:
    """`with file_size_limit(n):` no file can grow past n bytes meanwhile (RLIMIT_FSIZE, which
    any user may lower and raise again up to its hard limit): a write past it fails with EFBIG,
    as Python ignores SIGXFSZ. Stands in for a full disk without root or a small mount. A child
    process gets SIGXFSZ back (subprocess restores it) and is killed past the limit: keep git out
    of the limited section (a killed `git status` leaves the checkout's .git/index.lock behind).
    pytest's own capture file is a file too: once the test's output (all of it, not only the
    section's) passes n bytes, a print() inside the section fails with EFBIG (and inside
    `file_writes.writing` passes for the write under test), so a test whose code prints there
    takes capsys, which captures in memory."""

    @contextlib.contextmanager
    def limit(size: int) -> Iterator[None]:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    return limit


def _permission_bits_bite(path: Path) -> bool:
    """Whether this process is refused writing the file, or creating a file in the folder, at
    `path` (not so for root, which CAP_DAC_OVERRIDE lets past the permission bits)."""
    probe = path / ".permission-probe" if path.is_dir() else path
    try:
        with open(probe, "a"):
            pass
    except PermissionError:
        return True
    if path.is_dir():
        probe.unlink()
    return False


@pytest.fixture
def unwritable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """`unwritable(path)`: this process may not write the file or folder at `path` for the rest
    of the test (its mode is restored after). `chmod a-w` does it for an ordinary user, as in CI;
    root ignores permission bits, so there os.access(path, W_OK) answers False for the file, and
    os.open refuses to create a file in the folder (as tempfile.mkstemp and
    file_writes.replace_text create theirs): under root the checks' logic is what is tested."""
    modes: list[tuple[Path, int]] = []

    def refuse(path: Path) -> None:
        path = path.resolve()
        modes.append((path, stat.S_IMODE(path.stat().st_mode)))
        path.chmod(0o555 if path.is_dir() else 0o444)
        if _permission_bits_bite(path):
            return
        if path.is_dir():
            real_open = os.open

            def refusing_open(file, flags, *args, **kwargs):
                if flags & os.O_CREAT and Path(os.fspath(file)).resolve().parent == path:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
                return real_open(file, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", refusing_open)
        else:
            real_access = os.access

            def refusing_access(file, mode, *args, **kwargs):
                if mode & os.W_OK and Path(os.fspath(file)).resolve() == path:
                    return False
                return real_access(file, mode, *args, **kwargs)

            monkeypatch.setattr(os, "access", refusing_access)

    yield refuse
    for path, mode in reversed(modes):
        path.chmod(mode)
