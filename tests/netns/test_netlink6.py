"""The IPv6 device and its peers against a real kernel, in a throwaway namespace per test.

Each namespace holds a veth pair: ``eth0`` with 192.0.2.10/24 and 2001:db8::10/64 (default
routes via .1 and ::1), its peer ``eth1``.  ``flannel-v6.1`` is made by the same Netlink verbs
the daemon uses, its peers written by the same batched writer and kept by the same mirror; the
kernel is read back with ``ip``/``bridge``, as a user would.  A dual-stack test puts
``flannel.1`` next to it, both fed from one notification socket.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

import pytest

from pyflannel.backend.vxlan import PeerScope, desired_state
from pyflannel.ipnet import SubnetKey
from pyflannel.kernel.netlink import Netlink
from pyflannel.kernel.plan import Desired, Ownership
from pyflannel.kernel.records import IPV6_ROUTE_METRIC, KernelState, Link, VxlanSpec
from pyflannel.kernel.sync import KernelSync
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs

# The helpers and the netlink fixtures (nl, eth0) of the IPv4 tests; the namespace is ours.
from .test_netlink import _eth0, _nl, ip, run  # noqa: F401

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("bridge") is None,
        reason="needs iproute2 (ip, bridge)",
    ),
]

NETWORK6 = IPv6Network("fc00::/48")
OWN6 = IPv6Network("fc00:0:0:22::/64")
LOCAL6 = IPv6Address("2001:db8::10")
SCOPE6 = PeerScope(NETWORK6, 64, own_subnet=OWN6, own_public_ip=LOCAL6)
NETWORK4 = IPv4Network("10.5.0.0/16")
LOCAL4 = IPv4Address("192.0.2.10")
DEV6 = "flannel-v6.1"
_counter = itertools.count()


def jsn(ns: str, tool: str, *args: str) -> list[dict[str, object]]:
    """``ip -j``/``bridge -j`` output, parsed."""
    out = json.loads(run(tool, "-n", ns, "-j", *args) or "[]")
    assert isinstance(out, list)
    return out


@pytest.fixture(name="ns")
def _ns() -> Iterator[str]:
    name = f"pft-nl6-{os.getpid()}-{next(_counter)}"
    run("ip", "netns", "add", name)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ip(name, "addr", "add", f"{LOCAL4}/24", "dev", "eth0")
        ip(name, "addr", "add", f"{LOCAL6}/64", "dev", "eth0", "nodad")
        ip(name, "link", "set", "eth0", "up")
        ip(name, "link", "set", "eth1", "up")
        ip(name, "route", "add", "default", "via", "192.0.2.1", "dev", "eth0")
        ip(name, "-6", "route", "add", "default", "via", "2001:db8::1", "dev", "eth0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def spec6(eth0: Link, **changes: object) -> VxlanSpec:
    """flanneld's IPv6 device on eth0 (MTU 1500 - 70), with *changes*."""
    base: dict[str, object] = {
        "name": DEV6,
        "vni": 1,
        "port": 8472,
        "underlay_index": eth0.index,
        "local": LOCAL6,
        "mtu": 1430,
    }
    base.update(changes)
    return VxlanSpec(**base)  # type: ignore[arg-type]


@pytest.fixture(name="dev")
def _dev(nl: Netlink, eth0: Link) -> Link:
    """flannel-v6.1 created, carrying fc00:0:0:22::/128 and up, as after start-up."""
    dev, created = nl.ensure_vxlan(spec6(eth0))
    assert created
    nl.ensure_address(dev, IPv6Interface((OWN6.network_address, 128)), NETWORK6)
    return dev


@pytest.fixture(name="ks")
def _ks(nl: Netlink, dev: Link) -> Iterator[KernelSync]:
    """The peer-entry engine on flannel-v6.1."""
    ks = nl.peer_sync(dev.index, Ownership(dev.index), version=6)
    try:
        yield ks
    finally:
        ks.close()


def peer6(i: int, public: str | None = None, mac: str | None = None) -> Lease:
    """An IPv6-only peer lease on fc00:0:0:<i>::/64."""
    attrs = LeaseAttrs(
        NO_PUBLIC_IP,
        "vxlan",
        None,
        None,
        IPv6Address(public or f"2001:db8::{i:x}"),
        mac or f"5a:1e:02:33:66:{i:02x}",
        1,
    )
    return Lease(SubnetKey(None, IPv6Network(f"fc00:0:0:{i:x}::/64")), attrs)


PEERS = [peer6(0x51), peer6(0x52), peer6(0x53)]


def converge(ks: KernelSync, desired: KernelState) -> None:
    """Want *desired*, re-read the kernel, sync every key; nothing may fail."""
    ks.desired = Desired.of(desired, ks.dev, version=6)
    ks.reload()
    assert ks.sync().report.errors == []


def held(ns: str) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, dict[str, object]]]:
    """(permanent neighbours, FDB remotes, routes) on flannel-v6.1, as iproute2 lists them."""
    neighs = {
        str(n["dst"]): str(n["lladdr"])
        for n in jsn(ns, "ip", "-6", "neigh", "show", "dev", DEV6)
        if "PERMANENT" in n.get("state", [])  # type: ignore[operator]
    }
    fdb = {(str(f["mac"]), str(f["dst"])) for f in jsn(ns, "bridge", "fdb", "show", "dev", DEV6)}
    fdb = {e for e in fdb if e[1] != "None"}
    routes = {
        str(r["dst"]): r
        for r in jsn(ns, "ip", "-6", "route", "show", "dev", DEV6)
        if r.get("protocol") != "kernel"
    }
    return neighs, fdb, routes


def follow(ks: KernelSync, done: Callable[[], bool], timeout: float = 1.0) -> None:
    """What the main loop does on notifications, until *done* holds (or fail)."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "not repaired from notifications in time"
        select.select([ks.fileno()], [], [], left)
        note = ks.poll()
        if note.device or note.resync:
            ks.reload()
            ks.sync()
        elif note.keys:
            ks.sync(note.keys)


def settle(ks: KernelSync) -> None:
    """Fold the echoes of our own writes: they plan nothing."""
    time.sleep(0.05)
    note = ks.poll()
    assert not note.resync
    if note.device:  # the device's own address settling (DAD): a re-read finds nothing to do
        ks.reload()
        assert ks.sync().plan.empty
    else:
        assert ks.sync(note.keys).plan.empty


# --- the device ---------------------------------------------------------------------------------


def test_ensure_vxlan_creates_the_ipv6_device(ns: str, nl: Netlink, eth0: Link) -> None:
    """flannel-v6.1: VNI 1, the IPv6 underlay address as local, eth0, port 8472, nolearning,
    MTU 1430, a random locally administered unicast MAC, accept_ra 0."""
    dev, created = nl.ensure_vxlan(spec6(eth0))
    assert created and dev.name == DEV6 and dev.mtu == 1430
    text = ip(ns, "-d", "link", "show", DEV6)
    for token in ("mtu 1430", "vxlan id 1 ", f"local {LOCAL6} ", "dev eth0", "dstport 8472"):
        assert token in text, f"{token!r} not in {text}"
    assert "nolearning" in text
    first = int(dev.mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2
    ra = run("ip", "netns", "exec", ns, "cat", f"/proc/sys/net/ipv6/conf/{DEV6}/accept_ra")
    assert ra.strip() == "0"


def test_ensure_vxlan_reuses_and_recreates_by_flanneld_s_rules(
    ns: str, nl: Netlink, eth0: Link
) -> None:
    """A compatible IPv6 device is reused with its MAC (its MTU fixed); another local address
    makes it incompatible: deleted and re-created with a new MAC."""
    first, _ = nl.ensure_vxlan(spec6(eth0))
    ip(ns, "link", "set", DEV6, "mtu", "1300")
    again, created = nl.ensure_vxlan(spec6(eth0))
    assert not created and again.mac == first.mac and again.mtu == 1430
    ip(ns, "addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad")
    other, created = nl.ensure_vxlan(spec6(eth0, local=IPv6Address("2001:db8::11")))
    assert created and other.mac != first.mac
    assert "local 2001:db8::11 " in ip(ns, "-d", "link", "show", DEV6)


def test_ensure_address_keeps_only_the_vtep_address_in_the_network(
    ns: str, nl: Netlink, dev: Link
) -> None:
    """<subnet>/128 is the device's only address inside the IPv6Network; its link-local
    address and one outside the network stay."""
    ip(ns, "addr", "add", "fc00:0:0:7::1/64", "dev", DEV6, "nodad")
    ip(ns, "addr", "add", "2001:db8:99::1/64", "dev", DEV6, "nodad")
    nl.ensure_address(dev, IPv6Interface((OWN6.network_address, 128)), NETWORK6)
    addrs = ip(ns, "-6", "addr", "show", "dev", DEV6)
    assert "inet6 fc00:0:0:22::/128 " in addrs
    assert "fc00:0:0:7::1" not in addrs
    assert "2001:db8:99::1/64" in addrs and "fe80::" in addrs
    flags = ip(ns, "link", "show", DEV6).split(">")[0]
    assert ",UP" in flags  # and set up


# --- peers, through the batched writer and the mirror ------------------------------------------


def test_peers_converge_and_the_next_plan_is_empty(ns: str, ks: KernelSync, dev: Link) -> None:
    """Each IPv6 peer gets its permanent neighbour, self FDB entry to its PublicIPv6 and onlink
    route (metric 1024, proto boot); comparing again with a fresh dump finds nothing to do,
    the kernel's own routes on the device (our /128, fe80::/64) included."""
    desired = desired_state(PEERS, dev.index, SCOPE6).state
    converge(ks, desired)
    neighs, fdb, routes = held(ns)
    for lease in PEERS:
        net = lease.key.ipv6
        assert net is not None
        gw = str(net.network_address)
        assert neighs[gw] == lease.attrs.v6_vtep_mac
        assert (lease.attrs.v6_vtep_mac, str(lease.attrs.public_ipv6)) in fdb
        r = routes[str(net)]
        # proto boot: iproute2 says nothing of it (its default).
        assert (r["gateway"], r["metric"], r.get("protocol")) == (gw, IPV6_ROUTE_METRIC, None)
        assert "onlink" in r["flags"]  # type: ignore[operator]
    ks.reload()
    assert not ks.mirror.suspects(ks.desired, ks.owner)
    assert ks.sync().plan.empty
    assert ks.device() is not None and IPv6Interface((OWN6.network_address, 128)) in (
        ks.device().addresses6  # type: ignore[union-attr]
    )


def test_peer_changes_leave_nothing_stale(ns: str, ks: KernelSync, dev: Link) -> None:
    """A new MAC, a new PublicIPv6 and a removed peer leave exactly the new entries."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE6).state)
    changed = [peer6(0x51, mac="5a:1e:02:33:66:99"), peer6(0x52, public="2001:db8::77")]
    desired = desired_state(changed, dev.index, SCOPE6).state
    converge(ks, desired)
    neighs, fdb, routes = held(ns)
    assert neighs == {"fc00:0:0:51::": "5a:1e:02:33:66:99", "fc00:0:0:52::": "5a:1e:02:33:66:52"}
    assert fdb == {("5a:1e:02:33:66:99", "2001:db8::51"), ("5a:1e:02:33:66:52", "2001:db8::77")}
    assert set(routes) == {"fc00:0:0:51::/64", "fc00:0:0:52::/64"}


@pytest.mark.parametrize(
    "damage",
    [
        ("ip", "-6", "route", "del", "fc00:0:0:52::/64", "dev", DEV6),
        ("ip", "-6", "neigh", "del", "fc00:0:0:52::", "dev", DEV6),
        ("bridge", "fdb", "del", "5a:1e:02:33:66:52", "dev", DEV6, "dst", "2001:db8::52", "self"),
    ],
    ids=["route", "neigh", "fdb"],
)
def test_entry_deleted_by_hand_comes_back_on_notification(
    ns: str, ks: KernelSync, dev: Link, damage: tuple[str, ...]
) -> None:
    """A route, neighbour or FDB entry deleted from flannel-v6.1 by hand is put back from
    the notification alone, as on the IPv4 device."""
    desired = desired_state(PEERS, dev.index, SCOPE6).state
    converge(ks, desired)
    settle(ks)
    before = held(ns)
    run(damage[0], "-n", ns, *damage[1:])
    assert held(ns) != before
    follow(ks, lambda: held(ns) == before)
    settle(ks)


def test_route_added_by_hand_is_removed_by_its_metric(ns: str, ks: KernelSync, dev: Link) -> None:
    """A second route to a peer's subnet on the device (metric 5, by hand) goes, and ours
    (metric 1024) stays: the delete names the metric."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE6).state)
    settle(ks)
    extra = ("fc00:0:0:53::/64", "via", "fc00:0:0:53::", "dev", DEV6, "onlink", "metric", "5")
    ip(ns, "-6", "route", "add", *extra)
    left = lambda: [  # noqa: E731
        r["metric"] for r in jsn(ns, "ip", "-6", "route", "show", "fc00:0:0:53::/64")
    ]
    follow(ks, lambda: left() == [IPV6_ROUTE_METRIC])


def test_route_is_onlink_for_ipv6(ks: KernelSync) -> None:
    """DirectRouting's question, for IPv6: on eth0's /64 yes, behind the default route no."""
    assert ks.route_is_onlink(IPv6Address("2001:db8::20"))
    assert not ks.route_is_onlink(IPv6Address("2001:db8:5::20"))


# --- both families, one notification socket ----------------------------------------------------


def test_dual_stack_devices_share_one_notification_socket(
    ns: str, nl: Netlink, eth0: Link, dev: Link
) -> None:
    """flannel.1 and flannel-v6.1, fed from one socket: each folds only its own family's
    entries, each repairs its own; flannel.1's own IPv6 link-local address is no device change
    to it."""
    dev4, _ = nl.ensure_vxlan(
        VxlanSpec("flannel.1", 1, 8472, eth0.index, LOCAL4, 1450)  # the IPv4 device
    )
    nl.ensure_address(dev4, IPv4Interface("10.5.34.0/32"), NETWORK4)
    mon = nl.monitor((4, 6))
    ks4 = nl.peer_sync(dev4.index, Ownership(dev4.index), monitor=mon)
    ks6 = nl.peer_sync(dev.index, Ownership(dev.index), version=6, monitor=mon)
    try:
        scope4 = PeerScope(NETWORK4, 24, IPv4Network("10.5.34.0/24"), LOCAL4)
        dual = Lease(
            SubnetKey(IPv4Network("10.5.51.0/24"), IPv6Network("fc00:0:0:51::/64")),
            LeaseAttrs(
                IPv4Address("192.0.2.51"),
                "vxlan",
                "5a:1e:02:33:44:51",
                1,
                IPv6Address("2001:db8::51"),
                "5a:1e:02:33:66:51",
                1,
            ),
        )
        for ks, scope, d in ((ks4, scope4, dev4), (ks6, SCOPE6, dev)):
            ks.desired = Desired.of(
                desired_state([dual], d.index, scope).state, d.index, version=ks.version
            )
            ks.reload()
            assert ks.sync().report.errors == []
        time.sleep(0.2)  # the echoes, and flannel.1's link-local address
        msgs = ks4.read_notifications()
        note4, note6 = ks4.poll(msgs), ks6.poll(msgs)
        assert not note4.device and not note4.resync
        for ks, note in ((ks4, note4), (ks6, note6)):
            if note.device:
                ks.reload()
            assert ks.sync(note.keys if not note.device else None).plan.empty
        ip(ns, "-6", "neigh", "del", "fc00:0:0:51::", "dev", DEV6)
        ip(ns, "neigh", "del", "10.5.51.0", "dev", "flannel.1")
        deadline = time.monotonic() + 2
        seen4 = seen6 = False
        while not (seen4 and seen6):
            assert time.monotonic() < deadline, "not both repaired"
            select.select([mon], [], [], 0.2)
            msgs = ks4.read_notifications()
            for ks in (ks4, ks6):
                note = ks.poll(msgs)
                if note.keys.neighs:
                    result = ks.sync(note.keys)
                    assert len(result.plan.set_neighs) == 1
                    assert {n.ip.version for n in result.plan.set_neighs} == {ks.version}
                    seen4 |= ks is ks4
                    seen6 |= ks is ks6
        v6 = jsn(ns, "ip", "-6", "neigh", "show", "dev", DEV6)
        assert any(n["dst"] == "fc00:0:0:51::" for n in v6)
        assert "10.5.51.0 " in ip(ns, "neigh", "show", "dev", "flannel.1")
    finally:
        ks4.close()
        ks6.close()
        mon.close()


def test_an_ipv4_only_engine_hears_no_ipv6_route(ns: str, nl: Netlink, eth0: Link) -> None:
    """An IPv4 device's own socket joins no IPv6 group: an IPv6 route added next to it
    brings it nothing to parse."""
    dev4, _ = nl.ensure_vxlan(VxlanSpec("flannel.1", 1, 8472, eth0.index, LOCAL4, 1450))
    ks4 = nl.peer_sync(dev4.index, Ownership(dev4.index))
    try:
        time.sleep(0.1)
        ks4.read_notifications()  # whatever the device's creation brought
        ip(ns, "-6", "route", "add", "2001:db8:77::/64", "via", "2001:db8::1", "dev", "eth0")
        ip(ns, "-6", "addr", "add", "2001:db8::77/64", "dev", "eth0", "nodad")
        time.sleep(0.2)
        msgs = ks4.read_notifications()
        assert isinstance(msgs, list)
        assert [m for m in msgs if getattr(m, "family", None) == 10] == []
    finally:
        ks4.close()
