"""Helpers shared by the unit tests of the handler's limits."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_mb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    assert match, f"{field} missing from {_STATUS}"
    return int(match.group(1)) / 1024


class PeakMemory:
    """Peak resident memory growth (MB) of this process while a call runs.

    Linux keeps the process's high-water mark of resident memory (VmHWM);
    writing 5 to /proc/self/clear_refs resets it to the current resident size,
    so the peak during one call is measured exactly, whatever allocated it (PIL
    and torch allocate outside Python's allocator, where tracemalloc is blind).
    """

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """(what `fn` returned or the exception it raised, peak growth in MB)."""
        _CLEAR_REFS.write_text("5")
        before = _status_mb("VmRSS")
        try:
            result: Any = fn()
        except Exception as exc:  # the caller asserts on it
            result = exc
        return result, _status_mb("VmHWM") - before


@pytest.fixture(scope="session")
def peak_memory() -> PeakMemory:
    try:
        _CLEAR_REFS.write_text("5")
        _status_mb("VmHWM")
    except (OSError, AssertionError) as exc:
        pytest.skip(f"cannot reset the peak resident memory through {_CLEAR_REFS}: {exc}")
    return PeakMemory()
