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
* IPv6 (``flannel-v6.<VNI>``) is the same per family: a :class:`PeerScope` of the IPv6Network
  takes each lease's IPv6 half, ``PublicIPv6`` and ``BackendV6Data``'s MAC, under the same
  checks (IPv6SubnetLen, inside the IPv6Network, not overlapping our IPv6 subnet, a unicast
  PublicIPv6 that is not ours, a unicast non-zero MAC).  A lease without the half of a
  device's family is nothing to that device: a dual-stack peer is programmed on both, an
  IPv4-only peer on the IPv4 device only, as flanneld does.

:func:`desired_state` is pure; the kernel query DirectRouting needs is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from pyflannel.ipnet import SubnetKey, contains
from pyflannel.kernel.records import (
    IPV6_ROUTE_METRIC,
    Fdb,
    IPAddress,
    IPNetwork,
    KernelState,
    Neigh,
    PeerEntries,
    Route,
)
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs


@dataclass(frozen=True)
class PeerScope:
    """What a peer lease must fit to be programmed on one device: that family's Network and
    SubnetLen, our own subnet and public address of that family.  The Network's version says
    which half of a lease the device takes."""

    network: IPNetwork
    subnet_len: int
    own_subnet: IPNetwork | None = None
    own_public_ip: IPAddress | None = None

    @property
    def version(self) -> int:
        """4 or 6: the device's address family."""
        return self.network.version

    def half(self, lease_key: SubnetKey) -> IPNetwork | None:
        """The subnet of *lease_key* this device programs (None: the key has no such half)."""
        return lease_key.ipv6 if self.version == 6 else lease_key.ipv4


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


def _ipv6_reason(ip: IPv6Address) -> str | None:
    # An IPv4-mapped address (a dotted PublicIPv6, which Go parses so) is no IPv6 VXLAN remote.
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.ipv4_mapped is not None:
        return f"PublicIPv6 {ip} is not a unicast IPv6 address"
    return None


def holder_reason(attrs: LeaseAttrs) -> str | None:
    """Why *attrs* cannot be a real host's lease (not a unicast PublicIP, a bad VTEP MAC), or
    None.  Garbage written over our key is repaired; only a plausible lease is a takeover.
    An IPv6-only host's lease (PublicIP 0.0.0.0 and a PublicIPv6) is judged by its IPv6 half."""
    if attrs.public_ip == NO_PUBLIC_IP and attrs.public_ipv6 is not None:
        reason, mac = _ipv6_reason(attrs.public_ipv6), attrs.v6_vtep_mac
    else:
        reason, mac = _ip_reason(attrs.public_ip), attrs.vtep_mac
    if reason is None and mac is not None:
        reason = _mac_reason(mac)
    return reason


def unsafe_reason(lease: Lease, scope: PeerScope) -> str | None:
    """Why *lease* must not be programmed on *scope*'s device, or None when it is safe (see the
    module docstring)."""
    v6 = scope.version == 6
    subnet = scope.half(lease.key)
    sub, net = ("IPv6 subnet", "IPv6Network") if v6 else ("subnet", "Network")
    if subnet is None:
        other = "an IPv4-only" if v6 else "an IPv6-only"
        return f"lease has no IPv{scope.version} subnet ({other} peer)"
    # contains() and ints: subnet_of()/overlaps() would cache a broadcast address and a host
    # mask in every lease's network (about 160 bytes each, 1.6 MB at 10,000 peers).
    if subnet.prefixlen != scope.subnet_len or not contains(scope.network, subnet):
        return f"{sub} is not a /{scope.subnet_len} inside the {net} {scope.network}"
    own = scope.own_subnet
    if own is not None and (contains(own, subnet) or contains(subnet, own)):
        return f"{sub} overlaps our own {sub} {scope.own_subnet}"
    attrs = lease.attrs
    if attrs.backend_type.lower() != "vxlan":
        return f"backend type {attrs.backend_type or '(none)'!r} is not vxlan"
    public = attrs.public_ipv6 if v6 else attrs.public_ip
    if public is None:
        return "lease has no PublicIPv6"
    if public == scope.own_public_ip:
        return f"{'PublicIPv6' if v6 else 'PublicIP'} {public} is our own"
    if not v6:
        return holder_reason(attrs)
    assert isinstance(public, IPv6Address)
    reason = _ipv6_reason(public)
    if reason is None and attrs.v6_vtep_mac is not None:
        reason = _mac_reason(attrs.v6_vtep_mac)
    return reason


@dataclass
class DesiredState:
    """The entries the kernel should hold, and the leases skipped with the reason why."""

    state: KernelState = field(default_factory=KernelState)
    skipped: dict[IPNetwork, str] = field(default_factory=dict)


def peer_entries(
    lease: Lease,
    dev: int,
    scope: PeerScope,
    *,
    direct_routing: bool = False,
    is_onlink: Callable[[IPAddress], bool] = lambda _ip: False,
) -> PeerEntries | str:
    """The entries for one peer lease on *scope*'s device, or the reason it is skipped."""
    why = unsafe_reason(lease, scope)
    if why is not None:
        return why
    attrs = lease.attrs
    if scope.version == 6:
        return _ipv6_entries(lease, dev, direct_routing, is_onlink)
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


def _ipv6_entries(
    lease: Lease, dev: int, direct_routing: bool, is_onlink: Callable[[IPAddress], bool]
) -> PeerEntries | str:
    """The IPv6 device's entries for a lease :func:`unsafe_reason` passed."""
    attrs = lease.attrs
    subnet, public = lease.key.ipv6, attrs.public_ipv6
    assert isinstance(subnet, IPv6Network) and public is not None  # unsafe_reason checked
    if direct_routing and is_onlink(public):
        return PeerEntries(Route(subnet, public, None, False))
    mac = attrs.v6_vtep_mac
    if mac is None:
        return "lease has no IPv6 VtepMAC (BackendV6Data)"
    vtep_ip = subnet.network_address
    return PeerEntries(
        Route(subnet, vtep_ip, dev, True, IPV6_ROUTE_METRIC),
        Neigh(vtep_ip, mac),
        Fdb(mac, public),
    )


def desired_state(
    peers: Iterable[Lease],
    dev: int,
    scope: PeerScope,
    *,
    direct_routing: bool = False,
    is_onlink: Callable[[IPAddress], bool] = lambda _ip: False,
) -> DesiredState:
    """Compute the kernel entries for *peers* on *scope*'s device; unsafe leases (and our own)
    are skipped."""
    out = DesiredState()
    for lease in peers:
        subnet = scope.half(lease.key)
        if subnet is None or subnet == scope.own_subnet:
            continue  # our own, or a peer without this family's half: nothing on this device
        entries = peer_entries(
            lease, dev, scope, direct_routing=direct_routing, is_onlink=is_onlink
        )
        if isinstance(entries, str):
            out.skipped[subnet] = entries
            continue
        out.state.routes[subnet] = entries.route
        if entries.neigh is not None:
            out.state.neighs[entries.neigh.ip] = entries.neigh.mac
        if entries.fdb is not None:
            out.state.fdb.add(entries.fdb)
    return out
