"""pyflannel-cni for real: the ``bridge`` and ``host-local`` plugins from /usr/lib/cni, run by
``python -m pyflannel.cni`` inside a "host" network namespace, wiring two "container"
namespaces that then ping each other; DEL releases everything, twice is fine, and bad input
gives a CNI error object.

Everything lives in namespaces named with a per-run prefix (the bridge, veths and iptables
rules go with the host namespace) and in tmp_path (subnet.env, our state, host-local's
leases), and the fixture deletes the namespaces whatever the outcome.  Needs root, ip(8),
ping, iptables (the bridge masquerades) and containernetworking-plugins; without them the
test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

import pyflannel

pytestmark = pytest.mark.netns

CNI_BIN = Path("/usr/lib/cni")
PACKAGE_ROOT = str(Path(pyflannel.__file__).resolve().parent.parent)
SUBNET = IPv4Network("10.244.3.0/24")
GATEWAY = "10.244.3.1"
MTU = 1400  # not a default anywhere, so seeing it proves it came from FLANNEL_MTU
NET_NAME = "pfcni-test"


def _require() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    problems += [f"no {tool}" for tool in ("ip", "ping", "iptables") if not shutil.which(tool)]
    problems += [
        f"no {CNI_BIN / p}" for p in ("bridge", "host-local") if not (CNI_BIN / p).exists()
    ]
    if problems:
        reason = (
            "needs root, iproute2, iputils-ping, iptables and containernetworking-plugins: "
            + ", ".join(problems)
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _run(*cmd: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=60, check=False, **kwargs
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """Make namespaces on demand (``netns("host")``); all are deleted at teardown."""
    _require()
    prefix = f"pfcni{os.getpid() % 100000}-"
    made: list[str] = []

    def make(name: str) -> str:
        full = prefix + name
        _run("ip", "netns", "add", full)
        made.append(full)
        _run("ip", "-n", full, "link", "set", "lo", "up")
        return full

    try:
        yield make
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


class Cni:
    """Runs the plugin the way a runtime on the host would: inside the host namespace."""

    def __init__(self, host: str, tmp: Path) -> None:
        self.host = host
        self.subnet_file = tmp / "subnet.env"
        self.state_dir = tmp / "state"
        self.ipam_dir = tmp / "ipam"
        self.empty_dir = tmp / "empty-bin"

    def config(self, **extra: Any) -> str:
        """Our network config; host-local's leases kept in tmp_path, not /var/lib/cni."""
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": NET_NAME,
            "type": "pyflannel-cni",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.state_dir),
            "ipam": {"dataDir": str(self.ipam_dir)},
        }
        conf.update(extra)
        return json.dumps(conf)

    def __call__(
        self, command: str, ns: str | None, stdin: str, container: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": PACKAGE_ROOT,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container or (ns or "none"),
            "CNI_IFNAME": "eth0",
            # A directory without plugins first: the search must go on along the path.
            "CNI_PATH": f"{self.empty_dir}:{CNI_BIN}",
        }
        if ns is not None:
            env["CNI_NETNS"] = f"/run/netns/{ns}"
        return _run(
            "ip",
            "netns",
            "exec",
            self.host,
            sys.executable,
            "-m",
            "pyflannel.cni",
            check=False,
            input=stdin,
            env=env,
        )


def _addr(ns: str, dev: str) -> dict[str, Any]:
    [info] = json.loads(_run("ip", "-n", ns, "-j", "addr", "show", "dev", dev).stdout)
    return dict(info)


def _links(ns: str | None) -> set[str]:
    cmd = ["ip", "-j", "link", "show"] if ns is None else ["ip", "-n", ns, "-j", "link", "show"]
    return {link["ifname"] for link in json.loads(_run(*cmd).stdout)}


def _error(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    err = json.loads(proc.stdout)
    assert isinstance(err, dict)
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    return err


def test_two_containers_ping_then_delete(netns: Callable[[str], str], tmp_path: Path) -> None:
    """ADD wires two containers into FLANNEL_SUBNET with FLANNEL_MTU; they ping each other;
    CHECK passes; DEL (also after subnet.env is gone) removes the veth and frees the IP;
    DEL twice is fine; bad input is a CNI error object."""
    host = netns("host")
    c1, c2 = netns("c1"), netns("c2")
    cni = Cni(host, tmp_path)
    cni.empty_dir.mkdir()
    cni.subnet_file.write_text(
        f"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={GATEWAY}/24\n"
        f"FLANNEL_MTU={MTU}\nFLANNEL_IPMASQ=false\n"
    )
    root_links = _links(None)

    results: dict[str, dict[str, Any]] = {}
    for ns in (c1, c2):
        proc = cni("ADD", ns, cni.config())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results[ns] = json.loads(proc.stdout)

    ips: dict[str, IPv4Interface] = {}
    veths: dict[str, str] = {}
    for ns, result in results.items():
        assert result["cniVersion"] == "1.0.0"
        [ip] = result["ips"]
        ips[ns] = IPv4Interface(ip["address"])
        assert ips[ns].network == SUBNET
        assert ip["gateway"] == GATEWAY
        names = {i["name"]: i for i in result["interfaces"]}
        assert names["eth0"]["sandbox"] == f"/run/netns/{ns}"
        [veths[ns]] = [n for n, i in names.items() if n not in ("cni0", "eth0")]
        # What the kernel says inside the container.
        eth0 = _addr(ns, "eth0")
        assert eth0["mtu"] == MTU
        assert str(ips[ns]) in {
            f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"] if a["family"] == "inet"
        }
        routes = _run("ip", "-n", ns, "route", "show", "10.244.0.0/16").stdout
        assert f"via {GATEWAY} dev eth0" in routes
    assert ips[c1] != ips[c2]

    # The host side: bridge with the gateway address and the MTU, veths enslaved, and nothing
    # of it in the root namespace.
    cni0 = _addr(host, "cni0")
    assert cni0["mtu"] == MTU
    assert f"{GATEWAY}/24" in {
        f"{a['local']}/{a['prefixlen']}" for a in cni0["addr_info"] if a["family"] == "inet"
    }
    for veth in veths.values():
        assert _addr(host, veth)["master"] == "cni0"
    assert not (_links(None) - root_links) & {"cni0", *veths.values()}

    _run("ip", "netns", "exec", c1, "ping", "-c", "1", "-W", "2", str(ips[c2].ip))
    _run("ip", "netns", "exec", c2, "ping", "-c", "1", "-W", "2", str(ips[c1].ip))

    check = cni("CHECK", c1, cni.config(prevResult=results[c1]))
    assert check.returncode == 0, check.stdout + check.stderr

    lease_dir = cni.ipam_dir / NET_NAME
    assert (lease_dir / str(ips[c1].ip)).exists()
    proc = cni("DEL", c1, cni.config())
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr
    assert veths[c1] not in _links(host)
    assert "eth0" not in _links(c1)
    assert not (lease_dir / str(ips[c1].ip)).exists()
    assert not (cni.state_dir / c1).exists()
    assert cni("DEL", c1, cni.config()).returncode == 0  # twice is fine

    # DEL uses what ADD stored, so it works with subnet.env gone (flanneld stopped).
    cni.subnet_file.unlink()
    proc = cni("DEL", c2, cni.config())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert veths[c2] not in _links(host)
    assert not (lease_dir / str(ips[c2].ip)).exists()
    assert "eth0" not in _links(c2)

    # Bad input, in the same place a runtime would run us.
    c3 = netns("c3")
    assert _error(cni("ADD", c3, cni.config()))["code"] == 11  # no subnet.env
    assert _error(cni("ADD", c3, "{not json"))["code"] == 6
    assert _error(cni("ADD", c3, cni.config(cniVersion="0.2.0")))["code"] == 1
    assert _links(c3) == {"lo"}
    assert not [p.name for p in lease_dir.iterdir() if p.name.startswith("10.244.")]
