"""Test doubles shipped with the package, so that tests of code built on pyflannel need no etcd.

* :class:`FakeClock`: a :class:`~pyflannel.clock.Clock` that moves only when told to.
* :class:`~pyflannel.registry.memory.MemoryRegistry`: the in-memory registry, held to the
  same contract suite as the etcd ones.
* :func:`watch_until`: drive any registry's watch until the events a test waits for arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pyflannel.lease import LeaseEvent
from pyflannel.registry import Registry
from pyflannel.registry.memory import MemoryRegistry


class FakeClock:
    """A clock frozen until :meth:`advance`; wall and monotonic time move together."""

    def __init__(self, start: float = 1_700_000_000.0, monotonic_start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._time = start
        self._monotonic = monotonic_start

    def time(self) -> float:
        """Fake seconds since the epoch."""
        with self._lock:
            return self._time

    def monotonic(self) -> float:
        """Fake monotonic seconds."""
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by *seconds* (never backward: a monotonic clock can't)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backward")
        with self._lock:
            self._time += seconds
            self._monotonic += seconds


def watch_until(
    registry: Registry,
    after: int,
    done: Callable[[list[LeaseEvent]], bool],
    timeout: float = 10.0,
) -> tuple[list[LeaseEvent], int]:
    """Watch *registry* from *after* until ``done(events so far)``; return them and the revision.

    Registry errors (Compacted, RegistryUnavailable...) propagate.  Raises TimeoutError, listing
    what did arrive, if *done* is still false after *timeout* seconds; since watches yield empty
    batches while quiet, that is noticed within one heartbeat of the deadline.
    """
    stop = threading.Event()
    events: list[LeaseEvent] = []
    revision = after
    deadline = time.monotonic() + timeout
    batches = registry.watch_subnets(after, stop)
    try:
        for batch in batches:
            events.extend(batch.events)
            revision = batch.revision
            if done(events):
                return events, revision
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        close = getattr(batches, "close", None)
        if callable(close):
            close()  # a generator: closes its stream now rather than at garbage collection
    raise TimeoutError(f"watch from {after}: no match after {timeout} s; got {events}")


__all__ = ["FakeClock", "MemoryRegistry", "watch_until"]
