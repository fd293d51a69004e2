"""The VXLAN backend: from peer leases to the neighbour, FDB and route each peer needs.

Design notes (why it looks like this):

* No L2MISS/L3MISS.  flanneld before v0.9 answered kernel "miss" upcalls from userspace; since
  v0.9 every peer is programmed statically, and so is it here.  The kernel does all encapsulation
  and never asks us anything, so no packet ever waits on Python.
* Per peer with subnet S, VTEP MAC M and public IP P: a permanent neighbour ``S.0 -> M`` on
  ``flannel.<VNI>``, a permanent ``self`` FDB entry ``M -> dst P``, and the route
  ``S via S.0 dev flannel.<VNI> onlink``.  The route goes in last: once it exists the kernel
  sends to S.0, and by then S.0 must resolve (neighbour) and M must have a destination (FDB), or
  the first packets would trigger ARP on a device that cannot answer it.
* DirectRouting: a peer whose public IP the kernel reaches without a gateway gets a plain
  ``S via P`` route instead (host-gw style, no encapsulation, no neighbour or FDB entry).
* Leases of other backends, or without a VTEP MAC, are not programmed.
* Every record in etcd is hostile until checked (:func:`unsafe_reason`): a peer is programmed
  only when its subnet is a SubnetLen-sized subnet of the Network that does not overlap our own,
  its public IP is a unicast address that is not ours, and its VTEP MAC is unicast and non-zero.
  Anything else could make the kernel route the underlay, our own subnet or the whole Network
  into the overlay, or ask it for FDB entries it refuses on every reconcile.

:func:`desired_state` is pure; the kernel query DirectRouting needs is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyflannel.kernel.records import Fdb, KernelState, Neigh, PeerEntries, Route
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs


@dataclass(frozen=True)
class PeerScope:
    """What a peer lease must fit to be programmed: our Network and our own lease."""

    network: IPv4Network
    subnet_len: int
    own_subnet: IPv4Network | None = None
    own_public_ip: IPv4Address | None = None


def _mac_reason(mac: str) -> str | None:
    first = int(mac[:2], 16)
    if first & 1:
        return f"VtepMAC {mac} is multicast or broadcast"
    if mac == "00:00:00:00:00:00":
        return "VtepMAC is all zeros"
    return None


def _ip_reason(ip: IPv4Address) -> str | None:
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        return f"PublicIP {ip} is not a unicast address"
    return None


def holder_reason(attrs: LeaseAttrs) -> str | None:
    """Why *attrs* cannot be a real host's lease (not a unicast PublicIP, a bad VTEP MAC), or
    None.  Garbage written over our key is repaired; only a plausible lease is a takeover.
    An IPv6-only host's lease (PublicIP 0.0.0.0 and a PublicIPv6) is judged by its IPv6 half."""
    if attrs.public_ip == NO_PUBLIC_IP and attrs.public_ipv6 is not None:
        ip6 = attrs.public_ipv6
        bad = ip6.is_unspecified or ip6.is_loopback or ip6.is_multicast
        reason = f"PublicIPv6 {ip6} is not a unicast address" if bad else None
        mac = attrs.v6_vtep_mac
    else:
        reason, mac = _ip_reason(attrs.public_ip), attrs.vtep_mac
    if reason is None and mac is not None:
        reason = _mac_reason(mac)
    return reason


def _contains(net: IPv4Network, sub: IPv4Network) -> bool:
    # subnet_of()/overlaps() would cache a broadcast address and a host mask in every lease's
    # IPv4Network (about 160 bytes each, 1.6 MB at 10,000 peers); `in` and ints cache nothing.
    return sub.prefixlen >= net.prefixlen and sub.network_address in net


def unsafe_reason(lease: Lease, scope: PeerScope) -> str | None:
    """Why *lease* must not be programmed, or None when it is safe (see the module docstring)."""
    subnet = lease.key.ipv4
    if subnet is None:
        return "lease has no IPv4 subnet (an IPv6-only peer)"
    if subnet.prefixlen != scope.subnet_len or not _contains(scope.network, subnet):
        return f"subnet is not a /{scope.subnet_len} inside the Network {scope.network}"
    own = scope.own_subnet
    if own is not None and (_contains(own, subnet) or _contains(subnet, own)):
        return f"subnet overlaps our own subnet {scope.own_subnet}"
    attrs = lease.attrs
    if attrs.backend_type.lower() != "vxlan":
        return f"backend type {attrs.backend_type or '(none)'!r} is not vxlan"
    if attrs.public_ip == scope.own_public_ip:
        return f"PublicIP {attrs.public_ip} is our own"
    return holder_reason(attrs)


@dataclass
class DesiredState:
    """The entries the kernel should hold, and the leases skipped with the reason why."""

    state: KernelState = field(default_factory=KernelState)
    skipped: dict[IPv4Network, str] = field(default_factory=dict)


def peer_entries(
    lease: Lease,
    dev: int,
    scope: PeerScope,
    *,
    direct_routing: bool = False,
    is_onlink: Callable[[IPv4Address], bool] = lambda _ip: False,
) -> PeerEntries | str:
    """The entries for one peer lease, or the reason it is skipped."""
    why = unsafe_reason(lease, scope)
    if why is not None:
        return why
    attrs = lease.attrs
    if direct_routing and is_onlink(attrs.public_ip):
        return PeerEntries(Route(lease.subnet, attrs.public_ip, None, False))
    if attrs.vtep_mac is None:
        return "lease has no VtepMAC"
    vtep_ip = lease.subnet.network_address
    return PeerEntries(
        Route(lease.subnet, vtep_ip, dev, True),
        Neigh(vtep_ip, attrs.vtep_mac),
        Fdb(attrs.vtep_mac, attrs.public_ip),
    )


def desired_state(
    peers: Iterable[Lease],
    dev: int,
    scope: PeerScope,
    *,
    direct_routing: bool = False,
    is_onlink: Callable[[IPv4Address], bool] = lambda _ip: False,
) -> DesiredState:
    """Compute the kernel entries for *peers*; unsafe leases (and our own) are skipped."""
    out = DesiredState()
    for lease in peers:
        if lease.key.ipv4 is None or lease.subnet == scope.own_subnet:
            continue  # our own, or an IPv6-only peer: nothing on the IPv4 device
        entries = peer_entries(
            lease, dev, scope, direct_routing=direct_routing, is_onlink=is_onlink
        )
        if isinstance(entries, str):
            out.skipped[lease.subnet] = entries
            continue
        out.state.routes[lease.subnet] = entries.route
        if entries.neigh is not None:
            out.state.neighs[entries.neigh.ip] = entries.neigh.mac
        if entries.fdb is not None:
            out.state.fdb.add(entries.fdb)
    return out
