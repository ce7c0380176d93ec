"""The process's resident memory, and handing freed heap back to the system (glibc only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path


def rss_mb() -> float:
    """Resident set size in MB (Linux; 0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


def trim() -> bool:
    """Return the free pages of every malloc arena to the system; False if unsupported."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
