"""LeaseManager on the in-memory registry: acquire, renew and re-acquire our lease (§3)."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from pyflannel.config import parse_network_config, read_network_config
from pyflannel.errors import AlreadyExists, LeaseLost, PyflannelError
from pyflannel.ipnet import SubnetKey, ipv6_text
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs, Snapshot
from pyflannel.registry import LEASE_TTL
from pyflannel.subnet import RACE_RETRIES, LeaseManager
from pyflannel.testing import FakeClock, MemoryRegistry

PREFIX = "/coreos.com/network"
ME = IPv4Address("10.0.1.3")
OTHER = IPv4Address("10.0.2.3")
MY_ATTRS = LeaseAttrs(ME, "vxlan", "02:aa:00:00:00:01", 1)
OTHER_ATTRS = LeaseAttrs(OTHER, "vxlan", "02:bb:00:00:00:02", 1)
OTHER_MAC6 = "02:bb:00:00:00:06"
CFG_FIELDS = {
    "Network": "172.16.0.0/16",
    "SubnetLen": 24,
    "SubnetMin": "172.16.10.0",
    "SubnetMax": "172.16.99.0",
    "Backend": {"Type": "vxlan", "Port": 8472},
}
CFG = parse_network_config(json.dumps(CFG_FIELDS))
#: Three /30 subnets: 10.0.0.4, 10.0.0.8, 10.0.0.12.
TINY = parse_network_config('{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}')


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="registry")
def _registry(clock: FakeClock) -> MemoryRegistry:
    return MemoryRegistry(PREFIX, clock=clock)


def manager(registry: MemoryRegistry, hint: str | None = None, seed: int = 0) -> LeaseManager:
    """A LeaseManager for ME with a seeded generator."""
    return LeaseManager(
        registry, ME, hint=IPv4Network(hint) if hint else None, rng=random.Random(seed)
    )


def net(subnet: str) -> SubnetKey:
    """The key of the IPv4-only lease on *subnet*."""
    return SubnetKey(IPv4Network(subnet))


def key(subnet: str) -> str:
    """The etcd key of *subnet*."""
    net = IPv4Network(subnet)
    return f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"


def test_acquire_creates_new_lease(registry: MemoryRegistry, clock: FakeClock) -> None:
    """With nothing leased, acquire creates a lease in range with a 24 h TTL and our exact value."""
    lease = manager(registry).acquire(CFG, MY_ATTRS)
    assert CFG.contains_subnet(lease.subnet)
    assert lease.attrs == MY_ATTRS
    assert lease.expiration == pytest.approx(clock.time() + LEASE_TTL)
    assert registry.get_raw(key(str(lease.subnet))) == MY_ATTRS.encode()
    assert registry.get_subnet(lease.key) == Lease(
        lease.key, MY_ATTRS, lease.expiration, lease.revision
    )


def test_acquire_reuses_lease_with_our_ip(registry: MemoryRegistry, clock: FakeClock) -> None:
    """A lease already carrying our public IP is rewritten with our new attributes and kept."""
    old = LeaseAttrs(ME, "vxlan", "02:aa:00:00:00:99", 1)
    registry.create_subnet(net("172.16.34.0/24"), old, LEASE_TTL)
    registry.create_subnet(net("172.16.35.0/24"), OTHER_ATTRS, LEASE_TTL)
    clock.advance(3600)
    lease = manager(registry, hint="172.16.50.0/24").acquire(CFG, MY_ATTRS)
    assert lease.subnet == IPv4Network("172.16.34.0/24")
    assert lease.expiration == pytest.approx(clock.time() + LEASE_TTL)
    assert registry.get_raw(key("172.16.34.0/24")) == MY_ATTRS.encode()
    assert registry.get_raw(key("172.16.35.0/24")) == OTHER_ATTRS.encode()
    assert len(registry.list_subnets().leases) == 2


def test_acquire_reuses_reservation_without_ttl(registry: MemoryRegistry, clock: FakeClock) -> None:
    """A reservation (a key without TTL) with our IP is reclaimed and stays without TTL."""
    registry.put_raw(key("172.16.40.0/24"), LeaseAttrs(ME, "vxlan", None, None).encode())
    lease = manager(registry).acquire(CFG, MY_ATTRS)
    assert lease.subnet == IPv4Network("172.16.40.0/24")
    assert lease.expiration is None
    clock.advance(10 * LEASE_TTL)
    assert registry.get_raw(key("172.16.40.0/24")) == MY_ATTRS.encode()


def test_acquire_deletes_incompatible_own_lease(registry: MemoryRegistry) -> None:
    """Our lease outside the current config is deleted and a compatible subnet created."""
    registry.create_subnet(net("172.16.5.0/24"), MY_ATTRS, LEASE_TTL)
    lease = manager(registry).acquire(CFG, MY_ATTRS)
    assert CFG.contains_subnet(lease.subnet)
    assert registry.get_raw(key("172.16.5.0/24")) is None
    assert [le.subnet for le in registry.list_subnets().leases] == [lease.subnet]


def test_acquire_uses_free_hint(registry: MemoryRegistry) -> None:
    """The previous subnet from subnet.env is taken when nobody holds it."""
    lease = manager(registry, hint="172.16.42.0/24").acquire(CFG, MY_ATTRS)
    assert lease.subnet == IPv4Network("172.16.42.0/24")


def test_acquire_never_steals_hint(registry: MemoryRegistry) -> None:
    """A previous subnet held by another node is left alone; another subnet is created."""
    registry.create_subnet(net("172.16.42.0/24"), OTHER_ATTRS, LEASE_TTL)
    lease = manager(registry, hint="172.16.42.0/24").acquire(CFG, MY_ATTRS)
    assert lease.subnet != IPv4Network("172.16.42.0/24")
    assert registry.get_raw(key("172.16.42.0/24")) == OTHER_ATTRS.encode()


class RacingRegistry(MemoryRegistry):
    """A MemoryRegistry where a rival node wins the first *losses* creates, just before ours."""

    def __init__(self, losses: int, **kwargs: object) -> None:
        super().__init__(PREFIX, **kwargs)  # type: ignore[arg-type]
        self.losses = losses
        self.attempts: list[SubnetKey] = []

    def create_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        self.attempts.append(subnet)
        if len(self.attempts) <= self.losses:
            rival = LeaseAttrs(
                IPv4Address(f"10.9.0.{len(self.attempts)}"), "vxlan", "02:cc:00:00:00:01", 1
            )
            super().create_subnet(subnet, rival, ttl)
        return super().create_subnet(subnet, attrs, ttl)


def test_acquire_race_lost_retries(clock: FakeClock) -> None:
    """Losing the compare-and-set race re-lists and picks another subnet."""
    registry = RacingRegistry(losses=1, clock=clock)
    lease = manager(registry, hint="172.16.42.0/24").acquire(CFG, MY_ATTRS)
    assert registry.attempts[0] == net("172.16.42.0/24")
    assert len(registry.attempts) == 2
    assert lease.key == registry.attempts[1] != net("172.16.42.0/24")
    rival = registry.get_subnet(net("172.16.42.0/24"))
    assert rival is not None
    assert rival.attrs.public_ip == IPv4Address("10.9.0.1")  # the winner keeps its lease


def test_acquire_race_lost_several_times(clock: FakeClock) -> None:
    """Several lost races in a row are retried, each time on a still-free subnet."""
    registry = RacingRegistry(losses=2, clock=clock)
    lease = manager(registry).acquire(TINY, MY_ATTRS)
    assert len(set(registry.attempts)) == 3
    assert lease.key == registry.attempts[2]
    assert len(registry.list_subnets().leases) == 3


def test_acquire_gives_up_after_race_retries(clock: FakeClock) -> None:
    """After RACE_RETRIES lost races acquire fails with a clear error instead of looping."""
    registry = RacingRegistry(losses=RACE_RETRIES, clock=clock)
    with pytest.raises(PyflannelError, match="lost races"):
        manager(registry).acquire(CFG, MY_ATTRS)
    assert len(registry.attempts) == RACE_RETRIES


def test_renew_refreshes_ttl(registry: MemoryRegistry, clock: FakeClock) -> None:
    """Renewing rewrites the full value with a fresh 24 h TTL, so the lease outlives the old one."""
    mgr = manager(registry)
    lease = mgr.acquire(CFG, MY_ATTRS)
    clock.advance(LEASE_TTL - 3600)
    renewed = mgr.renew(lease, MY_ATTRS)
    assert renewed.subnet == lease.subnet
    assert renewed.expiration == pytest.approx(clock.time() + LEASE_TTL)
    assert renewed.revision > lease.revision
    clock.advance(7200)  # past the first expiry
    assert registry.get_raw(key(str(lease.subnet))) == MY_ATTRS.encode()


def test_renew_keeps_reservation_ttl_zero(registry: MemoryRegistry, clock: FakeClock) -> None:
    """Renewing a reservation keeps it without TTL."""
    registry.put_raw(key("172.16.40.0/24"), MY_ATTRS.encode())
    mgr = manager(registry)
    lease = mgr.acquire(CFG, MY_ATTRS)
    renewed = mgr.renew(lease, MY_ATTRS)
    assert renewed.expiration is None
    clock.advance(10 * LEASE_TTL)
    assert registry.get_subnet(net("172.16.40.0/24")) is not None


def test_lease_expires_without_renewal(registry: MemoryRegistry, clock: FakeClock) -> None:
    """Without renewal the lease is gone after its TTL (the precondition for reacquire)."""
    lease = manager(registry).acquire(CFG, MY_ATTRS)
    clock.advance(LEASE_TTL + 1)
    assert registry.get_subnet(lease.key) is None


def test_reacquire_when_free(registry: MemoryRegistry, clock: FakeClock) -> None:
    """A vanished lease whose subnet is still free is created again on the same subnet."""
    mgr = manager(registry)
    lease = mgr.acquire(CFG, MY_ATTRS)
    registry.delete_subnet(lease.key)
    again = mgr.reacquire(lease, MY_ATTRS)
    assert again.subnet == lease.subnet
    assert again.expiration == pytest.approx(clock.time() + LEASE_TTL)
    assert registry.get_raw(key(str(lease.subnet))) == MY_ATTRS.encode()


def test_reacquire_when_rewritten_with_our_ip(registry: MemoryRegistry) -> None:
    """If the key is back with our IP (our own write raced us), reacquire renews it."""
    mgr = manager(registry)
    lease = mgr.acquire(CFG, MY_ATTRS)
    again = mgr.reacquire(lease, MY_ATTRS)
    assert again.subnet == lease.subnet
    assert registry.get_raw(key(str(lease.subnet))) == MY_ATTRS.encode()


def test_reacquire_lease_lost_to_other(registry: MemoryRegistry) -> None:
    """LeaseLost names the new holder when someone else holds our subnet now."""
    mgr = manager(registry)
    lease = mgr.acquire(CFG, MY_ATTRS)
    registry.delete_subnet(lease.key)
    registry.create_subnet(lease.key, OTHER_ATTRS, LEASE_TTL)
    with pytest.raises(LeaseLost, match=str(OTHER)):
        mgr.reacquire(lease, MY_ATTRS)
    assert registry.get_raw(key(str(lease.subnet))) == OTHER_ATTRS.encode()


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        '{"PublicIP":"0.0.0.0","BackendType":"vxlan"}',
        '{"PublicIP":"10.0.9.9","BackendType":"vxlan","BackendData":{"VtepMAC":"ff:ff:ff:ff:ff:ff"}}',
    ],
)
def test_reacquire_overwrites_garbage(registry: MemoryRegistry, garbage: str) -> None:
    """A key that now holds garbage (or no real host's lease) is no claim: it is rewritten
    with our lease."""
    mgr = manager(registry)
    lease = mgr.acquire(CFG, MY_ATTRS)
    registry.put_raw(key(str(lease.subnet)), garbage)
    again = mgr.reacquire(lease, MY_ATTRS)
    assert again.subnet == lease.subnet
    assert registry.get_raw(key(str(lease.subnet))) == MY_ATTRS.encode()


def test_create_conflict_is_already_exists(registry: MemoryRegistry) -> None:
    """The registry's create refuses a held subnet (what acquire's retry relies on)."""
    registry.create_subnet(net("172.16.42.0/24"), OTHER_ATTRS, LEASE_TTL)
    with pytest.raises(AlreadyExists):
        registry.create_subnet(net("172.16.42.0/24"), MY_ATTRS, LEASE_TTL)


# --- IPv6 -----------------------------------------------------------------------------------------

ME6 = IPv6Address("fd00::3")
DUAL_CFG = read_network_config(
    json.dumps({**CFG_FIELDS, "EnableIPv6": True, "IPv6Network": "fc00::/48"})
)
ONLY6_CFG = read_network_config(
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}'
)
MY_DUAL = LeaseAttrs(ME, "vxlan", "02:aa:00:00:00:01", 1, ME6, "02:aa:00:00:00:06", 1)
MY_ONLY6 = LeaseAttrs(NO_PUBLIC_IP, "vxlan", None, None, ME6, "02:aa:00:00:00:06", 1)


def manager6(registry: MemoryRegistry, public_ip: IPv4Address = ME, seed: int = 0) -> LeaseManager:
    """A LeaseManager for a host with IPv6 address ME6 (and *public_ip*)."""
    return LeaseManager(registry, public_ip, public_ipv6=ME6, rng=random.Random(seed))


def test_dual_stack_acquire_writes_flanneld_key_and_bytes(registry: MemoryRegistry) -> None:
    """A dual-stack lease is stored under ``<v4>-<len>&<v6>-<len>`` with exactly the bytes
    flanneld writes, and read back as the same lease."""
    m = manager6(registry)
    lease = m.acquire(DUAL_CFG, MY_DUAL)
    assert lease.key.ipv4 is not None and lease.key.ipv6 is not None
    # The listing that checked for a rival on either half is the one the watch starts from.
    assert m.snapshot is not None and [x.key for x in m.snapshot.leases] == [lease.key]
    name = lease.key.name
    assert name == (
        f"{lease.key.ipv4.network_address}-24&{ipv6_text(lease.key.ipv6.network_address)}-64"
    )
    assert registry.get_raw(f"{PREFIX}/subnets/{name}") == MY_DUAL.encode()
    assert registry.get_subnet(lease.key) == lease
    assert [x.key for x in registry.list_subnets().leases] == [lease.key]


def test_ipv6_only_acquire_and_restart(registry: MemoryRegistry) -> None:
    """An IPv6-only host leases ``0.0.0.0-0&<v6>-<len>``; after a restart it finds its lease by
    PublicIPv6, not the lease of another IPv6-only host (both say PublicIP 0.0.0.0)."""
    other = LeaseAttrs(NO_PUBLIC_IP, "vxlan", None, None, IPv6Address("fd00::9"), OTHER_MAC6, 1)
    theirs = LeaseManager(registry, NO_PUBLIC_IP, public_ipv6=IPv6Address("fd00::9"))
    their_lease = theirs.acquire(ONLY6_CFG, other)
    lease = manager6(registry, NO_PUBLIC_IP, seed=1).acquire(ONLY6_CFG, MY_ONLY6)
    assert lease.key.ipv4 is None and lease.key.name.startswith("0.0.0.0-0&fc00:0:0:")
    assert lease.key != their_lease.key
    again = manager6(registry, NO_PUBLIC_IP, seed=2).acquire(ONLY6_CFG, MY_ONLY6)
    assert again.key == lease.key
    assert registry.get_subnet(their_lease.key) == their_lease


def test_renew_and_reacquire_address_the_whole_key(registry: MemoryRegistry) -> None:
    """Renewal and re-acquisition write the dual-stack key itself, never an IPv4-only key
    for its IPv4 half."""
    mgr = manager6(registry)
    lease = mgr.acquire(DUAL_CFG, MY_DUAL)
    mgr.renew(lease, MY_DUAL)
    registry.delete_subnet(lease.key)
    mgr.reacquire(lease, MY_DUAL)
    assert [x.key for x in registry.list_subnets().leases] == [lease.key]


def test_ipv6_only_reacquire_lost_to_another_ipv6_only_host(registry: MemoryRegistry) -> None:
    """An IPv6-only holder is judged by its IPv6 half: another host's lease is a takeover
    (LeaseLost naming its PublicIPv6), not garbage to overwrite."""
    mgr = manager6(registry, NO_PUBLIC_IP)
    lease = mgr.acquire(ONLY6_CFG, MY_ONLY6)
    registry.delete_subnet(lease.key)
    other = LeaseAttrs(NO_PUBLIC_IP, "vxlan", None, None, IPv6Address("fd00::9"), OTHER_MAC6, 1)
    registry.create_subnet(lease.key, other, LEASE_TTL)
    with pytest.raises(LeaseLost, match="fd00::9"):
        mgr.reacquire(lease, MY_ONLY6)


class HalfRacingRegistry(MemoryRegistry):
    """A rival IPv4-only host creates a key holding the IPv4 half of our first create, just
    before it: compare-and-set cannot see it (the keys differ)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(PREFIX, **kwargs)  # type: ignore[arg-type]
        self.attempts: list[SubnetKey] = []

    def create_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        self.attempts.append(subnet)
        if len(self.attempts) == 1 and subnet.ipv4 is not None:
            super().create_subnet(SubnetKey(subnet.ipv4), OTHER_ATTRS, ttl)
        return super().create_subnet(subnet, attrs, ttl)


def test_race_lost_on_one_half_is_given_up(clock: FakeClock) -> None:
    """Two keys sharing an IPv4 half both pass compare-and-set: the later one (ours) sees the
    earlier, deletes itself and takes other subnets; the rival keeps its lease."""
    registry = HalfRacingRegistry(clock=clock)
    lease = manager6(registry).acquire(DUAL_CFG, MY_DUAL)
    first = registry.attempts[0]
    assert len(registry.attempts) == 2 and lease.key == registry.attempts[1]
    assert lease.key.ipv4 != first.ipv4
    keys = {x.key for x in registry.list_subnets().leases}
    assert keys == {SubnetKey(first.ipv4), lease.key}


def test_ipv4_only_keyspace_lists_once(clock: FakeClock) -> None:
    """Among IPv4-only keys, compare-and-set is the whole story: no second listing."""

    class Counting(MemoryRegistry):
        lists = 0

        def list_subnets(self) -> Snapshot:
            Counting.lists += 1
            return super().list_subnets()

    registry = Counting(PREFIX, clock=clock)
    registry.create_subnet(net("172.16.50.0/24"), OTHER_ATTRS, LEASE_TTL)
    manager(registry).acquire(CFG, MY_ATTRS)
    assert Counting.lists == 1
