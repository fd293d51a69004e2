"""``--ip-blackhole-route``: a blackhole route for our own lease subnet, so that traffic to
its unassigned addresses is dropped on this host instead of leaving by the default route.

flanneld (v0.28+) adds ``blackhole <subnet>`` at metric 0 when it finds none, every
``--iptables-resync`` seconds, and never removes it.  At metric 0 it fights the bridge that
carries the containers: added before the bridge's address, it wins over the connected route
the kernel adds next (the containers become unreachable); added after, the kernel refuses it
(EEXIST, logged every 5 s).  pyflannel installs it at the highest metric, :data:`METRIC`, so
any other route to the subnet (the bridge's connected one) wins and the blackhole catches only
what nothing else routes.  It is put back when deleted; a blackhole already there (flanneld's,
at any metric) is kept.  Like every kernel entry it is kept on exit (restarts are hitless).

Ours are told apart by that metric: at start, one of ours for another subnet of the Network
(a previous lease) is removed, and so is ours for our subnet when the flag is off.

With IPv6 the same is done for our IPv6 subnet inside the IPv6Network (flanneld adds both:
AddBlackholeV4Route, AddBlackholeV6Route), one keeper per family.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import structlog

from pyflannel.errors import KernelError
from pyflannel.ipnet import contains
from pyflannel.kernel.records import IPNetwork

log = structlog.get_logger("pyflannel")

#: The metric of pyflannel's blackhole route: the lowest preference there is.
METRIC = 2**32 - 1


class BlackholeDoor(Protocol):
    """The kernel operations this needs (:class:`~pyflannel.kernel.netlink.Netlink`)."""

    def add_blackhole(self, dst: IPNetwork, metric: int) -> None:
        """Add a blackhole route (present already is fine)."""
        ...

    def del_blackhole(self, dst: IPNetwork, metric: int) -> None:
        """Delete a blackhole route (gone already is fine)."""
        ...


def stale(
    found: Iterable[tuple[IPNetwork, int]], keep: IPNetwork | None, network: IPNetwork
) -> list[IPNetwork]:
    """Our blackholes (by metric) inside *network* other than *keep*: left by a previous
    lease, or by a run with the flag on."""
    return [
        dst for dst, metric in found if metric == METRIC and contains(network, dst) and dst != keep
    ]


class BlackholeRoute:
    """Keeps (or, when not *wanted*, removes) our blackhole route for *subnet*."""

    def __init__(
        self, door: BlackholeDoor, subnet: IPNetwork, network: IPNetwork, wanted: bool
    ) -> None:
        self._door = door
        self.subnet = subnet
        self._network = network
        self.wanted = wanted

    def start(self, found: list[tuple[IPNetwork, int]]) -> bool:
        """Given the kernel's main-table blackholes (destination, metric): remove our stale
        ones and add ours unless a blackhole for the subnet is there.  True when some were
        removed (what the kernel holds for other subnets changed)."""
        removed = stale(found, self.subnet if self.wanted else None, self._network)
        for dst in removed:
            self._door.del_blackhole(dst, METRIC)
            log.info("blackhole_route_removed", subnet=str(dst), metric=METRIC)
        if not self.wanted:
            return bool(removed)
        kept = [metric for dst, metric in found if dst == self.subnet]
        if kept:
            log.info("blackhole_route_kept", subnet=str(self.subnet), metric=kept[0])
        else:
            self._door.add_blackhole(self.subnet, METRIC)
            log.info("blackhole_route_added", subnet=str(self.subnet), metric=METRIC)
        return bool(removed)

    def check(self, present: bool) -> None:
        """Put the route back if it is gone (*present*: the kernel holds a blackhole for the
        subnet); a refusal is logged, and tried again at the next check."""
        if not self.wanted or present:
            return
        try:
            self._door.add_blackhole(self.subnet, METRIC)
        except KernelError as exc:
            log.warning("blackhole_route_failed", subnet=str(self.subnet), error=str(exc))
            return
        log.warning("blackhole_route_restored", subnet=str(self.subnet), metric=METRIC)
