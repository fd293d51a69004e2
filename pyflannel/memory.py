"""Give memory back to the system after a burst of short-lived objects.

Listing 10,000 leases or re-reading 30,000 kernel entries builds tens of megabytes of objects
that die a moment later; CPython returns freed small-object arenas on its own, but glibc keeps
the rest of its heap (large strings, dict and list tables) mapped.  ``malloc_trim(0)`` releases
those free pages, so the resident size follows what the daemon holds rather than its peak.
A C library without it (musl) makes this a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # no glibc: nothing to trim
    _trim = None


def release() -> None:
    """Collect cycles, then hand free heap pages back to the kernel."""
    gc.collect()
    if _trim is not None:
        _trim(0)
