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

:func:`desired_state` is pure; the kernel query DirectRouting needs is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from pyflannel.kernel.records import Fdb, KernelState, Route
from pyflannel.lease import Lease


@dataclass
class DesiredState:
    """The entries the kernel should hold, and the leases skipped with the reason why."""

    state: KernelState = field(default_factory=KernelState)
    skipped: dict[IPv4Network, str] = field(default_factory=dict)


def desired_state(
    peers: Iterable[Lease],
    dev: int,
    *,
    direct_routing: bool = False,
    is_onlink: Callable[[IPv4Address], bool] = lambda _ip: False,
) -> DesiredState:
    """Compute the kernel entries for *peers* (our own lease must not be among them)."""
    out = DesiredState()
    for lease in peers:
        attrs = lease.attrs
        if attrs.backend_type.lower() != "vxlan":
            out.skipped[lease.subnet] = (
                f"backend type {attrs.backend_type or '(none)'!r} is not vxlan"
            )
            continue
        if direct_routing and is_onlink(attrs.public_ip):
            out.state.routes[lease.subnet] = Route(lease.subnet, attrs.public_ip, None, False)
            continue
        if attrs.vtep_mac is None:
            out.skipped[lease.subnet] = "lease has no VtepMAC"
            continue
        vtep_ip = lease.subnet.network_address
        out.state.neighs[vtep_ip] = attrs.vtep_mac
        out.state.fdb.add(Fdb(attrs.vtep_mac, attrs.public_ip))
        out.state.routes[lease.subnet] = Route(lease.subnet, vtep_ip, dev, True)
    return out
