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
