"""Level-triggered reconciliation, in proportion to the change: plan the difference between the
desired entries and the kernel's for a set of keys (pure), then apply it in a safe order.

Watch events, kernel notifications and the periodic resync all end here.  An event plans only
the keys it touched (the changed peer's neighbour IP, VTEP MAC and subnet; an entry changed by
hand); a resync plans every key, desired or present.  So an entry deleted by hand comes back,
an entry no lease backs goes away, and one lease event costs the same at 10 peers or 10,000.

Order: neighbours, then FDB entries, then routes when adding (a route must never point at a
VTEP address that does not resolve); routes first when removing.  A peer whose neighbour or FDB
entry could not be written does not get its route.

Both families: one Desired (and one mirror) per device, of the device's address family; the
keys are then IPv4 or IPv6 addresses and networks, held as ints of 32 or 128 bits.

Ownership: only entries on our device (and, with DirectRouting, our "boot" routes via a gateway
to SubnetLen subnets of the Network) are ever replaced or deleted.  A wanted route whose
destination the kernel already routes some other way (a connected route of the underlay, a
route on another device) is a conflict and left alone: replacing it could cut the host off its
underlay, etcd included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from pyflannel.errors import KernelError
from pyflannel.ipnet import contains
from pyflannel.kernel.records import (
    IPV6_ROUTE_METRIC,
    Fdb,
    IPAddress,
    IPNetwork,
    KernelState,
    Neigh,
    PeerEntries,
    Route,
    RouteEntry,
)

RTPROT_KERNEL = 2
#: flanneld's routes carry proto "boot"; ours do too, so either daemon can take over the other's.
RTPROT_BOOT = 3


@dataclass
class Keys:
    """Kernel keys to compare: neighbour IPs, FDB MACs and route destinations."""

    neighs: set[IPAddress] = field(default_factory=set)
    macs: set[str] = field(default_factory=set)
    routes: set[IPNetwork] = field(default_factory=set)

    def add(self, other: Keys) -> None:
        """Merge *other* into these keys."""
        self.neighs |= other.neighs
        self.macs |= other.macs
        self.routes |= other.routes

    def add_entries(self, e: PeerEntries) -> None:
        """The keys of one peer's entries."""
        self.routes.add(e.route.dst)
        if e.neigh is not None:
            self.neighs.add(e.neigh.ip)
        if e.fdb is not None:
            self.macs.add(e.fdb.mac)

    def __bool__(self) -> bool:
        return bool(self.neighs or self.macs or self.routes)

    def __len__(self) -> int:
        return len(self.neighs) + len(self.macs) + len(self.routes)


#: One peer's entries in compact form: (neighbour IP, VTEP MAC, FDB value, route key, route
#: value, direct), the values being the very objects stored in the ``raw_*`` dicts (shared, not
#: copied); *direct* says whether the route value is in ``raw_direct`` (a direct route) or in
#: ``raw_routes``.
_Peer = tuple[
    int | None, bytes | None, "RawFdb | None", tuple[int, int], "RawRoutes | int | None", bool
]


def address_type(version: int) -> type[IPv4Address] | type[IPv6Address]:
    """IPv4Address or IPv6Address, for addresses held as ints."""
    return IPv6Address if version == 6 else IPv4Address


def network_type(version: int) -> type[IPv4Network] | type[IPv6Network]:
    """IPv4Network or IPv6Network, for networks held as (int, prefix length)."""
    return IPv6Network if version == 6 else IPv4Network


def default_metric(version: int) -> int:
    """The metric of a route pyflannel writes without one, as the kernel reports it."""
    return IPV6_ROUTE_METRIC if version == 6 else 0


class Desired:
    """The entries the peer leases want, indexed by kernel key and updated peer by peer, for
    a device of IP *version* 4 or 6 (every address and network is of that family).

    Only the compact form (ints and bytes, as the mirror holds the kernel's entries) is kept:
    at 10,000 peers objects per entry would cost several megabytes more, and a full comparison
    runs in C-speed dict lookups.  The planner gets records for the few keys it looks at from
    :meth:`neigh`, :meth:`fdb_dst` and :meth:`route`.
    """

    def __init__(self, dev: int | None = None, *, version: int = 4) -> None:
        #: Our device: a route ``via <gw> dev <dev> onlink`` is held as its gateway alone.
        self.dev = dev
        self.version = version
        self.metric = default_metric(version)  # our routes' metric: part of the usual form
        self._addr = address_type(version)
        self._net = network_type(version)
        self.peers: dict[IPNetwork, _Peer] = {}
        self.raw_neighs: dict[int, bytes] = {}
        self.raw_fdb: dict[bytes, RawFdb] = {}
        # Routes on a device, exactly as the mirror will hold them once written (see
        # RawRoutes); direct routes (the kernel picks the device) by gateway only.
        self.raw_routes: dict[tuple[int, int], RawRoutes] = {}
        self.raw_direct: dict[tuple[int, int], int | None] = {}

    def set(self, subnet: IPNetwork, entries: PeerEntries | None) -> Keys:
        """Make *entries* (None: nothing) the wanted entries of *subnet*; return the keys of
        its old and new entries, which are what to compare with the kernel now."""
        keys = Keys()
        old = self.peers.pop(subnet, None)
        if old is not None:
            nip, mac, fval, rkey, rval, direct = old
            keys.routes.add(subnet)
            # Only what this peer put there: two peers sharing a VTEP MAC is a misconfiguration
            # the last writer wins, but removing one must not take the other's entry away.
            if nip is not None:
                keys.neighs.add(self._addr(nip))
                if self.raw_neighs.get(nip) == mac:
                    del self.raw_neighs[nip]
            if mac is not None:
                keys.macs.add(mac.hex(":"))
                if fval is not None and self.raw_fdb.get(mac) == fval:
                    del self.raw_fdb[mac]
            if not direct:
                if rval is not None and self.raw_routes.get(rkey) == rval:
                    del self.raw_routes[rkey]
            elif rkey in self.raw_direct and self.raw_direct[rkey] == rval:
                del self.raw_direct[rkey]
        if entries is not None:
            keys.add_entries(entries)
            self.peers[subnet] = self._put(entries.neigh, entries.fdb, entries.route)
        return keys

    def _put(self, neigh: Neigh | None, fdb: Fdb | None, route: Route | None) -> _Peer:
        nip: int | None = None
        mac: bytes | None = None
        fval: RawFdb | None = None
        if neigh is not None:
            nip, mac = int(neigh.ip), _raw_mac(neigh.mac)
            self.raw_neighs[nip] = mac
        if fdb is not None:
            if neigh is None or fdb.mac != neigh.mac or mac is None:
                mac = _raw_mac(fdb.mac)
            fval = int(fdb.dst)  # the lease's own int (IPv4Address keeps it): shared
            self.raw_fdb[mac] = fval
        rkey: tuple[int, int] = (0, 0)
        rval: RawRoutes | int | None = None
        direct = False
        if route is not None:
            rkey = _raw_dst(route.dst)
            gw: int | None = None
            if route.gateway is not None:
                # The VTEP address is the neighbour's IP: share the int rather than copy it.
                same = neigh is not None and nip is not None and neigh.ip == route.gateway
                gw = nip if same else int(route.gateway)
            if route.oif is None:
                direct = True
                rval = self.raw_direct[rkey] = gw
            else:
                raw = (_raw_route(route, gw),)
                rval = self.raw_routes[rkey] = compact_routes(raw, self.dev, self.metric)
        return (nip, mac, fval, rkey, rval, direct)

    # --- what the planner looks up ---------------------------------------------------------

    def neigh(self, ip: IPAddress) -> str | None:
        """The VTEP MAC wanted for neighbour *ip*, or None."""
        mac = self.raw_neighs.get(int(ip))
        return None if mac is None else mac.hex(":")

    def fdb_dst(self, mac: str) -> IPAddress | None:
        """The remote wanted for VTEP *mac*, or None."""
        val = self.raw_fdb.get(_raw_mac(mac))
        return None if val is None else self._addr(fdb_remotes(val)[0])

    def route(self, dst: IPNetwork) -> Route | None:
        """The route wanted to *dst*, or None."""
        key = _raw_dst(dst)
        held = self.raw_routes.get(key)
        if held is not None:
            prio, _tos, oif, gw, _proto, _scope, _type, flags = expand_routes(
                held, self.dev, self.metric
            )[0]
            gateway = None if gw is None else self._addr(gw)
            return Route(dst, gateway, oif, bool(flags & _RTNH_F_ONLINK), prio)
        if key in self.raw_direct:
            gw = self.raw_direct[key]
            return Route(dst, None if gw is None else self._addr(gw), None, False)
        return None

    @classmethod
    def of(cls, state: KernelState, dev: int | None = None, *, version: int = 4) -> Desired:
        """The entries of *state*, not grouped by peer (for tests and tools), *dev* being
        the device whose usual routes are held compact, *version* their IP version."""
        d = cls(dev, version=version)
        for ip, mac in state.neighs.items():
            d._put(Neigh(ip, mac), None, None)
        for f in state.fdb:
            d._put(None, f, None)
        for r in state.routes.values():
            d._put(None, None, r)
        return d

    def keys(self) -> Keys:
        """Every key some peer wants."""
        routes = {self._net((n, plen)) for n, plen in (*self.raw_routes, *self.raw_direct)}
        return Keys(
            {self._addr(ip) for ip in self.raw_neighs},
            {mac.hex(":") for mac in self.raw_fdb},
            routes,
        )

    def clear(self) -> None:
        """Forget every peer (the device was re-created: routes name a new index)."""
        self.peers.clear()
        self.raw_neighs.clear()
        self.raw_fdb.clear()
        self.raw_routes.clear()
        self.raw_direct.clear()


#: A route in the mirror's compact form: (priority, tos, oif, gateway, protocol, scope, type,
#: flags), addresses as ints.
RawRoute = tuple[int, int, int | None, int | None, int, int, int, int]
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1
_RTNH_F_ONLINK = 4


def raw_route(r: Route) -> RawRoute:
    """*r* as the kernel reports it once pyflannel has written it (see codec.encode_route_*)."""
    return _raw_route(r, int(r.gateway) if r.gateway is not None else None)


def _raw_route(r: Route, gw: int | None) -> RawRoute:
    flags = _RTNH_F_ONLINK if r.onlink else 0
    return (r.priority, 0, r.oif, gw, RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST, flags)


#: Every route to one destination as the mirror and Desired hold it: the usual one alone, ours
#: ``via <gw> dev <our device> onlink`` with the family's metric (IPv4 0, IPv6 1024), as its
#: gateway (an int: 10,000 routes cost no tuples); anything else as the tuple of every route,
#: in the kernel's terms.
RawRoutes = int | tuple[RawRoute, ...]
#: The remotes of one FDB MAC: one as the int alone, several as a tuple.
RawFdb = int | tuple[int, ...]


def compact_routes(vals: tuple[RawRoute, ...], dev: int | None, metric: int = 0) -> RawRoutes:
    """*vals* in the :data:`RawRoutes` form for device *dev* (our routes' *metric*)."""
    if len(vals) == 1 and dev is not None:
        v = vals[0]
        gw = v[3]
        usual = (metric, 0, dev, gw, RTPROT_BOOT, 0, _RTN_UNICAST, _RTNH_F_ONLINK)
        if gw is not None and v == usual:
            return gw
    return vals


def expand_routes(held: RawRoutes, dev: int | None, metric: int = 0) -> tuple[RawRoute, ...]:
    """The routes a :data:`RawRoutes` value stands for."""
    if isinstance(held, int):
        usual = (
            metric,
            0,
            dev,
            held,
            RTPROT_BOOT,
            _RT_SCOPE_UNIVERSE,
            _RTN_UNICAST,
            _RTNH_F_ONLINK,
        )
        return (usual,)
    return held


def compact_fdb(remotes: tuple[int, ...]) -> RawFdb:
    """*remotes* (at least one) in the :data:`RawFdb` form."""
    return remotes[0] if len(remotes) == 1 else remotes


def fdb_remotes(held: RawFdb) -> tuple[int, ...]:
    """The remotes a :data:`RawFdb` value stands for."""
    return (held,) if isinstance(held, int) else held


def _raw_mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _raw_dst(dst: IPNetwork) -> tuple[int, int]:
    return int(dst.network_address), dst.prefixlen


@dataclass(frozen=True)
class Ownership:
    """Which routes are ours: those on device *dev* (not the kernel's own), and with
    DirectRouting (*direct* = (Network, SubnetLen)) our "boot" routes via a gateway to
    SubnetLen subnets of the Network on any device."""

    dev: int
    direct: tuple[IPNetwork, int] | None = None

    def owns(self, e: RouteEntry) -> bool:
        """True for a route pyflannel may replace or delete."""
        if e.protocol == RTPROT_KERNEL:
            return False
        if e.oif == self.dev:
            return True
        if self.direct is None or e.protocol != RTPROT_BOOT or e.gateway is None:
            return False
        network, subnet_len = self.direct
        return e.dst.prefixlen == subnet_len and contains(network, e.dst)


class View(Protocol):
    """What the kernel holds, by key (the mirror, or a :class:`KernelState` in tests)."""

    def neigh(self, ip: IPAddress) -> str | None:
        """The MAC of the permanent neighbour *ip* on our device, or None."""
        ...

    def fdb_dsts(self, mac: str) -> tuple[IPAddress, ...]:
        """The remotes of the permanent ``self`` FDB entry *mac* on our device."""
        ...

    def routes_to(self, dst: IPNetwork) -> Sequence[RouteEntry]:
        """Every main-table route to exactly *dst*, on any device."""
        ...

    def keys(self, owner: Ownership) -> Keys:
        """Every neighbour, FDB MAC and owned route destination present."""
        ...


@dataclass(frozen=True)
class Plan:
    """Kernel operations, grouped by kind; each tuple is applied in order."""

    set_neighs: tuple[Neigh, ...] = ()
    set_fdb: tuple[Fdb, ...] = ()
    set_routes: tuple[Route, ...] = ()
    del_routes: tuple[Route, ...] = ()
    del_neighs: tuple[Neigh, ...] = ()
    del_fdb: tuple[Fdb, ...] = ()
    #: (wanted route, a route not ours that already has its destination): not written.
    conflicts: tuple[tuple[Route, RouteEntry], ...] = ()
    #: VTEP address -> MAC of the desired neighbours of the routes to set, so a route can be
    #: held back when its peer's FDB entry failed even though the neighbour needed no change.
    vtep_macs: dict[IPAddress, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when the kernel already matches."""
        return not (
            self.set_neighs
            or self.set_fdb
            or self.set_routes
            or self.del_routes
            or self.del_neighs
            or self.del_fdb
        )

    @property
    def changes(self) -> int:
        """How many operations the plan holds."""
        return (
            len(self.set_neighs)
            + len(self.set_fdb)
            + len(self.set_routes)
            + len(self.del_routes)
            + len(self.del_neighs)
            + len(self.del_fdb)
        )


def _matches(want: Route, have: RouteEntry) -> bool:
    # A direct route names no device: the kernel picks the underlay, whatever it is.
    return (
        want.gateway == have.gateway
        and want.onlink == have.onlink
        and (want.oif is None or want.oif == have.oif)
    )


def plan(desired: Desired, actual: View, owner: Ownership, keys: Keys | None = None) -> Plan:
    """The operations that make the kernel match *desired* for *keys* (None: every key)."""
    if keys is None:
        keys = desired.keys()
        keys.add(actual.keys(owner))
    set_neighs: list[Neigh] = []
    del_neighs: list[Neigh] = []
    for ip in sorted(keys.neighs, key=int):
        want, have = desired.neigh(ip), actual.neigh(ip)
        if want is not None and want != have:
            set_neighs.append(Neigh(ip, want))
        elif want is None and have is not None:
            del_neighs.append(Neigh(ip, have))
    set_fdb: list[Fdb] = []
    del_fdb: list[Fdb] = []
    for mac in sorted(keys.macs):
        remote, remotes = desired.fdb_dst(mac), actual.fdb_dsts(mac)
        if remote is not None and remote not in remotes:
            set_fdb.append(Fdb(mac, remote))
        del_fdb.extend(Fdb(mac, d) for d in sorted(remotes, key=int) if d != remote)
    set_routes: list[Route] = []
    del_routes: list[Route] = []
    conflicts: list[tuple[Route, RouteEntry]] = []
    vtep_macs: dict[IPAddress, str] = {}
    for dst in sorted(keys.routes, key=_raw_dst):
        route = desired.route(dst)
        entries = actual.routes_to(dst)
        ours = [e for e in entries if owner.owns(e)]
        if route is not None:
            foreign = [e for e in entries if not owner.owns(e)]
            if foreign:
                conflicts.append((route, foreign[0]))
                continue
            keep = next((e for e in ours if _matches(route, e)), None)
            if keep is None:
                set_routes.append(route)
                vtep_mac = desired.neigh(route.gateway) if route.gateway is not None else None
                if route.gateway is not None and vtep_mac is not None:
                    vtep_macs[route.gateway] = vtep_mac
            # Another metric of the same destination (added by hand) is not backed by a lease;
            # a replace rewrites only the entry with our metric.
            ours = [e for e in ours if e is not keep and e.priority != route.priority]
        del_routes.extend(e.route for e in ours)
    return Plan(
        tuple(set_neighs),
        tuple(set_fdb),
        tuple(set_routes),
        tuple(del_routes),
        tuple(del_neighs),
        tuple(del_fdb),
        tuple(conflicts),
        vtep_macs,
    )


# --- applying ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One kernel operation: ``replace_neigh``, ``delete_neigh``, ``replace_fdb``,
    ``delete_fdb``, ``replace_route`` or ``delete_route`` of a record."""

    kind: str
    target: Neigh | Fdb | Route


class BatchWriter(Protocol):
    """Writes many operations at once (see :class:`~pyflannel.kernel.sync.KernelSync`)."""

    def write(self, ops: Sequence[Op]) -> dict[int, KernelError]:
        """Apply *ops* in order, each independently; return the failures by index.  Deleting
        what is already gone is not a failure."""
        ...


class LaterWriter(Protocol):
    """Writes operations after those handed to it before, while the caller goes on (see
    :meth:`~pyflannel.kernel.sync.KernelSync.sync_chunks`)."""

    def submit(self, ops: Sequence[Op], report: ApplyReport) -> None:
        """Write *ops* in order, each independently, after what was submitted before; count
        them and their failures into *report* (complete once the writer is closed)."""
        ...


@dataclass
class ApplyReport:
    """What :func:`apply` did."""

    applied: int = 0
    errors: list[KernelError] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many operations failed."""
        return len(self.errors)


def apply(p: Plan, writer: BatchWriter, later: LaterWriter | None = None) -> ApplyReport:
    """Execute *p* in two batches; every operation is attempted, failures are collected.

    With *later*, the second batch (routes, then deletions) is handed to it once the first
    is written, and the report is complete when *later* is closed.
    """
    report = ApplyReport()

    def run(ops: list[Op]) -> set[int]:
        if not ops:
            return set()
        failed = writer.write(ops)
        report.applied += len(ops) - len(failed)
        report.errors.extend(failed[i] for i in sorted(failed))
        return set(failed)

    first = [Op("replace_neigh", n) for n in p.set_neighs]
    first += [Op("replace_fdb", f) for f in p.set_fdb]
    failed = run(first)
    failed_ips = {p.set_neighs[i].ip for i in failed if i < len(p.set_neighs)}
    failed_macs = {p.set_fdb[i - len(p.set_neighs)].mac for i in failed if i >= len(p.set_neighs)}

    def held_back(r: Route) -> bool:
        # Without its neighbour or FDB entry the route would blackhole the peer.
        gw = r.gateway
        return gw is not None and (gw in failed_ips or p.vtep_macs.get(gw) in failed_macs)

    second = [Op("replace_route", r) for r in p.set_routes if not held_back(r)]
    second += [Op("delete_route", r) for r in p.del_routes]
    second += [Op("delete_neigh", n) for n in p.del_neighs]
    second += [Op("delete_fdb", f) for f in p.del_fdb]
    if later is not None:
        if second:
            later.submit(second, report)
    else:
        run(second)
    return report


def merge_plans(plans: Sequence[Plan]) -> Plan:
    """One plan holding the operations of *plans*, in order (for reporting a chunked sync)."""
    if len(plans) == 1:
        return plans[0]
    vtep_macs: dict[IPAddress, str] = {}
    for p in plans:
        vtep_macs.update(p.vtep_macs)
    return Plan(
        tuple(x for p in plans for x in p.set_neighs),
        tuple(x for p in plans for x in p.set_fdb),
        tuple(x for p in plans for x in p.set_routes),
        tuple(x for p in plans for x in p.del_routes),
        tuple(x for p in plans for x in p.del_neighs),
        tuple(x for p in plans for x in p.del_fdb),
        tuple(x for p in plans for x in p.conflicts),
        vtep_macs,
    )


# --- KernelState as a View (tests, and the pure planner's table tests) -------------------------


class StateView:
    """A :class:`View` of a :class:`KernelState`: its ``routes`` are "boot" routes as we write
    them, its ``foreign`` ones the kernel's own."""

    def __init__(self, state: KernelState) -> None:
        self._state = state
        self._fdb: dict[str, tuple[IPAddress, ...]] = {}
        for f in state.fdb:
            self._fdb[f.mac] = (*self._fdb.get(f.mac, ()), f.dst)
        self._routes: dict[IPNetwork, list[RouteEntry]] = {}
        for r in state.routes.values():
            self._routes.setdefault(r.dst, []).append(
                RouteEntry(r.dst, r.gateway, r.oif, RTPROT_BOOT, 0, 1, r.priority, r.onlink)
            )
        for r in state.foreign.values():
            self._routes.setdefault(r.dst, []).append(
                RouteEntry(r.dst, r.gateway, r.oif, RTPROT_KERNEL, 0, 1, r.priority, r.onlink)
            )

    def neigh(self, ip: IPAddress) -> str | None:
        """See :class:`View`."""
        return self._state.neighs.get(ip)

    def fdb_dsts(self, mac: str) -> tuple[IPAddress, ...]:
        """See :class:`View`."""
        return self._fdb.get(mac, ())

    def routes_to(self, dst: IPNetwork) -> Sequence[RouteEntry]:
        """See :class:`View`."""
        return self._routes.get(dst, ())

    def keys(self, owner: Ownership) -> Keys:
        """See :class:`View`."""
        owned: Iterable[IPNetwork] = (
            dst for dst, es in self._routes.items() if any(owner.owns(e) for e in es)
        )
        return Keys(set(self._state.neighs), set(self._fdb), set(owned))
