"""Lease policy, written once above any registry: allocation, renewal, re-acquisition, and the
``subnet.env`` file that hands the result to whatever attaches containers.

Allocation follows flanneld ≥ 0.18 (flannel-behaviour.md §3.2): reuse the lease that already
carries our public IP (deleting ones that no longer fit the config), else the subnet named in the
previous ``subnet.env`` if nobody holds it (never steal it, flannel-io/flannel#1289), else a
random one among the first 100 free subnets; create only with compare-and-set and try again when
a race is lost.  The ``subnet.env`` file itself is :mod:`pyflannel.subnetenv`'s.

A lease holds an IPv4 subnet, an IPv6 subnet or both (:class:`~pyflannel.ipnet.SubnetKey`),
one per family the config enables.  Each half is chosen on its own: the previous subnet of that
family if nobody holds it, else at random among the first 100 of that family that no lease
holds, so a dual-stack, an IPv4-only and an IPv6-only host can share one keyspace.  Deliberate
differences from flanneld, which always allocates IPv4 in etcd mode:

* an IPv6-only host finds its lease by ``PublicIPv6`` (flanneld compares ``PublicIP``, which is
  0.0.0.0 on every IPv6-only host, so it would take another IPv6-only host's lease);
* the previous subnet is used per family (flanneld drops both halves of the hint when one is
  unusable, and never checks that the IPv6 half is free);
* a half is free unless a lease holds that very subnet: flanneld lets any overlapping record
  block a subnet, so one IPv6-only lease (``0.0.0.0-0&…``, an IPv4 half of /0) stops every
  flanneld from allocating IPv4, and one hostile ``<Network>-16`` key stops every new host.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

import structlog

from pyflannel.backend.vxlan import holder_reason
from pyflannel.config import NetworkConfig
from pyflannel.errors import AlreadyExists, LeaseLost, OutOfSubnets, PyflannelError
from pyflannel.ipnet import SubnetKey, ipv6_subnets_between, ipv6_text, subnets_between
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs, Snapshot
from pyflannel.registry import LEASE_TTL, Registry

log = structlog.get_logger("pyflannel.subnet")

#: flanneld's raceRetries: attempts before giving up on a contended allocation.
RACE_RETRIES = 10
#: Allocation picks at random among this many free subnets (spreads racing daemons apart).
CANDIDATES = 100

_Net = TypeVar("_Net", IPv4Network, IPv6Network)


@dataclass(frozen=True)
class Reuse:
    """Rewrite this existing lease with our attributes."""

    lease: Lease


@dataclass(frozen=True)
class Create:
    """Create a lease on this subnet key, if it is still free."""

    subnet: SubnetKey
    reason: str  # "previous subnet" or "free subnet" (per family when they differ)


@dataclass(frozen=True)
class Allocation:
    """The outcome of :func:`plan_allocation`."""

    action: Reuse | Create
    stale: tuple[Lease, ...] = ()  # our leases that no longer fit the config: delete first


def is_ours(attrs: LeaseAttrs, public_ip: IPv4Address, public_ipv6: IPv6Address | None) -> bool:
    """True when *attrs* were written by the host with these public addresses: compared by
    ``PublicIP`` as flanneld does; by ``PublicIPv6`` for an IPv6-only host (PublicIP 0.0.0.0)."""
    if public_ip != NO_PUBLIC_IP:
        return attrs.public_ip == public_ip
    return public_ipv6 is not None and attrs.public_ipv6 == public_ipv6


def _pick(subnets: Iterator[_Net], taken: set[_Net], rng: random.Random) -> _Net | None:
    """A random one of the first :data:`CANDIDATES` subnets not in *taken*, or None.

    Looks at no more than CANDIDATES + len(taken) subnets, however large the range (an IPv6
    range may hold 2^64): each subnet looked at is a candidate or a taken one.
    """
    candidates: list[_Net] = []
    for s in subnets:
        if s not in taken:
            candidates.append(s)
            if len(candidates) == CANDIDATES:
                break
    return rng.choice(candidates) if candidates else None


def _choose(
    prev: _Net | None,
    fits: Callable[[_Net], bool],
    taken: set[_Net],
    walk: Iterator[_Net],
    rng: random.Random,
    exhausted: str,
) -> tuple[_Net, str]:
    """One family's half: the previous subnet if it fits and nobody holds it, else a free one;
    OutOfSubnets(*exhausted*) when there is none."""
    if prev is not None and fits(prev) and prev not in taken:
        return prev, "previous"
    chosen = _pick(walk, taken, rng)
    if chosen is None:
        raise OutOfSubnets(exhausted)
    return chosen, "free"


def plan_allocation(
    cfg: NetworkConfig,
    snap: Snapshot,
    public_ip: IPv4Address,
    hint: SubnetKey | IPv4Network | None,
    rng: random.Random,
    *,
    public_ipv6: IPv6Address | None = None,
) -> Allocation:
    """Decide which subnets to take; pure.  Raises OutOfSubnets when a family has none free.

    *public_ip* is :data:`~pyflannel.lease.NO_PUBLIC_IP` on an IPv6-only host; *hint* is the
    previous subnet.env's subnets (an IPv4 network: only an IPv4 one).
    """
    stale: list[Lease] = []
    for lease in snap.leases:
        if is_ours(lease.attrs, public_ip, public_ipv6):
            if cfg.fits(lease.key):
                return Allocation(Reuse(lease), tuple(stale))
            stale.append(lease)
    # Keys that exist but do not decode still hold their subnets: a create there would fail.
    # A record of another prefix length is not a lease of this network (every pyflannel skips
    # it as a peer); flanneld lets it block every subnet it overlaps, so that one hostile
    # "<Network>-16" key stops every new host from starting.  Here it blocks nothing.
    keys = [lease.key for lease in snap.leases if lease not in stale]
    keys += [ev.subnet for ev in snap.invalid if ev.subnet is not None]
    prev = SubnetKey.of(hint) if hint is not None else None
    ipv4: IPv4Network | None = None
    ipv6: IPv6Network | None = None
    reasons = []
    if (r4 := cfg.ipv4) is not None:
        ipv4, why = _choose(
            prev.ipv4 if prev is not None else None,
            r4.contains_subnet,
            {k.ipv4 for k in keys if k.ipv4 is not None},
            subnets_between(r4.subnet_min, r4.subnet_max, r4.subnet_len),
            rng,
            f"out of subnets: all {r4.subnet_len}-bit subnets between {r4.subnet_min} and "
            f"{r4.subnet_max} are leased",
        )
        reasons.append(why)
    if (r6 := cfg.ipv6) is not None:
        ipv6, why = _choose(
            prev.ipv6 if prev is not None else None,
            r6.contains_subnet,
            {k.ipv6 for k in keys if k.ipv6 is not None},
            ipv6_subnets_between(r6.subnet_min, r6.subnet_max, r6.subnet_len),
            rng,
            f"out of IPv6 subnets: all {r6.subnet_len}-bit subnets between "
            f"{ipv6_text(r6.subnet_min)} and {ipv6_text(r6.subnet_max)} are leased",
        )
        reasons.append(why)
    if len(set(reasons)) == 1:
        reason = f"{reasons[0]} subnet"
    else:
        reason = f"{reasons[0]} IPv4 subnet, {reasons[1]} IPv6 subnet"
    return Allocation(Create(SubnetKey(ipv4, ipv6), reason), tuple(stale))


def holders(leases: Iterable[Lease], key: SubnetKey) -> list[Lease]:
    """The leases other than *key*'s own that hold one of its halves (a race lost on a half:
    compare-and-set guards a whole key, and two keys can share a half)."""
    return [
        lease
        for lease in leases
        if lease.key != key
        and (
            (key.ipv4 is not None and lease.key.ipv4 == key.ipv4)
            or (key.ipv6 is not None and lease.key.ipv6 == key.ipv6)
        )
    ]


class LeaseManager:
    """Acquires, renews and re-acquires our lease through a :class:`Registry`.

    Registry errors other than a lost race propagate: the caller owns retry and backoff.
    *public_ip* is :data:`~pyflannel.lease.NO_PUBLIC_IP` on an IPv6-only host.
    """

    def __init__(
        self,
        registry: Registry,
        public_ip: IPv4Address,
        *,
        public_ipv6: IPv6Address | None = None,
        hint: SubnetKey | IPv4Network | None = None,
        rng: random.Random | None = None,
        ttl: int = LEASE_TTL,
    ) -> None:
        self._registry = registry
        self._ttl = ttl
        self._public_ip = public_ip
        self._public_ipv6 = public_ipv6
        self._hint = hint
        self._rng = rng or random.Random()
        #: The listing the last acquire decided on: the watch starts from it instead of listing
        #: every lease a second time (1 s at 10,000 leases).
        self.snapshot: Snapshot | None = None

    def acquire(self, cfg: NetworkConfig, attrs: LeaseAttrs) -> Lease:
        """Lease a subnet for us; see the module docstring for the order of preference."""
        for attempt in range(1, RACE_RETRIES + 1):
            snap = self._registry.list_subnets()
            self.snapshot = snap
            alloc = plan_allocation(
                cfg, snap, self._public_ip, self._hint, self._rng, public_ipv6=self._public_ipv6
            )
            for old in alloc.stale:
                log.info("lease_deleted", subnet=str(old.key), reason="outside the network config")
                self._registry.delete_subnet(old.key)
            if isinstance(alloc.action, Reuse):
                lease = alloc.action.lease
                # A key without TTL is a reservation: keep it permanent (flanneld v2 semantics).
                ttl = 0 if lease.expiration is None else self._ttl
                new = self._registry.update_subnet(lease.key, attrs, ttl)
                log.info(
                    "lease_acquired",
                    subnet=str(new.key),
                    how="reused (same public IP)",
                    reservation=ttl == 0,
                )
                return new
            key = alloc.action.subnet
            try:
                new = self._registry.create_subnet(key, attrs, self._ttl)
            except AlreadyExists:
                log.info("lease_race_lost", subnet=str(key), attempt=attempt)
                continue
            if _mixed(key, snap) and self._lost_half(new):
                continue
            log.info("lease_acquired", subnet=str(new.key), how=alloc.action.reason)
            return new
        raise PyflannelError(f"failed to acquire a lease after {RACE_RETRIES} lost races")

    def _lost_half(self, new: Lease) -> bool:
        """Compare-and-set guards a whole key, and two keys can share a half (``10.5.1.0-24``
        and ``10.5.1.0-24&fc00:0:0:1::-64``): look again, and if another key created earlier
        holds one of our halves, give ours up (the next attempt sees the other as taken)."""
        snap = self._registry.list_subnets()
        # The newer listing (it holds our key too) is the one the watch starts from: the watch
        # then does not replay our own creation, and no listing is made for nothing.
        self.snapshot = snap
        rivals = holders(snap.leases, new.key)
        earlier = [h for h in rivals if h.revision < new.revision]
        if not earlier:
            return False
        log.info(
            "lease_race_lost",
            subnet=str(new.key),
            held_by=str(earlier[0].key),
            how="a subnet of ours is in an earlier key",
        )
        self._registry.delete_subnet(new.key)
        return True

    def renew(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        """Rewrite the full value with a fresh TTL (a reservation stays without one)."""
        ttl = 0 if lease.expiration is None else self._ttl
        return self._registry.update_subnet(lease.key, attrs, ttl)

    def reacquire(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        """Our lease vanished: take the same subnet back if it is still free.

        Raises LeaseLost when somebody else holds it now.
        """
        try:
            return self._registry.create_subnet(lease.key, attrs, self._ttl)
        except AlreadyExists:
            holder = self._registry.get_subnet(lease.key)
            # Garbage on the key (unreadable, or no real host's lease) is no claim: overwrite.
            if (
                holder is None
                or is_ours(holder.attrs, self._public_ip, self._public_ipv6)
                or holder_reason(holder.attrs) is not None
            ):
                return self.renew(holder or lease, attrs)
            a = holder.attrs
            who = (
                a.public_ip
                if a.public_ip != NO_PUBLIC_IP or a.public_ipv6 is None
                else a.public_ipv6
            )
            raise LeaseLost(f"subnet {lease.key} is now leased by {who}") from None


def _mixed(key: SubnetKey, snap: Snapshot) -> bool:
    """True when a host racing us could pick a key of another shape sharing a half with *key*:
    ours is dual-stack, or the keyspace already holds keys of another shape.  (In a keyspace of
    IPv4-only keys, compare-and-set on the key is the whole story: no second listing.)"""
    shape = (key.ipv4 is None, key.ipv6 is None)
    if key.ipv4 is not None and key.ipv6 is not None:
        return True
    return any((lease.key.ipv4 is None, lease.key.ipv6 is None) != shape for lease in snap.leases)
