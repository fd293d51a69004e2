"""Plain records of the kernel state pyflannel manages; pure, shared by the planner, the VXLAN
backend and the netlink adapter (which alone turns them into netlink requests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network


@dataclass(frozen=True)
class Link:
    """A network device as the kernel reports it."""

    index: int
    name: str
    mac: str
    mtu: int
    up: bool = False
    addresses: tuple[IPv4Interface, ...] = ()


@dataclass(frozen=True, slots=True)
class Neigh:
    """A permanent neighbour on the VXLAN device: overlay IP ``ip`` is at VTEP MAC ``mac``."""

    ip: IPv4Address
    mac: str


@dataclass(frozen=True, slots=True)
class Fdb:
    """A permanent ``self`` FDB entry on the VXLAN device: VTEP ``mac`` is reached at ``dst``."""

    mac: str
    dst: IPv4Address


@dataclass(frozen=True, slots=True)
class Route:
    """A main-table route: ours to a peer subnet (onlink via its VTEP address, or direct via its
    public IP), or one seen in the kernel (which may have no gateway)."""

    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int | None  # None: let the kernel choose (direct routing)
    onlink: bool


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """A main-table IPv4 route as the kernel reports it, on any device: what the mirror shows
    of routes pyflannel must not touch (another device's, the kernel's connected ones) and of
    every route on the VXLAN device, gateway or not."""

    dst: IPv4Network
    gateway: IPv4Address | None
    oif: int | None
    protocol: int
    scope: int
    kind: int  # rtm_type: 1 unicast, 6 blackhole, 7 unreachable...
    priority: int = 0
    onlink: bool = False

    @property
    def route(self) -> Route:
        """The same route as a :class:`Route` (what a delete or a log line names)."""
        return Route(self.dst, self.gateway, self.oif, self.onlink)


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
    local: IPv4Address
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

    neighs: dict[IPv4Address, str] = field(default_factory=dict)
    fdb: set[Fdb] = field(default_factory=set)
    routes: dict[IPv4Network, Route] = field(default_factory=dict)
    foreign: dict[IPv4Network, Route] = field(default_factory=dict)


__all__ = [
    "Fdb",
    "KernelState",
    "Link",
    "Neigh",
    "PeerEntries",
    "Route",
    "RouteEntry",
    "RoutePath",
    "VxlanSpec",
]
