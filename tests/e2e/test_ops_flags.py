"""--iface-can-reach and --ip-blackhole-route with real pyflannel processes in the lab.

cell-3 gets a second underlay, ``eth1`` (10.99.0.2/24, a veth to a namespace of its own),
with a gateway to 192.0.2.0/24 behind it, next to ``eth0`` and its default route:
``--iface-can-reach`` must pick the device of the route to the address it is given.
cell-1 (no bridge, forwarding on, like a host whose containers are not on a local bridge) and
cell-2 (a container) show what the blackhole route is for: traffic to an unassigned address of
cell-1's subnet leaves by cell-1's default route to the router without it, and is dropped on
cell-1 with it.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from pyflannel.lab.topo import Cell, Lab, ip, run

from .conftest import _require, daemon_log, ping, routes, spawn_pyflannel, subnet_of

pytestmark = [pytest.mark.e2e]

METRIC = 4294967295


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """etcd, the seed's config and three cells, no daemon; cell-3 with a second underlay."""
    _require()
    lab = Lab(tmp_path_factory.mktemp("lab-ops"), prefix=f"pfq{os.getpid() % 10000}-", cells=3)
    try:
        lab.build_underlay()
        lab.start_etcd()
        lab.put_config()
        c3, far = lab.cells[2].ns, f"{lab.prefix}far"
        run("ip", "netns", "add", far)
        ip(c3, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", far)
        ip(c3, "addr", "add", "10.99.0.2/24", "dev", "eth1")
        ip(far, "addr", "add", "10.99.0.1/24", "dev", "eth0")
        ip(c3, "link", "set", "eth1", "up")
        ip(far, "link", "set", "eth0", "up")
        ip(c3, "route", "add", "192.0.2.0/24", "via", "10.99.0.1")
        ip(c3, "route", "add", "unreachable", "198.51.100.0/24")
        yield lab
    finally:
        lab.down()


def start(lab: Lab, cell: Cell, name: str, prefix: str, *extra: str) -> None:
    """pyflannel on *cell* under its own etcd prefix, with a config of its own there."""
    lab.put(
        f"{prefix}/config", json.dumps({"Network": "10.70.0.0/16", "Backend": {"Type": "vxlan"}})
    )
    spawn_pyflannel(lab, cell, name, prefix, *extra)


def events(lab: Lab, name: str, event: str) -> list[dict[str, object]]:
    """Log lines of run *name* with that event name (no traceback allowed)."""
    text = (lab.workdir / name / "pyflannel.log").read_text()
    assert "Traceback" not in text, text
    return [e for e in map(json.loads, text.splitlines()) if e.get("event") == event]


@pytest.mark.parametrize(
    ("extra", "iface", "address"),
    [
        (["--iface-can-reach=192.0.2.10"], "eth1", "10.99.0.2"),  # behind eth1's gateway
        (["--iface-can-reach=10.0.2.3"], "eth0", "10.0.1.4"),  # by the default route
        (["--iface-can-reach=192.0.2.10", "--iface=eth0"], "eth0", "10.0.1.4"),  # --iface first
    ],
    ids=["via-eth1", "via-default-route", "iface-wins"],
)
def test_iface_can_reach_picks_the_device_of_the_route(
    lab3: Lab, extra: list[str], iface: str, address: str
) -> None:
    """The external interface is the device the kernel routes the address through, the
    public IP the route's source address: in the log, on flannel.1 and in the lease."""
    cell = lab3.cells[2]
    name = f"reach-{iface}-{len(extra)}"
    prefix = f"/{name}"
    start(lab3, cell, name, prefix, *extra)
    try:
        Lab.wait((lab3.workdir / name / "subnet.env").exists, 20, "subnet.env")
        ext = events(lab3, name, "external_interface")[0]
        assert (ext["iface"], ext["iface_ip"], ext["public_ip"]) == (iface, address, address)
        detail = run("ip", "-d", "-n", cell.ns, "link", "show", "flannel.1").stdout
        assert f"local {address} dev {iface} " in detail
        subnet = str(events(lab3, name, "lease_acquired")[0]["subnet"])
        lease = lab3.get(f"{prefix}/subnets/{subnet.replace('/', '-')}")
        assert json.loads(lease)["PublicIP"] == address
    finally:
        assert lab3.kill(name, signal.SIGTERM) == 0


def test_iface_can_reach_without_a_route_exits_1(lab3: Lab) -> None:
    """An address the kernel cannot route (an unreachable route) is exit 1 with one line
    naming the flag; the default route is not used instead."""
    name = "reach-none"
    start(lab3, lab3.cells[2], name, f"/{name}", "--iface-can-reach=198.51.100.1")
    assert lab3.wait_exit(name, 20) == 1
    fatal = events(lab3, name, "fatal")
    assert len(fatal) == 1 and "--iface-can-reach 198.51.100.1" in str(fatal[0]["error"])


def leaked(lab: Lab) -> int:
    """Packets for the overlay that reached the router (the raw-table counter)."""
    out = run("iptables", "-w", "-t", "raw", "-L", "PREROUTING", "-vnx", ns=lab.router_ns).stdout
    rows = [line.split() for line in out.splitlines() if "172.16.0.0/16" in line]
    assert len(rows) == 1, out
    return int(rows[0][0])


def blackholes(cell: Cell) -> list[dict[str, object]]:
    """The cell's main-table blackhole routes as ``ip -j`` shows them."""
    out = run("ip", "-j", "-n", cell.ns, "-4", "route", "show", "type", "blackhole").stdout
    data = json.loads(out or "[]")
    assert isinstance(data, list)
    return data


def test_blackhole_route_keeps_unassigned_addresses_off_the_default_route(lab3: Lab) -> None:
    """Without the flag, a packet from cell-2's container to an unassigned address of cell-1's
    subnet crosses the overlay and leaves cell-1 by its default route (the router counts it);
    with --ip-blackhole-route it is dropped on cell-1.  The route is ours at the lowest
    preference: put back when deleted, beaten by a bridge's connected route (containers on
    it stay reachable), removed at a start without the flag."""
    c1, c2 = lab3.cells[:2]
    for sysctl in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
        run("sysctl", "-qw", sysctl, ns=c1.ns)
    run("iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-d", "172.16.0.0/16", ns=lab3.router_ns)
    lab3.start_daemon(c1)
    lab3.start_cells([c2], 1)
    s1 = subnet_of(lab3, c1)
    unassigned = s1.replace(".0/24", ".77")
    Lab.wait(lambda: s1 in routes(c2), 15, "cell-2 routes to cell-1's subnet")
    con = c2.containers[0]

    ping(con.ns, unassigned, count=2, timeout=1)
    assert leaked(lab3) > 0  # what the flag is for: this went out of cell-1's eth0

    assert lab3.kill(f"pyflannel-{c1.name}", signal.SIGTERM) == 0
    lab3.start_daemon(c1, "--ip-blackhole-route")
    Lab.wait(lambda: blackholes(c1), 15, "the blackhole route")
    assert [(r["dst"], r.get("metric")) for r in blackholes(c1)] == [(s1, METRIC)]
    assert (
        "Invalid argument" in run("ip", "-n", c1.ns, "route", "get", unassigned, check=False).stderr
    )
    run("iptables", "-w", "-t", "raw", "-Z", "PREROUTING", ns=lab3.router_ns)
    assert ping(con.ns, unassigned, count=2, timeout=1).returncode != 0
    assert leaked(lab3) == 0

    ip(c1.ns, "route", "del", "blackhole", s1, "metric", str(METRIC))
    Lab.wait(lambda: blackholes(c1), 10, "the blackhole route put back")
    log = daemon_log(lab3, c1)
    assert any(e["event"] == "blackhole_route_restored" for e in log)

    lab3.attach_containers(c1, 1, start=4)  # br0 with the subnet's first address
    peer = c1.containers[0]
    lab3.start_http(peer)
    lab3.wait_http(peer)
    assert lab3.curl(con.ns, peer.ip) == "200"
    assert " dev br0 " in run("ip", "-n", c1.ns, "route", "get", unassigned).stdout
    assert blackholes(c1)  # still there, behind the connected route

    assert lab3.kill(f"pyflannel-{c1.name}", signal.SIGTERM) == 0
    lab3.start_daemon(c1)
    Lab.wait(lambda: not blackholes(c1), 15, "our blackhole removed without the flag")
