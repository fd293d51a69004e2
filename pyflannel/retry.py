"""Exponential backoff with jitter, and a log filter that reports each distinct problem once."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from *initial* up to *maximum*, with ±20% jitter; reset on success."""

    initial: float = 0.5
    maximum: float = 10.0
    _next: float = field(default=0.0, init=False)

    def next(self) -> float:
        """The delay to wait before the next attempt."""
        self._next = self.initial if self._next == 0 else min(self._next * 2, self.maximum)
        return self._next * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        """Start again from *initial* (call after a success)."""
        self._next = 0.0


@dataclass
class OnceFilter:
    """Remembers the last problem so a retry loop logs it once, not once per attempt.

    ``fresh(text)`` is True the first time *text* is seen after another text (or after
    :meth:`clear`), and counts the repeats meanwhile.
    """

    last: str | None = None
    repeats: int = 0

    def fresh(self, text: str) -> bool:
        """True when *text* differs from the last problem reported."""
        if text == self.last:
            self.repeats += 1
            return False
        self.last, self.repeats = text, 0
        return True

    def clear(self) -> int:
        """Forget the problem (it went away); return how often it repeated."""
        n = self.repeats
        self.last, self.repeats = None, 0
        return n


#: How often a retry loop that keeps failing says so again (see Waiting).
REMINDER_PERIOD = 60.0


def duration(seconds: float) -> str:
    """``45s``, ``6m``, ``2h05m``: a waiting time as an operator reads it."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Waiting:
    """A retry loop's account of its wait: attempts, since when, the last problem; it says
    when a reminder line is due (every *period* seconds), so that a daemon that waits for
    etcd is never silent for longer than that, and an operator can tell it from a hung one."""

    period: float = REMINDER_PERIOD
    attempts: int = 0
    since: float | None = None  # monotonic time of the first failure
    last: str = ""
    _reminded: float = field(default=0.0, init=False)

    def failed(self, problem: str, now: float) -> bool:
        """Count one failed attempt at *now*; True when a reminder is due."""
        if self.since is None:
            self.since = self._reminded = now
        self.attempts += 1
        self.last = problem
        if now - self._reminded >= self.period:
            self._reminded = now
            return True
        return False

    def clear(self) -> None:
        """The wait is over."""
        self.attempts, self.since, self.last = 0, None, ""

    def waited(self, now: float) -> float:
        """Seconds since the first failure (0 when not waiting)."""
        return 0.0 if self.since is None else now - self.since

    def summary(self, now: float) -> str:
        """``attempt 7, 6m, last: connection refused``."""
        return f"attempt {self.attempts}, {duration(self.waited(now))}, last: {self.last}"
