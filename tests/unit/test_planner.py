"""From leases to kernel entries (desired_state), the diff (plan) and its execution (apply)."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from pyflannel.backend.vxlan import PeerScope, desired_state, unsafe_reason
from pyflannel.errors import KernelError
from pyflannel.ipnet import SubnetKey
from pyflannel.kernel.plan import (
    ApplyReport,
    Desired,
    Keys,
    Op,
    Ownership,
    Plan,
    StateView,
    apply,
    merge_plans,
    plan,
)
from pyflannel.kernel.records import Fdb, KernelState, Neigh, PeerEntries, Route, RouteEntry
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs
from pyflannel.peersync import PeerSync

DEV = 7
S1 = IPv4Network("10.5.51.0/24")
S2 = IPv4Network("10.5.52.0/24")
S3 = IPv4Network("10.5.53.0/24")
P1 = IPv4Address("192.168.1.12")
P2 = IPv4Address("192.168.1.13")
P3 = IPv4Address("192.168.1.14")
M1 = "5a:1e:02:33:44:55"
M2 = "5a:1e:02:33:44:66"
M3 = "5a:1e:02:33:44:77"
OWN = IPv4Network("10.5.1.0/24")
OWN_IP = IPv4Address("192.168.1.2")
SCOPE = PeerScope(IPv4Network("10.5.0.0/16"), 24, own_subnet=OWN, own_public_ip=OWN_IP)


def peer(subnet: IPv4Network, ip: IPv4Address, mac: str | None, btype: str = "vxlan") -> Lease:
    """A peer's lease."""
    return Lease(SubnetKey(subnet), LeaseAttrs(ip, btype, mac, 1), expiration=1e9)


def vtep(subnet: IPv4Network) -> IPv4Address:
    """The remote VTEP address of *subnet* (its network address)."""
    return subnet.network_address


def onlink(subnet: IPv4Network, dev: int = DEV) -> Route:
    """The encapsulated route to *subnet*: via S.0 onlink on the VXLAN device."""
    return Route(subnet, vtep(subnet), dev, True)


def programmed(*peers: tuple[IPv4Network, IPv4Address, str]) -> KernelState:
    """The kernel state of fully programmed (subnet, public IP, MAC) peers."""
    st = KernelState()
    for subnet, ip, mac in peers:
        st.neighs[vtep(subnet)] = mac
        st.fdb.add(Fdb(mac, ip))
        st.routes[subnet] = onlink(subnet)
    return st


# --- desired_state ------------------------------------------------------------------------------


def test_desired_normal_peer() -> None:
    """A vxlan peer gets neighbour S.0 -> MAC, FDB MAC -> public IP and route S via S.0 onlink."""
    d = desired_state([peer(S1, P1, M1)], DEV, SCOPE)
    assert d.state.neighs == {IPv4Address("10.5.51.0"): M1}
    assert d.state.fdb == {Fdb(M1, P1)}
    assert d.state.routes == {S1: Route(S1, IPv4Address("10.5.51.0"), DEV, True)}
    assert d.skipped == {}


def test_desired_many_peers() -> None:
    """Each peer contributes its own three entries."""
    d = desired_state([peer(S1, P1, M1), peer(S2, P2, M2)], DEV, SCOPE)
    assert d.state == programmed((S1, P1, M1), (S2, P2, M2))


@pytest.mark.parametrize("btype", ["host-gw", "udp", ""])
def test_desired_non_vxlan_skipped(btype: str) -> None:
    """A lease of another backend is skipped with a reason and programs nothing."""
    d = desired_state([peer(S1, P1, M1, btype), peer(S2, P2, M2)], DEV, SCOPE)
    assert d.state == programmed((S2, P2, M2))
    assert set(d.skipped) == {S1}
    assert "not vxlan" in d.skipped[S1]


def test_desired_backend_type_case_insensitive() -> None:
    """BackendType "VXLAN" is vxlan (flanneld lower-cases backend types)."""
    d = desired_state([peer(S1, P1, M1, "VXLAN")], DEV, SCOPE)
    assert d.state == programmed((S1, P1, M1))


def test_desired_without_mac_skipped() -> None:
    """A vxlan lease without a VtepMAC cannot be encapsulated to and is skipped."""
    d = desired_state([peer(S1, P1, None)], DEV, SCOPE)
    assert d.state == KernelState()
    assert "VtepMAC" in d.skipped[S1]


def test_desired_direct_routing_onlink() -> None:
    """With DirectRouting and an on-link peer only ``S via P`` is wanted, no neighbour or FDB."""
    asked: list[IPv4Address] = []

    def is_onlink(ip: IPv4Address) -> bool:
        asked.append(ip)
        return True

    d = desired_state([peer(S1, P1, M1)], DEV, SCOPE, direct_routing=True, is_onlink=is_onlink)
    assert d.state.neighs == {}
    assert d.state.fdb == set()
    assert d.state.routes == {S1: Route(S1, P1, None, False)}
    assert asked == [P1]


def test_desired_direct_routing_off_link_peer_encapsulated() -> None:
    """With DirectRouting a peer behind a gateway is still reached through VXLAN."""
    d = desired_state(
        [peer(S1, P1, M1), peer(S2, P2, M2)],
        DEV,
        SCOPE,
        direct_routing=True,
        is_onlink=lambda ip: ip == P2,
    )
    assert d.state.routes[S1] == onlink(S1)
    assert d.state.routes[S2] == Route(S2, P2, None, False)
    assert d.state.neighs == {vtep(S1): M1}
    assert d.state.fdb == {Fdb(M1, P1)}


def test_desired_no_direct_routing_never_asks_kernel() -> None:
    """Without DirectRouting the on-link test is never consulted."""

    def boom(_ip: IPv4Address) -> bool:
        raise AssertionError("is_onlink called")

    d = desired_state([peer(S1, P1, M1)], DEV, SCOPE, is_onlink=boom)
    assert d.state == programmed((S1, P1, M1))


@pytest.mark.parametrize(
    ("subnet", "why"),
    [
        ("10.99.0.0/24", "inside the Network"),  # outside the Network
        ("10.5.0.0/16", "inside the Network"),  # the whole Network
        ("10.5.220.0/26", "inside the Network"),  # another prefix length
        ("10.5.1.128/25", "inside the Network"),  # half of our own subnet
        ("0.0.0.0/1", "inside the Network"),  # half the address space
        ("192.168.1.0/24", "inside the Network"),  # the underlay
    ],
)
def test_unsafe_subnets_are_skipped(subnet: str, why: str) -> None:
    """Only a SubnetLen-sized subnet inside the Network is ever routed into the overlay."""
    bad = Lease(SubnetKey(IPv4Network(subnet)), LeaseAttrs(P1, "vxlan", M1, 1))
    d = desired_state([bad, peer(S2, P2, M2)], DEV, SCOPE)
    assert d.state == programmed((S2, P2, M2))
    assert why in d.skipped[IPv4Network(subnet)]


def test_overlapping_own_subnet_is_skipped() -> None:
    """A /24 lease that overlaps our own subnet (a Network-sized scope with /24 and our /24 on
    another boundary cannot happen, so check the rule directly) is refused."""
    scope = PeerScope(IPv4Network("10.5.0.0/16"), 25, own_subnet=IPv4Network("10.5.1.0/24"))
    lease = Lease(SubnetKey(IPv4Network("10.5.1.128/25")), LeaseAttrs(P1, "vxlan", M1, 1))
    assert "our own subnet" in (unsafe_reason(lease, scope) or "")


def test_ipv6_halves_are_not_this_device() -> None:
    """On the IPv4 device an IPv6-only peer is nothing (not even a skipped lease) and a
    dual-stack peer is programmed by its IPv4 half alone."""
    v6 = IPv6Network("fc00:0:0:7::/64")
    attrs6 = LeaseAttrs(NO_PUBLIC_IP, "vxlan", None, None, IPv6Address("fd00::7"), M2, 1)
    only6 = Lease(SubnetKey(None, v6), attrs6)
    dual = Lease(SubnetKey(S1, IPv6Network("fc00:0:0:8::/64")), LeaseAttrs(P1, "vxlan", M1, 1))
    d = desired_state([only6, dual], DEV, SCOPE)
    assert d.state == programmed((S1, P1, M1))
    assert d.skipped == {}
    assert unsafe_reason(only6, SCOPE) == "lease has no IPv4 subnet (an IPv6-only peer)"


def test_own_lease_is_not_a_peer() -> None:
    """Our own lease among the peers programs nothing and is not reported as skipped."""
    d = desired_state([peer(OWN, OWN_IP, M1)], DEV, SCOPE)
    assert d.state == KernelState()
    assert d.skipped == {}


@pytest.mark.parametrize(
    "ip", ["0.0.0.0", "127.0.0.1", "224.0.0.1", "239.1.2.3", "255.255.255.255", "240.0.0.1"]
)
def test_non_unicast_public_ip_is_skipped(ip: str) -> None:
    """A PublicIP that is not a unicast address gets no FDB entry (and no peer)."""
    d = desired_state([peer(S1, IPv4Address(ip), M1)], DEV, SCOPE)
    assert d.state == KernelState()
    assert "not a unicast address" in d.skipped[S1]


def test_our_own_public_ip_is_skipped() -> None:
    """Another subnet naming our public IP would send VXLAN to ourselves: skipped."""
    d = desired_state([peer(S1, OWN_IP, M1)], DEV, SCOPE)
    assert d.state == KernelState()
    assert "our own" in d.skipped[S1]


@pytest.mark.parametrize(
    ("mac", "why"),
    [
        ("00:00:00:00:00:00", "all zeros"),
        ("ff:ff:ff:ff:ff:ff", "multicast or broadcast"),
        ("01:00:5e:00:00:01", "multicast or broadcast"),
        ("33:33:00:00:00:01", "multicast or broadcast"),
    ],
)
def test_bad_vtep_mac_is_skipped(mac: str, why: str) -> None:
    """A VTEP MAC the kernel refuses as an FDB entry (EOPNOTSUPP) is never programmed."""
    d = desired_state([peer(S1, P1, mac)], DEV, SCOPE)
    assert d.state == KernelState()
    assert why in d.skipped[S1]


# --- plan ---------------------------------------------------------------------------------------

NETWORK = IPv4Network("10.5.0.0/16")


def desired_of(state: KernelState) -> Desired:
    """A Desired holding exactly the entries of *state*."""
    return Desired.of(state)


def plan_states(desired: KernelState, actual: KernelState, *, direct: bool = False) -> Plan:
    """plan() over every key, with the kernel as *actual* (its ``routes`` ours, ``foreign`` the
    kernel's own)."""
    owner = Ownership(DEV, (NETWORK, 24) if direct else None)
    return plan(desired_of(desired), StateView(actual), owner)


def test_plan_never_replaces_a_foreign_route() -> None:
    """A wanted route whose destination another device already routes is a conflict: it is not
    written, and the foreign route is never deleted; neighbour and FDB are still set."""
    actual = KernelState()
    actual.foreign[S1] = Route(S1, None, 2, False)
    p = plan_states(programmed((S1, P1, M1)), actual)
    assert p.set_routes == ()
    assert p.del_routes == ()
    assert p.conflicts == ((onlink(S1), RouteEntry(S1, None, 2, 2, 0, 1)),)
    assert p.set_neighs == (Neigh(vtep(S1), M1),)


def test_plan_removes_any_route_on_the_device() -> None:
    """Routes on our device that no lease backs go, whatever their prefix or gateway."""
    actual = programmed((S1, P1, M1))
    stray25 = Route(IPv4Network("10.5.51.128/25"), vtep(S1), DEV, True)
    no_gw = Route(IPv4Network("10.7.0.0/16"), None, DEV, False)
    actual.routes[stray25.dst] = stray25
    actual.routes[no_gw.dst] = no_gw
    p = plan_states(programmed((S1, P1, M1)), actual)
    assert set(p.del_routes) == {stray25, no_gw}


def test_plan_add() -> None:
    """A new peer: set neighbour, FDB and route; delete nothing."""
    p = plan_states(programmed((S1, P1, M1)), KernelState())
    assert p.set_neighs == (Neigh(vtep(S1), M1),)
    assert p.set_fdb == (Fdb(M1, P1),)
    assert p.set_routes == (onlink(S1),)
    assert (p.del_routes, p.del_neighs, p.del_fdb) == ((), (), ())


def test_plan_remove() -> None:
    """A vanished peer: delete its route, neighbour and FDB entry; set nothing."""
    p = plan_states(programmed((S2, P2, M2)), programmed((S1, P1, M1), (S2, P2, M2)))
    assert (p.set_neighs, p.set_fdb, p.set_routes) == ((), (), ())
    assert p.del_routes == (onlink(S1),)
    assert p.del_neighs == (Neigh(vtep(S1), M1),)
    assert p.del_fdb == (Fdb(M1, P1),)


def test_plan_unchanged_is_empty() -> None:
    """When the kernel already matches, the plan is empty."""
    st = programmed((S1, P1, M1), (S2, P2, M2))
    p = plan_states(st, programmed((S1, P1, M1), (S2, P2, M2)))
    assert p.empty
    assert p == Plan()


def test_plan_empty_both() -> None:
    """No peers and nothing in the kernel: an empty plan."""
    assert plan_states(KernelState(), KernelState()).empty


def test_plan_mac_change() -> None:
    """A peer's new MAC: neighbour and FDB set for the new MAC, the old FDB entry deleted."""
    p = plan_states(programmed((S1, P1, M2)), programmed((S1, P1, M1)))
    assert p.set_neighs == (Neigh(vtep(S1), M2),)
    assert p.set_fdb == (Fdb(M2, P1),)
    assert p.del_fdb == (Fdb(M1, P1),)
    assert p.del_neighs == ()  # replaced, not deleted
    assert p.set_routes == ()
    assert p.del_routes == ()


def test_plan_public_ip_change() -> None:
    """A peer's new public IP: the FDB entry to the new address set, the old one deleted."""
    p = plan_states(programmed((S1, P2, M1)), programmed((S1, P1, M1)))
    assert p.set_fdb == (Fdb(M1, P2),)
    assert p.del_fdb == (Fdb(M1, P1),)
    assert (p.set_neighs, p.set_routes, p.del_routes, p.del_neighs) == ((), (), (), ())


@pytest.mark.parametrize(
    "have",
    [
        Route(S1, IPv4Address("10.5.51.99"), DEV, True),  # wrong gateway
        Route(S1, vtep(S1), DEV, False),  # not onlink
    ],
)
def test_plan_wrong_route_replaced(have: Route) -> None:
    """A route with the wrong gateway, device or flags is replaced, not deleted."""
    actual = programmed((S1, P1, M1))
    actual.routes[S1] = have
    p = plan_states(programmed((S1, P1, M1)), actual)
    assert p.set_routes == (onlink(S1),)
    assert p.del_routes == ()
    assert (p.set_neighs, p.set_fdb) == ((), ())


def test_plan_route_on_another_device_is_a_conflict() -> None:
    """A route to the peer's subnet on another device is not ours: left alone, reported."""
    actual = programmed((S1, P1, M1))
    actual.routes[S1] = Route(S1, vtep(S1), DEV + 1, True)
    p = plan_states(programmed((S1, P1, M1)), actual)
    assert (p.set_routes, p.del_routes) == ((), ())
    assert [want for want, _ in p.conflicts] == [onlink(S1)]


def test_plan_direct_route_any_device() -> None:
    """A direct route (no device wanted) matches whatever underlay device the kernel chose."""
    want = KernelState(routes={S1: Route(S1, P1, None, False)})
    have = KernelState(routes={S1: Route(S1, P1, 3, False)})
    assert plan_states(want, have, direct=True).empty


def test_plan_direct_route_no_longer_wanted_is_deleted() -> None:
    """With DirectRouting our "boot" route via a peer's public IP goes with its lease; without
    DirectRouting the same route on the underlay is not ours and stays."""
    have = KernelState(routes={S1: Route(S1, P1, 3, False)})
    assert plan_states(KernelState(), have, direct=True).del_routes == (Route(S1, P1, 3, False),)
    assert plan_states(KernelState(), have).empty


def test_plan_switch_to_direct_routing() -> None:
    """Turning a peer direct replaces its route and removes its neighbour and FDB entry."""
    want = KernelState(routes={S1: Route(S1, P1, None, False)})
    p = plan_states(want, programmed((S1, P1, M1)), direct=True)
    assert p.set_routes == (Route(S1, P1, None, False),)
    assert p.del_neighs == (Neigh(vtep(S1), M1),)
    assert p.del_fdb == (Fdb(M1, P1),)
    assert p.del_routes == ()


def test_plan_deterministic_order() -> None:
    """Operations come in a stable sorted order whatever the dict order."""
    a = plan_states(programmed((S2, P2, M2), (S1, P1, M1)), KernelState())
    b = plan_states(programmed((S1, P1, M1), (S2, P2, M2)), KernelState())
    assert a == b
    assert [r.dst for r in a.set_routes] == [S1, S2]


# --- apply --------------------------------------------------------------------------------------


@dataclass
class RecordingWriter:
    """A BatchWriter that records every operation and fails the ones named in *fail*."""

    fail: set[tuple[str, object]] = field(default_factory=set)
    calls: list[tuple[str, object]] = field(default_factory=list)
    batches: int = 0

    def write(self, ops: Sequence[Op]) -> dict[int, KernelError]:
        self.batches += 1
        failed = {}
        for i, op in enumerate(ops):
            t = op.target
            key = t.ip if isinstance(t, Neigh) else t.mac if isinstance(t, Fdb) else t.dst
            self.calls.append((op.kind, key))
            if (op.kind, key) in self.fail:
                failed[i] = KernelError(op.kind, str(key), errno.EINVAL, "Invalid argument")
        return failed


def test_apply_order_add() -> None:
    """Neighbours go in first, then FDB entries, then routes."""
    w = RecordingWriter()
    report = apply(plan_states(programmed((S1, P1, M1), (S2, P2, M2)), KernelState()), w)
    assert w.calls == [
        ("replace_neigh", vtep(S1)),
        ("replace_neigh", vtep(S2)),
        ("replace_fdb", M1),
        ("replace_fdb", M2),
        ("replace_route", S1),
        ("replace_route", S2),
    ]
    assert (report.applied, report.failed) == (6, 0)


def test_apply_order_remove() -> None:
    """Routes are removed before neighbours and FDB entries."""
    w = RecordingWriter()
    apply(plan_states(KernelState(), programmed((S1, P1, M1))), w)
    assert w.calls == [("delete_route", S1), ("delete_neigh", vtep(S1)), ("delete_fdb", M1)]


def test_apply_failed_neigh_holds_back_only_that_route() -> None:
    """A peer whose neighbour failed gets no route; the other peers are programmed fully."""
    w = RecordingWriter(fail={("replace_neigh", vtep(S1))})
    report = apply(plan_states(programmed((S1, P1, M1), (S2, P2, M2)), KernelState()), w)
    routes = [k for op, k in w.calls if op == "replace_route"]
    assert routes == [S2]
    assert ("replace_fdb", M1) in w.calls  # its FDB entry is still attempted
    assert (report.applied, report.failed) == (4, 1)
    assert report.errors[0].op == "replace_neigh"


def test_apply_failed_fdb_holds_back_only_that_route() -> None:
    """A peer whose FDB entry failed gets no route; the other peers are programmed fully."""
    w = RecordingWriter(fail={("replace_fdb", M2)})
    report = apply(
        plan_states(programmed((S1, P1, M1), (S2, P2, M2), (S3, P3, M3)), KernelState()), w
    )
    routes = [k for op, k in w.calls if op == "replace_route"]
    assert routes == [S1, S3]
    assert (report.applied, report.failed) == (7, 1)


def test_apply_failed_fdb_holds_back_route_when_neigh_already_right() -> None:
    """The route is held back after an FDB failure even if the neighbour needed no change."""
    actual = programmed((S1, P1, M1))
    del actual.routes[S1]
    actual.fdb.clear()
    w = RecordingWriter(fail={("replace_fdb", M1)})
    report = apply(plan_states(programmed((S1, P1, M1)), actual), w)
    assert w.calls == [("replace_fdb", M1)]
    assert (report.applied, report.failed) == (0, 1)


def test_apply_all_deletions_attempted() -> None:
    """Every deletion is attempted even when earlier ones fail; failures are collected."""
    w = RecordingWriter(fail={("delete_route", S1), ("delete_neigh", vtep(S1)), ("delete_fdb", M2)})
    report = apply(plan_states(KernelState(), programmed((S1, P1, M1), (S2, P2, M2))), w)
    assert sorted(w.calls, key=str) == sorted(
        [
            ("delete_route", S1),
            ("delete_route", S2),
            ("delete_neigh", vtep(S1)),
            ("delete_neigh", vtep(S2)),
            ("delete_fdb", M1),
            ("delete_fdb", M2),
        ],
        key=str,
    )
    assert (report.applied, report.failed) == (3, 3)
    assert all(isinstance(e, KernelError) for e in report.errors)


def test_apply_failure_does_not_raise_and_deletions_follow() -> None:
    """A failed set does not stop the deletions of the same plan."""
    w = RecordingWriter(fail={("replace_neigh", vtep(S2)), ("replace_route", S3)})
    desired = programmed((S2, P2, M2), (S3, P3, M3))
    report = apply(plan_states(desired, programmed((S1, P1, M1))), w)
    assert ("delete_route", S1) in w.calls
    assert ("delete_neigh", vtep(S1)) in w.calls
    assert ("delete_fdb", M1) in w.calls
    assert ("replace_route", S2) not in w.calls
    assert ("replace_route", S3) in w.calls
    # set: 2 neighs (1 fails), 2 fdb, 1 route attempted (fails); delete: 3
    assert (report.applied, report.failed) == (6, 2)


def test_apply_direct_route_not_held_back() -> None:
    """A direct route has no neighbour or FDB entry and is never held back by their failures."""
    desired = programmed((S1, P1, M1))
    desired.routes[S2] = Route(S2, P2, None, False)
    w = RecordingWriter(fail={("replace_neigh", vtep(S1)), ("replace_fdb", M1)})
    apply(plan_states(desired, KernelState()), w)
    assert [k for op, k in w.calls if op == "replace_route"] == [S2]


def test_apply_empty_plan_does_nothing() -> None:
    """An empty plan makes no call."""
    w = RecordingWriter()
    report = apply(Plan(), w)
    assert w.calls == []
    assert (report.applied, report.failed) == (0, 0)


# --- work in proportion to the change ------------------------------------------------------------


def entries(subnet: IPv4Network, ip: IPv4Address, mac: str) -> PeerEntries:
    """The entries of one encapsulated peer."""
    return PeerEntries(onlink(subnet), Neigh(vtep(subnet), mac), Fdb(mac, ip))


def test_desired_set_returns_old_and_new_keys() -> None:
    """Changing a peer's MAC touches its neighbour, both MACs and its route: nothing else."""
    d = Desired(DEV)
    d.set(S1, entries(S1, P1, M1))
    d.set(S2, entries(S2, P2, M2))
    keys = d.set(S1, entries(S1, P1, M3))
    assert keys == Keys({vtep(S1)}, {M1, M3}, {S1})
    assert d.keys().macs == {M3, M2}
    assert (d.fdb_dst(M3), d.fdb_dst(M2), d.fdb_dst(M1)) == (P1, P2, None)
    assert d.neigh(vtep(S1)) == M3


def test_desired_removal_keeps_entries_another_peer_wrote() -> None:
    """Two peers claiming one VTEP MAC: removing one leaves the other's FDB entry wanted."""
    d = Desired(DEV)
    d.set(S1, entries(S1, P1, M1))
    d.set(S2, entries(S2, P2, M1))  # last writer wins
    d.set(S1, None)
    assert d.keys().macs == {M1}
    assert d.fdb_dst(M1) == P2
    assert d.keys().routes == {S2}
    assert d.route(S2) == onlink(S2)
    assert d.route(S1) is None


def test_plan_for_keys_looks_at_nothing_else() -> None:
    """A keyed plan compares only those keys: a drifted entry elsewhere waits for its own
    event or the resync."""
    d = Desired(DEV)
    for s, ip, mac in ((S1, P1, M1), (S2, P2, M2)):
        d.set(s, entries(s, ip, mac))
    view = StateView(KernelState())  # nothing programmed at all
    p = plan(d, view, Ownership(DEV), d.set(S2, entries(S2, P2, M2)))
    assert p.set_routes == (onlink(S2),)
    assert p.set_neighs == (Neigh(vtep(S2), M2),)
    assert p.set_fdb == (Fdb(M2, P2),)


def test_plan_extra_metric_on_device_is_removed() -> None:
    """A second route to a peer's subnet on our device (another metric, added by hand) goes,
    deleted by its metric (without one the kernel would delete the first match: ours); the one
    the lease backs stays."""

    class View(StateView):
        def routes_to(self, dst: IPv4Network) -> list[RouteEntry]:
            if dst != S1:
                return []
            return [
                RouteEntry(S1, vtep(S1), DEV, 3, 0, 1, 0, True),
                RouteEntry(S1, vtep(S1), DEV, 3, 0, 1, 100, True),
            ]

    d = desired_of(programmed((S1, P1, M1)))
    p = plan(d, View(programmed((S1, P1, M1))), Ownership(DEV), Keys(routes={S1}))
    assert p.set_routes == ()
    assert p.del_routes == (replace(onlink(S1), priority=100),)


def test_apply_is_two_batches() -> None:
    """However many peers, apply makes two writes: neighbours and FDB entries, then routes and
    every deletion."""
    w = RecordingWriter()
    many = programmed(
        *((IPv4Network(f"10.5.{i}.0/24"), P1, f"5a:00:00:00:00:{i:02x}") for i in range(2, 50))
    )
    apply(plan_states(many, programmed((S1, P1, M1))), w)
    assert w.batches == 2


@dataclass
class LaterRecorder:
    """A LaterWriter that writes (with *writer*) only when told to flush, as a helper thread
    may write well after apply returns."""

    writer: RecordingWriter
    queued: list[tuple[Sequence[Op], ApplyReport]] = field(default_factory=list)

    def submit(self, ops: Sequence[Op], report: ApplyReport) -> None:
        self.queued.append((ops, report))

    def flush(self) -> None:
        for ops, report in self.queued:
            failed = self.writer.write(ops)
            report.applied += len(ops) - len(failed)
            report.errors.extend(failed[i] for i in sorted(failed))
        self.queued.clear()


def test_apply_later_takes_the_second_batch_after_the_first_is_written() -> None:
    """With a later writer, apply writes neighbours and FDB entries itself and hands over the
    routes and deletions, still holding back the route of a peer whose neighbour failed; the
    report counts both once the later writer is done."""
    w = RecordingWriter(fail={("replace_neigh", vtep(S1))})
    later = LaterRecorder(w)
    actual = programmed((S3, P3, M3))
    report = apply(plan_states(programmed((S1, P1, M1), (S2, P2, M2)), actual), w, later)
    assert [op for op, _ in w.calls] == ["replace_neigh"] * 2 + ["replace_fdb"] * 2
    assert (report.applied, report.failed) == (3, 1)  # the second batch is not written yet
    later.flush()
    assert w.calls[4:] == [
        ("replace_route", S2),
        ("delete_route", S3),
        ("delete_neigh", vtep(S3)),
        ("delete_fdb", M3),
    ]
    assert (report.applied, report.failed) == (7, 1)


def test_merge_plans_keeps_every_operation_in_order() -> None:
    """Chunks' plans merged report what each planned, first chunk first."""
    p1 = plan_states(programmed((S1, P1, M1)), KernelState())
    p2 = plan_states(programmed((S2, P2, M2)), programmed((S3, P3, M3)))
    merged = merge_plans([p1, p2])
    assert merged.set_routes == p1.set_routes + p2.set_routes
    assert merged.del_fdb == p2.del_fdb
    assert merged.changes == p1.changes + p2.changes
    assert merged.vtep_macs == {**p1.vtep_macs, **p2.vtep_macs}
    assert merge_plans([]).empty


class _Kernel:
    """What PeerSync asks of a KernelSync when a lease changes: the wanted entries per subnet
    (the real Desired index, no kernel behind it)."""

    def __init__(self, dev: int) -> None:
        self.dev = dev
        self.desired = Desired()

    def set_peer(self, subnet: IPv4Network, entries: PeerEntries | None) -> Keys:
        return self.desired.set(subnet, entries)

    def route_is_onlink(self, _ip: IPv4Address) -> bool:
        return False


def test_peer_sync_takes_only_the_ipv4_half() -> None:
    """The IPv4 device is told about a dual-stack peer's IPv4 half; an IPv6-only key changes
    nothing on it (and is no skipped peer to warn about)."""
    kernel = _Kernel(DEV)
    sync = PeerSync(lambda dev, _own: kernel, DEV, SCOPE)  # type: ignore[arg-type,return-value]
    only6 = SubnetKey(None, IPv6Network("fc00:0:0:7::/64"))
    attrs6 = LeaseAttrs(NO_PUBLIC_IP, "vxlan", None, None, IPv6Address("fd00::7"), M2, 1)
    assert not sync.update(only6, Lease(only6, attrs6))
    assert kernel.desired.peers == {}
    dual = SubnetKey(S1, IPv6Network("fc00:0:0:8::/64"))
    assert sync.update(dual, Lease(dual, LeaseAttrs(P1, "vxlan", M1, 1)))
    assert set(kernel.desired.peers) == {S1}
    sync.update(dual, None)
    assert kernel.desired.peers == {}
