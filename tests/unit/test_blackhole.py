"""--ip-blackhole-route: which blackholes are ours, what start and check do, and that the peer
planner never takes our subnet's blackhole for a route to fix (pure, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.blackhole import METRIC, BlackholeRoute, stale
from pyflannel.errors import KernelError
from pyflannel.kernel import codec
from pyflannel.kernel.mirror import Mirror
from pyflannel.kernel.plan import Desired, Ownership, plan
from pyflannel.kernel.records import Fdb, Neigh, PeerEntries, Route

N = IPv4Network
NETWORK = N("10.5.0.0/16")
OWN = N("10.5.34.0/24")
DEV = 4


class Door:
    """Records the kernel operations asked for; refuses adds when told to."""

    def __init__(self, refuse: bool = False) -> None:
        self.ops: list[tuple[str, IPv4Network, int]] = []
        self.refuse = refuse

    def add_blackhole(self, dst: IPv4Network, metric: int) -> None:
        """Record an add (or refuse it)."""
        if self.refuse:
            raise KernelError("route.add", f"blackhole {dst}", 1, "Operation not permitted")
        self.ops.append(("add", dst, metric))

    def del_blackhole(self, dst: IPv4Network, metric: int) -> None:
        """Record a delete."""
        self.ops.append(("del", dst, metric))


def test_stale_is_ours_inside_the_network_other_than_the_one_kept() -> None:
    """Only our metric counts; flanneld's (metric 0) and other networks' are not ours."""
    found = [
        (OWN, METRIC),
        (N("10.5.7.0/24"), METRIC),  # a previous lease of ours
        (N("10.5.8.0/24"), 0),  # flanneld's, or the operator's
        (N("192.168.0.0/24"), METRIC),  # outside the Network
    ]
    assert stale(found, OWN, NETWORK) == [N("10.5.7.0/24")]
    assert stale(found, None, NETWORK) == [OWN, N("10.5.7.0/24")]


def test_start_adds_ours_and_removes_a_previous_leases() -> None:
    """Flag on: the old subnet's blackhole goes, ours is added at the lowest preference."""
    door = Door()
    changed = BlackholeRoute(door, OWN, NETWORK, True).start([(N("10.5.7.0/24"), METRIC)])
    assert changed
    assert door.ops == [("del", N("10.5.7.0/24"), METRIC), ("add", OWN, METRIC)]
    assert METRIC == 2**32 - 1


@pytest.mark.parametrize("metric", [0, METRIC, 100])
def test_start_keeps_a_blackhole_already_there(metric: int) -> None:
    """A blackhole for our subnet (ours, flanneld's at metric 0, the operator's) is kept."""
    door = Door()
    assert not BlackholeRoute(door, OWN, NETWORK, True).start([(OWN, metric)])
    assert door.ops == []


def test_flag_off_removes_ours_only() -> None:
    """Flag off: our blackhole for our subnet goes, anybody else's stays, nothing is added."""
    door = Door()
    bh = BlackholeRoute(door, OWN, NETWORK, False)
    assert bh.start([(OWN, METRIC), (N("10.5.8.0/24"), 0)])
    assert door.ops == [("del", OWN, METRIC)]
    bh.check(present=False)
    assert door.ops == [("del", OWN, METRIC)]


def test_check_puts_it_back_and_survives_a_refusal() -> None:
    """Gone: added again; present: nothing; refused: logged, no exception (next check)."""
    door = Door()
    bh = BlackholeRoute(door, OWN, NETWORK, True)
    bh.check(present=True)
    assert door.ops == []
    bh.check(present=False)
    assert door.ops == [("add", OWN, METRIC)]
    BlackholeRoute(Door(refuse=True), OWN, NETWORK, True).check(present=False)


def blackhole_msg(net: IPv4Network, metric: int = METRIC) -> codec.RouteMsg:
    """RTM_NEWROUTE of ``blackhole NET metric M proto boot`` as the kernel reports it."""
    return codec.RouteMsg(
        codec.RTM_NEWROUTE,
        codec.AF_INET,
        net.network_address.packed,
        net.prefixlen,
        0,
        codec.RT_TABLE_MAIN,
        codec.RTPROT_BOOT,
        codec.RT_SCOPE_UNIVERSE,
        codec.RTN_BLACKHOLE,
        0,
        None,
        None,
        metric,
    )


def peer_route_msg(net: IPv4Network) -> codec.RouteMsg:
    """RTM_NEWROUTE of ``NET via NET.0 dev flannel.1 onlink proto boot`` (what we write)."""
    return codec.RouteMsg(
        codec.RTM_NEWROUTE,
        codec.AF_INET,
        net.network_address.packed,
        net.prefixlen,
        0,
        codec.RT_TABLE_MAIN,
        codec.RTPROT_BOOT,
        codec.RT_SCOPE_UNIVERSE,
        codec.RTN_UNICAST,
        codec.RTNH_F_ONLINK,
        net.network_address.packed,
        DEV,
        0,
    )


@pytest.mark.parametrize("direct", [None, (NETWORK, 24)])
def test_the_planner_leaves_our_subnets_blackhole_alone(
    direct: tuple[IPv4Network, int] | None,
) -> None:
    """With peers wanted and every key compared, the blackhole for our own subnet is neither
    deleted nor replaced, nor a suspect of the resync; the mirror reports it as ours to check."""
    mirror = Mirror(DEV)
    other = N("10.5.60.0/24")  # a peer already routed (held in the mirror's compact form)
    mirror.load(None, [], [], [blackhole_msg(OWN), peer_route_msg(other)])
    owner = Ownership(DEV, direct)
    desired = Desired()
    peer = N("10.5.51.0/24")
    desired.set(
        peer,
        PeerEntries(
            Route(peer, IPv4Address("10.5.51.0"), DEV, True),
            Neigh(IPv4Address("10.5.51.0"), "5a:1e:02:33:44:55"),
            Fdb("5a:1e:02:33:44:55", IPv4Address("192.0.2.12")),
        ),
    )
    p = plan(desired, mirror, owner)
    assert [r.dst for r in p.del_routes] == [other] and p.conflicts == ()  # no lease backs it
    assert [r.dst for r in p.set_routes] == [peer]
    assert OWN not in mirror.keys(owner).routes
    assert mirror.blackholes() == [(OWN, METRIC)]
    assert [e.kind for e in mirror.routes_to(OWN)] == [codec.RTN_BLACKHOLE]
