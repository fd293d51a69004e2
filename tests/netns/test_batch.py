"""The raw netlink writer, dumps, monitor and mirror against a real kernel.

Each test gets its own namespace ``pft-kio-<pid>-<n>`` holding a veth pair (``eth0``
192.0.2.10/24, peer ``eth1``) and a ``flannel.1`` vxlan device over eth0; nothing is created in
the root namespace and the namespace is deleted whatever the outcome.  Results are read back
both with our dumps and with ``ip -j``/``bridge -j``.  No traffic is sent.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.kernel import codec
from pyflannel.kernel.mirror import Mirror, Touched
from pyflannel.kernel.monitor import OVERFLOW, Monitor
from pyflannel.kernel.records import Route
from pyflannel.kernel.rtnl import Request, Rtnl

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("bridge") is None,
        reason="needs iproute2 (ip, bridge)",
    ),
]

_counter = itertools.count()
PEERS = 2000


def run(*cmd: str) -> str:
    """Run *cmd*; fail the test with its stderr if it fails; return its stdout."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


@pytest.fixture(name="ns")
def _ns() -> Iterator[str]:
    name = f"pft-kio-{os.getpid()}-{next(_counter)}"
    run("ip", "netns", "add", name)
    try:
        for cmd in (
            "link add eth0 type veth peer name eth1",
            "addr add 192.0.2.10/24 dev eth0",
            "link set eth0 up",
            "link set eth1 up",
            "link add flannel.1 type vxlan id 1 dstport 8472 local 192.0.2.10 dev eth0 nolearning",
            "link set flannel.1 up",
        ):
            run("ip", "-n", name, *cmd.split())
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(name="rtnl")
def _rtnl(ns: str) -> Iterator[Rtnl]:
    with Rtnl(ns) as r:
        yield r


@pytest.fixture(name="dev")
def _dev(rtnl: Rtnl) -> int:
    return next(link.index for link in rtnl.links() if link.name == "flannel.1")


def peer(i: int) -> tuple[IPv4Address, str, IPv4Address, IPv4Network]:
    """Peer *i*: VTEP address, VTEP MAC, public IP, subnet."""
    hi, lo = divmod(i, 250)
    vtep = IPv4Address(f"10.{100 + hi}.{lo}.0")
    return (
        vtep,
        f"aa:bb:cc:00:{hi:02x}:{lo:02x}",
        IPv4Address(f"192.0.2.{lo + 2}"),
        IPv4Network(f"{vtep}/24"),
    )


def program(dev: int, peers: range, oif: int | None = None) -> list[Request]:
    """Neighbour, FDB entry and onlink route of each peer, in that order."""
    out = []
    for i in peers:
        vtep, mac, public, net = peer(i)
        route = Route(net, vtep, oif or dev, True)
        out += [
            Request(f"neigh.replace {vtep}", codec.encode_neigh_replace(dev, vtep, mac)),
            Request(f"fdb.replace {mac}", codec.encode_fdb_replace(dev, mac, public)),
            Request(f"route.replace {net}", codec.encode_route_replace(route)),
        ]
    return out


def expected(peers: range) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str]]:
    """(neighbours, FDB entries, route destinations) the peers should leave."""
    ps = [peer(i) for i in peers]
    return (
        {(str(v), m) for v, m, _, _ in ps},
        {(m, str(p)) for _, m, p, _ in ps},
        {str(n) for _, _, _, n in ps},
    )


def read_with_iproute2(ns: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str]]:
    """What ``ip -j``/``bridge -j`` list on flannel.1."""
    neighs = json.loads(run("ip", "-n", ns, "-j", "neigh", "show", "dev", "flannel.1"))
    fdb = json.loads(run("bridge", "-n", ns, "-j", "fdb", "show", "dev", "flannel.1"))
    routes = json.loads(run("ip", "-n", ns, "-j", "route", "show", "dev", "flannel.1"))
    return (
        {(n["dst"], n["lladdr"]) for n in neighs if "PERMANENT" in n.get("state", [])},
        {(f["mac"], f["dst"]) for f in fdb if "dst" in f},
        {r["dst"] for r in routes},
    )


def read_with_dumps(
    rtnl: Rtnl, dev: int
) -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str]]:
    """What our own dumps list on flannel.1."""
    return (
        {(str(codec.ip4(n.dst)), n.mac or "") for n in rtnl.neighs(dev)},
        {(f.mac or "", str(codec.ip4(f.dst))) for f in rtnl.fdb(dev) if f.dst},
        {str(r.network) for r in rtnl.routes() if r.oif == dev},
    )


def test_batch_programs_2000_peers_exactly(ns: str, rtnl: Rtnl, dev: int) -> None:
    """6,000 requests in bounded batches: all ACKed, and both readers see exactly them; a
    second identical write changes nothing and fails nothing."""
    reqs = program(dev, range(PEERS))
    result = rtnl.write(reqs)
    assert (result.sent, result.ok, result.failures) == (3 * PEERS, 3 * PEERS, [])
    want = expected(range(PEERS))
    assert read_with_dumps(rtnl, dev) == want
    assert read_with_iproute2(ns) == want
    again = rtnl.write(reqs)
    assert (again.ok, again.failures) == (3 * PEERS, [])
    assert read_with_iproute2(ns) == want


def test_one_bad_request_fails_alone(ns: str, rtnl: Rtnl, dev: int) -> None:
    """A route over a missing ifindex, in the middle of a batch: reported by label with
    ENODEV; every other request applied."""
    reqs = program(dev, range(50))
    vtep, _, _, net = peer(60)
    bad = Route(net, vtep, 9999, True)
    reqs.insert(70, Request(f"route.replace {net}", codec.encode_route_replace(bad)))
    result = rtnl.write(reqs)
    assert result.sent == 151
    assert result.ok == 150
    assert [(f.label, f.errno) for f in result.failures] == [(f"route.replace {net}", errno.ENODEV)]
    assert read_with_iproute2(ns) == expected(range(50))


def test_delete_absent_and_exact(ns: str, rtnl: Rtnl, dev: int) -> None:
    """Deleting what is not there reports ENOENT (neighbour, FDB) or ESRCH (route); a route
    delete removes ours and leaves a same-destination route on eth0 alone."""
    rtnl.write(program(dev, range(1)))
    vtep, mac, public, net = peer(0)
    run(
        "ip", "-n", ns, "route", "add", str(net), "via", "192.0.2.1", "dev", "eth0", "metric", "100"
    )
    ours = Route(net, vtep, dev, True)
    deletes = [
        Request("neigh.del", codec.encode_neigh_delete(dev, vtep)),
        Request("fdb.del", codec.encode_fdb_delete(dev, mac, public)),
        Request("route.del", codec.encode_route_delete(ours)),
    ]
    assert rtnl.write(deletes).ok == 3
    again = rtnl.write(deletes)
    assert [(f.label, f.errno) for f in again.failures] == [
        ("neigh.del", errno.ENOENT),
        ("fdb.del", errno.ENOENT),
        ("route.del", errno.ESRCH),
    ]
    left = json.loads(run("ip", "-n", ns, "-j", "route", "show", str(net)))
    assert [(r["dev"], r["gateway"]) for r in left] == [("eth0", "192.0.2.1")]


def test_link_get_and_missing_netns(rtnl: Rtnl, dev: int) -> None:
    """A link by index, None for a missing one; a misspelt namespace fails and is not
    created."""
    link = rtnl.link(dev)
    assert link is not None
    assert (link.name, link.mtu, link.up) == ("flannel.1", 1450, True)
    assert rtnl.link(99999) is None
    missing = f"pft-kio-missing-{os.getpid()}"
    with pytest.raises(FileNotFoundError):
        Rtnl(missing)
    assert missing not in run("ip", "netns", "list")


def wait_for(
    mon: Monitor, mirror: Mirror, check: Callable[[Touched], bool], timeout: float = 5.0
) -> list[Touched]:
    """Fold notifications into *mirror* until one Touched satisfies *check*."""
    seen: list[Touched] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([mon], [], [], 0.2)
        msgs = mon.read()
        assert msgs is not OVERFLOW
        assert isinstance(msgs, list)
        for m in msgs:
            seen.append(mirror.apply(m))
            if check(seen[-1]):
                return seen
    raise AssertionError(f"no matching notification in {timeout} s: {seen}")


def test_monitor_sees_hand_deletes_and_link_down(ns: str, rtnl: Rtnl, dev: int) -> None:
    """Entries deleted with ip/bridge arrive as notifications the mirror reports touched; a
    link set down is a device change."""
    with Monitor(ns) as mon:
        assert rtnl.write(program(dev, range(3))).ok == 9
        mirror = Mirror(dev)
        mirror.load(rtnl.link(dev), rtnl.neighs(dev), rtnl.fdb(dev), rtnl.routes())
        assert len(mirror.neighs()) == len(mirror.fdb()) == len(mirror.dev_routes()) == 3
        vtep, mac, public, net = peer(1)
        ipn = ("ip", "-n", ns)
        run(*ipn, "neigh", "del", str(vtep), "dev", "flannel.1")
        wait_for(mon, mirror, lambda t: t.neighs == (vtep,))
        run("bridge", "-n", ns, "fdb", "del", mac, "dev", "flannel.1", "dst", str(public), "self")
        wait_for(mon, mirror, lambda t: t.fdb == (mac,))
        run(*ipn, "route", "del", str(net), "dev", "flannel.1")
        wait_for(mon, mirror, lambda t: t.routes == (net,))
        assert len(mirror.neighs()) == len(mirror.fdb()) == len(mirror.dev_routes()) == 2
        run(*ipn, "link", "set", "flannel.1", "down")
        wait_for(mon, mirror, lambda t: t.device)
        assert mirror.device_up is False


def test_monitor_reports_overflow(ns: str, rtnl: Rtnl, dev: int) -> None:
    """With a tiny receive buffer, a bulk write overflows it: read() says OVERFLOW (the caller
    must re-dump), and the socket keeps working afterwards."""
    with Monitor(ns, rcvbuf=4096) as mon:
        assert rtnl.write(program(dev, range(200))).ok == 600
        assert mon.read() is OVERFLOW
        mon.drain()
        mirror = Mirror(dev)
        mirror.load(rtnl.link(dev), rtnl.neighs(dev), rtnl.fdb(dev), rtnl.routes())
        assert mirror.counts()[:2] == (200, 200)
        run("ip", "-n", ns, "link", "set", "flannel.1", "mtu", "1400")
        wait_for(mon, mirror, lambda t: t.device)
