"""Log lines are bounded in length, whatever the values logged (they may quote etcd records)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from pyflannel.logs import MAX_VALUE_CHARS, configure


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test configures structlog itself; leave the defaults behind for the next one."""
    yield
    structlog.reset_defaults()


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The lines written to stdout so far."""
    return capsys.readouterr().out.splitlines()


def test_long_value_is_cut_and_marked(capsys: pytest.CaptureFixture[str]) -> None:
    """A 500 kB value becomes its first MAX_VALUE_CHARS characters and a note of what was cut."""
    configure("json")
    structlog.get_logger().warning("lease_skipped", reason="x" * 500_000, subnet="10.5.1.0/24")
    (line,) = lines(capsys)
    rec = json.loads(line)
    assert rec["reason"] == "x" * MAX_VALUE_CHARS + f"…(+{500_000 - MAX_VALUE_CHARS} chars)"
    assert rec["subnet"] == "10.5.1.0/24"
    assert rec["event"] == "lease_skipped"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_many_long_fields_stay_under_4kb(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Fifty long fields still render as one line well under 4 KB that names the event."""
    configure(fmt)
    fields = {f"field{i}": "y" * 10_000 for i in range(50)}
    structlog.get_logger().warning("many_fields", **fields)
    (line,) = lines(capsys)
    assert len(line.encode()) < 4096
    assert "many_fields" in line
    assert "fields left out" in line


def test_small_values_keep_their_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """Short lists, numbers and booleans are logged as they are (JSON types kept)."""
    configure("json")
    structlog.get_logger().info("peers", endpoints=["http://a:2379"], count=3, ok=True)
    rec = json.loads(lines(capsys)[0])
    assert rec["endpoints"] == ["http://a:2379"]
    assert rec["count"] == 3
    assert rec["ok"] is True


def test_long_traceback_keeps_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    """A traceback whose message is huge is cut from the front, so the line stays short."""
    configure("json")
    try:
        raise ValueError("z" * 100_000 + " the end")
    except ValueError:
        structlog.get_logger().exception("watch_error")
    (line,) = lines(capsys)
    assert len(line.encode()) < 4096
    assert json.loads(line)["exception"].endswith(" the end")
