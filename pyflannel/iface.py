"""Choose the external (underlay) interface and the public IP, as flanneld does (§4.1).

``--iface`` (names or addresses, in order), then ``--iface-regex`` (matched against addresses,
then names), then ``--iface-can-reach`` (the device of the kernel's route to that address, with
the route's source address); with none of them, the interface that owns ``--public-ip``, then
the interface of the default route.  The public IP is ``--public-ip`` if given, else the
interface's address.

IPv6 (:func:`with_ipv6` for a dual-stack network, :func:`choose_external_ipv6` for an
IPv6-only one): the same order over IPv6 addresses (``--iface`` by name or IPv6 address,
``--iface-regex`` against IPv6 addresses then names, the interface owning ``--public-ipv6``,
the interface of the IPv6 default route).  The interface's IPv6 address is its first global
one (a link-local one only if it has nothing else, as flanneld), ``--public-ipv6`` overrides it
in the lease.  A dual-stack host uses one interface for both families (flanneld's rule): its
IPv4 choice decides, and the IPv6 default route must not name another interface.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from pyflannel.errors import ConfigError
from pyflannel.kernel.records import Link, RoutePath
from pyflannel.lease import NO_PUBLIC_IP


@dataclass(frozen=True)
class ExternalInterface:
    """The underlay: the device VXLAN packets leave through, and the addresses peers use."""

    link: Link
    iface_ip: IPv4Address  # the interface's own address (0.0.0.0 on an IPv6-only network)
    public_ip: IPv4Address  # what goes into the lease; peers send VXLAN here
    iface_ipv6: IPv6Address | None = None  # None unless the network enables IPv6
    public_ipv6: IPv6Address | None = None

    @property
    def vtep_local(self) -> IPv4Address:
        """The VXLAN source address: the public IP when it is local (flanneld ≥ 0.27.4), else
        the interface address (behind NAT the public IP is not ours to send from)."""
        if any(a.ip == self.public_ip for a in self.link.addresses):
            return self.public_ip
        return self.iface_ip

    @property
    def vtep_local6(self) -> IPv6Address | None:
        """The IPv6 device's VXLAN source address, by the same rule."""
        if any(a.ip == self.public_ipv6 for a in self.link.addresses6):
            return self.public_ipv6
        return self.iface_ipv6


def _first_ipv4(link: Link) -> IPv4Address | None:
    # Prefer global addresses over link-local ones, as flanneld does.
    globals_ = [a.ip for a in link.addresses if not a.ip.is_link_local and not a.ip.is_loopback]
    if globals_:
        return globals_[0]
    return link.addresses[0].ip if link.addresses else None


def _first_ipv6(link: Link) -> IPv6Address | None:
    # Global before link-local, as flanneld; the kernel lists the most recent first.
    globals_ = [a.ip for a in link.addresses6 if not a.ip.is_link_local]
    if globals_:
        return globals_[0]
    return link.addresses6[0].ip if link.addresses6 else None


def _by_name_or_ip(links: list[Link], spec: str) -> Link | None:
    try:
        ip = ip_address(spec)
    except ValueError:
        return next((lk for lk in links if lk.name == spec), None)
    if isinstance(ip, IPv6Address):
        return next((lk for lk in links if any(a.ip == ip for a in lk.addresses6)), None)
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


def _ipv6_specs(ifaces: tuple[str, ...]) -> set[IPv6Address]:
    out = set()
    for spec in ifaces:
        try:
            ip = ip_address(spec)
        except ValueError:
            continue
        if isinstance(ip, IPv6Address):
            out.add(ip)
    return out


def _regex_ipv6(link: Link, iface_regexes: tuple[str, ...]) -> IPv6Address | None:
    """The first IPv6 address of *link* a regex matches (regexes in order), else None."""
    for pattern in iface_regexes:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--iface-regex {pattern!r}: {exc}") from None
        found = next((a.ip for a in link.addresses6 if rx.search(str(a.ip))), None)
        if found is not None:
            return found
    return None


def _ipv6_of(link: Link, ifaces: tuple[str, ...], iface_regexes: tuple[str, ...]) -> IPv6Address:
    """*link*'s IPv6 address: one named by ``--iface`` or matched by ``--iface-regex``, else
    its first usable one."""
    named = _ipv6_specs(ifaces)
    ip = next((a.ip for a in link.addresses6 if a.ip in named), None)
    ip = ip or _regex_ipv6(link, iface_regexes) or _first_ipv6(link)
    if ip is None:
        raise ConfigError(f"interface {link.name} has no IPv6 address (EnableIPv6 is on)")
    return ip


def with_ipv6(
    ext: ExternalInterface,
    default_route_index6: int | None,
    *,
    ifaces: tuple[str, ...] = (),
    iface_regexes: tuple[str, ...] = (),
    chosen_by_route: bool = False,
    public_ipv6: IPv6Address | None = None,
) -> ExternalInterface:
    """*ext* (chosen for IPv4) with its IPv6 address, for a dual-stack network (pure).

    One interface carries both families.  Unless a flag chose it (``--iface``,
    ``--iface-regex``, ``--iface-can-reach``: *chosen_by_route*) an IPv6 default route on
    another interface is refused, as flanneld does: the IPv6 VXLAN would leave through a
    device that is not the one chosen.
    """
    chosen_by_flag = bool(ifaces or iface_regexes or chosen_by_route)
    if not chosen_by_flag and default_route_index6 not in (None, ext.link.index):
        raise ConfigError(
            f"the IPv6 default route is not on {ext.link.name}, the IPv4 one's interface: "
            "choose the interface for both with --iface"
        )
    ip6 = _ipv6_of(ext.link, ifaces, iface_regexes)
    return replace(ext, iface_ipv6=ip6, public_ipv6=public_ipv6 or ip6)


def choose_external_ipv6(
    links: list[Link],
    default_route_index6: int | None,
    *,
    ifaces: tuple[str, ...] = (),
    iface_regexes: tuple[str, ...] = (),
    public_ipv6: IPv6Address | None = None,
) -> ExternalInterface:
    """Pick the external interface for an IPv6-only network (pure): as
    :func:`choose_external`, over IPv6 addresses.  No IPv4 address is needed; ``iface_ip``
    and ``public_ip`` are 0.0.0.0, which is what flanneld writes as PublicIP then."""
    usable = [lk for lk in links if _first_ipv6(lk) is not None]
    chosen: Link | None = None
    if ifaces:
        chosen = next(
            (lk for spec in ifaces if (lk := _by_name_or_ip(usable, spec)) is not None), None
        )
        if chosen is None:
            raise ConfigError(
                f"no interface with an IPv6 address matches --iface {','.join(ifaces)}"
            )
    elif iface_regexes:
        for pattern in iface_regexes:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"--iface-regex {pattern!r}: {exc}") from None
            chosen = next(
                (lk for lk in usable if any(rx.search(str(a.ip)) for a in lk.addresses6)), None
            ) or next((lk for lk in usable if rx.search(lk.name)), None)
            if chosen is not None:
                break
        if chosen is None:
            raise ConfigError(f"no interface matches --iface-regex {','.join(iface_regexes)}")
    else:
        if public_ipv6 is not None:
            chosen = _by_name_or_ip(links, str(public_ipv6))
        if chosen is None and default_route_index6 is not None:
            chosen = next((lk for lk in links if lk.index == default_route_index6), None)
        if chosen is None:
            raise ConfigError(
                "cannot choose the external interface: no IPv6 default route; use --iface or "
                "--public-ipv6"
            )
    ip6 = _ipv6_of(chosen, ifaces, iface_regexes)
    if chosen.mtu == 0:
        raise ConfigError(f"interface {chosen.name} reports MTU 0")
    return ExternalInterface(
        chosen, NO_PUBLIC_IP, NO_PUBLIC_IP, iface_ipv6=ip6, public_ipv6=public_ipv6 or ip6
    )


def underlay_overlaps6(
    network: IPv6Network, ext: ExternalInterface, connected: Iterable[IPv6Network]
) -> list[str]:
    """:func:`underlay_overlaps` for the IPv6Network: the interface's IPv6 addresses, the
    public IPv6 address and the IPv6 routes it reaches without a gateway (link-local ones
    aside: fe80::/64 is on every interface and never a Network)."""
    found: list[str] = []
    for addr in ext.link.addresses6:
        if not addr.ip.is_link_local and addr.network.overlaps(network):
            found.append(f"address {addr} of {ext.link.name}")
    public = ext.public_ipv6
    if (
        public is not None
        and public in network
        and not any(a.ip == public for a in ext.link.addresses6)
    ):
        found.append(f"public IPv6 {public}")
    for net in connected:
        if (
            net.prefixlen
            and not net.is_link_local
            and net.overlaps(network)
            and not any(net == a.network for a in ext.link.addresses6)
        ):
            found.append(f"route {net} dev {ext.link.name}")
    return found
