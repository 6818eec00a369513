"""Fixtures shared by several test modules."""
from __future__ import annotations

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
