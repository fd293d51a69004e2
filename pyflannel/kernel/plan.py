"""Level-triggered reconciliation: plan the difference between desired and actual kernel state
(pure), then apply it (best effort, in a safe order).

Watch events and the periodic resync both end here, so an entry deleted by hand comes back and
an entry no lease backs goes away, whatever the reason it drifted.

Order: neighbours, then FDB entries, then routes when adding (a route must never point at a
VTEP address that does not resolve); routes first when removing.  A peer whose neighbour or FDB
entry could not be written does not get its route.

Ownership: only entries on our device (and our DirectRouting routes) are ever replaced or
deleted.  A wanted route whose destination the kernel already routes some other way (a
connected route of the underlay, a route on another device) is reported as a conflict and left
alone: replacing it could cut the host off its underlay, etcd included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Protocol

from pyflannel.errors import KernelError
from pyflannel.kernel.records import Fdb, KernelState, Neigh, Route


@dataclass(frozen=True)
class Plan:
    """Kernel operations, grouped by kind; each tuple is applied in order."""

    set_neighs: tuple[Neigh, ...] = ()
    set_fdb: tuple[Fdb, ...] = ()
    set_routes: tuple[Route, ...] = ()
    del_routes: tuple[Route, ...] = ()
    del_neighs: tuple[Neigh, ...] = ()
    del_fdb: tuple[Fdb, ...] = ()
    #: (wanted route, the route not ours that already has its destination): not written.
    conflicts: tuple[tuple[Route, Route], ...] = ()
    #: VTEP address -> MAC of every desired neighbour, so a route can be held back when its
    #: peer's FDB entry failed even though the neighbour itself needed no change.
    vtep_macs: dict[IPv4Address, str] = field(default_factory=dict)

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


def _route_matches(want: Route, have: Route) -> bool:
    # A direct route names no device: the kernel picks the underlay, whatever it is.
    return (
        want.gateway == have.gateway
        and want.onlink == have.onlink
        and (want.oif is None or want.oif == have.oif)
    )


def plan(desired: KernelState, actual: KernelState) -> Plan:
    """Return the operations that turn *actual* into *desired*."""
    return Plan(
        set_neighs=tuple(
            Neigh(ip, mac)
            for ip, mac in sorted(desired.neighs.items())
            if actual.neighs.get(ip) != mac
        ),
        set_fdb=tuple(
            sorted((f for f in desired.fdb if f not in actual.fdb), key=lambda f: (f.mac, f.dst))
        ),
        set_routes=tuple(
            r
            for dst, r in sorted(desired.routes.items())
            if dst not in actual.foreign
            and (dst not in actual.routes or not _route_matches(r, actual.routes[dst]))
        ),
        del_routes=tuple(
            r for dst, r in sorted(actual.routes.items()) if dst not in desired.routes
        ),
        del_neighs=tuple(
            Neigh(ip, mac) for ip, mac in sorted(actual.neighs.items()) if ip not in desired.neighs
        ),
        del_fdb=tuple(
            sorted((f for f in actual.fdb if f not in desired.fdb), key=lambda f: (f.mac, f.dst))
        ),
        conflicts=tuple(
            (r, actual.foreign[dst])
            for dst, r in sorted(desired.routes.items())
            if dst in actual.foreign
        ),
        vtep_macs=dict(desired.neighs),
    )


class KernelWriter(Protocol):
    """The part of :class:`~pyflannel.kernel.netlink.Netlink` that :func:`apply` uses."""

    def replace_neigh(self, dev: int, n: Neigh) -> None: ...
    def delete_neigh(self, dev: int, n: Neigh) -> None: ...
    def replace_fdb(self, dev: int, f: Fdb) -> None: ...
    def delete_fdb(self, dev: int, f: Fdb) -> None: ...
    def replace_route(self, r: Route) -> None: ...
    def delete_route(self, r: Route) -> None: ...


@dataclass
class ApplyReport:
    """What :func:`apply` did."""

    applied: int = 0
    errors: list[KernelError] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many operations failed."""
        return len(self.errors)


def apply(p: Plan, nl: KernelWriter, dev: int) -> ApplyReport:
    """Execute *p*; every operation is attempted, failures are collected, never raised."""
    report = ApplyReport()

    def run(fn: Callable[..., None], *args: object) -> bool:
        try:
            fn(*args)
        except KernelError as exc:
            report.errors.append(exc)
            return False
        report.applied += 1
        return True

    failed_ips = {n.ip for n in p.set_neighs if not run(nl.replace_neigh, dev, n)}
    failed_macs = {f.mac for f in p.set_fdb if not run(nl.replace_fdb, dev, f)}
    for r in p.set_routes:
        gw = r.gateway
        if gw is not None and (gw in failed_ips or p.vtep_macs.get(gw) in failed_macs):
            continue  # without its neighbour or FDB entry the route would blackhole the peer
        run(nl.replace_route, r)
    for r in p.del_routes:
        run(nl.delete_route, r)
    for n in p.del_neighs:
        run(nl.delete_neigh, dev, n)
    for f in p.del_fdb:
        run(nl.delete_fdb, dev, f)
    return report
