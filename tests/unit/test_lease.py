"""Lease values as flanneld writes and reads them, and the pure tracker of known leases."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflannel.ipnet import SubnetKey
from pyflannel.lease import (
    NO_PUBLIC_IP,
    Change,
    EventKind,
    Events,
    Lease,
    LeaseAttrs,
    LeaseDecodeError,
    LeaseEvent,
    LeaseTracker,
    Snapshot,
    decode_attrs,
    decode_value,
)
from pyflannel.registry import decode_record

FLANNELD_BYTES = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
)
MAC = "c6:d2:32:6f:8f:44"
IP = IPv4Address("192.168.64.3")


# --- codec --------------------------------------------------------------------------------------


def test_encode_exact_flanneld_bytes() -> None:
    """Encoding gives byte for byte what flanneld writes (Documentation/reservations.md)."""
    assert LeaseAttrs(IP, "vxlan", MAC, 1).encode() == FLANNELD_BYTES


def test_encode_roundtrip() -> None:
    """What pyflannel encodes it decodes to the same attributes."""
    attrs = LeaseAttrs(IPv4Address("10.0.1.3"), "vxlan", "02:00:00:aa:bb:cc", 7)
    assert decode_attrs(attrs.encode()) == attrs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(FLANNELD_BYTES, LeaseAttrs(IP, "vxlan", MAC, 1), id="current"),
        pytest.param(FLANNELD_BYTES.encode(), LeaseAttrs(IP, "vxlan", MAC, 1), id="bytes"),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
            LeaseAttrs(IP, "vxlan", MAC, 1),
            id="v0.14-no-PublicIPv6",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendType":"vxlan",'
            '"BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}',
            LeaseAttrs(IP, "vxlan", MAC, None),
            id="v0.10-v0.13-no-VNI",
        ),
        pytest.param(
            '{"publicip":"192.168.64.3","BACKENDTYPE":"vxlan",'
            '"backendData":{"vni":3,"vtepmac":"c6:d2:32:6f:8f:44"}}',
            LeaseAttrs(IP, "vxlan", MAC, 3),
            id="mixed-case-names",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"C6:D2:32:6F:8F:44"}}',
            LeaseAttrs(IP, "vxlan", MAC, 1),
            id="uppercase-mac",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::5","BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
            '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}',
            LeaseAttrs(IP, "vxlan", MAC, 1, IPv6Address("fd00::5"), "aa:bb:cc:dd:ee:ff", 1),
            id="dual-stack",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendType":"vxlan","Extra":{"x":[1]},'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44","Other":true}}',
            LeaseAttrs(IP, "vxlan", MAC, 1),
            id="unknown-fields",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendType":"vxlan",'
            '"BackendData":{"VNI":16777215,"VtepMAC":"c6:d2:32:6f:8f:44"}}',
            LeaseAttrs(IP, "vxlan", MAC, 16777215),
            id="uint32-vni",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendType":"host-gw"}',
            LeaseAttrs(IP, "host-gw", None, None),
            id="other-backend",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3"}', LeaseAttrs(IP, "", None, None), id="no-backend"
        ),
    ],
)
def test_decode(text: str | bytes, expected: LeaseAttrs) -> None:
    """Every form flanneld has written since v0.10 decodes, case-insensitively, MAC lower-cased."""
    assert decode_attrs(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("", id="empty"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param("[1, 2]", id="array"),
        pytest.param('"192.168.64.3"', id="string"),
        pytest.param("null", id="null"),
        pytest.param(
            '{"BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}',
            id="PublicIP-missing",
        ),
        pytest.param('{"PublicIP":null}', id="PublicIP-null"),
        pytest.param('{"PublicIP":"fd00::5"}', id="PublicIP-ipv6"),
        pytest.param('{"PublicIP":3232251907}', id="PublicIP-number"),
        pytest.param('{"PublicIP":"192.168.64"}', id="PublicIP-short"),
        pytest.param('{"PublicIP":"192.168.64.3","BackendType":5}', id="BackendType-number"),
        pytest.param('{"PublicIP":"192.168.64.3","BackendData":[1]}', id="BackendData-array"),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendData":{"VtepMAC":"zz:d2:32:6f:8f:44"}}',
            id="bad-mac",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","BackendData":{"VtepMAC":"c6:d2:32:6f:8f"}}', id="short-mac"
        ),
        pytest.param('{"PublicIP":"192.168.64.3","BackendData":{"VtepMAC":42}}', id="mac-number"),
        pytest.param('{"PublicIP":"192.168.64.3","BackendData":{"VNI":-1}}', id="negative-vni"),
        pytest.param('{"PublicIP":"192.168.64.3","BackendData":{"VNI":"1"}}', id="string-vni"),
        pytest.param('{"PublicIP":"192.168.64.3","BackendData":{"VNI":true}}', id="bool-vni"),
        pytest.param('{"PublicIP":"192.168.64.3","BackendData":{"VNI":1.5}}', id="float-vni"),
    ],
)
def test_decode_garbage(text: str | bytes) -> None:
    """Anything that is not a valid lease raises LeaseDecodeError (a ValueError), nothing else."""
    with pytest.raises(LeaseDecodeError):
        decode_attrs(text)


def test_encode_is_compact_json_in_go_field_order() -> None:
    """The encoded value has no spaces and Go's field order, even without VNI."""
    text = LeaseAttrs(IPv4Address("10.0.0.1"), "vxlan", "02:00:00:00:00:01").encode()
    assert " " not in text
    assert list(json.loads(text)) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData"]


# --- IPv6: dual-stack and IPv6-only values -----------------------------------------------------

#: What a real Go toolchain encodes (tests/unit/fixtures/go_ipv6_text.go): flanneld v0.17 over
#: etcd v2 (VNI a uint16) and v0.18+ over v3 (uint32) write the same dual-stack bytes.
GO = json.loads((Path(__file__).parent / "fixtures" / "go_ipv6_text.json").read_text())["flanneld"]
MAC6 = "7e:1a:8e:5b:29:aa"
IP6 = IPv6Address("fd00::5")
DUAL = LeaseAttrs(IP, "vxlan", MAC, 1, IP6, MAC6, 1)
ONLY6 = LeaseAttrs(NO_PUBLIC_IP, "vxlan", None, None, IP6, MAC6, 1)
DUAL_BYTES = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::5","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"7e:1a:8e:5b:29:aa"}}'
)


def test_go_fixture_is_what_these_tests_assume() -> None:
    """The Go-made bytes: v0.17 and HEAD identical for dual stack; IPv4 as reservations.md."""
    assert GO["dual_v0.17"] == GO["dual_head"] == DUAL_BYTES
    assert GO["v4only_head"] == FLANNELD_BYTES


@pytest.mark.parametrize(
    ("attrs", "text"),
    [
        pytest.param(DUAL, GO["dual_head"], id="dual-stack"),
        pytest.param(ONLY6, GO["v6only_head"], id="ipv6-only"),
        pytest.param(LeaseAttrs(IP, "vxlan", MAC, 1), GO["v4only_head"], id="ipv4-only"),
    ],
)
def test_encode_exact_flanneld_ipv6_bytes(attrs: LeaseAttrs, text: str) -> None:
    """Byte for byte what flanneld writes: PublicIPv6 a string (null without IPv6), then
    BackendV6Data {VNI, VtepMAC} after BackendData; an IPv6-only host writes PublicIP 0.0.0.0
    and no BackendData (omitempty)."""
    assert attrs.encode() == text
    assert decode_attrs(text) == attrs


def test_ipv6_field_order() -> None:
    """Go's field order, both backend objects last."""
    assert list(json.loads(DUAL.encode())) == [
        "PublicIP",
        "PublicIPv6",
        "BackendType",
        "BackendData",
        "BackendV6Data",
    ]
    assert list(json.loads(DUAL.encode())["BackendV6Data"]) == ["VNI", "VtepMAC"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{"publicip":"192.168.64.3","publicipv6":"FD00:0:0:0:0:0:0:5","backendtype":"vxlan",'
            '"backenddata":{"vni":1,"vtepmac":"c6:d2:32:6f:8f:44"},'
            '"backendv6data":{"vni":1,"vtepmac":"7E:1A:8E:5B:29:AA"}}',
            DUAL,
            id="any-case-any-spelling",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::5","BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
            '"BackendV6Data":{"VtepMAC":"7e:1a:8e:5b:29:aa"}}',
            LeaseAttrs(IP, "vxlan", MAC, 1, IP6, MAC6, None),
            id="v6-data-without-VNI",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","PublicIPv6":"10.0.0.9","BackendType":"vxlan"}',
            LeaseAttrs(IP, "vxlan", public_ipv6=IPv6Address("::ffff:10.0.0.9")),
            id="ipv4-text-as-go-reads-it",
        ),
        pytest.param(
            '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendV6Data":null}',
            LeaseAttrs(IP, "vxlan"),
            id="nulls",
        ),
    ],
)
def test_decode_ipv6_forms(text: str, expected: LeaseAttrs) -> None:
    """IPv6 fields decode case-insensitively, in any spelling Go accepts; null is none."""
    assert decode_attrs(text) == expected


def test_ipv4_mapped_public_ipv6_written_as_go_prints_it() -> None:
    """An IPv4-mapped PublicIPv6 is written dotted, as flanneld's IP6 prints it."""
    attrs = LeaseAttrs(IP, "vxlan", public_ipv6=IPv6Address("::ffff:10.0.0.9"))
    assert '"PublicIPv6":"10.0.0.9"' in attrs.encode()
    assert decode_attrs(attrs.encode()) == attrs


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"PublicIP":"0.0.0.0","PublicIPv6":"fe80::1%eth0"}', id="zone"),
        pytest.param('{"PublicIP":"0.0.0.0","PublicIPv6":""}', id="empty"),
        pytest.param('{"PublicIP":"0.0.0.0","PublicIPv6":5}', id="number"),
        pytest.param('{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::5::1"}', id="two-double-colons"),
        pytest.param('{"PublicIP":"0.0.0.0","BackendV6Data":[1]}', id="v6-data-array"),
        pytest.param('{"PublicIP":"0.0.0.0","BackendV6Data":{"VtepMAC":"zz"}}', id="v6-bad-mac"),
        pytest.param('{"PublicIP":"0.0.0.0","BackendV6Data":{"VNI":"1"}}', id="v6-string-vni"),
        pytest.param('{"PublicIP":"0.0.0.0","BackendV6Data":{"VNI":16777216}}', id="v6-big-vni"),
        pytest.param('{"PublicIPv6":"fd00::5"}', id="PublicIP-missing"),
    ],
)
def test_decode_ipv6_garbage(text: str) -> None:
    """A bad IPv6 half makes the value undecodable, as it does for Go's json.Unmarshal (a
    PublicIPv6 flanneld cannot parse fails the whole lease there too)."""
    with pytest.raises(LeaseDecodeError):
        decode_attrs(text)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("10.5.34.0-24&fc00:0:0:22::-64", GO["dual_v0.17"], id="v0.17-over-v2"),
        pytest.param("10.5.34.0-24&fc00:0:0:22::-64", GO["dual_head"], id="v0.28-over-v3"),
        pytest.param("0.0.0.0-0&fc00:0:0:22::-64", GO["v6only_head"], id="ipv6-only"),
    ],
)
def test_flanneld_dual_stack_records_round_trip(key: str, value: str) -> None:
    """A record exactly as flanneld writes it is read as a lease with both halves (or the IPv6
    one), marked exact (pyflannel would write the same bytes under the same key)."""
    ev = decode_record(f"/coreos.com/network/subnets/{key}", value, None, 5)
    assert ev.kind is EventKind.ADDED and ev.lease is not None
    lease = ev.lease
    assert lease.exact
    assert lease.key.name == key
    assert lease.attrs.encode() == value
    assert lease.ipv6_subnet == IPv6Network("fc00:0:0:22::/64")
    assert lease.attrs.public_ipv6 == IP6 and lease.attrs.v6_vtep_mac == MAC6
    if lease.key.ipv4 is None:
        assert lease.subnet == IPv4Network("0.0.0.0/0")  # flanneld's empty IPv4 subnet
        assert lease.attrs.public_ip == NO_PUBLIC_IP and lease.attrs.vtep_mac is None
    else:
        assert lease.subnet == IPv4Network("10.5.34.0/24") and lease.attrs.vtep_mac == MAC


def test_v015_dual_stack_value_under_an_ipv4_key() -> None:
    """flanneld v0.15-v0.16 in etcd mode never store an IPv6 subnet (keys stay IPv4, leases are
    forced IPv4-only), yet with EnableIPv6 they write the dual-stack value under the IPv4 key
    (and then fail configuring flannel-v6, code-derived).  Such a record is an IPv4 lease whose
    value also says PublicIPv6/BackendV6Data; it is read exactly."""
    ev = decode_record("/coreos.com/network/subnets/10.5.34.0-24", GO["dual_v0.17"], None, 5)
    assert ev.lease is not None and ev.lease.exact
    assert ev.lease.key == SubnetKey(IPv4Network("10.5.34.0/24"))
    assert ev.lease.attrs == DUAL


def test_lease_needs_a_subnet_key() -> None:
    """A bare IPv4Network is refused as a lease's key: for a dual-stack lease it would address
    another etcd key."""
    with pytest.raises(TypeError):
        Lease(IPv4Network("10.5.1.0/24"), DUAL)  # type: ignore[arg-type]


def test_tracker_keeps_ipv4_dual_and_ipv6_only_peers_apart() -> None:
    """Leases are known by their whole key: an IPv4-only, a dual-stack and two IPv6-only peers
    (whose IPv4 halves are all "none") are four peers, and removing one removes only it."""
    v4 = SubnetKey(IPv4Network("10.5.1.0/24"))
    dual = SubnetKey(IPv4Network("10.5.2.0/24"), IPv6Network("fc00:0:0:2::/64"))
    only_a = SubnetKey(None, IPv6Network("fc00:0:0:3::/64"))
    only_b = SubnetKey(None, IPv6Network("fc00:0:0:4::/64"))
    leases = [Lease(k, ONLY6 if k.ipv4 is None else DUAL) for k in (v4, dual, only_a, only_b)]
    t = tracker_with(*leases)
    assert set(t.leases) == {v4, dual, only_a, only_b}
    changes = t.apply(Events((removed(only_a),), revision=2))
    assert [(c.kind, c.subnet) for c in changes] == [(EventKind.REMOVED, only_a)]
    assert set(t.leases) == {v4, dual, only_b}


# --- tracker ------------------------------------------------------------------------------------

NET_A = SubnetKey(IPv4Network("10.5.1.0/24"))
NET_B = SubnetKey(IPv4Network("10.5.2.0/24"))
NET_C = SubnetKey(IPv4Network("10.5.3.0/24"))


def lease(net: SubnetKey, host: int = 1, mac: str = "02:00:00:00:00:01", rev: int = 1) -> Lease:
    """A vxlan lease on *net* held by 192.168.1.<host>."""
    return Lease(
        net,
        LeaseAttrs(IPv4Address(f"192.168.1.{host}"), "vxlan", mac, 1),
        expiration=1000.0,
        revision=rev,
    )


def added(le: Lease) -> LeaseEvent:
    """An incremental ADDED event for *le*."""
    return LeaseEvent(EventKind.ADDED, f"/x/subnets/{le.key.name}", subnet=le.key, lease=le)


def removed(net: SubnetKey) -> LeaseEvent:
    """An incremental REMOVED event for *net*."""
    return LeaseEvent(EventKind.REMOVED, f"/x/subnets/{net.name}", subnet=net)


def invalid(net: SubnetKey | None, key: str = "/x/subnets/junk") -> LeaseEvent:
    """An INVALID record (a key holding garbage) for *net*."""
    return LeaseEvent(EventKind.INVALID, key, subnet=net, reason="not JSON")


def kinds(changes: list[Change]) -> list[tuple[EventKind, SubnetKey | None]]:
    """The (kind, subnet) pairs of *changes*, sorted for comparison."""
    return sorted(((c.kind, c.subnet) for c in changes), key=lambda t: (t[0].value, str(t[1])))


def tracker_with(*leases: Lease) -> LeaseTracker:
    """A tracker that has already seen a snapshot of *leases*."""
    t = LeaseTracker()
    t.apply(Snapshot(tuple(leases), revision=1))
    return t


def test_first_snapshot_adds_everything() -> None:
    """The first snapshot emits ADDED for every lease, without an old value."""
    t = LeaseTracker()
    changes = t.apply(Snapshot((lease(NET_A), lease(NET_B, 2)), revision=5))
    assert kinds(changes) == [(EventKind.ADDED, NET_A), (EventKind.ADDED, NET_B)]
    assert all(c.old is None and c.new is not None for c in changes)
    assert set(t.leases) == {NET_A, NET_B}


def test_snapshot_diff_adds_and_removes() -> None:
    """A later snapshot is diffed: new leases ADDED, vanished ones REMOVED with their last attrs."""
    a, b, c = lease(NET_A), lease(NET_B, 2), lease(NET_C, 3)
    t = tracker_with(a, b)
    changes = t.apply(Snapshot((b, c), revision=9))
    assert kinds(changes) == [(EventKind.ADDED, NET_C), (EventKind.REMOVED, NET_A)]
    gone = next(ch for ch in changes if ch.kind is EventKind.REMOVED)
    assert gone.old == a
    assert gone.new is None
    assert set(t.leases) == {NET_B, NET_C}


def test_snapshot_unchanged_emits_nothing() -> None:
    """A snapshot equal to what is known emits nothing, even if revisions or expirations moved."""
    a, b = lease(NET_A), lease(NET_B, 2)
    t = tracker_with(a, b)
    a2 = Lease(a.key, a.attrs, expiration=99999.0, revision=77)
    assert t.apply(Snapshot((a2, b), revision=80)) == []


def test_snapshot_changed_attrs_emits_added_with_old() -> None:
    """A lease whose attributes changed between snapshots is ADDED again, carrying the old lease."""
    a = lease(NET_A, mac="02:00:00:00:00:01")
    t = tracker_with(a)
    a2 = lease(NET_A, mac="02:00:00:00:00:99", rev=2)
    changes = t.apply(Snapshot((a2,), revision=3))
    assert len(changes) == 1
    assert changes[0].kind is EventKind.ADDED
    assert changes[0].old == a
    assert changes[0].new == a2
    assert changes[0].changed
    assert t.leases[NET_A] == a2


def test_incremental_added_always_emitted() -> None:
    """Every incremental ADDED is emitted, a renewal with identical attributes too."""
    a = lease(NET_A)
    t = tracker_with(a)
    renewal = Lease(a.key, a.attrs, expiration=2000.0, revision=2)
    changes = t.apply(Events((added(renewal),), revision=2))
    assert len(changes) == 1
    assert changes[0].kind is EventKind.ADDED
    assert changes[0].old == a
    assert changes[0].new == renewal
    assert not changes[0].changed
    assert t.leases[NET_A] == renewal


def test_incremental_added_new_lease() -> None:
    """An incremental ADDED for an unknown subnet adds it, with no old value."""
    t = LeaseTracker()
    changes = t.apply(Events((added(lease(NET_B, 2)),), revision=3))
    assert [(c.kind, c.subnet, c.old) for c in changes] == [(EventKind.ADDED, NET_B, None)]


def test_incremental_removed_carries_stored_lease() -> None:
    """An incremental REMOVED emits the stored lease so its MAC and IP can be cleaned up."""
    a = lease(NET_A)
    t = tracker_with(a)
    changes = t.apply(Events((removed(NET_A),), revision=2))
    assert [(c.kind, c.subnet, c.old) for c in changes] == [(EventKind.REMOVED, NET_A, a)]
    assert t.leases == {}


def test_removed_unknown_subnet_emits_nothing() -> None:
    """A REMOVED for a subnet nobody knew of emits nothing and changes nothing."""
    a = lease(NET_A)
    t = tracker_with(a)
    assert t.apply(Events((removed(NET_C),), revision=2)) == []
    assert t.leases == {NET_A: a}


def test_invalid_snapshot_record_keeps_known_lease() -> None:
    """A known key that now holds garbage is reported INVALID but its last good lease is kept."""
    a, b = lease(NET_A), lease(NET_B, 2)
    t = tracker_with(a, b)
    changes = t.apply(Snapshot((b,), revision=5, invalid=(invalid(NET_A),)))
    assert kinds(changes) == [(EventKind.INVALID, NET_A)]
    assert t.leases == {NET_A: a, NET_B: b}


def test_invalid_non_subnet_key_in_snapshot() -> None:
    """A non-subnet key in a snapshot is reported INVALID and removes nothing else."""
    a = lease(NET_A)
    t = tracker_with(a)
    changes = t.apply(Snapshot((a,), revision=5, invalid=(invalid(None, "/x/subnets/foo"),)))
    assert [(c.kind, c.key) for c in changes] == [(EventKind.INVALID, "/x/subnets/foo")]
    assert t.leases == {NET_A: a}


def test_invalid_event_keeps_known_lease() -> None:
    """An incremental INVALID record on a known subnet never removes that peer."""
    a = lease(NET_A)
    t = tracker_with(a)
    changes = t.apply(Events((invalid(NET_A), invalid(None)), revision=3))
    assert [c.kind for c in changes] == [EventKind.INVALID, EventKind.INVALID]
    assert t.leases == {NET_A: a}


def test_empty_events_batch_changes_nothing() -> None:
    """An empty incremental batch (a keep-alive) is not a snapshot and removes nothing."""
    a = lease(NET_A)
    t = tracker_with(a)
    assert t.apply(Events((), revision=10)) == []
    assert t.leases == {NET_A: a}


def test_empty_snapshot_removes_everything() -> None:
    """An empty snapshot (every key gone) removes every known lease."""
    t = tracker_with(lease(NET_A), lease(NET_B, 2))
    changes = t.apply(Snapshot((), revision=10))
    assert kinds(changes) == [(EventKind.REMOVED, NET_A), (EventKind.REMOVED, NET_B)]
    assert t.leases == {}


_VARIANTS = {
    "ip": st.one_of(
        st.sampled_from(
            ["192.168.64.3", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3", "1.2.3.256"]
        ),
        st.ip_addresses(v=4).map(str),
    ),
    "v6": st.sampled_from(["null", '"fd00::3"', '"1.2.3.4"', "0", '""']),
    "btype": st.sampled_from(
        ["vxlan", "VXLAN", "host-gw", "", "x" * 16, "x" * 17, "v\u00e9", "a\\"]
    ),
    "vni": st.one_of(
        st.integers(0, 1 << 25).map(str), st.sampled_from(["01", "-1", "1.0", "true", '"1"'])
    ),
    "mac": st.sampled_from(
        [
            "c6:d2:32:6f:8f:44",
            "C6:D2:32:6F:8F:44",
            "c6-d2-32-6f-8f-44",
            "c6:d2:32:6f:8f",
            "zz:d2:32:6f:8f:44",
        ]
    ),
    "sep": st.sampled_from([",", ", ", ",\n"]),
    "ipkey": st.sampled_from(["PublicIP", "publicip", "PublicIp"]),
    "tail": st.sampled_from(["", " ", "\n", ',"Extra":1']),
}


_CANONICAL = {
    "ip": "192.168.64.3",
    "v6": "null",
    "btype": "vxlan",
    "vni": "1",
    "mac": "c6:d2:32:6f:8f:44",
    "sep": ",",
    "ipkey": "PublicIP",
    "tail": "",
}


@given(st.data(), st.booleans())
def test_fast_value_decode_agrees_with_the_general_path(data: st.DataObject, raw: bool) -> None:
    """decode_value's one-regex path gives what JSON decoding and re-encoding give: the same
    attributes, the same verdict on exactness, the same refusal.  Values are flanneld's form
    with up to three parts changed, so both paths are taken often."""
    parts = dict(_CANONICAL)
    for name in data.draw(st.lists(st.sampled_from(sorted(_VARIANTS)), max_size=3)):
        parts[name] = data.draw(_VARIANTS[name])
    text = (
        f'{{"{parts["ipkey"]}":"{parts["ip"]}"{parts["sep"]}"PublicIPv6":{parts["v6"]},'
        f'"BackendType":"{parts["btype"]}","BackendData":{{"VNI":{parts["vni"]},'
        f'"VtepMAC":"{parts["mac"]}"}}{parts["tail"]}}}'
    )
    value: str | bytes = text.encode() if raw else text
    try:
        attrs = decode_attrs(value)
    except LeaseDecodeError:
        with pytest.raises(LeaseDecodeError):
            decode_value(value)
        return
    assert decode_value(value) == (attrs, text == attrs.encode())


def test_fast_value_decode_takes_flanneld_bytes() -> None:
    """flanneld's own bytes are exact, and decode as the general path decodes them."""
    attrs, exact = decode_value(FLANNELD_BYTES.encode())
    assert exact and attrs == decode_attrs(FLANNELD_BYTES)
    assert attrs.vtep_mac == "c6:d2:32:6f:8f:44" and attrs.vni == 1
