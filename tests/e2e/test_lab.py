"""The demo as a newcomer runs it: `pyflannel-lab up | check | status | down` as processes, on
both etcd APIs, with containers attached by hand or through pyflannel-cni; nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyflannel.lab.topo import Lab, alive, prefixed_namespaces, run

from .conftest import _require

pytestmark = [pytest.mark.e2e]


def lab_cmd(
    workdir: Path, prefix: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run pyflannel-lab as a process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pyflannel.lab.cli",
            "--workdir",
            str(workdir),
            "--prefix",
            prefix,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(("api", "cni"), [("v2", False), ("v3", True)])
def test_up_check_status_down(tmp_path: Path, api: str, cni: bool) -> None:
    """up builds the demo, check passes every cross-cell pair, status shows leases and entries,
    down removes every namespace and process the lab made."""
    _require()
    prefix = f"pfl{os.getpid() % 10000}{api}-"
    workdir = tmp_path / "lab"
    try:
        up = lab_cmd(workdir, prefix, "up", "--api", api, *(["--cni"] if cni else []))
        assert up.returncode == 0, up.stdout + up.stderr
        assert "lab up in" in up.stdout
        pids = json.loads((workdir / "pids.json").read_text())
        assert len(pids) == 1 + 2 + 4  # etcd, two daemons, four HTTP servers
        check = lab_cmd(workdir, prefix, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "8 passed, 0 failed" in check.stdout
        assert "con_a" in check.stdout and "UDP 8472 10.0.1.3 → 10.0.2.3" in check.stdout
        status = lab_cmd(workdir, prefix, "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.count('"BackendType":"vxlan"') == 2
        assert "self permanent" in status.stdout and "PERMANENT" in status.stdout
        t0 = time.monotonic()
        down = lab_cmd(workdir, prefix, "down")
        took = time.monotonic() - t0
        assert down.returncode == 0
        assert prefixed_namespaces(prefix) == []
        assert not any(alive(pid) for pid in pids.values())
        assert not (workdir / "state.json").exists()
        # It says what it removed, by name, and does not wait for each process in turn
        # (13-20 s before; well under 1 s now: the bound only catches that coming back).
        assert "pyflannel-cell-1" in down.stdout and f"{prefix}router" in down.stdout
        assert "lab down: removed 7 processes, 8 namespaces" in down.stdout
        assert took < 5, took
    finally:
        lab_cmd(workdir, prefix, "down")


def test_down_after_a_crash_during_up(tmp_path: Path) -> None:
    """down cleans up after an `up` killed half-way, with its records gone too."""
    _require()
    prefix = f"pflc{os.getpid() % 10000}-"
    workdir = tmp_path / "lab"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyflannel.lab.cli",
            "--workdir",
            str(workdir),
            "--prefix",
            prefix,
            "up",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        Lab.wait((workdir / "cell-1" / "subnet.env").exists, 30, "a daemon running")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pids = json.loads((workdir / "pids.json").read_text())
        (workdir / "pids.json").unlink()
        assert prefixed_namespaces(prefix)
        down = lab_cmd(workdir, prefix, "down")
        assert down.returncode == 0, down.stderr
        assert prefixed_namespaces(prefix) == []
        time.sleep(0.2)
        assert not any(alive(pid) for pid in pids.values())
    finally:
        lab_cmd(workdir, prefix, "down")


def test_cni_attach_reach_and_delete(tmp_path: Path) -> None:
    """Containers attached by pyflannel-cni (delegating to the real bridge plugin) on two cells
    reach each other; DEL removes the container's interface and frees its address; a bad
    network config is answered with a CNI error object."""
    _require()
    lab = Lab(tmp_path / "lab", prefix=f"pflk{os.getpid() % 10000}-", cells=2)
    try:
        lab.build_underlay()
        lab.start_etcd()
        lab.put_config()
        for cell in lab.cells:
            lab.start_daemon(cell)
        for i, cell in enumerate(lab.cells):
            lab.wait_subnet_env(cell)
            lab.attach_containers_cni(cell, 1, start=2 * i)
        a, c = lab.cells[0].containers[0], lab.cells[1].containers[0]
        mtu = run("ip", "-n", a.ns, "-o", "link", "show", "eth0").stdout
        assert "mtu 1450" in mtu
        Lab.wait(
            lambda: run("ping", "-c1", "-W1", str(c.ip), ns=a.ns, check=False).returncode == 0,
            15,
            "ping across cells",
        )
        assert lab.cni(lab.cells[0], "CHECK", a, a.cni_result) == {}
        lab.cni(lab.cells[0], "DEL", a)
        assert run("ip", "-n", a.ns, "link", "show", "eth0", check=False).returncode != 0
        ipam = lab.workdir / "cell-1" / "cni-ipam" / "pyflannel-lab"
        assert not (ipam / str(a.ip)).exists()
        lab.cni(lab.cells[0], "DEL", a)  # idempotent
        bad = subprocess.run(
            ["ip", "netns", "exec", lab.cells[0].ns, sys.executable, "-m", "pyflannel.cni"],
            input="{not json",
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": "x",
                "CNI_NETNS": f"/var/run/netns/{a.ns}",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": "/usr/lib/cni",
            },
            check=False,
        )
        assert bad.returncode != 0
        err = json.loads(bad.stdout)
        assert err["code"] == 6 and err["msg"]
    finally:
        lab.down()
