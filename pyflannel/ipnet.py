"""Pure address arithmetic: subnet keys as flanneld spells them, subnet ranges, addresses.

flanneld names a lease ``<a.b.c.d>-<len>`` (IPv4), ``<a.b.c.d>-<len>&<ipv6>-<len>`` (dual stack,
since v0.17) or ``0.0.0.0-0&<ipv6>-<len>`` (IPv6 only: its empty IPv4 subnet printed as is).
The IPv6 part is spelled as flannel's Go code prints an address (:func:`ipv6_text`), which is
RFC 5952's compressed lowercase form except for two ranges Go prints as dotted quads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

_Net = TypeVar("_Net", IPv4Network, IPv6Network)

# The key: "<dotted quad>-<len>", optionally "&<ipv6>-<len>".  ASCII digits only, matched whole:
# "$" would also take a trailing newline, so a key such as "10.5.1.0-24\n" would alias (and its
# deletion remove) the real lease on 10.5.1.0/24.  The IPv6 part is lowercase hex and colons, as
# in flanneld's own pattern (no dots: a dotted IPv6 key is not a subnet to flanneld either).
# Prefix lengths without leading zeros ("-08" would be a second spelling of "-8"); Python's
# IPv4Network refuses leading zeros in octets itself.
_KEY_RE = re.compile(
    r"(\d{1,3}(?:\.\d{1,3}){3})-(0|[1-9]\d?)(?:&([0-9a-f:]{2,39})-(0|[1-9]\d{0,2}))?", re.ASCII
)


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
#: A dotted quad as ipaddress takes it (decimal octets, no leading zeros), one group per octet.
QUAD_PATTERN = r"\.".join([_OCTET] * 4)
_QUAD_RE = re.compile(QUAD_PATTERN, re.ASCII)


def quad_value(a: str, b: str, c: str, d: str) -> int:
    """The address of the four octets :data:`QUAD_PATTERN` matched, as an int."""
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)


def parse_ipv4(text: str) -> IPv4Address:
    """A dotted-quad IPv4 address, as strict as ``IPv4Address(text)`` (four decimal octets, no
    leading zeros, nothing around them) at a third of the cost: 10,000 leases at start-up
    parse 20,000 of them.  Raises ValueError."""
    m = _QUAD_RE.fullmatch(text)
    if m is None:
        return IPv4Address(text)  # raises, worded as ipaddress words it
    return IPv4Address(quad_value(*m.groups()))


# The IPv4-only key, with its octets as ipaddress takes them (no leading zeros).
_V4_KEY_RE = re.compile(QUAD_PATTERN + r"-(0|[1-9]\d?)", re.ASCII)

#: The longest key parse_subnet_key looks at; a dual-stack name is under 70 characters, and
#: etcd keys under a prefix stay far below this unless someone writes garbage.
MAX_KEY_CHARS = 1024
#: The IPv4 half of an IPv6-only key: flanneld's empty IP4Net, which it prints ``0.0.0.0-0``.
NO_IPV4 = IPv4Network("0.0.0.0/0")
#: flanneld parses a key's IPv6 prefix length as a 7-bit number: /128 is not a subnet to it.
MAX_KEY_IPV6_PREFIX = 127
# An IPv6 CIDR as Go's net.ParseCIDR takes it: no zone ("%eth0"), a decimal prefix length.
_IPV6_CIDR_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}/\d{1,3}", re.ASCII)
_IPV6_ADDR_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}", re.ASCII)

#: The IPv6 ranges flannel prints as dotted quads (see :func:`go_prints_dotted`).
GO_DOTTED_RANGES = (
    (1 << 24, (1 << 32) - 1),  # ::100:0 ... ::ffff:ffff
    (0xFFFF << 32, (0xFFFF << 32) | 0xFFFFFFFF),  # ::ffff:0:0/96, IPv4-mapped
)


def go_prints_dotted(addr: IPv6Address) -> bool:
    """True when flanneld prints *addr* as a dotted quad instead of an IPv6 address.

    flannel keeps an IPv6 address as a big integer and prints it through Go's net.IP made of the
    integer's minimal bytes: exactly four bytes (a value in [2^24, 2^32)) is an IPv4 address to
    Go, and so is an IPv4-mapped address (``::ffff:a.b.c.d``).  Such a spelling never parses back
    as the IPv6 part of a key, so pyflannel refuses networks that would need one.
    """
    value = int(addr)
    return any(lo <= value <= hi for lo, hi in GO_DOTTED_RANGES)


def ipv6_text(addr: IPv6Address) -> str:
    """*addr* spelled as flanneld spells it, in keys, lease values and subnet.env.

    RFC 5952 (Go's net.IP.String and Python's ``compressed`` agree on it: lowercase, no leading
    zeros, ``::`` for the longest run of two or more zero groups, the first run on a tie), except
    the ranges of :func:`go_prints_dotted`, which Go prints as the dotted quad of the low 32 bits.
    Checked against a real Go toolchain: ``tests/unit/fixtures/go_ipv6_text.go``.
    """
    if go_prints_dotted(addr):
        return str(IPv4Address(int(addr) & 0xFFFFFFFF))
    return addr.compressed


def parse_ipv6_cidr(text: str) -> IPv6Network:
    """An IPv6 CIDR as Go's net.ParseCIDR reads it: host bits masked off, no zone, an explicit
    prefix length.  Raises ValueError for anything else (an IPv4 CIDR too)."""
    if not isinstance(text, str) or not _IPV6_CIDR_RE.fullmatch(text):
        raise ValueError(text)
    return IPv6Network(text, strict=False)


def parse_ipv6_address(text: str) -> IPv6Address:
    """An IPv6 address without zone; ValueError for anything else (an IPv4 address too)."""
    if not isinstance(text, str) or not _IPV6_ADDR_RE.fullmatch(text):
        raise ValueError(text)
    return IPv6Address(text)


@dataclass(frozen=True, slots=True)
class SubnetKey:
    """Which subnets a lease holds: its IPv4 half, its IPv6 half, or both; the lease's identity.

    ``str()`` is for log lines (``10.5.34.0/24``, ``10.5.34.0/24,fc00:0:0:22::/64``); the etcd
    key's last component is :attr:`name`.
    """

    ipv4: IPv4Network | None = None
    ipv6: IPv6Network | None = None

    def __post_init__(self) -> None:
        if self.ipv4 is None and self.ipv6 is None:
            raise ValueError("a subnet key needs an IPv4 or an IPv6 subnet")
        if self.ipv4 == NO_IPV4:
            raise ValueError("0.0.0.0/0 is no IPv4 subnet: use None")
        if self.ipv6 is not None and go_prints_dotted(self.ipv6.network_address):
            raise ValueError(f"flanneld cannot name {self.ipv6} in a subnet key")

    @classmethod
    def of(cls, subnet: SubnetKey | IPv4Network | IPv6Network) -> SubnetKey:
        """*subnet* as a key: an IPv4 or IPv6 network names the key holding only it."""
        if isinstance(subnet, SubnetKey):
            return subnet
        if isinstance(subnet, IPv4Network):
            return cls(ipv4=subnet)
        return cls(ipv6=subnet)

    @property
    def name(self) -> str:
        """The etcd key component, exactly as flanneld's MakeSubnetKey spells it."""
        v4 = self.ipv4 or NO_IPV4
        name = f"{v4.network_address}-{v4.prefixlen}"
        if self.ipv6 is not None:
            name += f"&{ipv6_text(self.ipv6.network_address)}-{self.ipv6.prefixlen}"
        return name

    def __str__(self) -> str:
        return ",".join(str(n) for n in (self.ipv4, self.ipv6) if n is not None)


#: What names a lease: its key, or a network standing for the key that holds only it.
SubnetRef = SubnetKey | IPv4Network | IPv6Network


def subnet_key(subnet: SubnetRef) -> str:
    """Return the etcd key component for *subnet*, e.g. ``10.5.34.0-24``."""
    return SubnetKey.of(subnet).name


def parse_subnet_key(key: str) -> SubnetKey | None:
    """Parse the last path component of *key* as a subnet key; None if it is not one.

    Only a key spelled exactly as flanneld spells it is one: another spelling of the same subnets
    (``fc00:0:0:22:0:0:0:0``, a prefix length ``08``, upper case) would be a second key for them,
    which writes and deletes by subnet never reach.  Anything else (not a str, longer than
    :data:`MAX_KEY_CHARS`, malformed, host bits set, ``0.0.0.0-0`` without an IPv6 half) is
    None, never an exception: keys come from a store every host can write.
    """
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
        return None
    name = key.rpartition("/")[2]
    v4 = _V4_KEY_RE.fullmatch(name)
    if v4 is not None:
        # The usual key, an IPv4 half alone: parsed here at half the cost of the general path
        # below (10,000 of them at start), with the same answer (a property test checks).
        a, b, c, d, plen = v4.groups()
        addr = quad_value(a, b, c, d)
        prefixlen = int(plen)
        if 0 < prefixlen <= 32 and not addr & ((1 << (32 - prefixlen)) - 1):
            return SubnetKey(IPv4Network((addr, prefixlen)))
        return None
    m = _KEY_RE.fullmatch(name)
    if m is None:
        return None
    try:
        ipv4: IPv4Network | None = IPv4Network((parse_ipv4(m.group(1)), int(m.group(2))))
        ipv6 = None
        if m.group(3) is not None:
            if int(m.group(4)) > MAX_KEY_IPV6_PREFIX:
                return None
            ipv6 = IPv6Network(f"{m.group(3)}/{m.group(4)}", strict=True)
            # The one IPv6 spelling flanneld writes (the IPv4 half is canonical once parsed).
            if ipv6_text(ipv6.network_address) != m.group(3):
                return None
        return SubnetKey(None if ipv4 == NO_IPV4 else ipv4, ipv6)
    except ValueError:
        return None


def contains(net: IPv4Network | IPv6Network, sub: IPv4Network | IPv6Network) -> bool:
    """True when *sub* is inside *net* (same family).  Ints only: subnet_of() and overlaps()
    would cache a broadcast address and a host mask in each network they touch (about 160
    bytes per lease subnet)."""
    if sub.version != net.version or sub.prefixlen < net.prefixlen:
        return False
    shift = net.max_prefixlen - net.prefixlen
    return int(sub.network_address) >> shift == int(net.network_address) >> shift


def address_in(ip: IPv4Address | IPv6Address, net: IPv4Network | IPv6Network) -> bool:
    """True when address *ip* is inside *net* (same family; ``in`` does not check that)."""
    shift = net.max_prefixlen - net.prefixlen
    return ip.version == net.version and int(ip) >> shift == int(net.network_address) >> shift


def _walk(cls: type[_Net], bits: int, first: int, last: int, prefixlen: int) -> Iterator[_Net]:
    step = 1 << (bits - prefixlen)
    addr = first
    while addr <= last:
        yield cls((addr, prefixlen))
        addr += step


def subnets_between(first: IPv4Address, last: IPv4Address, prefixlen: int) -> Iterator[IPv4Network]:
    """Yield every /prefixlen subnet whose network address is within [first, last]."""
    return _walk(IPv4Network, 32, int(first), int(last), prefixlen)


def ipv6_subnets_between(
    first: IPv6Address, last: IPv6Address, prefixlen: int
) -> Iterator[IPv6Network]:
    """Yield every /prefixlen IPv6 subnet whose network address is within [first, last], lazily:
    the range may hold 2^64 subnets, and a caller takes only the few it needs."""
    return _walk(IPv6Network, 128, int(first), int(last), prefixlen)


def gateway_address(subnet: IPv4Network) -> IPv4Address:
    """The first usable address of *subnet*: what FLANNEL_SUBNET names (network + 1)."""
    return subnet.network_address + 1


def ipv6_gateway_text(subnet: IPv6Network) -> str:
    """FLANNEL_IPV6_SUBNET's value for *subnet*: network + 1, with the prefix, as Go prints it."""
    return f"{ipv6_text(subnet.network_address + 1)}/{subnet.prefixlen}"
