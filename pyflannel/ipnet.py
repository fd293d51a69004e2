"""Pure IPv4 arithmetic: subnet keys as flanneld spells them, subnet ranges, addresses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

# flanneld's key form: "<dotted quad>-<prefix length>", optionally "&<ipv6>-<len>" (dual stack).
# ASCII digits only, matched whole: "$" would also take a trailing newline, so a key such as
# "10.5.1.0-24\n" would alias (and its deletion remove) the real lease on 10.5.1.0/24.
_KEY_RE = re.compile(
    r"(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([0-9a-fA-F:]{2,39})-(\d{1,3}))?", re.ASCII
)
#: The longest key parse_subnet_key looks at; a dual-stack name is under 70 characters, and
#: etcd keys under a prefix stay far below this unless someone writes garbage.
MAX_KEY_CHARS = 1024


def subnet_key(subnet: IPv4Network) -> str:
    """Return the etcd key component for *subnet*, e.g. ``10.5.34.0-24``."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network | None:
    """Parse the last path component of *key* as a subnet key; None if it is not one.

    A dual-stack key (``a.b.c.d-n&v6-m``) yields its IPv4 part: etcd mode always carries IPv4.
    Anything else (not a str, longer than :data:`MAX_KEY_CHARS`, malformed) is None, never an
    exception: keys come from a store every host can write.
    """
    if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
        return None
    m = _KEY_RE.fullmatch(key.rpartition("/")[2])
    if m is None:
        return None
    try:
        return IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError:
        return None


def subnets_between(first: IPv4Address, last: IPv4Address, prefixlen: int) -> Iterator[IPv4Network]:
    """Yield every /prefixlen subnet whose network address is within [first, last]."""
    step = 1 << (32 - prefixlen)
    addr = int(first)
    while addr <= int(last):
        yield IPv4Network((addr, prefixlen))
        addr += step


def gateway_address(subnet: IPv4Network) -> IPv4Address:
    """The first usable address of *subnet*: what FLANNEL_SUBNET names (network + 1)."""
    return subnet.network_address + 1
