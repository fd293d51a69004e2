"""The netlink codec and the mirror on IPv6: bytes captured from the kernel and iproute2.

``fixtures/netlink6.json`` was written by ``fixtures/capture_netlink6.py`` (as root, in a
throwaway namespace with ``flannel-v6.1`` over an IPv6 underlay): the requests ``ip -6`` and
``bridge`` send, dump replies, error ACKs, a ``route get`` reply and notifications, as hex.
No root needed here.
"""

from __future__ import annotations

import contextlib
import json
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from pyflannel.kernel import codec
from pyflannel.kernel.mirror import Mirror
from pyflannel.kernel.plan import Desired, Keys, Ownership, plan
from pyflannel.kernel.records import IPV6_ROUTE_METRIC, Fdb, Neigh, PeerEntries, Route
from pyflannel.kernel.sync import groups_for

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "netlink6.json").read_text())
DEV = FIXTURES["flannel_index"]
ETH0 = 3
MAC = "aa:bb:cc:00:00:07"
PEER = IPv6Address("2001:db8::27")
NET7 = IPv6Network("fc00:0:0:7::/64")
ONLINK = Route(NET7, NET7.network_address, DEV, True, IPV6_ROUTE_METRIC)


def raw(name: str) -> bytes:
    """The fixture *name* (one hex string) as bytes."""
    return bytes.fromhex(FIXTURES[name])


def parsed(name: str) -> list[codec.Parsed]:
    """Every message of fixture *name*, parsed, NLMSG_DONE left out."""
    return [
        m
        for b in FIXTURES[name]
        for m in codec.decode(bytes.fromhex(b))
        if not (isinstance(m, codec.Message) and m.type == codec.NLMSG_DONE)
    ]


def with_table(msg: bytes) -> bytes:
    """*msg* with RTA_TABLE 254 appended (we send it; iproute2 puts the table in rtmsg only)."""
    extra = bytes.fromhex("08000f00fe000000")
    return (len(msg) + len(extra)).to_bytes(4, "little") + msg[4:] + extra


# --- encoders, byte for byte ----------------------------------------------------------------


def test_neigh_requests_match_iproute2() -> None:
    """``ip -6 neigh replace … nud permanent`` and ``ip -6 neigh del``: AF_INET6, 16 bytes."""
    ip = NET7.network_address
    assert codec.encode_neigh_replace(DEV, ip, MAC) == raw("req_neigh_replace")
    assert codec.encode_neigh_delete(DEV, ip) == raw("req_neigh_delete")


def test_fdb_requests_with_an_ipv6_remote_match_iproute2() -> None:
    """``bridge fdb replace … dst <IPv6> self permanent``: AF_BRIDGE, a 16-byte NDA_DST."""
    assert codec.encode_fdb_replace(DEV, MAC, PEER) == raw("req_fdb_replace")
    assert codec.encode_fdb_delete(DEV, MAC, PEER) == raw("req_fdb_delete")


def test_route_requests_match_iproute2_plus_rta_table() -> None:
    """``ip -6 route replace … onlink metric 1024`` and ``ip -6 route del … metric 1024 table
    main`` (scope 0, as iproute2 sends for IPv6), plus our RTA_TABLE."""
    assert codec.encode_route_replace(ONLINK) == with_table(raw("req_route_replace"))
    assert codec.encode_route_delete(ONLINK) == with_table(raw("req_route_delete"))


def test_route_get_and_dumps_ask_for_ipv6() -> None:
    """A ``route get`` of an IPv6 address asks for a /128 of AF_INET6; dumps take the family."""
    (m,) = codec.split(codec.encode_route_get(PEER, seq=3))
    assert m.payload[:2] == bytes([codec.AF_INET6, 128])
    for request in (
        codec.encode_route_dump(family=codec.AF_INET6),
        codec.encode_neigh_dump(DEV, family=codec.AF_INET6),
        codec.encode_addr_dump(family=codec.AF_INET6),
    ):
        (m,) = codec.split(request)
        assert m.payload[0] == codec.AF_INET6


def test_monitor_groups() -> None:
    """An IPv4-only host joins no IPv6 group; a dual-stack one joins both families' route and
    address groups on one socket; an IPv6-only one only IPv6's."""
    assert groups_for((4,)) == (1, 3, 7, 5)
    assert groups_for((4, 6)) == (1, 3, 7, 5, 11, 9)
    assert groups_for((6,)) == (1, 3, 11, 9)


# --- decoders, on the kernel's bytes --------------------------------------------------------


def test_neighbour_dump_holds_permanent_and_multicast_entries() -> None:
    """The device's IPv6 neighbours: ours (permanent) and the kernel's multicast ones (NOARP),
    which are not ours."""
    neighs = [n for n in parsed("dump_neigh") if isinstance(n, codec.NeighMsg)]
    permanent = {(codec.ip6(n.dst), n.mac) for n in neighs if n.state == codec.NUD_PERMANENT}
    assert permanent == {
        (IPv6Address("fc00:0:0:8::"), "aa:bb:cc:00:00:08"),
        (IPv6Address("fc00:0:0:a::"), "aa:bb:cc:00:00:0a"),
    }
    assert all(n.family == codec.AF_INET6 and n.ifindex == DEV for n in neighs)


def test_fdb_dump_with_ipv6_remotes() -> None:
    """FDB entries of flannel-v6.1: self permanent, 16-byte remotes."""
    fdb = [f for f in parsed("dump_fdb") if isinstance(f, codec.NeighMsg)]
    got = {(f.mac, codec.ip6(f.dst)) for f in fdb}
    assert ("aa:bb:cc:00:00:08", IPv6Address("2001:db8::28")) in got
    assert ("aa:bb:cc:00:00:0a", IPv6Address("2001:db8::30")) in got
    assert all(f.flags & codec.NTF_SELF and not f.odd for f in fdb)


def test_route_dump_ipv6_main_table() -> None:
    """Our onlink routes carry metric 1024 and proto boot; the kernel's connected and
    link-local ones (proto kernel, metric 256) are there too."""
    routes = [r for r in parsed("dump_routes") if isinstance(r, codec.RouteMsg)]
    ours = next(r for r in routes if r.network == IPv6Network("fc00:0:0:8::/64"))
    assert (ours.oif, codec.ip6(ours.gateway), ours.protocol, ours.priority, ours.table) == (
        DEV,
        IPv6Address("fc00:0:0:8::"),
        codec.RTPROT_BOOT,
        IPV6_ROUTE_METRIC,
        254,
    )
    assert ours.flags & codec.RTNH_F_ONLINK
    own = next(r for r in routes if r.network == IPv6Network("fc00:0:0:5::/128"))
    assert (own.gateway, own.protocol, own.oif) == (None, 2, DEV)  # our address's own route
    assert any(r.network == IPv6Network("fe80::/64") and r.oif == DEV for r in routes)


def test_address_dump_and_route_get() -> None:
    """The device's IPv6 addresses (ours and its link-local one) and a ``route get`` reply."""
    addrs = [a for a in parsed("dump_addr") if isinstance(a, codec.AddrMsg)]
    got = {(codec.ip6(a.address), a.prefixlen) for a in addrs}
    assert (IPv6Address("fc00:0:0:5::"), 128) in got
    assert all(a.family == codec.AF_INET6 and a.index == DEV for a in addrs)
    (r,) = parsed("route_get")
    assert isinstance(r, codec.RouteMsg)
    assert (r.network, r.gateway, r.oif) == (IPv6Network("2001:db8::30/128"), None, ETH0)


@pytest.mark.parametrize(
    ("name", "seq", "errno", "request_type"),
    [
        ("ack_ok", 7, 0, codec.RTM_NEWNEIGH),
        ("ack_enodev", 8, 19, codec.RTM_NEWROUTE),
        ("ack_esrch", 9, 3, codec.RTM_DELROUTE),
        ("ack_enoent", 10, 2, codec.RTM_DELNEIGH),
    ],
)
def test_acks(name: str, seq: int, errno: int, request_type: int) -> None:
    """Our IPv6 requests are understood: ACK, ENODEV for a missing device, ESRCH and ENOENT
    for deletes of what is not there."""
    (ack,) = parsed(name)
    assert isinstance(ack, codec.Ack)
    assert (ack.seq, ack.errno, ack.request_type) == (seq, errno, request_type)


def test_truncated_buffers_raise_only_codec_error() -> None:
    """Every prefix of every captured IPv6 buffer parses or raises CodecError."""
    for value in FIXTURES.values():
        for buf in (bytes.fromhex(b) for b in value) if isinstance(value, list) else ():
            for cut in range(0, len(buf), 3):
                with contextlib.suppress(codec.CodecError):
                    codec.decode(buf[:cut])


# --- the mirror, on the kernel's bytes --------------------------------------------------------


def neighs(name: str) -> list[codec.NeighMsg]:
    return [m for m in parsed(name) if isinstance(m, codec.NeighMsg)]


def routes(name: str) -> list[codec.RouteMsg]:
    return [m for m in parsed(name) if isinstance(m, codec.RouteMsg)]


def loaded() -> Mirror:
    """An IPv6 mirror loaded from the captured dumps."""
    m = Mirror(DEV, version=6)
    (link,) = parsed("get_link")
    assert isinstance(link, codec.LinkMsg)
    m.load(link, neighs("dump_neigh"), neighs("dump_fdb"), routes("dump_routes"))
    return m


def peer(i: int) -> PeerEntries:
    net = IPv6Network(f"fc00:0:0:{i:x}::/64")
    mac = f"aa:bb:cc:00:00:{i:02x}"
    return PeerEntries(
        Route(net, net.network_address, DEV, True, IPV6_ROUTE_METRIC),
        Neigh(net.network_address, mac),
        Fdb(mac, IPv6Address(f"2001:db8::{20 + i}")),
    )


def test_mirror_loads_the_ipv6_dumps() -> None:
    """Only permanent neighbours, self FDB remotes and main-table IPv6 routes are held; routes
    on the device that are not the kernel's count as ours."""
    m = loaded()
    assert m.neighs() == {
        IPv6Address("fc00:0:0:8::"): "aa:bb:cc:00:00:08",
        IPv6Address("fc00:0:0:a::"): "aa:bb:cc:00:00:0a",
    }
    assert Fdb("aa:bb:cc:00:00:0a", IPv6Address("2001:db8::30")) in m.fdb()
    assert {str(e.dst) for e in m.dev_routes() if e.protocol == codec.RTPROT_BOOT} == {
        "fc00:0:0:8::/64",
        "fc00:0:0:a::/64",
    }
    assert m.entry_counts() == (2, 2, 2)


def test_a_peer_as_the_kernel_holds_it_needs_nothing() -> None:
    """Desired entries for peers 8 and 10 equal what the kernel reports (metric 1024 included):
    no suspect, an empty plan; a missing peer is a set, in the safe order.  The usual IPv6
    route is held in the compact form (its gateway int), as the IPv4 one is."""
    desired = Desired(DEV, version=6)
    for i in (8, 10):
        desired.set(peer(i).route.dst, peer(i))
    assert all(isinstance(v, int) for v in desired.raw_routes.values())
    m = Mirror(DEV, desired)
    (link,) = parsed("get_link")
    assert isinstance(link, codec.LinkMsg)
    m.load(link, neighs("dump_neigh"), neighs("dump_fdb"), routes("dump_routes"))
    owner = Ownership(DEV)
    assert not m.suspects(desired, owner)
    keys = desired.set(peer(11).route.dst, peer(11))
    p = plan(desired, m, owner, keys)
    assert p.set_neighs == (peer(11).neigh,)
    assert p.set_fdb == (peer(11).fdb,)
    assert p.set_routes == (peer(11).route,)


def test_stray_entries_are_removed_by_metric() -> None:
    """With no lease wanting them, the device's peers are deleted; the kernel's own routes
    (our address's /128, fe80::/64) are never touched."""
    desired = Desired(DEV, version=6)
    m = loaded()
    owner = Ownership(DEV)
    keys = m.suspects(desired, owner)
    p = plan(desired, m, owner, keys)
    assert {str(r.dst) for r in p.del_routes} == {"fc00:0:0:8::/64", "fc00:0:0:a::/64"}
    assert all(r.priority == IPV6_ROUTE_METRIC for r in p.del_routes)
    assert {str(n.ip) for n in p.del_neighs} == {"fc00:0:0:8::", "fc00:0:0:a::"}


def test_notifications_fold_into_the_ipv6_mirror() -> None:
    """The captured sequence: two peers added, one removed (neighbour, FDB remote, route), an
    address added and removed; the IPv6 mirror ends with peer 8 only."""
    m = Mirror(DEV, version=6)
    touched = [m.apply(msg) for msg in parsed("notifications")]
    assert m.neighs() == {IPv6Address("fc00:0:0:8::"): "aa:bb:cc:00:00:08"}
    assert m.fdb() == {Fdb("aa:bb:cc:00:00:08", IPv6Address("2001:db8::28"))}
    ours = {str(e.dst) for e in m.dev_routes() if e.protocol == codec.RTPROT_BOOT}
    assert ours == {"fc00:0:0:8::/64"}
    assert any(IPv6Network("fc00:0:0:9::/64") in t.routes for t in touched)


def test_the_other_familys_messages_are_not_its_business() -> None:
    """An IPv4 mirror folds nothing of the IPv6 capture but the FDB entries of its own index
    (none here: they have IPv6 remotes), and the IPv6 mirror nothing of IPv4 messages."""
    m4 = Mirror(DEV)
    for msg in parsed("notifications"):
        m4.apply(msg)
    assert (m4.neighs(), m4.fdb(), m4.dev_routes()) == ({}, set(), [])
    m6 = Mirror(DEV, version=6)
    v4 = codec.NeighMsg(
        codec.RTM_NEWNEIGH, codec.AF_INET, DEV, codec.NUD_PERMANENT, 0,
        IPv4Address("10.5.1.0").packed, bytes(6),
    )  # fmt: skip
    assert m6.apply(v4).empty
    assert not Keys()
