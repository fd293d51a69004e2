"""Bounded reading of what anyone with write access to etcd can store.

etcd is shared by every host, so a value under ``<prefix>/`` may be any bytes.  The decoders of
:mod:`pyflannel.lease` and :mod:`pyflannel.config` read JSON through :func:`load_json`, which
checks the size and the nesting depth *before* :func:`json.loads` runs (a 200 kB ``[[[…]]]``
makes the standard parser raise RecursionError) and turns every failure into
:class:`UntrustedInput`.  :func:`excerpt` gives the short, printable piece of a value that an
error text may quote, never the value itself.  Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: The deepest JSON nesting any decoder accepts; flannel's own documents are two levels deep.
MAX_JSON_DEPTH = 16
#: How many characters of an offending value an error text may quote.
EXCERPT_CHARS = 48

# A JSON string literal (escapes included) or one bracket: strings are skipped whole so that a
# bracket inside one does not count as nesting.  An unterminated string matches to the end.
_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


class UntrustedInput(ValueError):
    """A value that is too large, too deep, not UTF-8 or not JSON; the text is short."""


def clip(text: str, limit: int) -> str:
    """*text* cut to *limit* characters, the cut marked with how much was left out."""
    more = len(text) - limit
    return text if more <= 0 else f"{text[:limit]}…(+{more} chars)"


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A printable ``repr`` of *value*, at most about *limit* characters, marked where cut.

    Only the first *limit* characters of a string are ever looked at, so the cost does not
    depend on the value's size; anything else is summarised by its type when its repr is long.
    """
    if isinstance(value, str | bytes):
        head = repr(value[:limit])
        more = len(value) - limit
        return head if more <= 0 else f"{head}…(+{more} chars)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr of a huge int is slow and may even raise (sys.int_info.str_digits_check_threshold).
        return f"<int of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break the error path that called us
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"<{type(value).__name__}>"


def as_text(value: str | bytes, max_chars: int, what: str) -> str:
    """*value* as text: refused when longer than *max_chars* (checked before decoding) or
    when it is bytes that are not UTF-8."""
    if not isinstance(value, str | bytes):
        raise UntrustedInput(f"{what} is a {type(value).__name__}, not text")
    if len(value) > max_chars:
        raise UntrustedInput(f"{what} is {len(value)} long, more than the {max_chars} allowed")
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UntrustedInput(f"{what} is not UTF-8 (byte {exc.start})") from None
    return value


def json_depth(text: str, limit: int) -> int:
    """The nesting depth of the JSON in *text*, counting no further than *limit* + 1.

    A cheap scan, linear in the size of *text*, that needs no valid JSON: json.loads judges
    validity afterwards, this only keeps its recursion bounded.
    """
    depth = 0
    deepest = 0
    for m in _TOKEN_RE.finditer(text):
        char = m.group()[0]
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def load_json(
    value: str | bytes, *, max_chars: int, max_depth: int = MAX_JSON_DEPTH, what: str = "value"
) -> Any:
    """Parse *value* as JSON within the bounds; :class:`UntrustedInput` for anything else."""
    text = as_text(value, max_chars, what)
    # Nesting can be no deeper than the number of opening brackets: counting them is C speed,
    # and spares the scan for every ordinary record (a lease value has two or three).
    few = text.count("[") + text.count("{") <= max_depth
    if not few and json_depth(text, max_depth) > max_depth:
        raise UntrustedInput(f"{what} nests deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and the int-digits limit of huge numbers
        raise UntrustedInput(f"{what} is not valid JSON: {clip(str(exc), 80)}") from None
    except Exception as exc:  # e.g. RecursionError: bounded above, but never let one escape
        raise UntrustedInput(f"{what} did not parse ({type(exc).__name__})") from None
