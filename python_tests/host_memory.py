"""Peak host memory of a call, for tests that bound what loading or copying a model holds."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

# Linux resets a process's peak resident size (VmHWM) to its current one on "5" written here.
_PEAK_RESET = "/proc/self/clear_refs"

needs_peak_reset = pytest.mark.skipif(not os.access(_PEAK_RESET, os.W_OK), reason="needs Linux's peak-RSS reset")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def peak_rss_rise(call: Callable[[], T]) -> tuple[T, int]:
    """(what `call()` returns, bytes the process's peak resident size rose above its size at the
    start): the kernel's peak, so it counts a transient however short, and file pages kept mapped
    as well as copies."""
    start = _status_bytes("VmRSS")
    with open(_PEAK_RESET, "w", encoding="ascii") as f:
        f.write("5")
    result = call()
    return result, _status_bytes("VmHWM") - start
