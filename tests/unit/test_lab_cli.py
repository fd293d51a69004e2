"""pyflannel-lab's help as a newcomer reads it: plain text, every word explained (no root)."""

from __future__ import annotations

import pytest

from pyflannel.lab.cli import main


@pytest.mark.parametrize("argv", [["--help"], ["up", "--help"], ["down", "--help"]])
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """No reStructuredText markup (``literal``, :role:), no unexplained "seed"; exit 0."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: pyflannel-lab" in text
    assert "``" not in text and ":mod:" not in text and ":class:" not in text
    assert "seed" not in text.lower()
