"""The composition root and lifecycle of the daemon.

Start-up, in flanneld's order: network config (waiting for it), external interface, VXLAN
device (its MAC goes into the lease), lease, device address, iptables rules, ``subnet.env``;
then the steady state, run by two threads (and a third that keeps the iptables rules):

* the watch thread lists the leases, watches for changes from the listing's revision, re-lists
  after compaction and retries with backoff while etcd is away; it only updates the
  :class:`~pyflannel.lease.LeaseTracker` and kicks the main thread;
* the main thread reconciles the kernel with the leases (on a kick and every
  ``--resync-interval``), renews the lease at expiry minus the margin, and re-acquires it if it
  vanished.

Nothing is torn down on exit: device, entries, iptables rules and lease stay, so a restart is
hitless.

There is one VXLAN device per address family the network enables (:mod:`pyflannel.overlay`:
``flannel.<VNI>``, ``flannel-v6.<VNI>``); each takes its half of every lease event, keeps its
own desired entries and mirror, and both are served by the same loop from one notification
socket.  A lease names our subnets of every family, and carries each device's MAC.

The main thread reports its progress as it goes (:meth:`Daemon._tick`): ``WATCHDOG=1`` when
systemd asks for it (only from this loop, so a wedged loop gets restarted), ``STATUS=``, and
the numbers a ``/metrics`` scrape reads (:class:`~pyflannel.stats.Stats`).  While it waits for
etcd or the config it says so again every ``wait_reminder`` seconds.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Network
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import structlog

from pyflannel import __version__, memory, systemd
from pyflannel.backend.vxlan import holder_reason
from pyflannel.blackhole import BlackholeRoute
from pyflannel.config import NetworkConfig, parse_network_config
from pyflannel.errors import (
    Compacted,
    ConfigError,
    KernelError,
    LeaseLost,
    NotFound,
    OutOfSubnets,
    PyflannelError,
    RegistryRefused,
    RegistryUnavailable,
    UnsupportedBackend,
)
from pyflannel.iface import (
    ExternalInterface,
    choose_external,
    choose_external_ipv6,
    underlay_overlaps,
    underlay_overlaps6,
    with_ipv6,
)
from pyflannel.ipnet import SubnetKey
from pyflannel.kernel.codec import RTN_BLACKHOLE
from pyflannel.kernel.monitor import Monitor
from pyflannel.kernel.netlink import Netlink
from pyflannel.kernel.plan import Keys, Ownership
from pyflannel.kernel.sync import KernelSync
from pyflannel.lease import (
    NO_PUBLIC_IP,
    Change,
    EventKind,
    Lease,
    LeaseAttrs,
    LeaseTracker,
    WatchBatch,
)
from pyflannel.options import DaemonOptions
from pyflannel.overlay import Overlay
from pyflannel.peersync import PeerSync
from pyflannel.registry import Registry, join_key, open_registry
from pyflannel.retry import Backoff, OnceFilter, Waiting
from pyflannel.rulekeeper import Iptables, find_iptables, keep_rules
from pyflannel.stats import Stats
from pyflannel.subnet import LeaseManager, is_ours
from pyflannel.subnetenv import (
    check_writable,
    read_cidr,
    read_cidr6,
    read_subnet_hint,
    subnet_env_text,
    write_subnet_env,
)

if TYPE_CHECKING:
    from pyflannel.health import HealthServer

log = structlog.get_logger("pyflannel")
T = TypeVar("T")

#: How often the main thread looks for a signal while it waits (see Daemon.request_stop).
POLL = 0.2
#: Seconds the main loop sleeps between two steps of a resync or re-read (see serve()).
STEP_PAUSE = 0.0002
#: One periodic resync in this many re-reads the kernel (see serve()).
REDUMP_EVERY = 10
#: STATUS= and the numbers a scrape reads are refreshed at most this often (seconds).
STATUS_EVERY = 1.0
_DONE = object()  # what next() returns for a finished resync
EXIT_OK = 0
EXIT_FAILURE = 1


class _Stopped(Exception):
    """Raised inside start-up waits when a signal asked us to stop."""


@dataclass
class _Own:
    """Our lease as the watch last saw it; written by the watch thread, read by the main one."""

    gone: bool = False
    taken_by: Lease | None = None
    stale: bool = False  # our key holds other attributes than ours (same public IP)


class _Recent:
    """A bounded set of recently seen items (oldest forgotten first): logs a problem once per
    key and value without growing for ever when somebody writes millions of distinct ones."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, None] = OrderedDict()

    def first_time(self, item: Hashable) -> bool:
        """True unless *item* was seen recently."""
        if item in self._items:
            self._items.move_to_end(item)
            return False
        self._items[item] = None
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return True


class Waker:
    """Wakes the main loop from another thread: a pipe ``select`` can wait on together with
    the kernel's notification socket."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def fileno(self) -> int:
        """The end to wait on."""
        return self._r

    def set(self) -> None:
        """Wake the waiter (a full pipe already will)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"!")

    def clear(self) -> None:
        """Forget earlier wake-ups."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass

    def close(self) -> None:
        """Close both ends."""
        os.close(self._r)
        os.close(self._w)


class Daemon:
    """One pyflannel instance: owns the registry, the netlink socket and the two threads."""

    def __init__(
        self, opts: DaemonOptions, registry: Registry, nl: Netlink, stats: Stats | None = None
    ) -> None:
        self.opts = opts
        self.stats = stats or Stats(__version__, opts.etcd_api)
        self._watchdog = systemd.Watchdog.from_env()
        self._next_status = 0.0
        self._status_sent = ""
        self._phase: str | None = "starting"  # STATUS= when not simply serving
        self._serving = False
        self._etcd_wait = Waiting(opts.wait_reminder)  # the watch thread's
        self.registry = registry
        self.nl = nl
        self.stop = threading.Event()
        self._wake = Waker()
        self._resync: Iterator[None] | None = None  # a periodic resync under way
        self._dirty: set[SubnetKey] = set()  # subnets whose lease changed, for the main loop
        self._lock = threading.Lock()
        self._tracker = LeaseTracker()
        self._synced = False
        self._own = _Own()
        self._lost_logged = False  # lease_lost said for the current loss
        self._lease_retry_at = 0.0  # wall clock: no lease call before (after a failed one)
        self._fatal: str | None = None
        self._signalled = 0
        # Records skipped, by key and reason: logged once each (bounded: see _Recent).
        self._warned_records = _Recent(4096)
        # Set during start-up:
        self._iptables: Iptables | None
        self.cfg: NetworkConfig
        self.ext: ExternalInterface
        self.fams: list[Overlay] = []  # one per address family: IPv4 first
        self._monitor: Monitor | None = None  # one notification socket for every device
        self.attrs: LeaseAttrs
        self.lease: Lease
        self.manager: LeaseManager
        self._serving_peers = False  # the devices' PeerSyncs are open

    # --- signals ------------------------------------------------------------------------------

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Signal handler: record the request; a second signal kills with the default action.

        It runs between two bytecodes of the main thread, maybe while that thread holds a lock
        (a log write, an Event's condition), so it takes no lock: no logging, no Event.set().
        The main thread polls :meth:`stopping` at least every :data:`POLL` seconds.
        """
        self._signalled = signum
        signal.signal(signum, signal.SIG_DFL)

    def stopping(self) -> bool:
        """True once a signal or a fatal error asked us to stop (main thread only)."""
        if self._signalled and not self.stop.is_set():
            log.info("signal_received", signal=signal.Signals(self._signalled).name)
            self.stop.set()
        return self.stop.is_set()

    def _sleep(self, seconds: float) -> None:
        """Sleep in the main thread, waking early when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self.stopping():
            self._tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, POLL))

    # --- start-up -----------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call *fn* until it succeeds, backing off while etcd is unavailable.

        Each distinct problem is logged once, not once per attempt, and the wait is recalled
        every ``wait_reminder`` seconds (attempts, how long, the last problem); STATUS= and
        /readyz say what we wait for.
        """
        backoff, once = Backoff(maximum=1.0), OnceFilter()  # flanneld retries every second
        waiting = Waiting(self.opts.wait_reminder)
        label = {"network_config": "the network config", "lease": "a lease"}.get(what, what)
        while True:
            if self.stopping():
                raise _Stopped
            try:
                result = fn()
            except RegistryUnavailable as exc:
                problem, awaited = str(exc), "etcd"
            except UnsupportedBackend:
                raise  # waiting cannot fix it: exit 1 with the reason
            except (NotFound, ConfigError) as exc:
                self.stats.etcd_ok()  # etcd answered, with what we cannot use yet
                problem, awaited = str(exc), label
            else:
                self.stats.etcd_ok()
                if once.last is not None:
                    log.info(f"{what}_recovered", after_retries=once.clear() + 1)
                return result
            now = time.monotonic()
            if once.fresh(problem):
                log.warning(f"{what}_waiting", problem=problem, endpoint=self.registry.endpoint)
            if waiting.failed(problem, now):
                log.warning(
                    f"{what}_still_waiting",
                    attempts=waiting.attempts,
                    waiting_s=round(waiting.waited(now)),
                    problem=problem,
                )
            self._phase = f"waiting for {awaited} ({waiting.summary(now)})"
            self.stats.set_blocker(f"waiting for {awaited}: {problem}")
            self._sleep(backoff.next())

    def _fetch_config(self) -> NetworkConfig:
        try:
            text = self.registry.get_network_config()
        except NotFound:
            key = join_key(self.opts.etcd.prefix, "config")
            hint = self.registry.config_hint()
            extra = f"; {hint}" if hint else ""
            raise NotFound(
                f"network config {key} not found in the etcd {self.opts.etcd_api} keyspace{extra}"
            ) from None
        return parse_network_config(text)

    def start(self) -> None:
        """Config, interface, devices, lease, addresses, subnet.env; raises on fatal problems."""
        check_writable(self.opts.subnet_file)  # before anything is leased or created
        self._iptables = find_iptables(self.opts)  # likewise: --ip-masq without iptables
        self._set_phase("reading the network config")
        self.cfg = cfg = self._retry("network_config", self._fetch_config)
        log.info("network_config", **_config_fields(cfg))
        # ip6tables too, if the network has IPv6; still before anything is leased.
        ip6tables = find_iptables(self.opts, 6) if cfg.ipv6 is not None else None
        self.ext = self._choose_external()
        log.info("external_interface", **_iface_fields(self.ext, cfg))
        self._check_underlay()
        self.fams = [Overlay(v, cfg, self.ext) for v in _versions(cfg)]
        for fam in self.fams:
            self._ensure_device(fam)
        self._set_attrs()
        hint = read_subnet_hint(self.opts.subnet_file)
        self.manager = LeaseManager(
            self.registry,
            self.ext.public_ip,
            public_ipv6=self.ext.public_ipv6,
            hint=hint,
            ttl=self.opts.lease_ttl,
        )
        self._set_phase("acquiring a lease")
        self.lease = self._retry("lease", lambda: self.manager.acquire(self.cfg, self.attrs))
        self.stats.lease_expiry = self.lease.expiration
        self._set_phase(f"programming the peers of {self.lease.key}")
        for fam in self.fams:
            self._ensure_address(fam)
            own = fam.own_subnet(self.lease.key)
            fam.blackhole = BlackholeRoute(self.nl, own, fam.network, self.opts.ip_blackhole_route)
        # Before subnet.env, as flanneld: what attaches containers once it appears finds the
        # masquerade rules in place.  The old file names what a previous run installed.
        old = self.opts.subnet_file
        if self._iptables is not None and cfg.ipv4 is not None:
            previous = (read_cidr(old, "FLANNEL_NETWORK"), read_cidr(old, "FLANNEL_SUBNET"))
            keep_rules(
                self._iptables, self.opts, cfg.network, self.lease.subnet, previous, self.stop
            )
        if ip6tables is not None and cfg.ipv6 is not None and self.lease.key.ipv6 is not None:
            previous6 = (
                read_cidr6(old, "FLANNEL_IPV6_NETWORK"),
                read_cidr6(old, "FLANNEL_IPV6_SUBNET"),
            )
            keep_rules(
                ip6tables, self.opts, cfg.ipv6.network, self.lease.key.ipv6, previous6, self.stop
            )
        # One MTU for containers that get both families: the smaller device's.
        mtu = min(fam.dev.mtu for fam in self.fams)
        text = subnet_env_text(
            cfg.ipv4.network if cfg.ipv4 is not None else None,
            self.lease.key.ipv4,
            mtu,
            self.opts.ip_masq,
            ipv6_network=cfg.ipv6.network if cfg.ipv6 is not None else None,
            ipv6_subnet=self.lease.key.ipv6,
        )
        write_subnet_env(self.opts.subnet_file, text)
        log.info(
            "subnet_env_written",
            path=str(self.opts.subnet_file),
            subnet=str(self.lease.key),
            mtu=mtu,
        )

    def _choose_external(self) -> ExternalInterface:
        """The underlay interface and our public addresses of each enabled family."""
        opts, cfg = self.opts, self.cfg
        reach = opts.iface_can_reach
        if cfg.ipv4 is None:
            if reach is not None:
                raise ConfigError(
                    f"--iface-can-reach {reach}: an IPv4 address, and this network is IPv6-only "
                    "(EnableIPv4 is false); choose the interface with --iface"
                )
            if opts.public_ip is not None:
                log.warning(
                    "public_ip_ignored",
                    public_ip=str(opts.public_ip),
                    reason="the network has no IPv4 (EnableIPv4 is false)",
                )
            return choose_external_ipv6(
                self.nl.links(ipv6=True),
                self.nl.default_route_link(6),
                ifaces=opts.ifaces,
                iface_regexes=opts.iface_regexes,
                public_ipv6=opts.public_ipv6,
            )
        ext = choose_external(
            self.nl.links(ipv6=cfg.ipv6 is not None),
            self.nl.default_route_link(),
            ifaces=opts.ifaces,
            iface_regexes=opts.iface_regexes,
            can_reach=reach,
            reach=self.nl.route_to(reach) if reach is not None else None,
            public_ip=opts.public_ip,
        )
        if cfg.ipv6 is None:
            return ext
        return with_ipv6(
            ext,
            self.nl.default_route_link(6),
            ifaces=opts.ifaces,
            iface_regexes=opts.iface_regexes,
            chosen_by_route=reach is not None,
            public_ipv6=opts.public_ipv6,
        )

    def _check_underlay(self) -> None:
        """Refuse a Network (or IPv6Network) that overlaps the underlay."""
        cfg, ext = self.cfg, self.ext
        index = ext.link.index
        if cfg.ipv4 is not None:
            connected4 = [n for n in self.nl.connected_routes(index) if isinstance(n, IPv4Network)]
            overlaps = underlay_overlaps(cfg.network, ext, connected4)
            if overlaps:
                raise ConfigError(
                    f"Network {cfg.network} overlaps the underlay ({'; '.join(overlaps)}): "
                    "routing it into the overlay would cut this host off; choose another Network"
                )
        if cfg.ipv6 is not None:
            connected6 = [
                n for n in self.nl.connected_routes(index, 6) if isinstance(n, IPv6Network)
            ]
            overlaps = underlay_overlaps6(cfg.ipv6.network, ext, connected6)
            if overlaps:
                raise ConfigError(
                    f"IPv6Network {cfg.ipv6.network} overlaps the underlay "
                    f"({'; '.join(overlaps)}): routing it into the overlay would cut this "
                    "host off; choose another IPv6Network"
                )

    def _set_phase(self, text: str) -> None:
        """What start-up does now: STATUS= and /readyz's reason until we serve."""
        self._phase = text
        self.stats.set_blocker(text)
        self._tick(force=True)

    def _ensure_device(self, fam: Overlay) -> None:
        """Create or reuse *fam*'s device; our lease attributes follow its MAC."""
        spec = fam.spec
        fam.dev, created = self.nl.ensure_vxlan(spec)
        log.info(
            "device_created" if created else "device_reused",
            device=fam.dev.name,
            mac=fam.dev.mac,
            mtu=fam.dev.mtu,
            vni=spec.vni,
            local=str(spec.local),
        )

    def _set_attrs(self) -> None:
        """What our lease says: each family's public address, device MAC and VNI."""
        v4 = next((f for f in self.fams if f.version == 4), None)
        v6 = next((f for f in self.fams if f.version == 6), None)
        vni = self.cfg.backend.vni
        self.attrs = LeaseAttrs(
            self.ext.public_ip if v4 is not None else NO_PUBLIC_IP,
            "vxlan",
            v4.dev.mac if v4 is not None else None,
            vni if v4 is not None else None,
            self.ext.public_ipv6 if v6 is not None else None,
            v6.dev.mac if v6 is not None else None,
            vni if v6 is not None else None,
        )

    def _ensure_address(self, fam: Overlay) -> None:
        self.nl.ensure_address(fam.dev, fam.vtep(self.lease.key), fam.network)

    def _restore_device(self, fam: Overlay) -> None:
        """*fam*'s device vanished (deleted by hand): re-create it, republish a changed MAC in
        our lease so that peers follow, and let the next reconcile re-add every peer."""
        old = self.attrs
        self._ensure_device(fam)
        self._ensure_address(fam)
        self._set_attrs()
        if self.attrs != old:
            self.lease = self.manager.renew(self.lease, self.attrs)
            log.info(
                "lease_updated",
                subnet=str(self.lease.key),
                vtep_mac=fam.dev.mac,
                device=fam.name,
                reason="device re-created with a new MAC",
            )

    # --- the watch thread ---------------------------------------------------------------------

    def _watch(self) -> None:
        # At most 1 s between attempts (flanneld's pace): etcd back means caught up within ~1 s.
        backoff, once = Backoff(initial=0.25, maximum=1.0), OnceFilter()
        revision: int | None = None
        first, self.manager.snapshot = self.manager.snapshot, None
        own = self.lease.key
        if first is not None:  # acquire's listing: the watch goes on from there
            # Our own key is the lease we hold, not a peer: it is left out (the listing may
            # predate our write, which the watch then delivers, or follow it).
            self._ingest(replace(first, leases=tuple(x for x in first.leases if x.key != own)))
            revision = first.revision
        relist = "start"
        while not self.stop.is_set():
            try:
                if revision is None:
                    snap = self.registry.list_subnets()
                    self.stats.relisted(relist)
                    self._ingest(snap)
                    revision = snap.revision
                for batch in self.registry.watch_subnets(revision, self.stop):
                    self.stats.etcd_ok()  # events or a heartbeat: etcd answers
                    self._etcd_wait.clear()
                    if once.last is not None:
                        log.info(
                            "etcd_reconnected",
                            endpoint=self.registry.endpoint,
                            after_retries=once.clear() + 1,
                        )
                        backoff.reset()
                    if batch.events:
                        self._ingest(batch)
                    revision = batch.revision
            except Compacted as exc:
                log.info("watch_resync", reason="history compacted", revision=exc.revision)
                revision, relist = None, "compacted"
            except RegistryUnavailable as exc:
                if once.fresh(str(exc)):
                    log.warning(
                        "etcd_unavailable",
                        problem=str(exc),
                        keeping="kernel state and last known leases",
                    )
                now = time.monotonic()
                if self._etcd_wait.failed(str(exc), now):
                    log.warning(
                        "etcd_still_unavailable",
                        attempts=self._etcd_wait.attempts,
                        waiting_s=round(self._etcd_wait.waited(now)),
                        problem=str(exc),
                        keeping="kernel state and last known leases",
                    )
                self.stop.wait(backoff.next())
            except RegistryRefused as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # a bug must not silently end the watch: log, back off
                log.exception("watch_error", error=str(exc))
                self.stop.wait(backoff.next())

    def _ingest(self, batch: WatchBatch) -> None:
        with self._lock:
            first = not self._synced
            changes = self._tracker.apply(batch)
            self._dirty.update(ch.subnet for ch in changes if ch.subnet is not None)
            leases = self._tracker.leases
            self.stats.peers_known = len(leases) - (self.lease.key in leases)
            self._synced = True
            known = len(self._tracker.leases)
        if first:
            # The first listing is one state change, not one per peer (10,000 lines at start).
            for ch in changes:
                if ch.kind is EventKind.INVALID or ch.subnet == self.lease.key:
                    self._log_change(ch)
            log.info("peers_listed", leases=known)
        else:
            for ch in changes:
                self._log_change(ch)
        self._wake.set()

    def _log_change(self, ch: Change) -> None:
        if ch.kind is EventKind.INVALID:
            if ch.subnet is not None and ch.subnet == self.lease.key:
                # Garbage over our own key hides us from every host that starts now: rewrite.
                self._own.stale = True
            if self._warned_records.first_time((ch.key, ch.reason)):
                log.warning(
                    "record_skipped",
                    key=ch.key,
                    reason=ch.reason,
                    effect="ignored; no peer is removed for it",
                )
            return
        if ch.subnet == self.lease.key:
            self._own_change(ch)
            return
        if ch.kind is EventKind.REMOVED:
            assert ch.old is not None
            log.info("peer_removed", subnet=str(ch.subnet), **_peer_fields(ch.old.attrs))
            return
        assert ch.new is not None
        a = ch.new.attrs
        if ch.old is None:
            log.info("peer_added", subnet=str(ch.subnet), **_peer_fields(a))
        elif ch.changed:
            old = {f"old_{k}": v for k, v in _peer_fields(ch.old.attrs).items()}
            log.info("peer_changed", subnet=str(ch.subnet), **_peer_fields(a), **old)
        else:
            log.debug("peer_renewed", subnet=str(ch.subnet))

    def _own_change(self, ch: Change) -> None:
        if ch.kind is EventKind.REMOVED:
            self._own.gone = True
        elif ch.new is not None and holder_reason(ch.new.attrs) is not None:
            self._own.stale = True  # garbage in lease form (PublicIP 0.0.0.0...): rewrite it
        elif ch.new is not None and not is_ours(
            ch.new.attrs, self.attrs.public_ip, self.attrs.public_ipv6
        ):
            # Another host wrote our key (an IPv6-only host is known by its PublicIPv6).  (Our
            # own older writes may still echo back with a previous VTEP MAC after the device
            # was re-created: those are not a takeover.)
            self._own.taken_by = ch.new
        elif ch.new is not None:
            # Same host but another VTEP MAC (hand-edited, or an older write of ours echoing
            # late): rewrite it, since peers program whatever the key says.  Our key rewritten
            # without its TTL would never expire if this host died: give the TTL back.  (A
            # reservation is made while the daemon is stopped; it is kept from the next start.)
            # Our own writes echo back too; self.lease keeps the expiration we wrote (a v3 watch
            # event says a key has a lease, not when it ends).
            lost_ttl = ch.new.expiration is None and self.lease.expiration is not None
            self._own.stale = ch.new.attrs != self.attrs or lost_ttl or not ch.new.exact

    def _fail(self, message: str) -> None:
        self._fatal = message
        self.stop.set()
        self._wake.set()

    # --- the main loop ------------------------------------------------------------------------

    def _check_device(self, fam: Overlay) -> str | None:
        """Keep *fam*'s device as configured: re-create it if it is gone, bring it up, restore
        its MTU and VTEP address.  Returns what was repaired, or None."""
        current = fam.peers.kernel.device()
        if current is None or current.name != fam.name:
            log.warning("device_missing", device=fam.name, action="re-creating")
            self._restore_device(fam)
            fam.peers.retarget(fam.dev.index, self._all_leases())
            return "device re-created"
        damage = fam.damage(current, self.lease.key)
        if not damage:
            return None
        if current.mtu != fam.spec.mtu:
            self.nl.set_mtu(current, fam.spec.mtu)
        # ensure_address also sets the link up; a link that was down lost its routes with no
        # notification, so the sync that follows re-reads everything.
        self._ensure_address(fam)
        log.warning("device_repaired", device=fam.name, damage=", ".join(damage))
        return "device repaired"

    def _open_peers(self) -> None:
        # One notification socket for every device: see pyflannel.kernel.sync.
        self._monitor = self.nl.monitor(tuple(f.version for f in self.fams))
        for fam in self.fams:
            fam.peers = PeerSync(
                self._kernel_opener(fam),
                fam.dev.index,
                fam.scope(self.lease.key),
                direct_routing=self.cfg.backend.direct_routing,
                stats=self.stats,
                name=fam.name,
            )
        self._serving_peers = True

    def _kernel_opener(self, fam: Overlay) -> Callable[[int, Ownership], KernelSync]:
        def open_kernel(dev: int, owner: Ownership) -> KernelSync:
            return self.nl.peer_sync(dev, owner, version=fam.version, monitor=self._monitor)

        return open_kernel

    @property
    def peer_count(self) -> int:
        """Peers programmed: on the device that has the most (a dual-stack peer is one)."""
        return max((f.peers.peers for f in self.fams), default=0) if self._serving_peers else 0

    def full_sync(self, reason: str, *, reload: bool = True) -> None:
        """Check the devices and compare every key; with *reload*, re-read everything the
        kernel holds first (else the mirror, kept by notifications, stands for it)."""
        leases = None
        if self.cfg.backend.direct_routing or reason == "start":
            # Every lease is set now, on every device, so the changes waiting for the next
            # step are too.
            leases = self._all_leases(clear_dirty=True)
        for fam in self.fams:
            self._full_sync(fam, reason, reload=reload, leases=leases)
        if reason == "start":
            # Tens of thousands of long-lived objects now exist (leases, entries): keep them
            # out of the cyclic collector's full passes, which would otherwise stall the loop
            # for tens of milliseconds at 10,000 peers.
            memory.release()  # the listing's and the dumps' temporaries
            gc.freeze()
            gc.set_threshold(_GC_DEFAULT[0], *gc.get_threshold()[1:])

    def _full_sync(
        self, fam: Overlay, reason: str, *, reload: bool, leases: list[Lease] | None = None
    ) -> None:
        """:meth:`full_sync` of one device (*leases*: every lease, if already listed)."""
        repaired = self._check_device(fam)
        if reason == "start":
            # Our blackhole routes before the first plan: a stale one (a previous lease's) on a
            # peer's subnet would stand in the way of its route.
            fam.peers.kernel.reload()
            if fam.blackhole.start(fam.peers.kernel.mirror.blackholes()):
                fam.peers.kernel.reload()
            reload = False
        else:
            self._keep_blackhole(fam)
        if leases is None and (self.cfg.backend.direct_routing or reason == "start"):
            # Which peers are on-link can change with the underlay's routes: ask again.  The
            # changes waiting for the next step stay for the other device, if any.
            leases = self._all_leases(clear_dirty=len(self.fams) == 1)
        reload = reload or repaired is not None
        if leases is not None:
            fam.peers.sync_all(leases, repaired or reason, reload=reload)
        else:
            fam.peers.sync(None, repaired or reason, reload=reload)
        if repaired == "device re-created":
            memory.release()
            gc.freeze()

    def _keep_blackhole(self, fam: Overlay) -> None:
        """Put *fam*'s blackhole route for our subnet back if it is gone (the mirror tells)."""
        held = fam.peers.kernel.mirror.routes_to(fam.blackhole.subnet)
        fam.blackhole.check(any(e.kind == RTN_BLACKHOLE for e in held))

    def _all_leases(self, *, clear_dirty: bool = False) -> list[Lease]:
        """Every known lease (and, with *clear_dirty*, nothing left for the next step)."""
        with self._lock:
            if clear_dirty:
                self._dirty.clear()
            return list(self._tracker.leases.values())

    def step(self) -> None:
        """Apply what changed since the last step: lease events and kernel notifications."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            leases = {s: self._tracker.leases.get(s) for s in dirty}
        # Removals first: two keys can share a half (a host moving from 10.5.1.0-24 to
        # 10.5.1.0-24&fc00:…), and the new key's entries must not be undone by the old one's.
        ordered = sorted(leases.items(), key=lambda item: item[1] is not None)
        msgs = self.fams[0].peers.kernel.read_notifications()  # the shared socket, once
        for fam in self.fams:
            keys = Keys()
            for subnet, lease in ordered:
                keys.add(fam.peers.update(subnet, lease))
            note = fam.peers.poll(msgs)
            if fam.blackhole.subnet in note.keys.routes:
                self._keep_blackhole(fam)
            if note.device:
                self._full_sync(fam, "device changed", reload=True)
            elif note.resync:
                self._full_sync(fam, "kernel notifications lost", reload=True)
            else:
                keys.add(note.keys)
                if keys:
                    fam.peers.sync(keys, "event")
                if note.reloaded:
                    memory.release()  # the old mirror and the dump's temporaries
                    routes, neighs, fdb = fam.peers.kernel.mirror.entry_counts()
                    log.debug(
                        "kernel_reread", device=fam.name, routes=routes, neighs=neighs, fdb=fdb
                    )

    def _resync_steps(self) -> Iterator[None]:
        """The periodic resync, in steps of a few milliseconds: the main loop serves lease
        events and notifications between them, so none waits behind a full comparison."""
        for fam in self.fams:
            yield from self._resync_device(fam)

    def _reload_steps(self) -> Iterator[None]:
        """The resync that re-reads every device's entries from the kernel first, about a
        millisecond per step; :meth:`step` swaps each new mirror in once it is complete."""
        for fam in self.fams:
            fam.peers.kernel.start_reload()
        for fam in self.fams:
            while fam.peers.kernel.reload_step():
                yield
        while any(fam.peers.kernel.reload_pending for fam in self.fams):
            yield  # the next step() swaps it in
        yield from self._resync_steps()  # compare with the re-read kernel

    def _resync_device(self, fam: Overlay) -> Iterator[None]:
        if self.cfg.backend.direct_routing:
            self._full_sync(fam, "resync", reload=False)  # which peers are on-link: ask again
            return
        self._keep_blackhole(fam)
        repaired = self._check_device(fam)
        if repaired is not None:
            # A link that was down lost its routes without a notification: re-read it all.
            fam.peers.sync(None, repaired, reload=True)
            return
        kernel = fam.peers.kernel
        keys = Keys()
        for part in kernel.mirror.iter_suspects(kernel.desired, kernel.owner):
            keys.add(part)
            yield
        fam.peers.sync(keys, "resync")

    def _renew_due(self) -> float | None:
        if self.lease.expiration is None:
            return None  # a reservation never expires
        return self.lease.expiration - self.opts.renew_margin_minutes * 60

    def _keep_lease(self, backoff: Backoff) -> float | None:
        """Handle lease loss, takeover and renewal; return when to look again (wall clock)."""
        if self._own.taken_by is not None:
            who = _holder(self._own.taken_by.attrs)
            raise LeaseLost(f"our lease {self.lease.key} was overwritten by {who}")
        # After a failed etcd call, the next try waits for the backoff: the loop comes here on
        # every event and notification, and must neither hammer etcd nor repeat its lines.
        if self._lease_retry_at and time.time() < self._lease_retry_at:
            return self._lease_retry_at
        if self._own.gone:
            if not self._lost_logged:
                self._lost_logged = True
                log.warning(
                    "lease_lost",
                    subnet=str(self.lease.key),
                    action="re-acquiring the same subnet; data path untouched",
                )
            lost = f"lease {self.lease.key} lost; re-acquiring it"
            self.stats.set_blocker(lost)
            if self._serving:
                self._phase = lost
            try:
                self.lease = self.manager.reacquire(self.lease, self.attrs)
            except RegistryUnavailable as exc:
                log.warning("lease_reacquire_failed", problem=str(exc))
                self._lease_retry_at = time.time() + backoff.next()
                return self._lease_retry_at
            self._own.gone = False
            self._lost_logged = False
            self._lease_retry_at = 0.0
            self.stats.etcd_ok()
            if self._serving:
                self._phase = None
                self.stats.set_blocker(None)
            log.info("lease_reacquired", subnet=str(self.lease.key))
        due = self._renew_due()
        if self._own.stale or (due is not None and time.time() >= due):
            try:
                self.lease = self.manager.renew(self.lease, self.attrs)
            except RegistryUnavailable as exc:
                log.warning("lease_renew_failed", problem=str(exc))
                self._lease_retry_at = time.time() + min(backoff.next(), 60.0)
                return self._lease_retry_at
            backoff.reset()
            self._lease_retry_at = 0.0
            self.stats.etcd_ok()
            self._own.stale = False
            log.info(
                "lease_renewed",
                subnet=str(self.lease.key),
                expires=time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.lease.expiration or 0)
                ),
            )
            due = self._renew_due()
        return due

    def serve(self) -> int:
        """Run the steady state until a signal (exit 0) or a fatal problem (exit 1)."""
        self._open_peers()
        watcher = threading.Thread(target=self._watch, name="watch", daemon=True)
        watcher.start()
        ready = False
        backoff = Backoff(initial=1.0, maximum=60.0)
        next_resync = time.monotonic()
        resyncs = 0
        wedge_at: float | None = None
        while not self.stopping():
            self._tick()
            if wedge_at is not None and time.monotonic() >= wedge_at:
                self._wedge()
                continue
            try:
                renew_at = self._keep_lease(backoff)
            except LeaseLost:
                self._linger()
                raise
            self._wake.clear()
            if self._synced:
                try:
                    if not ready:
                        self.full_sync("start")
                        next_resync = time.monotonic() + self.opts.resync_interval
                    else:
                        self.step()
                        if time.monotonic() >= next_resync and self._resync is None:
                            # The mirror follows the kernel's notifications (a lost one is
                            # reported as ENOBUFS and re-read at once), so a resync compares
                            # against it; every REDUMP_EVERY-th re-reads the kernel first, in
                            # steps (the comparison starts when the new mirror is in).
                            resyncs += 1
                            if resyncs % REDUMP_EVERY == 0:
                                self._resync = self._reload_steps()
                            else:
                                self._resync = self._resync_steps()
                            next_resync = time.monotonic() + self.opts.resync_interval
                        if self._resync is not None and next(self._resync, _DONE) is _DONE:
                            self._resync = None
                except (KernelError, RegistryUnavailable) as exc:
                    log.error("reconcile_failed", error=str(exc))
                    self.stats.reconcile_failed(str(exc))
                if not ready:
                    ready = self._serving = True
                    if not self._own.gone:
                        self._phase = None
                        self.stats.set_blocker(None)
                    self._tick(force=True, ready=True)
                    log.info("ready", subnet=str(self.lease.key), peers=self.peer_count)
                    if self.opts.test_wedge_after is not None:
                        wedge_at = time.monotonic() + self.opts.test_wedge_after
            # Until the first listing is in, nothing is due but the lease: the watch thread
            # wakes us (a zero timeout here would spin against its ingest of 10,000 leases).
            timeout = next_resync - time.monotonic() if ready else POLL
            if renew_at is not None:
                timeout = min(timeout, renew_at - time.time())
            if self._resync is not None:
                # A resync in progress: look whether something is waiting, and truly let go
                # of the GIL for a moment.  A zero timeout would take it straight back, and the
                # watch thread, woken by a lease event, would wait for the interpreter's 5 ms
                # switch interval (events at 8-10 ms instead of 3 at 10,000 peers).
                timeout = STEP_PAUSE
            self._wait(min(max(timeout, 0.0), POLL))
        if self._fatal:
            log.error("fatal", error=self._fatal)
            return EXIT_FAILURE
        systemd.notify("STOPPING=1")
        log.info("exiting", reason="signal", kept="lease and kernel state (restart is hitless)")
        return EXIT_OK

    # --- progress: watchdog, STATUS=, the numbers /metrics reads ------------------------------

    def _tick(self, *, force: bool = False, ready: bool = False) -> None:
        """The main thread is making progress: ping the watchdog when due; at most every
        STATUS_EVERY seconds (or when *force*d) refresh the numbers a scrape reads and send
        STATUS= if it changed (with READY=1 when *ready*)."""
        now = time.monotonic()
        self._watchdog.kick(now)
        if now < self._next_status and not force:
            return
        self._next_status = now + STATUS_EVERY
        if self._serving_peers:
            self.stats.peers_programmed = self.peer_count
            counts = [f.peers.kernel.mirror.entry_counts() for f in self.fams]
            routes, neighs, fdb = (sum(c[i] for c in counts) for i in range(3))
            self.stats.kernel_entries = (routes, neighs, fdb)
            self.stats.lease_expiry = self.lease.expiration
        text = self._status_text(now)
        if ready:
            systemd.ready(text)
        elif text != self._status_sent and not systemd.status(text):
            return  # not sent (no service manager, or a full queue): try again next time
        self._status_sent = text

    def _status_text(self, now: float) -> str:
        """``serving 10.5.3.0/24, 12 peers, etcd ok``, or what start-up waits for."""
        if self._phase is not None or not self._serving_peers:
            return self._phase or "starting"
        wait = self._etcd_wait
        etcd = f"etcd unreachable ({wait.summary(now)})" if wait.attempts else "etcd ok"
        return f"serving {self.lease.key}, {self.peer_count} peers, {etcd}"

    def _linger(self) -> None:
        """Another host took our lease.  With the health listener on, say so (/readyz 503
        with the reason, STATUS=) for ``lease_taken_linger`` seconds before the exit, so that
        monitoring sees why; a signal ends the wait at once.  Without it: exit at once."""
        holder = self._own.taken_by
        who = _holder(holder.attrs) if holder is not None else "another host"
        reason = f"lease {self.lease.key} taken by {who}"
        self.stats.set_blocker(reason)
        if not self.opts.healthz_port:
            return
        self._phase = f"{reason}; exiting"
        log.error(
            "lease_taken",
            subnet=str(self.lease.key),
            by=str(who),
            action=(
                f"exiting in {self.opts.lease_taken_linger:.0f} s; /readyz answers 503 meanwhile"
            ),
        )
        self._tick(force=True)
        deadline = time.monotonic() + self.opts.lease_taken_linger
        while not self.stopping() and time.monotonic() < deadline:
            self._tick()
            self.stop.wait(POLL)

    def _wedge(self) -> None:
        """Test hook (``PYFLANNEL_TEST_WEDGE_AFTER``): stall the main loop as a hang would,
        so that a test sees WATCHDOG=1 stop; only a signal ends it."""
        log.warning("test_wedge", action="main loop stalled on purpose; a signal ends it")
        while not self._signalled:
            time.sleep(POLL)

    def _wait(self, timeout: float) -> None:
        """Sleep until a lease event, a kernel notification or *timeout*."""
        with contextlib.suppress(InterruptedError):
            kernel = self.fams[0].peers.kernel  # the notification socket every device shares
            select.select([self._wake.fileno(), kernel.fileno()], [], [], timeout)

    def close(self) -> None:
        """Close what the daemon opened itself (the registry and netlink are the caller's)."""
        if self._serving_peers:
            for fam in self.fams:
                fam.peers.kernel.close()
        if self._monitor is not None:
            self._monitor.close()
        self._wake.close()


def _versions(cfg: NetworkConfig) -> list[int]:
    """The IP versions the network enables: 4, 6 or both (IPv4 first)."""
    return [v for v, rng in ((4, cfg.ipv4), (6, cfg.ipv6)) if rng is not None]


def _config_fields(cfg: NetworkConfig) -> dict[str, object]:
    """The network_config log line: each enabled family's range, and the backend."""
    out: dict[str, object] = {}
    for prefix, rng in (("", cfg.ipv4), ("ipv6_", cfg.ipv6)):
        if rng is not None:
            out[f"{prefix}network"] = str(rng.network)
            out[f"{prefix}subnet_len"] = rng.subnet_len
            out[f"{prefix}subnet_min"] = str(rng.subnet_min)
            out[f"{prefix}subnet_max"] = str(rng.subnet_max)
    out.update(vni=cfg.backend.vni, port=cfg.backend.udp_port)
    return out


def _iface_fields(ext: ExternalInterface, cfg: NetworkConfig) -> dict[str, object]:
    """The external_interface log line: the addresses of each enabled family."""
    out: dict[str, object] = {"iface": ext.link.name}
    if cfg.ipv4 is not None:
        out.update(iface_ip=str(ext.iface_ip), public_ip=str(ext.public_ip))
    if cfg.ipv6 is not None:
        out.update(iface_ipv6=str(ext.iface_ipv6), public_ipv6=str(ext.public_ipv6))
    out["mtu"] = ext.link.mtu
    return out


def _peer_fields(attrs: LeaseAttrs) -> dict[str, object]:
    """A peer's addresses and MACs for a log line (the IPv6 ones only when it has them)."""
    out: dict[str, object] = {}
    if attrs.public_ip != NO_PUBLIC_IP or attrs.public_ipv6 is None:  # not IPv6-only
        out.update(public_ip=str(attrs.public_ip), vtep_mac=attrs.vtep_mac)
    if attrs.public_ipv6 is not None:
        out.update(public_ipv6=str(attrs.public_ipv6), v6_vtep_mac=attrs.v6_vtep_mac)
    return out


def _holder(attrs: LeaseAttrs) -> str:
    """Who holds a lease: its PublicIP, or its PublicIPv6 for an IPv6-only host."""
    if attrs.public_ip == NO_PUBLIC_IP and attrs.public_ipv6 is not None:
        return str(attrs.public_ipv6)
    return str(attrs.public_ip)


#: The cyclic collector's first threshold until the first reconcile: start-up builds some
#: hundred thousand objects (10,000 leases, their entries, the listing's temporaries), and at
#: the default (700) full passes over all of them would run again and again; the few cycles
#: made meanwhile are collected at the end of start-up all the same.
START_GC_THRESHOLD = 50_000
_GC_DEFAULT = gc.get_threshold()


def run(opts: DaemonOptions) -> int:
    """Run a daemon with *opts*; returns the process exit code."""
    gc.set_threshold(START_GC_THRESHOLD, *gc.get_threshold()[1:])
    stats = Stats(__version__, opts.etcd_api)
    try:
        registry = open_registry(opts.etcd_api, opts.etcd, on_error=stats.etcd_error)
    except PyflannelError as exc:
        log.error("etcd_setup_failed", error=str(exc))
        return EXIT_FAILURE
    # Before the config is fetched, as flanneld does: /healthz answers while we wait.
    try:
        health = _start_health(opts, stats)
    except OSError as exc:
        log.error(
            "fatal",
            error=f"cannot listen on {opts.healthz_ip}:{opts.healthz_port} for /healthz: "
            f"{exc.strerror or exc}",
            kind="HealthzListenFailed",
        )
        registry.close()
        return EXIT_FAILURE
    # The kernel re-read thread parses for a few hundred milliseconds; with the default 5 ms
    # switch interval every wake-up of the main thread would wait that long for the GIL.
    sys.setswitchinterval(0.001)
    nl = Netlink()
    daemon = Daemon(opts, registry, nl, stats)
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    try:
        daemon.start()
        return daemon.serve()
    except _Stopped:
        log.info("exiting", reason="signal during start-up")
        return EXIT_OK
    except (OutOfSubnets, LeaseLost, RegistryRefused, ConfigError, KernelError) as exc:
        log.error("fatal", error=str(exc), kind=type(exc).__name__)
        return EXIT_FAILURE
    except PyflannelError as exc:
        log.error("fatal", error=str(exc), kind=type(exc).__name__)
        return EXIT_FAILURE
    finally:
        if health is not None:
            health.close()
        daemon.close()
        registry.close()
        nl.close()


def _start_health(opts: DaemonOptions, stats: Stats) -> HealthServer | None:
    """The health listener if ``--healthz-port`` asks for one, else None; OSError if it
    cannot listen.  Its module, and prometheus_client, load only then."""
    if not opts.healthz_port:
        return None
    from pyflannel.health import HealthServer

    server = HealthServer(opts.healthz_ip, opts.healthz_port, stats)
    server.start()
    log.info("healthz_listening", ip=str(opts.healthz_ip), port=opts.healthz_port)
    return server
