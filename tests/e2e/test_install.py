"""scripts/install.sh as an operator runs it, into a temporary root instead of /: a virtualenv
under opt/pyflannel, the commands linked where the unit looks for them, the unit enabled, the
environment file installed once and then kept; the installed ``pyflannel`` runs from there.

pip installs the checkout and its dependencies into the fresh virtualenv (from pip's cache or
the configured index), so this takes tens of seconds.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyflannel import __version__

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install.sh"


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the install script with *args*; its output."""
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=800,
        env={**os.environ, **(env or {})},
        check=False,
    )


def run_installed(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed pyflannel (through its link in usr/local/bin), with a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLANNELD_", "PYTHON"))}
    env["PATH"] = f"{root}/usr/local/bin:/usr/bin:/bin"
    return subprocess.run(
        ["pyflannel", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def exec_start(unit: Path) -> str:
    """The unit's ExecStart= path."""
    line = next(ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()[0]


def test_install_into_a_root_then_upgrade(tmp_path: Path) -> None:
    """Installed from scratch: the unit's ExecStart= resolves, inside the root, to the
    installed pyflannel, which prints the checkout's version and refuses a bad flag with one
    line and exit 2.  Run again (an upgrade), an edited environment file is kept."""
    if shutil.which("python3") is None:
        pytest.fail("python3 is missing")
    root = tmp_path / "root"
    before = sorted(p.name for p in ROOT.iterdir())

    first = install("--root", str(root))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    assert f"done: {__version__}" in first.stdout

    venv = root / "opt" / "pyflannel"
    assert (venv / "bin" / "python").exists()
    for cmd in ("pyflannel", "pyflannel-cni"):
        link = root / "usr" / "local" / "bin" / cmd
        assert link.is_symlink() and link.resolve() == (venv / "bin" / cmd).resolve()
    unit = root / "etc" / "systemd" / "system" / "pyflannel.service"
    assert unit.read_text() == (ROOT / "systemd" / "pyflannel.service").read_text()
    target = Path(str(root) + exec_start(unit))
    assert target.resolve() == (venv / "bin" / "pyflannel").resolve()
    assert os.access(target, os.X_OK)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / "pyflannel.service"
    assert wants.is_symlink()
    envfile = root / "etc" / "pyflannel" / "pyflannel.env"
    assert envfile.read_text() == (ROOT / "systemd" / "pyflannel.env").read_text()
    assert stat.S_IMODE(envfile.stat().st_mode) == 0o600

    version = run_installed(root, "--version")
    assert (version.returncode, version.stderr.strip()) == (0, __version__)
    bad = run_installed(root, "--etcd-endpoints=http://127.0.0.1:99999")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr

    envfile.write_text("FLANNELD_ETCD_ENDPOINTS=http://10.0.1.2:2379\n")
    again = install(env={"DESTDIR": str(root)})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept" in again.stdout
    assert envfile.read_text() == "FLANNELD_ETCD_ENDPOINTS=http://10.0.1.2:2379\n"
    assert run_installed(root, "--version").returncode == 0

    assert sorted(p.name for p in ROOT.iterdir()) == before  # nothing built in the checkout


def test_unknown_argument_exits_2() -> None:
    """A mistyped option installs nothing: one line, exit 2."""
    res = install("--rot", "/tmp/x")
    assert res.returncode == 2
    assert res.stdout == "" and len(res.stderr.splitlines()) == 1
