"""From peer leases to kernel entries, one peer at a time: the VXLAN backend's per-peer entries
fed to :class:`~pyflannel.kernel.sync.KernelSync`, with the warnings an operator needs.

One PeerSync per VXLAN device: ``flannel.<VNI>`` takes each lease's IPv4 half,
``flannel-v6.<VNI>`` its IPv6 half (the scope's Network says which); both see every lease event.

The daemon tells it which peers changed (a lease event), and it plans only their keys; kernel
notifications touch only the keys they name; a full sync (start, resync, a device change)
compares everything.  Each problem (a lease skipped as unsafe, a route that conflicts with one
not ours, a kernel operation refused) is logged once per distinct cause, never per sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

import structlog

from pyflannel.backend.vxlan import PeerScope, peer_entries
from pyflannel.ipnet import SubnetKey
from pyflannel.kernel.codec import Parsed
from pyflannel.kernel.monitor import Overflow
from pyflannel.kernel.plan import Keys, Ownership
from pyflannel.kernel.records import IPNetwork, RouteEntry
from pyflannel.kernel.sync import KernelSync, Notified, SyncResult, describe_route
from pyflannel.lease import Lease
from pyflannel.stats import Stats

log = structlog.get_logger("pyflannel")

#: Peers computed and written per chunk of a full set (see :meth:`PeerSync.sync_all`): small
#: enough that the kernel starts on the routes early, large enough to keep the batches full.
CHUNK = 1000


class PeerSync:
    """The peers' entries on our VXLAN device (see the module docstring)."""

    def __init__(
        self,
        open_kernel: Callable[[int, Ownership], KernelSync],
        dev: int,
        scope: PeerScope,
        *,
        direct_routing: bool = False,
        stats: Stats | None = None,
        name: str = "",
    ) -> None:
        self.scope = scope
        # The device's name on every log line (two devices on a dual-stack host); bound once.
        self._log = log.bind(device=name) if name else log
        self._stats = stats or Stats()
        self._direct = direct_routing
        self.kernel = open_kernel(dev, self.ownership(dev))
        # The last warning per subnet (skipped lease, route conflict): one line per distinct
        # problem; bounded by the keys under subnets/ (an entry goes when its lease goes).
        self._skipped: dict[IPNetwork, str] = {}
        self._conflicts: dict[IPNetwork, RouteEntry] = {}

    @property
    def peers(self) -> int:
        """How many peers are wanted in the kernel."""
        return len(self.kernel.desired.peers)

    def ownership(self, dev: int) -> Ownership:
        """Which routes are ours with the device at index *dev*."""
        direct = (self.scope.network, self.scope.subnet_len) if self._direct else None
        return Ownership(dev, direct)

    def update(self, key: SubnetKey, lease: Lease | None) -> Keys:
        """The lease on *key* is now *lease* (None: gone); returns the keys to sync.

        Only one half is this device's (the scope's family): a key without one (an IPv6-only
        peer on the IPv4 device, an IPv4-only one on the IPv6 device) changes nothing here.
        """
        subnet = self.scope.half(key)
        if subnet is None:
            return Keys()
        if lease is None or subnet == self.scope.own_subnet:
            self._skipped.pop(subnet, None)
            self._conflicts.pop(subnet, None)
            return self.kernel.set_peer(subnet, None)
        entries = peer_entries(
            lease,
            self.kernel.dev,
            self.scope,
            direct_routing=self._direct,
            is_onlink=self.kernel.route_is_onlink,
        )
        if isinstance(entries, str):
            if self._skipped.get(subnet) != entries:
                self._skipped[subnet] = entries
                self._log.warning("peer_skipped", subnet=str(subnet), reason=entries)
            return self.kernel.set_peer(subnet, None)
        self._skipped.pop(subnet, None)
        return self.kernel.set_peer(subnet, entries)

    def retarget(self, dev: int, leases: Iterable[Lease]) -> None:
        """The device was re-created with index *dev*: every peer's entries again."""
        self.kernel.retarget(dev, self.ownership(dev))
        self.set_all(leases)

    def set_all(self, leases: Iterable[Lease]) -> None:
        """Recompute every peer's entries (start, a re-created device, DirectRouting resync)."""
        self.kernel.desired.clear()
        for lease in leases:
            self.update(lease.key, lease)

    def sync_all(self, leases: Iterable[Lease], reason: str, *, reload: bool = False) -> SyncResult:
        """Recompute every peer's entries and make the kernel match (start, a DirectRouting
        resync), in chunks of :data:`CHUNK` peers: the kernel writes one chunk's routes while
        the next is computed (see KernelSync.sync_chunks).  With *reload*, re-read the kernel
        first."""
        started = time.monotonic()
        if reload:
            self.kernel.reload()
        self.kernel.desired.clear()
        result = self.kernel.sync_chunks(self._chunks(leases))
        self._done(result, reason, started)
        return result

    def _chunks(self, leases: Iterable[Lease]) -> Iterator[Keys]:
        """Set the peers of *leases*, yielding the keys of every CHUNK of them."""
        keys, n = Keys(), 0
        for lease in leases:
            keys.add(self.update(lease.key, lease))
            n += 1
            if n == CHUNK:
                yield keys
                keys, n = Keys(), 0
        yield keys

    def poll(self, msgs: list[Parsed] | Overflow | None = None) -> Notified:
        """Fold kernel notifications (*msgs* read from a shared socket, or those queued on the
        device's own); see :meth:`KernelSync.poll`."""
        return self.kernel.poll(msgs)

    def sync(self, keys: Keys | None, reason: str, *, reload: bool = False) -> SyncResult:
        """Compare and fix *keys* (None: every key); with *reload*, re-read the kernel first."""
        started = time.monotonic()
        if reload:
            self.kernel.reload()
        result = self.kernel.sync(keys)
        self._done(result, reason, started)
        return result

    def _done(self, result: SyncResult, reason: str, started: float) -> None:
        report = result.report
        self._stats.reconciled(time.monotonic() - started, report.applied, report.failed)
        self._report(result, reason, started)

    def _report(self, result: SyncResult, reason: str, started: float) -> None:
        p, report = result.plan, result.report
        for want, have in p.conflicts:
            if self._conflicts.get(want.dst) != have:
                self._conflicts[want.dst] = have
                names = {}
                if have.oif is not None:
                    names[have.oif] = self.kernel.link_name(have.oif) or f"#{have.oif}"
                existing = describe_route(have.route, names)
                self._log.warning(
                    "route_conflict",
                    subnet=str(want.dst),
                    wanted=describe_route(want),
                    existing=existing,
                    action="left alone; the peer is not routed through the overlay",
                )
        if p.empty:
            self._log.debug("reconciled", reason=reason, changes=0, peers=self.peers)
            return
        self._log.info(
            "reconciled",
            reason=reason,
            peers=self.peers,
            neigh_set=len(p.set_neighs),
            fdb_set=len(p.set_fdb),
            route_set=len(p.set_routes),
            route_del=len(p.del_routes),
            neigh_del=len(p.del_neighs),
            fdb_del=len(p.del_fdb),
            failed=report.failed,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        # At most a few lines: a batch of 10,000 failures is one summary, not 10,000 lines.
        for err in report.errors[:5]:
            self._log.warning(
                "kernel_op_failed", op=err.op, target=err.target, errno=err.errno, error=str(err)
            )
        if report.failed > 5:
            self._log.warning("kernel_ops_failed", more=report.failed - 5, reason=reason)


__all__ = ["PeerSync"]
