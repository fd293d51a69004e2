"""Pure IPv4 arithmetic: subnet keys as flanneld spells them, subnet ranges, addresses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

# flanneld's key form: "<dotted quad>-<prefix length>", optionally "&<ipv6>-<len>" (dual stack).
_KEY_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([0-9a-fA-F:]+)-(\d{1,3}))?$")


def subnet_key(subnet: IPv4Network) -> str:
    """Return the etcd key component for *subnet*, e.g. ``10.5.34.0-24``."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network | None:
    """Parse the last path component of *key* as a subnet key; None if it is not one.

    A dual-stack key (``a.b.c.d-n&v6-m``) yields its IPv4 part: etcd mode always carries IPv4.
    """
    m = _KEY_RE.match(key.rsplit("/", 1)[-1])
    if m is None:
        return None
    try:
        net = IPv4Network(f"{m.group(1)}/{m.group(2)}", strict=True)
    except ValueError:
        return None
    return net


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
