"""Fixtures shared by several test modules."""
from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Iterator

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
