"""Damage done by hand in a cell's namespace is repaired by the running daemon (the lab resyncs
every second): the device set down, its MTU or VTEP address changed, foreign routes on it, its
neighbours flushed; and a lease naming the underlay's own subnet never takes the underlay's
connected route."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from pyflannel.lab.topo import ETCD_URL, Cell, Lab, run

from .conftest import daemon_log, ip_json, lease_key, neighs, routes, subnet_of, vtep_mac

pytestmark = [pytest.mark.e2e]

REPAIR = 6.0  # seconds: a few resyncs


@pytest.fixture(autouse=True)
def undo_damage(lab: Lab) -> Iterator[None]:
    """After each test, put cell-1's device back by hand (up, MTU, VTEP address) where the daemon
    did not, so that one missing repair fails one test, not the module's next ones too."""
    yield
    c1 = lab.cells[0]
    vtep = subnet_of(lab, c1).split("/")[0]
    for args in (
        ("link", "set", "flannel.1", "up", "mtu", "1450"),
        ("addr", "replace", f"{vtep}/32", "dev", "flannel.1"),
    ):
        run("ip", "-n", c1.ns, *args, check=False)


def link(cell: Cell) -> dict[str, object]:
    """``ip -d link show flannel.1``, parsed."""
    return ip_json(cell, "-d", "link", "show", "flannel.1")[0]


def peer_ok(lab: Lab) -> bool:
    """cell-1 holds cell-2's route and neighbour, and a container reaches cell-2's."""
    c1, c2 = lab.cells[:2]
    s2 = subnet_of(lab, c2)
    return (
        s2 in routes(c1)
        and neighs(c1).get(s2.split("/")[0]) == vtep_mac(c2)
        and lab.curl(c1.containers[0].ns, c2.containers[0].ip, timeout=2) == "200"
    )


def test_device_set_down_is_brought_up(lab: Lab) -> None:
    """`ip link set flannel.1 down` (the kernel drops its routes too): up again, peers back."""
    c1 = lab.cells[0]
    run("ip", "-n", c1.ns, "link", "set", "flannel.1", "down")
    Lab.wait(lambda: "UP" in link(c1)["flags"], REPAIR, "flannel.1 up")  # type: ignore[operator]
    Lab.wait(lambda: peer_ok(lab), REPAIR, "peer programmed again")


def test_mtu_is_restored(lab: Lab) -> None:
    """An MTU changed by hand is set back to the configured one (1450 here)."""
    c1 = lab.cells[0]
    run("ip", "-n", c1.ns, "link", "set", "flannel.1", "mtu", "1300")
    Lab.wait(lambda: link(c1)["mtu"] == 1450, REPAIR, "MTU 1450 again")
    assert peer_ok(lab)


def test_vtep_address_is_restored(lab: Lab) -> None:
    """`ip addr flush dev flannel.1`: the lease's .0/32 comes back."""
    c1 = lab.cells[0]
    vtep = subnet_of(lab, c1).split("/")[0]

    def addrs() -> list[str]:
        return [
            f"{a['local']}/{a['prefixlen']}"
            for i in ip_json(c1, "-4", "addr", "show", "dev", "flannel.1")
            for a in i.get("addr_info", [])  # type: ignore[attr-defined]
        ]

    assert f"{vtep}/32" in addrs()
    run("ip", "-n", c1.ns, "addr", "flush", "dev", "flannel.1")
    # Restored on the address notification, possibly before `ip addr` could look: the log
    # names the damage.
    Lab.wait(lambda: addrs() == [f"{vtep}/32"], REPAIR, "VTEP address restored")
    Lab.wait(
        lambda: any(
            e["event"] == "device_repaired" and "VTEP address" in str(e.get("damage"))
            for e in daemon_log(lab, c1)
        ),
        REPAIR,
        "repair logged",
    )
    Lab.wait(lambda: peer_ok(lab), REPAIR, "peer still reachable")


def test_foreign_routes_on_the_device_are_removed(lab: Lab) -> None:
    """Routes on flannel.1 no lease backs, whatever their form, are removed: a /25 inside the
    Network with a gateway, a gateway-less /24, and a route outside the Network."""
    c1 = lab.cells[0]
    foreign = {
        "172.16.250.0/25": ("via", "172.16.250.1", "onlink"),
        "172.16.251.0/24": (),
        "10.99.7.0/24": (),
    }
    before = removed_routes(lab, c1)
    for dst, extra in foreign.items():
        run("ip", "-n", c1.ns, "route", "add", dst, *extra, "dev", "flannel.1")
    # The daemon removes them on their notifications, in milliseconds: by the time `ip route`
    # could look they may be gone; its log says it removed each of them.
    Lab.wait(lambda: not set(foreign) & set(routes(c1)), REPAIR, "foreign routes removed")
    Lab.wait(lambda: removed_routes(lab, c1) - before >= len(foreign), REPAIR, "removals logged")
    assert peer_ok(lab)


def removed_routes(lab: Lab, cell: Cell) -> int:
    """How many routes the daemon of *cell* has removed so far (its "reconciled" lines)."""
    return sum(
        int(e.get("route_del", 0)) for e in daemon_log(lab, cell) if e["event"] == "reconciled"
    )


def test_flushed_neighbours_are_restored(lab: Lab) -> None:
    """`ip neigh flush dev flannel.1 nud permanent`: every peer's neighbour comes back."""
    c1, c2 = lab.cells[:2]
    s2 = subnet_of(lab, c2)
    run("ip", "-n", c1.ns, "neigh", "flush", "dev", "flannel.1", "nud", "permanent")
    Lab.wait(lambda: neighs(c1).get(s2.split("/")[0]) == vtep_mac(c2), REPAIR, "neighbour restored")
    Lab.wait(lambda: peer_ok(lab), REPAIR, "peer reachable")


def connected(cell: Cell) -> list[dict[str, object]]:
    """The main-table routes to the cell's underlay subnet 10.0.N.0/24."""
    dst = f"10.0.{cell.subnet_index}.0/24"
    return [r for r in ip_json(cell, "-4", "route", "show", "table", "main") if r["dst"] == dst]


def reaches_etcd(cell: Cell) -> bool:
    """The cell gets an answer from etcd's /health over the underlay."""
    res = run("curl", "-sf", "-m", "2", f"{ETCD_URL}/health", ns=cell.ns, check=False)
    return res.returncode == 0


def test_lease_on_the_underlay_subnet_leaves_its_route_alone(lab: Lab) -> None:
    """A lease whose key is the underlay subnet (10.0.1.0/24, cell-1's own link) must not replace
    the kernel's connected route; deleting the key leaves that route too, and cell-1 keeps
    reaching etcd.  (Last in the module: on failure the route is put back by hand.)"""
    c1 = lab.cells[0]
    before = connected(c1)
    assert len(before) == 1 and before[0]["dev"] == "eth0" and before[0]["protocol"] == "kernel"
    key = lease_key("10.0.1.0/24")
    lab.put(
        key,
        json.dumps(
            {
                "PublicIP": "10.0.2.77",
                "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:4d:01"},
            }
        ),
    )
    deleted = False
    try:
        time.sleep(3)  # three resyncs
        assert connected(c1) == before
        assert reaches_etcd(c1)
        lab.delete(key)
        deleted = True
        time.sleep(3)
        assert connected(c1) == before
        assert reaches_etcd(c1)
    finally:
        if not deleted:
            lab.delete(key)
        if connected(c1) != before:  # put the underlay back for whatever runs next
            run(
                "ip", "-n", c1.ns, "route", "replace", "10.0.1.0/24", "dev", "eth0",
                "proto", "kernel", "scope", "link", "src", str(c1.underlay_ip), check=False,
            )  # fmt: skip
