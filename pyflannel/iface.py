"""Choose the external (underlay) interface and the public IP, as flanneld does (§4.1).

``--iface`` (names or addresses, in order), then ``--iface-regex`` (matched against addresses,
then names), then ``--iface-can-reach`` (the device of the kernel's route to that address, with
the route's source address); with none of them, the interface that owns ``--public-ip``, then
the interface of the default route.  The public IP is ``--public-ip`` if given, else the
interface's address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from pyflannel.errors import ConfigError
from pyflannel.kernel.records import Link, RoutePath


@dataclass(frozen=True)
class ExternalInterface:
    """The underlay: the device VXLAN packets leave through, and the addresses peers use."""

    link: Link
    iface_ip: IPv4Address  # the interface's own address
    public_ip: IPv4Address  # what goes into the lease; peers send VXLAN here

    @property
    def vtep_local(self) -> IPv4Address:
        """The VXLAN source address: the public IP when it is local (flanneld ≥ 0.27.4), else
        the interface address (behind NAT the public IP is not ours to send from)."""
        if any(a.ip == self.public_ip for a in self.link.addresses):
            return self.public_ip
        return self.iface_ip


def _first_ipv4(link: Link) -> IPv4Address | None:
    # Prefer global addresses over link-local ones, as flanneld does.
    globals_ = [a.ip for a in link.addresses if not a.ip.is_link_local and not a.ip.is_loopback]
    if globals_:
        return globals_[0]
    return link.addresses[0].ip if link.addresses else None


def _by_name_or_ip(links: list[Link], spec: str) -> Link | None:
    try:
        ip = IPv4Address(spec)
    except ValueError:
        return next((lk for lk in links if lk.name == spec), None)
    return next((lk for lk in links if any(a.ip == ip for a in lk.addresses)), None)


def _by_regex(links: list[Link], pattern: str) -> Link | None:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--iface-regex {pattern!r}: {exc}") from None
    usable = [lk for lk in links if _first_ipv4(lk) is not None]
    return next((lk for lk in usable if any(rx.search(str(a.ip)) for a in lk.addresses)), None) or (
        next((lk for lk in usable if rx.search(lk.name)), None)
    )


def _by_route(links: list[Link], path: RoutePath | None) -> tuple[Link, IPv4Address] | None:
    """The link ``ip route get`` answered and its source address (flanneld takes the route's
    source, not the link's first address); None without a route or through the loopback."""
    if path is None:
        return None
    link = next((lk for lk in links if lk.index == path.oif), None)
    ip = path.src or (_first_ipv4(link) if link is not None else None)
    if link is None or ip is None or ip.is_loopback:
        return None
    return link, ip


def choose_external(
    links: list[Link],
    default_route_index: int | None,
    *,
    ifaces: tuple[str, ...] = (),
    iface_regexes: tuple[str, ...] = (),
    can_reach: IPv4Address | None = None,
    reach: RoutePath | None = None,
    public_ip: IPv4Address | None = None,
) -> ExternalInterface:
    """Pick the external interface among *links* (pure; the caller reads the kernel, *reach*
    being its route to *can_reach*).

    As flanneld: each ``--iface`` in order, then each ``--iface-regex``, then the route to
    ``--iface-can-reach``; when one of them is given and none matches, nothing else is tried.
    """
    chosen: Link | None = None
    ip: IPv4Address | None = None
    if ifaces or iface_regexes or can_reach is not None:
        for spec in ifaces:
            chosen = _by_name_or_ip(links, spec)
            if chosen is not None and _first_ipv4(chosen) is not None:
                break
            chosen = None
        for pattern in () if chosen is not None else iface_regexes:
            chosen = _by_regex(links, pattern)
            if chosen is not None:
                break
        if chosen is None and can_reach is not None and (found := _by_route(links, reach)):
            chosen, ip = found
        if chosen is None:
            tried = [f"--iface {','.join(ifaces)}"] if ifaces else []
            tried += [f"--iface-regex {','.join(iface_regexes)}"] if iface_regexes else []
            if can_reach is not None:
                tried.append(f"--iface-can-reach {can_reach} (no route, or through loopback)")
            raise ConfigError(f"no interface with an IPv4 address matches {'; '.join(tried)}")
    else:
        if public_ip is not None:
            chosen = _by_name_or_ip(links, str(public_ip))
        if chosen is None and default_route_index is not None:
            chosen = next((lk for lk in links if lk.index == default_route_index), None)
        if chosen is None:
            raise ConfigError(
                "cannot choose the external interface: no default route; use --iface or --public-ip"
            )
    ip = ip or _first_ipv4(chosen)
    if ip is None:
        raise ConfigError(f"interface {chosen.name} has no IPv4 address")
    if chosen.mtu == 0:
        raise ConfigError(f"interface {chosen.name} reports MTU 0")
    return ExternalInterface(chosen, ip, public_ip or ip)


def underlay_overlaps(
    network: IPv4Network, ext: ExternalInterface, connected: Iterable[IPv4Network]
) -> list[str]:
    """What of the underlay *network* overlaps: the external interface's addresses (and their
    subnets), the public IP, and the routes the kernel reaches without a gateway through it.

    Routing such a Network into the overlay cuts the host off its underlay, etcd included
    (flanneld does it silently); pyflannel refuses to start instead.
    """
    found: list[str] = []
    for addr in ext.link.addresses:
        if addr.network.overlaps(network):
            found.append(f"address {addr} of {ext.link.name}")
    if ext.public_ip in network and not any(a.ip == ext.public_ip for a in ext.link.addresses):
        found.append(f"public IP {ext.public_ip}")
    for net in connected:
        # A device-only default route (point-to-point links) is not a subnet of the underlay.
        if (
            net.prefixlen
            and net.overlaps(network)
            and not any(net == a.network for a in ext.link.addresses)
        ):
            found.append(f"route {net} dev {ext.link.name}")
    return found
