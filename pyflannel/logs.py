"""structlog setup: one event per line on stdout, key=value on a terminal, JSON otherwise."""

from __future__ import annotations

import logging
import os
import sys

import structlog


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
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
