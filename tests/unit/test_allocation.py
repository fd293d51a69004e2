"""plan_allocation: which subnet a node takes, following flanneld >= 0.18 (behaviour §3.2)."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.config import NetworkConfig, parse_network_config
from pyflannel.errors import OutOfSubnets
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import EventKind, Lease, LeaseAttrs, LeaseEvent, Snapshot
from pyflannel.subnet import CANDIDATES, Create, Reuse, plan_allocation

ME = IPv4Address("10.0.1.3")


def config(network: str, **extra: object) -> NetworkConfig:
    """A vxlan network config for *network* with *extra* fields."""
    return parse_network_config(
        json.dumps({"Network": network, **extra, "Backend": {"Type": "vxlan"}})
    )


SEED = config("172.16.0.0/16", SubnetLen=24, SubnetMin="172.16.10.0", SubnetMax="172.16.99.0")
#: Three /30 subnets: 10.0.0.4, 10.0.0.8, 10.0.0.12.
TINY = config("10.0.0.0/28")


def held(subnet: str, ip: str = "10.0.2.3", expiration: float | None = 1e9) -> Lease:
    """A lease on *subnet* held by *ip*."""
    return Lease(
        SubnetKey(IPv4Network(subnet)),
        LeaseAttrs(IPv4Address(ip), "vxlan", "02:00:00:00:00:02", 1),
        expiration=expiration,
        revision=1,
    )


def garbage(subnet: str) -> LeaseEvent:
    """A key on *subnet* whose value does not decode."""
    return LeaseEvent(
        EventKind.INVALID,
        f"/coreos.com/network/subnets/{subnet.replace('/', '-')}",
        subnet=SubnetKey(IPv4Network(subnet)),
        reason="not JSON",
    )


def snap(*leases: Lease, invalid: tuple[LeaseEvent, ...] = ()) -> Snapshot:
    """A snapshot of *leases* and *invalid* records."""
    return Snapshot(tuple(leases), revision=10, invalid=invalid)


def rng(seed: int = 0) -> random.Random:
    """A seeded random generator."""
    return random.Random(seed)


def test_reuse_by_public_ip() -> None:
    """A compatible lease that carries our public IP is reused, whatever the hint says."""
    mine = held("172.16.34.0/24", str(ME))
    other = held("172.16.35.0/24")
    alloc = plan_allocation(SEED, snap(other, mine), ME, IPv4Network("172.16.50.0/24"), rng())
    assert alloc.action == Reuse(mine)
    assert alloc.stale == ()


def test_reuse_keeps_reservation() -> None:
    """A reservation (no expiration) carrying our IP is reused as it is."""
    mine = held("172.16.40.0/24", str(ME), expiration=None)
    alloc = plan_allocation(SEED, snap(mine), ME, None, rng())
    assert alloc.action == Reuse(mine)


@pytest.mark.parametrize(
    "subnet",
    [
        "172.16.5.0/24",  # below SubnetMin
        "172.16.100.0/24",  # above SubnetMax
        "172.16.34.0/25",  # wrong length
        "10.99.0.0/24",  # another network altogether
    ],
)
def test_incompatible_own_lease_is_stale(subnet: str) -> None:
    """Our lease on a subnet the config no longer allows is stale, and a new subnet is chosen."""
    mine = held(subnet, str(ME))
    alloc = plan_allocation(SEED, snap(mine), ME, None, rng())
    assert alloc.stale == (mine,)
    assert isinstance(alloc.action, Create)
    assert SEED.contains_subnet(alloc.action.subnet.ipv4)


def test_incompatible_then_compatible_own_lease() -> None:
    """With a stale and a compatible own lease, the compatible one is reused, the other is stale."""
    stale = held("172.16.5.0/24", str(ME))
    good = held("172.16.20.0/24", str(ME))
    alloc = plan_allocation(SEED, snap(stale, good), ME, None, rng())
    assert alloc.action == Reuse(good)
    assert alloc.stale == (stale,)


def test_hint_used_when_free() -> None:
    """A free, compatible previous subnet from subnet.env is taken."""
    hint = IPv4Network("172.16.42.0/24")
    alloc = plan_allocation(SEED, snap(held("172.16.10.0/24")), ME, hint, rng())
    assert alloc.action == Create(SubnetKey(hint), "previous subnet")


def test_hint_never_steals_held_subnet() -> None:
    """A previous subnet that another node holds now is not taken (flanneld >= 0.18)."""
    hint = IPv4Network("172.16.42.0/24")
    for seed in range(50):
        alloc = plan_allocation(SEED, snap(held("172.16.42.0/24")), ME, hint, rng(seed))
        assert isinstance(alloc.action, Create)
        assert alloc.action.subnet.ipv4 != hint
        assert alloc.action.reason == "free subnet"


def test_hint_held_by_garbage_not_taken() -> None:
    """A previous subnet whose key holds garbage counts as held."""
    hint = IPv4Network("172.16.42.0/24")
    alloc = plan_allocation(SEED, snap(invalid=(garbage("172.16.42.0/24"),)), ME, hint, rng())
    assert isinstance(alloc.action, Create)
    assert alloc.action.subnet.ipv4 != hint


@pytest.mark.parametrize("hint", ["172.16.5.0/24", "172.16.42.0/25", "10.1.2.0/24"])
def test_incompatible_hint_ignored(hint: str) -> None:
    """A previous subnet outside the current config is ignored."""
    alloc = plan_allocation(SEED, snap(), ME, IPv4Network(hint), rng())
    assert isinstance(alloc.action, Create)
    assert alloc.action.reason == "free subnet"
    assert SEED.contains_subnet(alloc.action.subnet.ipv4)


def test_random_choice_among_first_100_free() -> None:
    """The choice is random among the first 100 free subnets and never a taken one."""
    cfg = config("10.0.0.0/16")  # 255 subnets: 10.0.1.0 .. 10.0.255.0
    taken = {IPv4Network(f"10.0.{i}.0/24") for i in range(1, 256) if i % 3 == 0}
    s = snap(*(held(str(n)) for n in sorted(taken)))
    free_order = [IPv4Network(f"10.0.{i}.0/24") for i in range(1, 256) if i % 3 != 0]
    first_100 = set(free_order[:CANDIDATES])
    picks = set()
    for seed in range(400):
        action = plan_allocation(cfg, s, ME, None, rng(seed)).action
        assert isinstance(action, Create)
        assert action.subnet.ipv4 not in taken
        assert action.subnet.ipv4 in first_100
        picks.add(action.subnet.ipv4)
    assert len(picks) > 50  # really spread, not always the first free one


def test_same_seed_same_choice() -> None:
    """The choice depends only on the injected generator."""
    a = plan_allocation(SEED, snap(), ME, None, rng(7)).action
    b = plan_allocation(SEED, snap(), ME, None, rng(7)).action
    assert a == b


def test_garbage_records_count_as_taken() -> None:
    """Subnets whose keys hold garbage are never chosen (a create there would fail)."""
    s = snap(held("10.0.0.4/30"), invalid=(garbage("10.0.0.8/30"),))
    for seed in range(50):
        action = plan_allocation(TINY, s, ME, None, rng(seed)).action
        assert action == Create(SubnetKey(IPv4Network("10.0.0.12/30")), "free subnet")


def test_other_length_record_blocks_nothing() -> None:
    """A record with another prefix length (not a lease of this network; a hostile key of the
    whole Network) blocks no subnet, unlike flanneld, where it would stop every new host."""
    s = snap(held("10.0.0.0/28"), held("10.0.0.8/29"))  # covers every /30 of TINY
    picks = {plan_allocation(TINY, s, ME, None, rng(seed)).action.subnet.ipv4 for seed in range(50)}
    assert picks == {IPv4Network(f"10.0.0.{n}/30") for n in (4, 8, 12)}


def test_stale_own_subnet_can_be_retaken() -> None:
    """The subnet of our own stale lease is deleted first, so it no longer counts as taken."""
    mine = held("10.0.0.4/31", str(ME))  # wrong length: stale
    s = snap(mine, held("10.0.0.8/30"), held("10.0.0.12/30"))
    alloc = plan_allocation(TINY, s, ME, None, rng())
    assert alloc.stale == (mine,)
    assert alloc.action == Create(SubnetKey(IPv4Network("10.0.0.4/30")), "free subnet")


def test_exhaustion_raises_out_of_subnets() -> None:
    """When every subnet is held (garbage included) OutOfSubnets names the range."""
    s = snap(held("10.0.0.4/30"), held("10.0.0.12/30"), invalid=(garbage("10.0.0.8/30"),))
    with pytest.raises(OutOfSubnets) as info:
        plan_allocation(TINY, s, ME, None, rng())
    text = str(info.value)
    assert "out of subnets" in text
    assert "10.0.0.4" in text
    assert "10.0.0.12" in text


def test_exhaustion_ignores_hint() -> None:
    """A full network is out of subnets even with a (held) hint."""
    s = snap(held("10.0.0.4/30"), held("10.0.0.8/30"), held("10.0.0.12/30"))
    with pytest.raises(OutOfSubnets):
        plan_allocation(TINY, s, ME, IPv4Network("10.0.0.8/30"), rng())


def test_lease_outside_range_does_not_block() -> None:
    """Leases outside [SubnetMin, SubnetMax] (e.g. the skipped first subnet) block nothing."""
    s = snap(held("10.0.0.0/30"), held("10.0.0.4/30"), held("10.0.0.8/30"))
    assert plan_allocation(TINY, s, ME, None, rng()).action == Create(
        SubnetKey(IPv4Network("10.0.0.12/30")), "free subnet"
    )
