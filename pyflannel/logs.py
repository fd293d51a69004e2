"""structlog setup: one event per line on stdout, key=value on a terminal, JSON otherwise.

Every line is bounded in length (:func:`bound_event`): values can quote what any host wrote to
etcd, and one hostile record once made a 500 kB log line.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from pyflannel.untrusted import clip

#: The longest string value a log line carries; longer ones are cut, the cut marked.
MAX_VALUE_CHARS = 256
#: The longest formatted traceback kept (its end: the innermost frames and the message).
MAX_EXCEPTION_CHARS = 1500
#: Budget for all the fields of one event, so a rendered line stays well under 4 KB.
MAX_EVENT_CHARS = 3000
_MAX_KEY_CHARS = 64
# Rendering adds quotes, "=" or ": " and separators to each field; counted against the budget.
_FIELD_OVERHEAD = 6
# These go first, so a line cut short still says what happened and when.
_FIRST = ("event", "level", "timestamp")


def _bounded(key: str, value: Any) -> Any:
    """*value* as the line may carry it: scalars kept, long text cut, anything else as cut text."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<int of {value.bit_length()} bits>"
    if key == "exception" and isinstance(value, str):
        more = len(value) - MAX_EXCEPTION_CHARS
        return value if more <= 0 else f"…(-{more} chars){value[-MAX_EXCEPTION_CHARS:]}"
    if not isinstance(value, str):
        try:
            text = str(value)
        except Exception:  # logging must not fail on a broken __str__
            return f"<{type(value).__name__}>"
        # Small containers (lists of endpoints...) keep their JSON shape.
        return value if len(text) <= MAX_VALUE_CHARS else clip(text, MAX_VALUE_CHARS)
    return clip(value, MAX_VALUE_CHARS)


def bound_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: cut long values, then drop the fields past the line's budget."""
    order = [k for k in _FIRST if k in event_dict] + [k for k in event_dict if k not in _FIRST]
    out: dict[str, Any] = {}
    budget = MAX_EVENT_CHARS
    for n, key in enumerate(order):
        value = _bounded(str(key), event_dict[key])
        name = clip(str(key), _MAX_KEY_CHARS)
        cost = len(name) + len(str(value)) + _FIELD_OVERHEAD
        if cost > budget:
            out["truncated"] = f"{len(order) - n} fields left out"
            break
        budget -= cost
        out[name] = value
    return out


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog; *fmt* is console, json or auto (console on a TTY)."""
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    # journald stamps every line itself; elsewhere a timestamp is needed.
    if not os.environ.get("JOURNAL_STREAM"):
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, bound_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
