"""The netlink codec against bytes captured from the kernel and from iproute2.

``fixtures/netlink.json`` was written by ``fixtures/capture_netlink.py`` (as root, in a
throwaway namespace): the requests ``ip``/``bridge`` send (seq and pid zeroed), dump replies,
error ACKs and notifications, as hex.  No root needed here.
"""

from __future__ import annotations

import contextlib
import json
import random
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pyflannel.kernel import codec
from pyflannel.kernel.records import Route

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "netlink.json").read_text())
DEV = FIXTURES["flannel_index"]
MAC = "aa:bb:cc:00:00:07"
PEER = IPv4Address("192.0.2.20")
ONLINK = Route(IPv4Network("10.5.7.0/24"), IPv4Address("10.5.7.0"), DEV, True)


def raw(name: str) -> bytes:
    """The fixture *name* (one hex string) as bytes."""
    return bytes.fromhex(FIXTURES[name])


def buffers(name: str) -> list[bytes]:
    """The receive buffers of fixture *name*."""
    return [bytes.fromhex(b) for b in FIXTURES[name]]


def parsed(name: str) -> list[codec.Parsed]:
    """Every message of fixture *name*, parsed, NLMSG_DONE left out."""
    return [
        m
        for b in buffers(name)
        for m in codec.decode(b)
        if not (isinstance(m, codec.Message) and m.type == codec.NLMSG_DONE)
    ]


def table_attr() -> bytes:
    """RTA_TABLE 254: what we add to iproute2's route requests (it puts the table in rtmsg
    only)."""
    return bytes.fromhex("08000f00fe000000")


def grow(msg: bytes, extra: bytes) -> bytes:
    """*msg* with *extra* appended and its nlmsg_len updated."""
    return (len(msg) + len(extra)).to_bytes(4, "little") + msg[4:] + extra


# --- encoders, byte for byte -------------------------------------------------------------


def test_neigh_requests_match_iproute2() -> None:
    """``ip neigh replace … nud permanent`` and ``ip neigh del``."""
    ip = IPv4Address("10.5.7.0")
    assert codec.encode_neigh_replace(DEV, ip, MAC) == raw("req_neigh_replace")
    assert codec.encode_neigh_delete(DEV, ip) == raw("req_neigh_delete")


def test_fdb_requests_match_iproute2() -> None:
    """``bridge fdb replace … self permanent`` and ``bridge fdb del … self``."""
    assert codec.encode_fdb_replace(DEV, MAC, PEER) == raw("req_fdb_replace")
    assert codec.encode_fdb_delete(DEV, MAC, PEER) == raw("req_fdb_delete")


def test_route_requests_match_iproute2_plus_rta_table() -> None:
    """``ip route replace … onlink`` (proto boot) and ``ip route del … table main``; we also
    send RTA_TABLE, which iproute2 leaves out for tables below 256."""
    assert codec.encode_route_replace(ONLINK) == grow(raw("req_route_replace"), table_attr())
    assert codec.encode_route_delete(ONLINK) == grow(raw("req_route_delete"), table_attr())


def test_route_without_oif_or_onlink() -> None:
    """A direct route names no device and sets no flag."""
    direct = Route(IPv4Network("10.5.7.0/24"), PEER, None, False)
    (m,) = codec.split(codec.encode_route_replace(direct, seq=9))
    r = codec.parse_route(m.type, m.payload)
    assert (m.seq, r.oif, r.flags, r.gateway, r.table) == (9, None, 0, PEER.packed, 254)


def test_seq_and_flags() -> None:
    """Writes ask for an ACK and carry the seq; with_seq rewrites only the seq."""
    msg = codec.encode_neigh_replace(DEV, IPv4Address("10.5.7.0"), MAC, seq=77)
    (m,) = codec.split(msg)
    assert m.seq == 77
    want = codec.NLM_F_REQUEST | codec.NLM_F_ACK | codec.NLM_F_CREATE | codec.NLM_F_REPLACE
    assert m.flags == want
    assert codec.with_seq(msg, 5) == codec.encode_neigh_replace(
        DEV, IPv4Address("10.5.7.0"), MAC, seq=5
    )


def test_bad_mac_is_a_codec_error() -> None:
    """A MAC that is not 6 bytes is refused before anything is sent."""
    with pytest.raises(codec.CodecError):
        codec.encode_fdb_replace(DEV, "aa:bb", PEER)


# --- decoders, on the kernel's bytes -------------------------------------------------------


def test_neighbour_dump() -> None:
    """Two permanent neighbours on flannel.1, then NLMSG_DONE, all flagged NLM_F_MULTI."""
    msgs = [m for b in buffers("dump_neigh") for m in codec.split(b)]
    assert all(m.flags & codec.NLM_F_MULTI for m in msgs)
    assert msgs[-1].type == codec.NLMSG_DONE
    neighs = [n for n in parsed("dump_neigh") if isinstance(n, codec.NeighMsg)]
    got = {(codec.ip4(n.dst), n.mac, n.state, n.ifindex) for n in neighs}
    assert got == {
        (IPv4Address("10.5.8.0"), "aa:bb:cc:00:00:08", codec.NUD_PERMANENT, DEV),
        (IPv4Address("10.5.10.0"), "aa:bb:cc:00:00:0a", codec.NUD_PERMANENT, DEV),
    }


def test_fdb_dump_filtered_by_the_kernel() -> None:
    """Only flannel.1's entries come back (the request's ndm_ifindex filter), self permanent."""
    fdb = parsed("dump_fdb")
    assert all(isinstance(f, codec.NeighMsg) for f in fdb)
    got = {(f.mac, codec.ip4(f.dst)) for f in fdb if isinstance(f, codec.NeighMsg)}
    assert got == {
        ("aa:bb:cc:00:00:08", IPv4Address("192.0.2.28")),
        ("aa:bb:cc:00:00:0a", IPv4Address("192.0.2.30")),
    }
    for f in fdb:
        assert isinstance(f, codec.NeighMsg)
        assert (f.family, f.ifindex, f.flags & codec.NTF_SELF, f.odd) == (7, DEV, 2, False)
        assert f.state == codec.NUD_PERMANENT | codec.NUD_NOARP


def test_route_dump_spans_several_buffers() -> None:
    """303 main-table routes in one buffer, NLMSG_DONE in the next."""
    assert len(FIXTURES["dump_routes"]) == 2
    routes = [r for r in parsed("dump_routes") if isinstance(r, codec.RouteMsg)]
    assert len(routes) == len(parsed("dump_routes")) == 303
    by_net = {r.network: r for r in routes}
    ours = by_net[IPv4Network("10.5.8.0/24")]
    assert (ours.oif, codec.ip4(ours.gateway), ours.protocol, ours.table) == (
        DEV,
        IPv4Address("10.5.8.0"),
        codec.RTPROT_BOOT,
        254,
    )
    assert ours.flags & codec.RTNH_F_ONLINK
    connected = by_net[IPv4Network("192.0.2.0/24")]
    assert (connected.gateway, connected.protocol, connected.scope) == (None, 2, 253)
    host = by_net[IPv4Network("10.7.1.43/32")]
    assert codec.ip4(host.gateway) == IPv4Address("192.0.2.1")
    assert host.oif != DEV


def test_link_and_address() -> None:
    """RTM_GETLINK by index and the IPv4 address dump."""
    (link,) = parsed("get_link")
    assert isinstance(link, codec.LinkMsg)
    assert (link.index, link.name, link.mac, link.mtu, link.up) == (
        DEV,
        "flannel.1",
        "aa:bb:cc:00:00:01",
        1450,
        True,
    )
    (addr,) = parsed("dump_addr")
    assert isinstance(addr, codec.AddrMsg)
    assert (codec.ip4(addr.local), addr.prefixlen, addr.label) == (
        IPv4Address("192.0.2.10"),
        24,
        "eth0",
    )


@pytest.mark.parametrize(
    ("name", "seq", "errno", "request_type"),
    [
        ("ack_ok", 7, 0, codec.RTM_NEWNEIGH),
        ("ack_enodev", 8, 19, codec.RTM_NEWROUTE),
        ("ack_esrch", 9, 3, codec.RTM_DELROUTE),
        ("ack_enoent", 10, 2, codec.RTM_DELNEIGH),
        ("get_link_enodev", 11, 19, codec.RTM_GETLINK),
    ],
)
def test_acks(name: str, seq: int, errno: int, request_type: int) -> None:
    """NLMSG_ERROR: errno and the request's seq and type; the extended-ack text when sent."""
    (ack,) = parsed(name)
    assert isinstance(ack, codec.Ack)
    assert (ack.seq, ack.errno, ack.request_type) == (seq, errno, request_type)
    if name == "ack_enodev":
        assert "onlink" in ack.message


def test_notifications() -> None:
    """What arrives for writes by hand and a link going down (kernel-notifications.md)."""
    kinds = [
        (type(m).__name__, m.type, getattr(m, "family", None)) for m in parsed("notifications")
    ]
    assert ("NeighMsg", codec.RTM_NEWNEIGH, codec.AF_INET) in kinds
    assert ("NeighMsg", codec.RTM_NEWNEIGH, codec.AF_BRIDGE) in kinds
    assert ("NeighMsg", codec.RTM_DELNEIGH, codec.AF_BRIDGE) in kinds
    assert ("RouteMsg", codec.RTM_DELROUTE, codec.AF_INET) in kinds
    assert ("LinkMsg", codec.RTM_NEWLINK, None) in kinds
    link = next(m for m in parsed("notifications") if isinstance(m, codec.LinkMsg))
    assert not link.up


# --- malformed input -----------------------------------------------------------------------


def every_buffer() -> list[bytes]:
    """Every kernel buffer in the fixtures."""
    out = []
    for value in FIXTURES.values():
        if isinstance(value, list):
            out += [bytes.fromhex(b) for b in value]
    return out


def test_truncated_buffers_raise_only_codec_error() -> None:
    """Every prefix of every captured buffer parses or raises CodecError."""
    for buf in (b for b in every_buffer() if len(b) < 2000):
        for cut in range(len(buf)):
            with contextlib.suppress(codec.CodecError):
                codec.decode(buf[:cut])


def test_corrupted_buffers_raise_only_codec_error() -> None:
    """Random byte flips: parsed or CodecError, never IndexError/struct.error/ValueError."""
    rng = random.Random(1)
    bufs = [b for b in every_buffer() if len(b) < 2000]
    for _ in range(3000):
        buf = bytearray(rng.choice(bufs))
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        with contextlib.suppress(codec.CodecError):
            codec.decode(bytes(buf))


@pytest.mark.parametrize(
    "buf",
    [
        b"\x01\x02\x03",  # shorter than a header
        (8).to_bytes(4, "little") + bytes(12),  # length below the header size
        (64).to_bytes(4, "little") + bytes(12),  # longer than the buffer
        grow(codec.encode_neigh_dump()[:16], b"")[:16],  # RTM_GETNEIGH header: no ndmsg
    ],
)
def test_specific_malformations(buf: bytes) -> None:
    """Each of these is reported as a CodecError."""
    with pytest.raises(codec.CodecError):
        for m in codec.split(buf):
            codec.parse(codec.Message(codec.RTM_NEWNEIGH, m.flags, m.seq, m.pid, m.payload))
