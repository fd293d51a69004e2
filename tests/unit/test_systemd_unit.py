"""The shipped systemd unit and environment file: ``systemd-analyze verify`` finds nothing to
say, ``systemd-analyze security`` scores it (the score is printed; run with ``-s`` to see it),
and both files agree with the daemon's command line.

``verify`` checks that ExecStart= is executable, so it is run on a copy whose ExecStart= points
at a stub in tmp_path; the shipped unit keeps /usr/local/bin/pyflannel.  Without
systemd-analyze these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pyflannel.cli import FLAGS

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "pyflannel.service"
ENV_FILE = REPO / "systemd" / "pyflannel.env"
SHIPPED_EXEC = "/usr/local/bin/pyflannel"
#: Regression guard: the exposure score was 1.9 when the unit was written (systemd 252), and
#: issue 9 holds it at 2.0 at most.  Loosening the sandbox past this must be a decision, made
#: here, not an accident.
MAX_EXPOSURE = 2.0


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        reason = "systemd-analyze is missing (apt-get install systemd)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _directives(text: str) -> dict[str, list[str]]:
    """Key -> values in file order, across sections; comments and blank lines dropped."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit, byte for byte, except that ExecStart= names an executable stub."""
    stub = tmp_path / "pyflannel"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_EXEC}\n") == 1
    copy = tmp_path / "pyflannel.service"
    copy.write_text(text.replace(f"ExecStart={SHIPPED_EXEC}\n", f"ExecStart={stub}\n"))
    return copy


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_is_clean(unit_copy: Path) -> None:
    """systemd-analyze verify exits 0 and says nothing about the unit."""
    proc = _verify(unit_copy)
    output = proc.stdout + proc.stderr
    about_unit = [ln for ln in output.splitlines() if "pyflannel" in ln]
    assert proc.returncode == 0, output
    assert about_unit == []


def test_verify_would_catch_a_typo(unit_copy: Path) -> None:
    """The check above can fail: a misspelt directive is reported (with exit status 0, which
    is why the output is inspected too)."""
    unit_copy.write_text(unit_copy.read_text().replace("ProtectSystem=", "ProtectSytem="))
    proc = _verify(unit_copy)
    assert "ProtectSytem" in proc.stdout + proc.stderr


def test_security_exposure(unit_copy: Path) -> None:
    """Record the offline exposure score; it must stay at or below MAX_EXPOSURE."""
    proc = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for pyflannel\.service: (\d+(?:\.\d+)?)", proc.stdout)
    assert m is not None, proc.stdout + proc.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security --offline=true: exposure {score}")
    assert score <= MAX_EXPOSURE, proc.stdout


def test_unit_essentials() -> None:
    """The settings the daemon's contract rests on, as the brief and flanneld's lifecycle
    need them."""
    d = _directives(UNIT.read_text())
    assert d["ExecStart"] == [SHIPPED_EXEC]
    assert d["Type"] == ["notify"]
    assert d["WatchdogSec"] == ["60s"]  # the main loop pings at half of it (WATCHDOG=1)
    assert d["EnvironmentFile"] == ["-/etc/pyflannel/pyflannel.env"]
    assert (d["Restart"], d["RestartSec"]) == (["on-failure"], ["5"])
    assert "network-online.target" in d["Wants"][0].split()
    assert "network-online.target" in d["After"][0].split()
    # CAP_NET_RAW: iptables-legacy's raw socket; and its lock file in the read-only /run.
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert d["AmbientCapabilities"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert d["ExecStartPre"] == ["+/usr/bin/touch /run/xtables.lock"]
    assert (d["RuntimeDirectory"], d["RuntimeDirectoryPreserve"]) == (["flannel"], ["yes"])
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert "User" not in d
    assert "DynamicUser" not in d


def test_env_file_names_real_flags() -> None:
    """Every FLANNELD_* name in the example is one the command line reads, and the ones
    operators need are all there."""
    text = ENV_FILE.read_text()
    named = set(re.findall(r"\b(FLANNELD_[A-Z0-9_]+)=", text))
    known = {"FLANNELD_" + f.name.upper().replace("-", "_") for f in FLAGS} | {"FLANNELD_V"}
    assert named <= known, named - known
    assert named >= {
        "FLANNELD_ETCD_ENDPOINTS",
        "FLANNELD_ETCD_PREFIX",
        "FLANNELD_ETCD_API",
        "FLANNELD_IFACE",
        "FLANNELD_PUBLIC_IP",
        "FLANNELD_SUBNET_FILE",
        "FLANNELD_IP_MASQ",
        "FLANNELD_ETCD_CAFILE",
        "FLANNELD_ETCD_CERTFILE",
        "FLANNELD_ETCD_KEYFILE",
        "FLANNELD_ETCD_USERNAME",
        "FLANNELD_ETCD_PASSWORD",
        "FLANNELD_LOG_FORMAT",
        "FLANNELD_LOG_LEVEL",
    }


def test_env_file_is_all_comments() -> None:
    """An example: installing it unedited changes nothing (every setting is commented out)."""
    live = [
        ln
        for ln in ENV_FILE.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert live == []
