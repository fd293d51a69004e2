"""The kernel mirror's fold, on hand-made messages and on notifications captured from the
kernel (fixtures/netlink.json); pure, no root."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pyflannel.kernel import codec
from pyflannel.kernel.mirror import Mirror, Touched
from pyflannel.kernel.plan import Desired, Keys, Ownership
from pyflannel.kernel.records import Fdb, Neigh, PeerEntries, Route

DEV = 4
ETH0 = 3
FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "netlink.json").read_text())
A = IPv4Address
N = IPv4Network


def mac(i: int) -> bytes:
    """The MAC aa:bb:cc:00:00:<i>."""
    return bytes([0xAA, 0xBB, 0xCC, 0, 0, i])


def neigh(
    kind: int, ip: str, i: int | None, state: int = codec.NUD_PERMANENT, dev: int = DEV
) -> codec.NeighMsg:
    """An IPv4 neighbour message."""
    lladdr = mac(i) if i is not None else None
    return codec.NeighMsg(kind, codec.AF_INET, dev, state, 0, A(ip).packed, lladdr)


def fdb(kind: int, i: int, dst: str | None, odd: bool = False, state: int = 0xC0) -> codec.NeighMsg:
    """An FDB (AF_BRIDGE) message for MAC *i*."""
    raw = A(dst).packed if dst else None
    return codec.NeighMsg(kind, codec.AF_BRIDGE, DEV, state, codec.NTF_SELF, raw, mac(i), odd)


def route(
    kind: int, net: str, gw: str | None, oif: int | None = DEV, prio: int = 0, proto: int = 3
) -> codec.RouteMsg:
    """A main-table IPv4 route message."""
    n = N(net)
    return codec.RouteMsg(
        kind,
        codec.AF_INET,
        n.network_address.packed,
        n.prefixlen,
        0,
        254,
        proto,
        0,
        1,
        codec.RTNH_F_ONLINK if oif == DEV else 0,
        A(gw).packed if gw else None,
        oif,
        prio,
    )


def link(
    kind: int = codec.RTM_NEWLINK, index: int = DEV, up: bool = True, mtu: int = 1450
) -> codec.LinkMsg:
    """flannel.1 as a link message."""
    return codec.LinkMsg(kind, index, "flannel.1", int(up), mtu, "aa:bb:cc:00:00:01", 0)


NEW_N, DEL_N = codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH
NEW_R, DEL_R = codec.RTM_NEWROUTE, codec.RTM_DELROUTE


def loaded() -> Mirror:
    """A mirror loaded with one peer (10.5.2.0) and a foreign route to 10.6.0.0/24."""
    m = Mirror(DEV)
    m.load(
        link(),
        [neigh(NEW_N, "10.5.2.0", 2), neigh(NEW_N, "10.9.9.9", 9, dev=ETH0)],
        [fdb(NEW_N, 2, "192.0.2.20"), fdb(NEW_N, 3, None)],  # no dst: a multicast-style entry
        [route(NEW_R, "10.5.2.0/24", "10.5.2.0"), route(NEW_R, "10.6.0.0/24", "192.0.2.1", ETH0)],
    )
    return m


def test_load_keeps_only_our_device_entries() -> None:
    """Neighbours and FDB entries of other devices, or without a dst, stay out."""
    m = loaded()
    assert m.neighs() == {A("10.5.2.0"): "aa:bb:cc:00:00:02"}
    assert m.fdb() == {Fdb("aa:bb:cc:00:00:02", A("192.0.2.20"))}
    assert [(r.dst, r.gateway, r.onlink) for r in m.dev_routes()] == [
        (N("10.5.2.0/24"), A("10.5.2.0"), True)
    ]
    assert m.counts() == (1, 1, 2)


def test_neighbour_add_replace_delete() -> None:
    """Each change is reported once; an identical replace touches nothing."""
    m = loaded()
    assert m.apply(neigh(NEW_N, "10.5.3.0", 3)).neighs == (A("10.5.3.0"),)
    assert m.apply(neigh(NEW_N, "10.5.3.0", 3)).empty
    assert m.apply(neigh(NEW_N, "10.5.3.0", 4)).neighs == (A("10.5.3.0"),)
    assert m.neighs()[A("10.5.3.0")] == "aa:bb:cc:00:00:04"
    assert m.apply(neigh(DEL_N, "10.5.3.0", None)).neighs == (A("10.5.3.0"),)
    assert m.apply(neigh(DEL_N, "10.5.3.0", None)).empty
    assert A("10.5.3.0") not in m.neighs()


def test_neighbour_turning_non_permanent_leaves_the_mirror() -> None:
    """``ip neigh del`` first reports NUD_FAILED: no longer ours."""
    m = loaded()
    assert m.apply(neigh(NEW_N, "10.5.2.0", None, state=0x20)).neighs == (A("10.5.2.0"),)
    assert m.neighs() == {}


def test_fdb_add_replace_delete() -> None:
    """A new dst for a single-remote MAC is a replace; a delete names its remote."""
    m = loaded()
    assert m.apply(fdb(NEW_N, 2, "192.0.2.20")).empty
    t = m.apply(fdb(NEW_N, 2, "192.0.2.21"))
    assert (t.fdb, t.resync) == (("aa:bb:cc:00:00:02",), False)
    assert m.fdb() == {Fdb("aa:bb:cc:00:00:02", A("192.0.2.21"))}
    assert m.apply(fdb(DEL_N, 2, "192.0.2.20")).empty  # not that remote
    assert m.apply(fdb(DEL_N, 2, "192.0.2.21")).fdb == ("aa:bb:cc:00:00:02",)
    assert m.fdb() == set()


def test_fdb_odd_or_non_permanent_entries_are_not_ours() -> None:
    """An entry with its own port/VNI, or not permanent, is left for the planner to rewrite."""
    m = loaded()
    assert m.apply(fdb(NEW_N, 5, "192.0.2.50", odd=True)).empty
    assert m.apply(fdb(NEW_N, 2, "192.0.2.20", state=0x02)).fdb == ("aa:bb:cc:00:00:02",)
    assert m.fdb() == set()


def test_fdb_new_dst_with_several_remotes_asks_for_a_resync() -> None:
    """Append or replace of one of several remotes cannot be told apart."""
    m = Mirror(DEV)
    m.load(None, [], [fdb(NEW_N, 2, "192.0.2.20"), fdb(NEW_N, 2, "192.0.2.21")], [])
    assert len(m.fdb()) == 2
    assert m.apply(fdb(NEW_N, 2, "192.0.2.22")).resync


def test_routes_on_and_off_the_device() -> None:
    """Routes on other devices are foreign; a same-dst route there does not replace ours."""
    m = loaded()
    net = N("10.5.2.0/24")
    assert m.apply(route(NEW_R, "10.5.2.0/24", "192.0.2.1", ETH0, prio=100)).routes == (net,)
    assert sorted(r.oif or 0 for r in m.routes_to(net)) == [ETH0, DEV]
    assert [r.dst for r in m.dev_routes()] == [net]
    # replace of ours (same dst, tos, metric) changes the gateway in place
    m.apply(route(NEW_R, "10.5.2.0/24", "10.5.2.1"))
    assert [r.gateway for r in m.dev_routes()] == [A("10.5.2.1")]
    assert m.apply(route(DEL_R, "10.5.2.0/24", "10.5.2.1")).routes == (net,)
    assert m.dev_routes() == []
    assert [r.oif for r in m.routes_to(net)] == [ETH0]
    assert m.apply(route(DEL_R, "10.5.2.0/24", None, None)).empty  # none left at metric 0


def test_gatewayless_and_other_prefix_routes_on_the_device() -> None:
    """Every route on the device is kept, whatever its prefix, gateway or not."""
    m = loaded()
    m.apply(route(NEW_R, "10.5.0.0/16", None))
    m.apply(route(NEW_R, "10.5.4.4/32", "10.5.4.4"))
    assert {r.dst for r in m.dev_routes()} == {N("10.5.2.0/24"), N("10.5.0.0/16"), N("10.5.4.4/32")}
    assert m.keys(Ownership(DEV)).routes == {N("10.5.2.0/24"), N("10.5.0.0/16"), N("10.5.4.4/32")}


def test_owned_routes_with_direct_routing() -> None:
    """With DirectRouting our "boot" routes via a gateway to /len subnets of the Network count
    on any device; the kernel's own routes and routes outside the Network never do; every route
    on the device does (our own subnet's included: nothing should route it there)."""
    m = loaded()
    m.apply(route(NEW_R, "10.5.3.0/24", "192.0.2.30", ETH0))  # DirectRouting: via the underlay
    m.apply(route(NEW_R, "10.5.1.0/24", "10.5.1.0"))  # our own subnet, on the device
    m.apply(route(NEW_R, "10.5.9.0/24", "192.0.2.9", ETH0, proto=2))  # the kernel's
    owner = Ownership(DEV, (N("10.5.0.0/16"), 24))
    assert m.keys(owner).routes == {N("10.5.2.0/24"), N("10.5.3.0/24"), N("10.5.1.0/24")}
    assert N("10.5.3.0/24") not in m.keys(Ownership(DEV)).routes


def test_other_tables_and_families_are_ignored() -> None:
    """Only the main table's IPv4 routes are mirrored."""
    m = loaded()
    r = route(NEW_R, "10.5.7.0/24", "10.5.7.0")
    r.table = 255
    assert m.apply(r).empty
    r = route(NEW_R, "10.5.7.0/24", "10.5.7.0")
    r.family = codec.AF_INET6
    assert m.apply(r).empty


def test_device_changes() -> None:
    """Down, MTU, deleted, re-created under another index: each sets ``device``; a repeat of
    the same state does not."""
    m = loaded()
    assert m.apply(link()).empty
    assert m.apply(link(up=False)).device
    assert m.device_up is False
    assert m.apply(link(up=False)).empty
    assert m.apply(link(up=False, mtu=1400)).device
    assert m.apply(link(index=99)).device  # same name, new index
    assert m.apply(link(codec.RTM_DELLINK)).device
    assert m.device_up is None
    other = codec.LinkMsg(codec.RTM_NEWLINK, ETH0, "eth0", 1, 1500, "", 0)
    assert m.apply(other) == Touched()


def test_captured_notifications_fold() -> None:
    """The kernel's own messages for writes and deletes by hand, then ``link set down``."""
    m = Mirror(FIXTURES["flannel_index"])
    m.load(None, [], [], [])
    touched = [
        m.apply(x) for b in FIXTURES["notifications"] for x in codec.decode(bytes.fromhex(b))
    ]
    assert any(t.neighs == (A("10.5.9.0"),) for t in touched)
    assert any(t.fdb == ("aa:bb:cc:00:00:09",) for t in touched)
    assert any(t.routes == (N("10.5.9.0/24"),) for t in touched)
    assert any(t.device for t in touched)
    assert m.neighs() == {}  # 10.5.9.0 deleted by hand, 10.5.8.0 flushed by the link going down
    assert m.fdb() == {Fdb("aa:bb:cc:00:00:08", A("192.0.2.28"))}
    assert [r.dst for r in m.routes_to(N("10.6.0.0/24"))] == [N("10.6.0.0/24")]


# --- the full comparison of a resync (suspects) ---------------------------------------------------


def desired_peer2() -> Desired:
    """What loaded() holds for the peer 10.5.2.0, as desired entries."""
    d = Desired(DEV)
    d.set(
        N("10.5.2.0/24"),
        PeerEntries(
            Route(N("10.5.2.0/24"), A("10.5.2.0"), DEV, True),
            Neigh(A("10.5.2.0"), "aa:bb:cc:00:00:02"),
            Fdb("aa:bb:cc:00:00:02", A("192.0.2.20")),
        ),
    )
    return d


def test_suspects_empty_when_the_kernel_matches() -> None:
    """A mirror holding exactly the desired entries has nothing to look at (foreign routes and
    other devices' neighbours do not count)."""
    assert not loaded().suspects(desired_peer2(), Ownership(DEV))


def test_suspects_name_exactly_the_differences() -> None:
    """A changed MAC, a missing route and a stray route on the device are the only keys."""
    m = loaded()
    m.apply(neigh(NEW_N, "10.5.2.0", 7))  # the neighbour now says another MAC
    m.apply(route(DEL_R, "10.5.2.0/24", "10.5.2.0"))
    m.apply(route(NEW_R, "10.5.9.0/25", "10.5.9.0"))  # nobody wants this one
    keys = m.suspects(desired_peer2(), Ownership(DEV))
    assert keys.neighs == {A("10.5.2.0")}
    assert keys.routes == {N("10.5.2.0/24"), N("10.5.9.0/25")}
    assert keys.macs == set()


def test_suspects_see_missing_and_stray_fdb_entries() -> None:
    """A wanted FDB entry that is gone, and one no peer wants, are both keys."""
    m = loaded()
    m.apply(fdb(DEL_N, 2, "192.0.2.20"))
    m.apply(fdb(NEW_N, 5, "192.0.2.55"))
    assert m.suspects(desired_peer2(), Ownership(DEV)).macs == {
        "aa:bb:cc:00:00:02",
        "aa:bb:cc:00:00:05",
    }


def test_differing_keeps_only_the_keys_the_kernel_holds_otherwise() -> None:
    """Of a chunk's keys, only those whose compact entries differ are left to plan: here the
    neighbour with another MAC, the missing FDB entry and the direct route the kernel does not
    hold; the matching route, and keys of nothing held or wanted, are dropped."""
    m = loaded()
    m.apply(neigh(NEW_N, "10.5.2.0", 7))
    d = desired_peer2()
    d.set(N("10.5.3.0/24"), PeerEntries(Route(N("10.5.3.0/24"), A("192.0.2.30"), None, False)))
    d.set(N("10.5.4.0/24"), PeerEntries(Route(N("10.5.4.0/24"), A("192.0.2.40"), DEV, True)))
    m.apply(route(NEW_R, "10.5.4.0/24", "192.0.2.40"))  # held exactly as wanted
    keys = Keys(
        {A("10.5.2.0"), A("10.5.8.0")},
        {"aa:bb:cc:00:00:02", "aa:bb:cc:00:00:09"},
        {N("10.5.2.0/24"), N("10.5.3.0/24"), N("10.5.4.0/24")},
    )
    m.apply(fdb(DEL_N, 2, "192.0.2.20"))
    got = m.differing(d, keys)
    assert got.neighs == {A("10.5.2.0")}
    assert got.macs == {"aa:bb:cc:00:00:02"}
    assert got.routes == {N("10.5.3.0/24")}
    assert not m.differing(d, Keys(routes={N("10.5.2.0/24"), N("10.5.4.0/24")}))


def test_entries_equal_to_the_desired_ones_share_its_objects() -> None:
    """Folded values equal to what the leases want are stored as the desired objects (memory
    at 10,000 peers); a value that differs is kept as the kernel said it, and compares so."""
    d = desired_peer2()
    m = Mirror(DEV, d)
    m.load(link(), [neigh(NEW_N, "10.5.2.0", 2)], [fdb(NEW_N, 2, "192.0.2.20")], [])
    m.apply(route(NEW_R, "10.5.2.0/24", "10.5.2.0"))
    ip, key = int(A("10.5.2.0")), (int(A("10.5.2.0")), 24)
    assert m._neighs[ip] is d.raw_neighs[ip]
    assert m._fdb[mac(2)] is d.raw_fdb[mac(2)]
    assert m._routes[key] is d.raw_routes[key]
    assert not m.suspects(d, Ownership(DEV))
    m.apply(neigh(NEW_N, "10.5.2.0", 7))  # changed by hand: the kernel's value, not the wanted
    assert m._neighs[ip] == mac(7)
    assert m.suspects(d, Ownership(DEV)).neighs == {A("10.5.2.0")}


def test_desired_lookups_rebuild_records_from_the_compact_form() -> None:
    """The planner's lookups give back the records that went in: an onlink route, a direct
    route (no device) and a gateway-less one; a removed peer leaves nothing."""
    d = desired_peer2()
    onlink = Route(N("10.5.2.0/24"), A("10.5.2.0"), DEV, True)
    direct = Route(N("10.5.3.0/24"), A("192.0.2.30"), None, False)
    bare = Route(N("10.5.4.0/25"), None, DEV, False)
    d.set(N("10.5.3.0/24"), PeerEntries(direct))
    d.set(N("10.5.4.0/25"), PeerEntries(bare))
    assert [d.route(r.dst) for r in (onlink, direct, bare)] == [onlink, direct, bare]
    assert d.neigh(A("10.5.2.0")) == "aa:bb:cc:00:00:02"
    assert d.fdb_dst("aa:bb:cc:00:00:02") == A("192.0.2.20")
    d.set(N("10.5.3.0/24"), None)
    d.set(N("10.5.2.0/24"), None)
    assert d.route(direct.dst) is None and d.route(onlink.dst) is None
    assert d.neigh(A("10.5.2.0")) is None and d.fdb_dst("aa:bb:cc:00:00:02") is None
    assert d.keys().routes == {bare.dst}


def _brute_counts(m: Mirror) -> tuple[int, int, int]:
    routes = [r for r in m.dev_routes() if r.protocol != 2]
    return len(routes), len(m.neighs()), len(m.fdb())


_MESSAGES = st.one_of(
    st.builds(
        neigh,
        st.sampled_from([NEW_N, DEL_N]),
        st.sampled_from(["10.5.2.0", "10.5.3.0", "10.5.4.0"]),
        st.sampled_from([2, 3, None]),
        st.sampled_from([codec.NUD_PERMANENT, 0x02]),
        st.sampled_from([DEV, ETH0]),
    ),
    st.builds(
        fdb,
        st.sampled_from([NEW_N, DEL_N]),
        st.sampled_from([2, 3]),
        st.sampled_from(["192.0.2.20", "192.0.2.30", None]),
        st.booleans(),
    ),
    st.builds(
        route,
        st.sampled_from([NEW_R, DEL_R]),
        st.sampled_from(["10.5.2.0/24", "10.5.3.0/24", "10.5.2.0/32"]),
        st.sampled_from(["10.5.2.0", None]),
        st.sampled_from([DEV, ETH0]),
        st.sampled_from([0, 100]),
        st.sampled_from([2, 3]),
    ),
)


@given(st.lists(_MESSAGES, max_size=40))
def test_entry_counts_follow_every_fold(msgs: list[codec.Parsed]) -> None:
    """The O(1) counts a metrics scrape reads equal a full count after any notifications."""
    m = loaded()
    assert m.entry_counts() == _brute_counts(m)
    for msg in msgs:
        m.apply(msg)
        assert m.entry_counts() == _brute_counts(m)
    m.load(link(), [], [fdb(NEW_N, 5, "192.0.2.1"), fdb(NEW_N, 5, "192.0.2.2")], [])
    assert m.entry_counts() == (0, 0, 2)
