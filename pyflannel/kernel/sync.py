"""Keeps the kernel's entries for the VXLAN device equal to what the peer leases want, with
work in proportion to the change.

It owns the desired entries (:class:`~pyflannel.kernel.plan.Desired`, updated peer by peer),
a mirror of what the kernel holds (:class:`~pyflannel.kernel.mirror.Mirror`, loaded from dumps
and kept current by netlink notifications), and the batched writer
(:class:`~pyflannel.kernel.rtnl.Rtnl`).  Nothing is dumped per event:

* a lease event changes the desired entries of one peer and plans just its keys;
* a notification (an entry changed by anybody) folds into the mirror and plans just the keys it
  touched; our own writes echo back too and then find nothing to do;
* a change of the device itself, or lost notifications (ENOBUFS), re-dumps everything; so does
  the periodic resync, the safety net.

The notification socket is opened before the first dump: a notification queued while a dump
runs is folded after it, and since notifications come in order the mirror ends at the latest
state of every key.

One KernelSync per device, of the device's address family (``flannel.<VNI>``: IPv4,
``flannel-v6.<VNI>``: IPv6).  On a dual-stack host both share one notification socket (made by
:func:`open_monitor` for both families' groups, read once per poll and folded into each): a
second socket would receive, parse and buffer every neighbour and FDB notification twice.  An
IPv4-only host subscribes to no IPv6 group at all.
"""

from __future__ import annotations

import errno as errnos
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from pyflannel.errors import KernelError
from pyflannel.kernel import codec
from pyflannel.kernel.mirror import Mirror
from pyflannel.kernel.monitor import (
    RTNLGRP_IPV4_ROUTE,
    RTNLGRP_IPV6_ROUTE,
    RTNLGRP_LINK,
    RTNLGRP_NEIGH,
    Monitor,
    Overflow,
)
from pyflannel.kernel.plan import (
    ApplyReport,
    Desired,
    Keys,
    Op,
    Ownership,
    Plan,
    apply,
    merge_plans,
    plan,
    raw_route,
)
from pyflannel.kernel.records import Fdb, IPAddress, IPNetwork, Link, Neigh, PeerEntries, Route
from pyflannel.kernel.rtnl import Request, Rtnl

#: Address changes (the VTEP address flushed by hand) come in these groups.
RTNLGRP_IPV4_IFADDR = 5
RTNLGRP_IPV6_IFADDR = 9
GROUPS = (RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_IFADDR)
#: The groups an IPv6 device adds (links and neighbours/FDB are shared by both families).
GROUPS_IPV6 = (RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_IFADDR)


def groups_for(versions: Sequence[int]) -> tuple[int, ...]:
    """The notification groups the devices of IP *versions* need."""
    out: tuple[int, ...] = (RTNLGRP_LINK, RTNLGRP_NEIGH)
    if 4 in versions:
        out += (RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_IFADDR)
    if 6 in versions:
        out += GROUPS_IPV6
    return out


def open_monitor(versions: Sequence[int], netns: str | None = None) -> Monitor:
    """One notification socket for the devices of IP *versions* (see the module docstring)."""
    return Monitor(netns, groups=groups_for(versions))


#: Notifications folded per poll.
POLL_LIMIT = 4096
#: A delete of what is already gone is not a failure.
_GONE = {errnos.ENOENT, errnos.ESRCH, errnos.ENODEV, errnos.EADDRNOTAVAIL}


@dataclass
class Notified:
    """What the notifications read by :meth:`KernelSync.poll` changed."""

    keys: Keys = field(default_factory=Keys)
    device: bool = False  # our device changed (down, MTU, address, deleted): check and re-dump
    resync: bool = False  # the mirror cannot tell what the kernel holds: re-dump
    reloaded: bool = False  # a stepped re-read finished and its mirror is in


@dataclass(frozen=True)
class SyncResult:
    """One :meth:`KernelSync.sync`: the plan and what applying it did."""

    plan: Plan
    report: ApplyReport


class KernelSync:
    """The peer entries of VXLAN device *dev* of IP *version* 4 or 6, in the current namespace
    or *netns*.  *monitor*: a notification socket shared with the other family's KernelSync
    (the caller reads it with :meth:`read_notifications` of either, hands the messages to
    :meth:`poll` of both, and closes it); None: a socket of its own, for its family's groups.
    """

    def __init__(
        self,
        dev: int,
        owner: Ownership,
        netns: str | None = None,
        *,
        version: int = 4,
        monitor: Monitor | None = None,
    ) -> None:
        # Before any dump: see the module docstring.
        self._own_monitor = monitor is None
        if monitor is None:
            monitor = Monitor(netns, groups=groups_for((version,)))
        self._monitor = monitor
        self._rtnl = Rtnl(netns)
        self._netns = netns
        self.version = version
        self.family = codec.AF_INET6 if version == 6 else codec.AF_INET
        self.dev = dev
        self.owner = owner
        self.desired = Desired(dev, version=version)
        self.mirror = Mirror(dev, self.desired)
        # A re-read made in steps (see start_reload), and the notifications folded while it
        # runs, to fold again into the mirror it builds.
        self._reload: _Reload | None = None

    def close(self) -> None:
        """Close its netlink sockets (a shared notification socket is the caller's)."""
        if self._own_monitor:
            self._monitor.close()
        self._drop_reload()
        self._rtnl.close()

    def fileno(self) -> int:
        """The notification socket, for ``select``."""
        return self._monitor.fileno()

    def retarget(self, dev: int, owner: Ownership) -> None:
        """The device was re-created with index *dev*: forget the mirror and every desired
        entry (routes name the device); the caller sets the peers again and reloads."""
        self.dev, self.owner = dev, owner
        self.desired.clear()
        self.desired.dev = dev
        self.mirror = Mirror(dev, self.desired)
        self._drop_reload()  # its mirror is of the old device

    def set_peer(self, subnet: IPNetwork, entries: PeerEntries | None) -> Keys:
        """Want *entries* for the peer on *subnet* (None: nothing); returns the keys to sync."""
        return self.desired.set(subnet, entries)

    # --- reading the kernel ----------------------------------------------------------------

    def reload(self) -> None:
        """Rebuild the mirror from full dumps of the device's entries and the main table."""
        mirror = Mirror(self.dev, self.desired)
        self._rtnl.load_mirror(mirror)
        self.mirror = mirror
        self._drop_reload()  # a stepped re-read under way would swap in an older one

    def start_reload(self) -> None:
        """Begin a re-read of the kernel made in steps (:meth:`reload_step`), so that lease
        events and notifications keep being served meanwhile (a re-read takes ~0.3 s at
        10,000 peers); :meth:`poll` swaps the new mirror in when it is complete.

        Correctness: every notification folded while the re-read dumps is folded again into
        the new mirror.  Notifications come in order and each sets the state of its key, so
        whatever point of that sequence the dump saw, the replay ends at the latest state.
        """
        if self._reload is None:
            self._reload = _Reload(self.dev, self._netns, self.desired)

    def reload_step(self) -> bool:
        """Advance the re-read begun by :meth:`start_reload` by about a millisecond; True
        while it has more to do (the next :meth:`poll` swaps the new mirror in)."""
        return self._reload is not None and self._reload.step()

    @property
    def reload_pending(self) -> bool:
        """True from :meth:`start_reload` until :meth:`poll` swaps the new mirror in (or the
        re-read is dropped)."""
        return self._reload is not None

    def _drop_reload(self) -> None:
        if self._reload is not None:
            self._reload.close()
            self._reload = None

    def read_notifications(self) -> list[codec.Parsed] | Overflow:
        """The notifications queued now on its socket (shared or not), for :meth:`poll`.

        A bounded helping (the rest stays queued, and select says so): after a bulk write tens
        of thousands of echoes would otherwise be parsed into one list at once."""
        return self._monitor.read(POLL_LIMIT)

    def poll(self, msgs: list[codec.Parsed] | Overflow | None = None) -> Notified:
        """Fold notifications into the mirror (*msgs*, read from a shared socket; None: those
        queued now on its own); say what they touched."""
        out = Notified()
        if msgs is None:
            msgs = self.read_notifications()
        if isinstance(msgs, Overflow):
            out.resync = True
            self._drop_reload()  # what it would replay is incomplete: re-read for real
            return out
        for m in msgs:
            if isinstance(m, codec.AddrMsg):
                # Only its family's: the IPv4 device's IPv6 link-local address is nothing to it.
                out.device |= m.index == self.dev and m.family == self.family
                continue
            if isinstance(m, codec.LinkMsg) and m.index != self.dev and self.owner.direct:
                # A link going down drops its routes without a notification: with
                # DirectRouting our routes may be on it (rare: re-read everything).
                out.resync = True
            touched = self.mirror.apply(m)
            if touched.empty:
                continue
            out.device |= touched.device
            out.resync |= touched.resync
            out.keys.neighs.update(touched.neighs)
            out.keys.macs.update(touched.fdb)
            out.keys.routes.update(touched.routes)
        if self._reload is not None:
            self._reload.replay.extend(msgs)
            if self._reload.done():
                out.reloaded = self._swap(self._reload)
                out.resync |= not out.reloaded
                self._reload = None
        return out

    def _swap(self, r: _Reload) -> bool:
        if r.mirror is None:
            return False
        for m in r.replay:
            r.mirror.apply(m)
        self.mirror = r.mirror
        return True

    def device(self) -> Link | None:
        """Our device as the kernel has it now, with its addresses of our family; None if it
        is gone."""
        link = self._rtnl.link(self.dev)
        if link is None:
            return None
        found = [
            (a.local or a.address, a.prefixlen)
            for a in self._rtnl.addresses(self.dev, self.family)
            if a.family == self.family and a.index == self.dev
        ]
        if self.version == 6:
            addrs6 = tuple(
                IPv6Interface((IPv6Address(raw or bytes(16)), plen)) for raw, plen in found
            )
            return Link(link.index, link.name, link.mac, link.mtu, link.up, addresses6=addrs6)
        addrs = tuple(IPv4Interface((IPv4Address(raw or bytes(4)), plen)) for raw, plen in found)
        return Link(link.index, link.name, link.mac, link.mtu, link.up, addrs)

    def route_is_onlink(self, ip: IPAddress) -> bool:
        """True when the kernel reaches *ip* without a gateway (DirectRouting's test); a raw
        ``route get``: pyroute2's leaks some 300 bytes a call, and this runs per peer."""
        route = self._rtnl.route_get(ip)
        return route is not None and route.gateway is None and route.oif != self.dev

    def link_name(self, index: int) -> str | None:
        """The name of link *index* (for log lines), or None."""
        link = self._rtnl.link(index)
        return link.name if link is not None else None

    # --- writing ----------------------------------------------------------------------------

    def sync(self, keys: Keys | None = None) -> SyncResult:
        """Make the kernel match the desired entries for *keys* (None: every key, compared
        with the mirror in its compact form first)."""
        if keys is None:
            keys = self.mirror.suspects(self.desired, self.owner)
        p = plan(self.desired, self.mirror, self.owner, keys)
        return SyncResult(p, apply(p, self) if not p.empty else ApplyReport())

    def sync_chunks(self, chunks: Iterable[Keys]) -> SyncResult:
        """What :meth:`sync` of every key does after every peer is set, for peers set chunk by
        chunk as *chunks* is iterated (each item: the keys of the peers just set).

        Each chunk is compared with the mirror in compact form (as a resync compares) as soon
        as it is set; the keys that differ are planned, their neighbours and FDB entries
        written, and their routes handed to a helper thread that writes them on a socket of
        its own: the kernel installs chunk k's routes (most of a bulk's time: ~0.2 ms each, in
        a ``send`` that releases the GIL) while chunk k+1 is computed.  A route still follows
        its own neighbour and FDB entry.  Last, the keys the kernel holds and no peer wants.

        Nothing written here is folded into the mirror (the echoes are, when read): every key
        is planned once, and folding 30,000 entries would cost a quarter of a second.
        """
        plans: list[Plan] = []
        reports: list[ApplyReport] = []
        now = _Unfolded(self)
        later = _LaterWriter(self)
        try:
            for chunk in chunks:
                keys = self.mirror.differing(self.desired, chunk)
                if keys:
                    plans.append(plan(self.desired, self.mirror, self.owner, keys))
                    if not plans[-1].empty:
                        reports.append(apply(plans[-1], now, later))
            strays = self.mirror.strays(self.desired, self.owner)
            if strays:
                plans.append(plan(self.desired, self.mirror, self.owner, strays))
                if not plans[-1].empty:
                    reports.append(apply(plans[-1], now, later))
        finally:
            later.close()  # waits for the routes; raises what writing them raised
        report = ApplyReport()
        for r in reports:
            report.applied += r.applied
            report.errors.extend(r.errors)
        return SyncResult(merge_plans(plans), report)

    def write(self, ops: Sequence[Op]) -> dict[int, KernelError]:
        """Encode *ops* and write them in batches; failures by index (see BatchWriter)."""
        failed = self.write_on(self._rtnl, ops)
        # The kernel now holds what we wrote: fold it into the mirror at once, so that a plan
        # made before the echoes are read does not write it again; the echoes then change
        # nothing.  Not for a bulk write (start-up): its echoes are read before anything plans
        # those keys again, and folding 30,000 entries twice costs half a second.
        if len(ops) > POLL_LIMIT:
            return failed
        for i, op in enumerate(ops):
            if i not in failed:
                msg = self._as_message(op)
                if msg is not None:
                    self.mirror.apply(msg)
        return failed

    def write_on(self, rtnl: Rtnl, ops: Sequence[Op]) -> dict[int, KernelError]:
        """Encode *ops* and write them on *rtnl*; failures by index (see BatchWriter)."""
        # A generator: the writer encodes batch k+1 while the kernel handles batch k.
        result = rtnl.write(Request(str(i), self._encode(op)) for i, op in enumerate(ops))
        failed: dict[int, KernelError] = {}
        for f in result.failures:
            i = int(f.label)
            op = ops[i]
            if op.kind.startswith("delete_") and f.errno in _GONE:
                continue
            message = f.message or f.strerror or os.strerror(f.errno)
            failed[i] = KernelError(op.kind, _target(op), f.errno, message)
        return failed

    def _as_message(self, op: Op) -> codec.NeighMsg | codec.RouteMsg | None:
        """The notification the kernel sends for *op* once done (None for a direct route,
        whose device the kernel chooses)."""
        t, new = op.target, op.kind.startswith("replace_")
        if isinstance(t, Neigh):
            kind = codec.RTM_NEWNEIGH if new else codec.RTM_DELNEIGH
            return codec.NeighMsg(
                kind, self.family, self.dev, codec.NUD_PERMANENT, 0, t.ip.packed,
                codec.mac_bytes(t.mac) if new else None,
            )  # fmt: skip
        if isinstance(t, Fdb):
            kind = codec.RTM_NEWNEIGH if new else codec.RTM_DELNEIGH
            state = codec.NUD_PERMANENT | codec.NUD_NOARP
            return codec.NeighMsg(
                kind, codec.AF_BRIDGE, self.dev, state, codec.NTF_SELF, t.dst.packed,
                codec.mac_bytes(t.mac),
            )  # fmt: skip
        if t.oif is None:
            return None
        raw = raw_route(t)
        return codec.RouteMsg(
            codec.RTM_NEWROUTE if new else codec.RTM_DELROUTE, self.family,
            t.dst.network_address.packed, t.dst.prefixlen, raw[1], codec.RT_TABLE_MAIN, raw[4],
            raw[5], raw[6], raw[7], t.gateway.packed if t.gateway is not None else None,
            t.oif, raw[0],
        )  # fmt: skip

    def _encode(self, op: Op) -> bytes:
        t = op.target
        if isinstance(t, Neigh):
            if op.kind == "replace_neigh":
                return codec.encode_neigh_replace(self.dev, t.ip, t.mac)
            return codec.encode_neigh_delete(self.dev, t.ip)
        if isinstance(t, Fdb):
            if op.kind == "replace_fdb":
                return codec.encode_fdb_replace(self.dev, t.mac, t.dst)
            return codec.encode_fdb_delete(self.dev, t.mac, t.dst)
        if op.kind == "replace_route":
            return codec.encode_route_replace(t)
        return codec.encode_route_delete(t)


class _Unfolded:
    """A :class:`KernelSync`'s writer that leaves the mirror to the echoes."""

    def __init__(self, ks: KernelSync) -> None:
        self._ks = ks

    def write(self, ops: Sequence[Op]) -> dict[int, KernelError]:
        """See BatchWriter."""
        return self._ks.write_on(self._ks._rtnl, ops)


class _LaterWriter:
    """Writes the operations submitted to it, in order, in a helper thread and on a netlink
    socket of its own (see :meth:`KernelSync.sync_chunks`); :meth:`close` waits for them."""

    def __init__(self, ks: KernelSync) -> None:
        self._ks = ks
        self._queue: queue.SimpleQueue[tuple[Sequence[Op], ApplyReport] | None] = (
            queue.SimpleQueue()
        )
        self._error: BaseException | None = None
        self._rtnl: Rtnl | None = None
        self._thread: threading.Thread | None = None

    def submit(self, ops: Sequence[Op], report: ApplyReport) -> None:
        """See LaterWriter."""
        if self._thread is None:
            # Opened on first use: a sync with nothing to write costs no socket and no thread.
            self._rtnl = Rtnl(self._ks._netns)
            self._thread = threading.Thread(target=self._run, name="netlink-later", daemon=True)
            self._thread.start()
        self._queue.put((ops, report))

    def _run(self) -> None:
        assert self._rtnl is not None
        while (item := self._queue.get()) is not None:
            ops, report = item
            if self._error is not None:
                continue  # the socket failed: what is left is not written (close raises)
            try:
                failed = self._ks.write_on(self._rtnl, ops)
            except (OSError, KernelError, codec.CodecError) as exc:
                self._error = exc
                continue
            report.applied += len(ops) - len(failed)
            report.errors.extend(failed[i] for i in sorted(failed))

    def close(self) -> None:
        """Wait until everything submitted is written; raise what writing raised."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class _Reload:
    """Dumps into a new mirror (of *canon*'s family) on a socket of its own, a step at a time
    (:meth:`step`), so that the caller serves lease events between the steps.

    Not a thread: one parsing 30,000 entries would hold the GIL in 5 ms slices (the
    interpreter's switch interval) against the thread serving an event, which then waited
    several such slices (etcd acknowledgement to route up to 11 ms, instead of 3).
    """

    def __init__(self, dev: int, netns: str | None, canon: Desired) -> None:
        self.mirror: Mirror | None = None
        self.replay: list[codec.Parsed] = []
        self._finished = False
        self._new = Mirror(dev, canon)
        self._rtnl: Rtnl | None = None
        self._steps: Iterator[None] | None = None
        try:
            self._rtnl = Rtnl(netns)
            self._steps = self._rtnl.load_mirror_steps(self._new)
        except OSError:
            self.close()  # mirror stays None: the caller re-reads at once

    def step(self) -> bool:
        """Read and fold about a millisecond's worth; True while there is more to do."""
        if self._steps is None:
            return False
        try:
            next(self._steps)
            return True
        except StopIteration:
            self.mirror = self._new
        except (OSError, KernelError, codec.CodecError):
            pass  # mirror stays None: the caller re-reads at once
        self.close()
        return False

    def done(self) -> bool:
        """True once every step is made (successfully or not)."""
        return self._finished

    def close(self) -> None:
        """Stop (unfinished, the mirror stays None) and close the socket."""
        self._finished = True
        self._steps = None
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None


def _target(op: Op) -> str:
    t = op.target
    if isinstance(t, Neigh):
        return f"{t.ip} lladdr {t.mac}"
    if isinstance(t, Fdb):
        return f"{t.mac} dst {t.dst}"
    return describe_route(t)


def describe_route(r: Route, names: dict[int, str] | None = None) -> str:
    """``10.5.7.0/24 via 10.5.7.0 dev #4 onlink``, as ``ip route`` would say it."""
    parts = [str(r.dst)]
    if r.gateway is not None:
        parts.append(f"via {r.gateway}")
    if r.oif is not None:
        parts.append(f"dev {(names or {}).get(r.oif, f'#{r.oif}')}")
    if r.onlink:
        parts.append("onlink")
    return " ".join(parts)


__all__ = [
    "GROUPS",
    "KernelSync",
    "Notified",
    "SyncResult",
    "describe_route",
    "groups_for",
    "open_monitor",
]
