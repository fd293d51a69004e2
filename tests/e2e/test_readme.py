"""The README's promise: its first two commands work, as written, from a clean clone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pyflannel.lab.topo import prefixed_namespaces

from .conftest import _require

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The commands of the README's first code block, comments stripped."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    """The README starts with two commands, the demo's and the tests', and CI runs the latter."""
    cmds = readme_commands()
    assert cmds == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.e2e
def test_demo_command_runs_from_a_clean_clone(tmp_path: Path) -> None:
    """`bash scripts/demo.sh` in a fresh clone sets up, runs up/check/status/down, passes every
    pair, and leaves no namespace behind."""
    _require()
    if prefixed_namespaces("pfl-"):
        pytest.fail("a pyflannel-lab is already up on this machine; run `pyflannel-lab down`")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    demo = readme_commands()[0].split()
    res = subprocess.run(demo, cwd=clone, capture_output=True, text=True, timeout=600, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "8 passed, 0 failed" in out
    assert "lab down: removed" in out
    assert prefixed_namespaces("pfl-") == []
