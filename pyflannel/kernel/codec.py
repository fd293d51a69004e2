"""rtnetlink messages as bytes, both ways: pure ``struct`` code, no sockets.

Encoders build one request (``nlmsghdr`` + fixed header + attributes) with NLM_F_REQUEST|ACK and
the given ``seq``; the layouts match what iproute2 sends for the same command (checked against
captured bytes in tests/unit/test_codec.py).  Decoders split a receive buffer into messages and
parse the kinds pyflannel reads (neighbour/FDB, route, link, address, error/ack).  Both address
families: a request's family is its address's (an FDB entry's remote is 4 or 16 bytes; an IPv6
neighbour or route is AF_INET6 with 16-byte addresses, as iproute2 sends them).  Addresses stay
raw ``bytes`` in the parsed records (converting 30,000 of them to ``ipaddress`` objects would cost
more than the parsing itself); the properties and helpers convert on demand.

Any malformed or truncated buffer raises :class:`CodecError`, never IndexError or struct.error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import ClassVar

from pyflannel.kernel.records import IPAddress, IPNetwork, Route

# --- protocol constants (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h) -------------

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
#: In an NLMSG_ERROR: the original request is cut to its header / extended-ack TLVs follow.
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

AF_INET = 2
AF_INET6 = 10
AF_BRIDGE = 7

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_SRC_VNI = 1, 2, 6, 7, 8, 11

RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what flanneld and `ip route` tag their routes with
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255  # in a delete: "any scope"
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTNH_F_ONLINK = 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15

IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE = 1, 3, 4, 16
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL = 1, 2, 3

#: The top two bits of an attribute type are NLA_F_NESTED / NLA_F_NET_BYTEORDER.
NLA_TYPE_MASK = 0x3FFF

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")
_HDR_LEN = _HDR.size


class CodecError(ValueError):
    """A buffer is not well-formed netlink."""


# --- encoding ------------------------------------------------------------------------------


def _attr(kind: int, value: bytes) -> bytes:
    n = 4 + len(value)
    return _RTA.pack(n, kind) + value + b"\0" * (-n & 3)


def _u32(kind: int, value: int) -> bytes:
    return _RTA.pack(8, kind) + _U32.pack(value)


def family_of(addr: IPAddress | IPNetwork) -> int:
    """AF_INET or AF_INET6, after *addr*'s version."""
    return AF_INET6 if addr.version == 6 else AF_INET


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR_LEN + len(body), kind, flags, seq & 0xFFFFFFFF, 0) + body


def mac_bytes(mac: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` as 6 bytes."""
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise CodecError(f"not a MAC address: {mac!r}")
    return b


_WRITE = NLM_F_REQUEST | NLM_F_ACK
_REPLACE = _WRITE | NLM_F_CREATE | NLM_F_REPLACE


def encode_neigh_replace(ifindex: int, ip: IPAddress, mac: str, seq: int = 0) -> bytes:
    """``ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`` (``ip -6`` for IPv6)."""
    body = (
        _NDMSG.pack(family_of(ip), ifindex, NUD_PERMANENT, 0, 0)
        + _attr(NDA_DST, ip.packed)
        + _attr(NDA_LLADDR, mac_bytes(mac))
    )
    return _msg(RTM_NEWNEIGH, _REPLACE, seq, body)


def encode_neigh_delete(ifindex: int, ip: IPAddress, seq: int = 0) -> bytes:
    """``ip neigh del IP dev IFINDEX`` (ENOENT when absent)."""
    body = _NDMSG.pack(family_of(ip), ifindex, NUD_PERMANENT, 0, 0) + _attr(NDA_DST, ip.packed)
    return _msg(RTM_DELNEIGH, _WRITE, seq, body)


def _fdb_body(ifindex: int, mac: str, dst: IPAddress) -> bytes:
    return (
        _NDMSG.pack(AF_BRIDGE, ifindex, NUD_PERMANENT | NUD_NOARP, NTF_SELF, 0)
        + _attr(NDA_LLADDR, mac_bytes(mac))
        + _attr(NDA_DST, dst.packed)
    )


def encode_fdb_replace(ifindex: int, mac: str, dst: IPAddress, seq: int = 0) -> bytes:
    """``bridge fdb replace MAC dev IFINDEX dst DST self permanent``."""
    return _msg(RTM_NEWNEIGH, _REPLACE, seq, _fdb_body(ifindex, mac, dst))


def encode_fdb_delete(ifindex: int, mac: str, dst: IPAddress, seq: int = 0) -> bytes:
    """``bridge fdb del MAC dev IFINDEX dst DST self``: only that remote (ENOENT when absent)."""
    return _msg(RTM_DELNEIGH, _WRITE, seq, _fdb_body(ifindex, mac, dst))


def _route_attrs(r: Route, table: int) -> bytes:
    attrs = _attr(RTA_DST, r.dst.network_address.packed)
    if r.gateway is not None:  # a route seen on our device may have none (deleting it)
        attrs += _attr(RTA_GATEWAY, r.gateway.packed)
    if r.priority:  # 0: the family's default (IPv4 0, IPv6 1024); a delete then takes any
        attrs += _u32(RTA_PRIORITY, r.priority)
    if r.oif is not None:
        attrs += _u32(RTA_OIF, r.oif)
    return attrs + _u32(RTA_TABLE, table)


def encode_route_replace(r: Route, seq: int = 0, table: int = RT_TABLE_MAIN) -> bytes:
    """``ip route replace DST via GW [dev OIF] [onlink] [metric M] proto boot`` in *table*."""
    head = _RTMSG.pack(
        family_of(r.dst),
        r.dst.prefixlen,
        0,
        0,
        table if table < 256 else 0,  # 0 = RT_TABLE_UNSPEC: RTA_TABLE carries it
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        RTNH_F_ONLINK if r.onlink else 0,
    )
    return _msg(RTM_NEWROUTE, _REPLACE, seq, head + _route_attrs(r, table))


def encode_route_delete(r: Route, seq: int = 0, table: int = RT_TABLE_MAIN) -> bytes:
    """``ip route del DST via GW [dev OIF] table T``: the kernel deletes only a route matching
    dst/len, table, gateway and (when given) oif, so a same-dst route on another device stays
    (ESRCH when none matches).  Protocol 0, scope NOWHERE and type UNSPEC mean "any"; so does
    a metric of 0, else only the route with that metric goes.  IPv6 has no route scope:
    iproute2 sends 0 there, and so do we."""
    scope = RT_SCOPE_UNIVERSE if r.dst.version == 6 else RT_SCOPE_NOWHERE
    head = _RTMSG.pack(
        family_of(r.dst), r.dst.prefixlen, 0, 0, table if table < 256 else 0, 0, scope, 0, 0
    )
    return _msg(RTM_DELROUTE, _WRITE, seq, head + _route_attrs(r, table))


_DUMP = NLM_F_REQUEST | NLM_F_DUMP


def encode_neigh_dump(ifindex: int = 0, seq: int = 0, family: int = AF_INET) -> bytes:
    """Dump neighbours of *family*; with *ifindex*, the kernel keeps only that device's
    (NDA_IFINDEX filter, honoured with or without strict checking)."""
    body = _NDMSG.pack(family, 0, 0, 0, 0)
    if ifindex:
        body += _u32(NDA_IFINDEX, ifindex)
    return _msg(RTM_GETNEIGH, _DUMP, seq, body)


def encode_fdb_dump(ifindex: int = 0, seq: int = 0) -> bytes:
    """Dump FDB entries (AF_BRIDGE).  ``ndm_ifindex`` filters by device only on a socket with
    NETLINK_GET_STRICT_CHK (older kernels ignore it), so parse-side filtering stays needed."""
    return _msg(RTM_GETNEIGH, _DUMP, seq, _NDMSG.pack(AF_BRIDGE, ifindex, 0, 0, 0))


def encode_route_dump(table: int = RT_TABLE_MAIN, seq: int = 0, family: int = AF_INET) -> bytes:
    """Dump routes; ``rtm_table`` filters on a strict-checking socket (else every table)."""
    return _msg(RTM_GETROUTE, _DUMP, seq, _RTMSG.pack(family, 0, 0, 0, table, 0, 0, 0, 0))


def encode_link_dump(seq: int = 0) -> bytes:
    """Dump every link."""
    return _msg(RTM_GETLINK, _DUMP, seq, _IFINFO.pack(0, 0, 0, 0, 0))


def encode_link_get(index: int, seq: int = 0) -> bytes:
    """Get one link by index (ENODEV when there is none).  No NLM_F_ACK: the reply itself (or
    an error) is the answer."""
    return _msg(RTM_GETLINK, NLM_F_REQUEST, seq, _IFINFO.pack(0, 0, index, 0, 0))


def encode_route_get(dst: IPAddress, seq: int = 0) -> bytes:
    """``ip route get DST``: the route the kernel would use (its reply, or an error, answers;
    no NLM_F_ACK)."""
    head = _RTMSG.pack(family_of(dst), dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    return _msg(RTM_GETROUTE, NLM_F_REQUEST, seq, head + _attr(RTA_DST, dst.packed))


def encode_addr_dump(seq: int = 0, index: int = 0, family: int = AF_INET) -> bytes:
    """Dump the addresses of *family* (*index* filters on a strict-checking socket)."""
    return _msg(RTM_GETADDR, _DUMP, seq, _IFADDR.pack(family, 0, 0, 0, index))


def with_seq(msg: bytes | bytearray, seq: int) -> bytes:
    """*msg* with its ``nlmsg_seq`` replaced."""
    return bytes(msg[:8]) + _U32.pack(seq & 0xFFFFFFFF) + bytes(msg[12:])


# --- decoding ------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One netlink message: header fields and its payload (the bytes after ``nlmsghdr``)."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


@dataclass(slots=True)
class Ack:
    """An NLMSG_ERROR: ``errno`` 0 is a success ACK; ``seq`` is the request's."""

    type: ClassVar[int] = NLMSG_ERROR
    seq: int
    errno: int
    request_type: int
    message: str = ""  # the kernel's extended-ack text, when it sent one


@dataclass(slots=True)
class NeighMsg:
    """RTM_NEWNEIGH/RTM_DELNEIGH: a neighbour (AF_INET/AF_INET6) or an FDB entry (AF_BRIDGE).

    ``odd`` is set when the entry carries a port, VNI, source VNI or remote ifindex of its own:
    not something pyflannel writes.
    """

    type: int
    family: int
    ifindex: int
    state: int
    flags: int
    dst: bytes | None
    lladdr: bytes | None
    odd: bool = False

    @property
    def mac(self) -> str | None:
        """The link-layer address as ``aa:bb:..``."""
        return self.lladdr.hex(":") if self.lladdr is not None else None


@dataclass(slots=True)
class RouteMsg:
    """RTM_NEWROUTE/RTM_DELROUTE; ``table`` is RTA_TABLE when present (tables above 255)."""

    type: int
    family: int
    dst: bytes | None
    dst_len: int
    tos: int
    table: int
    protocol: int
    scope: int
    kind: int  # rtm_type: RTN_UNICAST, RTN_BLACKHOLE...
    flags: int
    gateway: bytes | None
    oif: int | None
    priority: int

    @property
    def network(self) -> IPNetwork | None:
        """The destination as a network (0.0.0.0/0 or ::/0 for a default route)."""
        value = int.from_bytes(self.dst or b"", "big")
        if self.family == AF_INET:
            return IPv4Network((value, self.dst_len))
        if self.family == AF_INET6:
            return IPv6Network((value, self.dst_len))
        return None


@dataclass(slots=True)
class LinkMsg:
    """RTM_NEWLINK/RTM_DELLINK."""

    type: int
    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    operstate: int

    @property
    def up(self) -> bool:
        """IFF_UP (administratively up)."""
        return bool(self.flags & IFF_UP)


@dataclass(slots=True)
class AddrMsg:
    """RTM_NEWADDR/RTM_DELADDR."""

    type: int
    family: int
    prefixlen: int
    index: int
    address: bytes | None
    local: bytes | None
    label: str


Parsed = NeighMsg | RouteMsg | LinkMsg | AddrMsg | Ack | Message


def split(buf: bytes) -> list[Message]:
    """The messages in one receive buffer, in order."""
    out: list[Message] = []
    n = len(buf)
    off = 0
    try:
        while off < n:
            if n - off < _HDR_LEN:
                raise CodecError(f"{n - off} trailing bytes at offset {off}: not a header")
            length, kind, flags, seq, pid = _HDR.unpack_from(buf, off)
            if length < _HDR_LEN or off + length > n:
                raise CodecError(f"message at offset {off} claims {length} bytes of {n - off}")
            out.append(Message(kind, flags, seq, pid, buf[off + _HDR_LEN : off + length]))
            off += (length + 3) & ~3
    except struct.error as exc:  # pragma: no cover - guarded by the length checks above
        raise CodecError(str(exc)) from None
    return out


def _attrs(p: bytes, off: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    n = len(p)
    while off + 4 <= n:
        length, kind = _RTA.unpack_from(p, off)
        if length < 4 or off + length > n:
            raise CodecError(f"attribute at offset {off} claims {length} bytes of {n - off}")
        out[kind & NLA_TYPE_MASK] = p[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def _need(p: bytes, size: int, what: str) -> None:
    if len(p) < size:
        raise CodecError(f"{what}: {len(p)} bytes, need {size}")


def _u32_of(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if len(raw) != 4:
        raise CodecError(f"u32 attribute of {len(raw)} bytes")
    value: int = _U32.unpack(raw)[0]
    return value


def _text(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


_ODD_NDA = frozenset((NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_SRC_VNI))
_U32_ATTR = 8  # header + 4 bytes


# parse_neigh and parse_route run for every entry of a 10,000-peer dump, so they walk their
# attributes inline, keeping only the few they need (no dict, no slices of the others).


def parse_neigh(kind: int, p: bytes) -> NeighMsg:
    """The payload of RTM_NEWNEIGH/RTM_DELNEIGH."""
    _need(p, _NDMSG.size, "ndmsg")
    family, ifindex, state, flags, _ = _NDMSG.unpack_from(p)
    dst = lladdr = None
    odd = False
    n = len(p)
    off = _NDMSG.size
    unpack = _RTA.unpack_from
    while off + 4 <= n:
        length, t = unpack(p, off)
        end = off + length
        if length < 4 or end > n:
            raise CodecError(f"attribute at offset {off} claims {length} bytes of {n - off}")
        t &= NLA_TYPE_MASK
        if t == NDA_DST:
            dst = p[off + 4 : end]
        elif t == NDA_LLADDR:
            lladdr = p[off + 4 : end]
        elif t in _ODD_NDA:
            odd = True
        off = (end + 3) & ~3
    return NeighMsg(kind, family, ifindex, state, flags, dst, lladdr, odd)


def parse_route(kind: int, p: bytes) -> RouteMsg:
    """The payload of RTM_NEWROUTE/RTM_DELROUTE."""
    _need(p, _RTMSG.size, "rtmsg")
    family, dst_len, _, tos, table, proto, scope, rtype, flags = _RTMSG.unpack_from(p)
    dst = gateway = oif = None
    priority = 0
    n = len(p)
    off = _RTMSG.size
    unpack = _RTA.unpack_from
    while off + 4 <= n:
        length, t = unpack(p, off)
        end = off + length
        if length < 4 or end > n:
            raise CodecError(f"attribute at offset {off} claims {length} bytes of {n - off}")
        t &= NLA_TYPE_MASK
        if t == RTA_DST:
            dst = p[off + 4 : end]
        elif t == RTA_GATEWAY:
            gateway = p[off + 4 : end]
        elif t in (RTA_OIF, RTA_TABLE, RTA_PRIORITY):
            if length != _U32_ATTR:
                raise CodecError(f"u32 attribute {t} of {length - 4} bytes")
            value = _U32.unpack_from(p, off + 4)[0]
            if t == RTA_OIF:
                oif = value
            elif t == RTA_TABLE:
                table = value
            else:
                priority = value
        off = (end + 3) & ~3
    return RouteMsg(
        kind, family, dst, dst_len, tos, table, proto, scope, rtype, flags, gateway, oif, priority
    )


def parse_link(kind: int, p: bytes) -> LinkMsg:
    """The payload of RTM_NEWLINK/RTM_DELLINK."""
    _need(p, _IFINFO.size, "ifinfomsg")
    _, _, index, flags, _ = _IFINFO.unpack_from(p)
    a = _attrs(p, _IFINFO.size)
    mac = a.get(IFLA_ADDRESS)
    oper = a.get(IFLA_OPERSTATE)
    return LinkMsg(
        kind,
        index,
        _text(a.get(IFLA_IFNAME)),
        flags,
        _u32_of(a.get(IFLA_MTU)) or 0,
        mac.hex(":") if mac else "",
        oper[0] if oper else 0,
    )


def parse_addr(kind: int, p: bytes) -> AddrMsg:
    """The payload of RTM_NEWADDR/RTM_DELADDR."""
    _need(p, _IFADDR.size, "ifaddrmsg")
    family, prefixlen, _, _, index = _IFADDR.unpack_from(p)
    a = _attrs(p, _IFADDR.size)
    return AddrMsg(
        kind,
        family,
        prefixlen,
        index,
        a.get(IFA_ADDRESS),
        a.get(IFA_LOCAL),
        _text(a.get(IFA_LABEL)),
    )


def parse_error(m: Message) -> Ack:
    """An NLMSG_ERROR: errno and the original request's seq and type (+ extended ack text)."""
    p = m.payload
    _need(p, 4 + _HDR_LEN, "nlmsgerr")
    err = _ERR.unpack_from(p)[0]
    orig_len, orig_type, _, orig_seq, _ = _HDR.unpack_from(p, 4)
    text = ""
    if m.flags & NLM_F_ACK_TLVS:
        skip = _HDR_LEN if m.flags & NLM_F_CAPPED else orig_len
        text = _text(_attrs(p, 4 + ((skip + 3) & ~3)).get(NLMSGERR_ATTR_MSG))
    return Ack(orig_seq, -err, orig_type, text)


_PARSERS: dict[int, Callable[[int, bytes], Parsed]] = {
    RTM_NEWNEIGH: parse_neigh,
    RTM_DELNEIGH: parse_neigh,
    RTM_NEWROUTE: parse_route,
    RTM_DELROUTE: parse_route,
    RTM_NEWLINK: parse_link,
    RTM_DELLINK: parse_link,
    RTM_NEWADDR: parse_addr,
    RTM_DELADDR: parse_addr,
}


def parse(m: Message) -> Parsed:
    """The record for *m* (the Message itself for NLMSG_DONE and types not listed above)."""
    try:
        if m.type == NLMSG_ERROR:
            return parse_error(m)
        parser = _PARSERS.get(m.type)
        return parser(m.type, m.payload) if parser else m
    except (struct.error, UnicodeError) as exc:  # pragma: no cover - guarded by length checks
        raise CodecError(str(exc)) from None


def decode(buf: bytes) -> list[Parsed]:
    """Every message of *buf*, parsed."""
    return [parse(m) for m in split(buf)]


def done_errno(m: Message) -> int:
    """The errno an NLMSG_DONE carries (a dump that failed part-way), 0 if none."""
    if len(m.payload) < 4:
        return 0
    err: int = _ERR.unpack_from(m.payload)[0]
    return -err


def ip4(raw: bytes | None) -> IPv4Address | None:
    """Four raw bytes as an IPv4Address (None for None)."""
    if raw is None:
        return None
    if len(raw) != 4:
        raise CodecError(f"not an IPv4 address: {raw.hex()}")
    return IPv4Address(raw)


def ip6(raw: bytes | None) -> IPv6Address | None:
    """Sixteen raw bytes as an IPv6Address (None for None)."""
    if raw is None:
        return None
    if len(raw) != 16:
        raise CodecError(f"not an IPv6 address: {raw.hex()}")
    return IPv6Address(raw)
