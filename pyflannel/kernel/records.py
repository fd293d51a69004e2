"""Plain records of the kernel state pyflannel manages; pure, shared by the planner, the VXLAN
backend and the netlink adapter (which alone turns them into netlink requests).

Addresses are of either family: the IPv4 device (``flannel.<VNI>``) holds IPv4 entries, the
IPv6 device (``flannel-v6.<VNI>``) IPv6 ones (its FDB remotes too: the overlay's family is the
underlay's), never mixed on one device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

#: An address or a network of either family.
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
#: The metric the kernel gives an IPv6 route added without one (IP6_RT_PRIO_USER); IPv4's is 0.
IPV6_ROUTE_METRIC = 1024


@dataclass(frozen=True)
class Link:
    """A network device as the kernel reports it."""

    index: int
    name: str
    mac: str
    mtu: int
    up: bool = False
    addresses: tuple[IPv4Interface, ...] = ()
    addresses6: tuple[IPv6Interface, ...] = ()  # global and link-local, not deprecated ones


@dataclass(frozen=True, slots=True)
class Neigh:
    """A permanent neighbour on the VXLAN device: overlay IP ``ip`` is at VTEP MAC ``mac``."""

    ip: IPAddress
    mac: str


@dataclass(frozen=True, slots=True)
class Fdb:
    """A permanent ``self`` FDB entry on the VXLAN device: VTEP ``mac`` is reached at ``dst``."""

    mac: str
    dst: IPAddress


@dataclass(frozen=True, slots=True)
class Route:
    """A main-table route: ours to a peer subnet (onlink via its VTEP address, or direct via its
    public IP), or one seen in the kernel (which may have no gateway).  ``priority`` is the
    metric: 0 for IPv4 routes as pyflannel writes them, :data:`IPV6_ROUTE_METRIC` for IPv6 ones
    (what the kernel gives a route added without one)."""

    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None  # None: let the kernel choose (direct routing)
    onlink: bool
    priority: int = 0


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """A main-table route of the device's family as the kernel reports it, on any device: what
    the mirror shows of routes pyflannel must not touch (another device's, the kernel's
    connected ones) and of every route on the VXLAN device, gateway or not."""

    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None
    protocol: int
    scope: int
    kind: int  # rtm_type: 1 unicast, 6 blackhole, 7 unreachable...
    priority: int = 0
    onlink: bool = False

    @property
    def route(self) -> Route:
        """The same route as a :class:`Route` (what a delete or a log line names)."""
        return Route(self.dst, self.gateway, self.oif, self.onlink, self.priority)


@dataclass(frozen=True, slots=True)
class PeerEntries:
    """The kernel entries one peer needs: its route, and its neighbour and FDB entry (None for a
    direct route, which needs neither)."""

    route: Route
    neigh: Neigh | None = None
    fdb: Fdb | None = None


@dataclass(frozen=True)
class RoutePath:
    """The kernel's answer to ``ip route get ADDR``: the output device and the source address
    it would use (what ``--iface-can-reach`` picks)."""

    oif: int
    src: IPv4Address | None


@dataclass(frozen=True)
class VxlanSpec:
    """What the VXLAN device must look like (flannel-behaviour.md §4.2)."""

    name: str
    vni: int
    port: int
    underlay_index: int
    local: IPAddress  # the underlay address VXLAN leaves from; its family is the device's
    mtu: int
    learning: bool = False
    gbp: bool = False


@dataclass
class KernelState:
    """What the kernel holds that pyflannel manages: the entries on the VXLAN device (and, with
    DirectRouting, our routes via peers' public IPs).

    ``foreign`` holds main-table routes that are not ours (the kernel's connected routes, routes
    on other devices), by destination: pyflannel never replaces or deletes them, and a peer whose
    subnet one of them already routes is a conflict, not a route to write.
    """

    neighs: dict[IPAddress, str] = field(default_factory=dict)
    fdb: set[Fdb] = field(default_factory=set)
    routes: dict[IPNetwork, Route] = field(default_factory=dict)
    foreign: dict[IPNetwork, Route] = field(default_factory=dict)


__all__ = [
    "IPV6_ROUTE_METRIC",
    "Fdb",
    "IPAddress",
    "IPNetwork",
    "KernelState",
    "Link",
    "Neigh",
    "PeerEntries",
    "Route",
    "RouteEntry",
    "RoutePath",
    "VxlanSpec",
]
