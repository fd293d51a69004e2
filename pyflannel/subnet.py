"""Lease policy, written once above any registry: allocation, renewal, re-acquisition, and the
``subnet.env`` file that hands the result to whatever attaches containers.

Allocation follows flanneld ≥ 0.18 (flannel-behaviour.md §3.2): reuse the lease that already
carries our public IP (deleting ones that no longer fit the config), else the subnet named in the
previous ``subnet.env`` if nobody holds it (never steal it, flannel-io/flannel#1289), else a
random one among the first 100 free subnets; create only with compare-and-set and try again when
a race is lost.  The ``subnet.env`` file itself is :mod:`pyflannel.subnetenv`'s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import structlog

from pyflannel.backend.vxlan import holder_reason
from pyflannel.config import NetworkConfig
from pyflannel.errors import AlreadyExists, LeaseLost, OutOfSubnets, PyflannelError
from pyflannel.ipnet import subnets_between
from pyflannel.lease import Lease, LeaseAttrs, Snapshot
from pyflannel.registry import LEASE_TTL, Registry

log = structlog.get_logger("pyflannel.subnet")

#: flanneld's raceRetries: attempts before giving up on a contended allocation.
RACE_RETRIES = 10
#: Allocation picks at random among this many free subnets (spreads racing daemons apart).
CANDIDATES = 100


@dataclass(frozen=True)
class Reuse:
    """Rewrite this existing lease with our attributes."""

    lease: Lease


@dataclass(frozen=True)
class Create:
    """Create a lease on this subnet, if it is still free."""

    subnet: IPv4Network
    reason: str  # "previous subnet" or "free subnet"


@dataclass(frozen=True)
class Allocation:
    """The outcome of :func:`plan_allocation`."""

    action: Reuse | Create
    stale: tuple[Lease, ...] = ()  # our leases that no longer fit the config: delete first


def plan_allocation(
    cfg: NetworkConfig,
    snap: Snapshot,
    public_ip: IPv4Address,
    hint: IPv4Network | None,
    rng: random.Random,
) -> Allocation:
    """Decide which subnet to take; pure.  Raises OutOfSubnets when none is free."""
    stale: list[Lease] = []
    for lease in snap.leases:
        if lease.attrs.public_ip == public_ip:
            if cfg.contains_subnet(lease.subnet):
                return Allocation(Reuse(lease), tuple(stale))
            stale.append(lease)
    # Keys that exist but do not decode still hold their subnet: a create there would fail.
    # A record of another prefix length is not a lease of this network (every pyflannel skips
    # it as a peer); flanneld lets it block every subnet it overlaps, so that one hostile
    # "<Network>-16" key stops every new host from starting.  Here it blocks nothing.
    taken = {lease.subnet for lease in snap.leases if lease not in stale}
    taken |= {ev.subnet for ev in snap.invalid if ev.subnet is not None}

    def free(s: IPv4Network) -> bool:
        return s not in taken

    if hint is not None and cfg.contains_subnet(hint) and free(hint):
        return Allocation(Create(hint, "previous subnet"), tuple(stale))
    candidates: list[IPv4Network] = []
    for s in subnets_between(cfg.subnet_min, cfg.subnet_max, cfg.subnet_len):
        if free(s):
            candidates.append(s)
            if len(candidates) == CANDIDATES:
                break
    if not candidates:
        raise OutOfSubnets(
            f"out of subnets: all {cfg.subnet_len}-bit subnets between {cfg.subnet_min} and "
            f"{cfg.subnet_max} are leased"
        )
    return Allocation(Create(rng.choice(candidates), "free subnet"), tuple(stale))


class LeaseManager:
    """Acquires, renews and re-acquires our lease through a :class:`Registry`.

    Registry errors other than a lost race propagate: the caller owns retry and backoff.
    """

    def __init__(
        self,
        registry: Registry,
        public_ip: IPv4Address,
        *,
        hint: IPv4Network | None = None,
        rng: random.Random | None = None,
        ttl: int = LEASE_TTL,
    ) -> None:
        self._registry = registry
        self._ttl = ttl
        self._public_ip = public_ip
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
            alloc = plan_allocation(cfg, snap, self._public_ip, self._hint, self._rng)
            for old in alloc.stale:
                log.info(
                    "lease_deleted", subnet=str(old.subnet), reason="outside the network config"
                )
                self._registry.delete_subnet(old.subnet)
            if isinstance(alloc.action, Reuse):
                lease = alloc.action.lease
                # A key without TTL is a reservation: keep it permanent (flanneld v2 semantics).
                ttl = 0 if lease.expiration is None else self._ttl
                new = self._registry.update_subnet(lease.subnet, attrs, ttl)
                log.info(
                    "lease_acquired",
                    subnet=str(new.subnet),
                    how="reused (same public IP)",
                    reservation=ttl == 0,
                )
                return new
            try:
                new = self._registry.create_subnet(alloc.action.subnet, attrs, self._ttl)
            except AlreadyExists:
                log.info("lease_race_lost", subnet=str(alloc.action.subnet), attempt=attempt)
                continue
            log.info("lease_acquired", subnet=str(new.subnet), how=alloc.action.reason)
            return new
        raise PyflannelError(f"failed to acquire a lease after {RACE_RETRIES} lost races")

    def renew(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        """Rewrite the full value with a fresh TTL (a reservation stays without one)."""
        ttl = 0 if lease.expiration is None else self._ttl
        return self._registry.update_subnet(lease.subnet, attrs, ttl)

    def reacquire(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        """Our lease vanished: take the same subnet back if it is still free.

        Raises LeaseLost when somebody else holds it now.
        """
        try:
            return self._registry.create_subnet(lease.subnet, attrs, self._ttl)
        except AlreadyExists:
            holder = self._registry.get_subnet(lease.subnet)
            # Garbage on the key (unreadable, or no real host's lease) is no claim: overwrite.
            if (
                holder is None
                or holder.attrs.public_ip == self._public_ip
                or holder_reason(holder.attrs) is not None
            ):
                return self.renew(holder or lease, attrs)
            who = holder.attrs.public_ip
            raise LeaseLost(f"subnet {lease.subnet} is now leased by {who}") from None
