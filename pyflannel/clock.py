"""Time as a dependency: the :class:`Clock` Protocol and the real :class:`SystemClock`.

Code that reasons about lease lifetimes takes a Clock instead of calling :mod:`time`, so tests
can drive expiry with :class:`pyflannel.testing.FakeClock` instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock and monotonic time, in seconds."""

    def time(self) -> float:
        """Seconds since the epoch (for expirations stored in leases)."""
        ...

    def monotonic(self) -> float:
        """A clock that never jumps (for deadlines and intervals)."""
        ...


class SystemClock:
    """The real clocks of :mod:`time`."""

    def time(self) -> float:
        """:func:`time.time`."""
        return time.time()

    def monotonic(self) -> float:
        """:func:`time.monotonic`."""
        return time.monotonic()


__all__ = ["Clock", "SystemClock"]
