"""plan_allocation: which subnet a node takes, following flanneld >= 0.18 (behaviour §3.2)."""

from __future__ import annotations

import json
import random
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from pyflannel.config import NetworkConfig, parse_network_config, read_network_config
from pyflannel.errors import OutOfSubnets
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import NO_PUBLIC_IP, EventKind, Lease, LeaseAttrs, LeaseEvent, Snapshot
from pyflannel.subnet import CANDIDATES, Allocation, Create, Reuse, plan_allocation

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


# --- IPv6: dual stack and IPv6 only -------------------------------------------------------------

ME6 = IPv6Address("fd00::3")
DUAL = read_network_config(
    json.dumps(
        {
            "Network": "172.16.0.0/16",
            "SubnetLen": 24,
            "SubnetMin": "172.16.10.0",
            "SubnetMax": "172.16.99.0",
            "EnableIPv6": True,
            "IPv6Network": "fc00::/48",
            "Backend": {"Type": "vxlan"},
        }
    )
)
ONLY6 = read_network_config(
    json.dumps(
        {
            "EnableIPv4": False,
            "EnableIPv6": True,
            "IPv6Network": "fc00::/48",
            "Backend": {"Type": "vxlan"},
        }
    )
)


def k(v4: str | None = None, v6: str | None = None) -> SubnetKey:
    """The key of the lease on *v4* and/or *v6*."""
    return SubnetKey(IPv4Network(v4) if v4 else None, IPv6Network(v6) if v6 else None)


def held6(key: SubnetKey, ip: str = "10.0.2.3", ip6: str | None = "fd00::2") -> Lease:
    """A lease on *key* held by the host with *ip* / *ip6* (IPv6 only: no *ip*)."""
    attrs = LeaseAttrs(
        IPv4Address(ip) if key.ipv4 else NO_PUBLIC_IP,
        "vxlan",
        "02:00:00:00:00:02" if key.ipv4 else None,
        1 if key.ipv4 else None,
        IPv6Address(ip6) if ip6 else None,
        "02:00:00:00:00:06" if ip6 else None,
        1 if ip6 else None,
    )
    return Lease(key, attrs, expiration=1e9, revision=1)


def create(alloc: Allocation) -> SubnetKey:
    """The key *alloc* creates (failing the test if it reuses instead)."""
    assert isinstance(alloc.action, Create)
    return alloc.action.subnet


def test_dual_stack_allocates_both_halves_independently() -> None:
    """A dual-stack host gets an IPv4 and an IPv6 half, each random among the first 100 free of
    its family, chosen independently of the other."""
    pairs = set()
    for seed in range(200):
        key = create(plan_allocation(DUAL, snap(), ME, None, rng(seed), public_ipv6=ME6))
        assert key.ipv4 is not None and key.ipv6 is not None
        assert DUAL.fits(key)
        v4_index = int(key.ipv4.network_address) - int(IPv4Address("172.16.10.0")) >> 8
        v6_index = (int(key.ipv6.network_address) - int(IPv6Address("fc00:0:0:1::"))) >> 64
        assert 0 <= v4_index < 90 and 0 <= v6_index < CANDIDATES
        pairs.add((v4_index, v6_index))
    assert len({v4 for v4, _ in pairs}) > 50 and len({v6 for _, v6 in pairs}) > 50
    assert len({v4 - v6 for v4, v6 in pairs}) > 50  # not the same index for both


def test_ipv6_allocation_in_a_huge_range_is_immediate() -> None:
    """fc00::/8 holds 2^56 /64 subnets: allocation looks at only the first free ones, however
    many leases there are (each looked-at subnet is a candidate or a taken one)."""
    cfg = read_network_config(
        '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/8","Backend":{"Type":"vxlan"}}'
    )
    taken = [held6(k(None, f"fc00:0:0:{i:x}::/64"), ip6=f"fd01::{i:x}") for i in range(1, 2001)]
    t0 = time.monotonic()
    key = create(plan_allocation(cfg, snap(*taken), NO_PUBLIC_IP, None, rng(), public_ipv6=ME6))
    assert time.monotonic() - t0 < 1.0
    assert key.ipv4 is None and key.ipv6 is not None
    index = int(key.ipv6.network_address) - int(IPv6Address("fc00::")) >> 64
    assert 2001 <= index < 2001 + CANDIDATES


def test_dual_stack_reuses_by_public_ip_as_flanneld() -> None:
    """A dual-stack host reuses the lease carrying its PublicIP (flanneld compares PublicIP
    only), even if its IPv6 address changed since."""
    mine = held6(k("172.16.34.0/24", "fc00:0:0:34::/64"), str(ME), "fd00::99")
    other = held6(k("172.16.35.0/24", "fc00:0:0:35::/64"))
    alloc = plan_allocation(DUAL, snap(other, mine), ME, None, rng(), public_ipv6=ME6)
    assert alloc.action == Reuse(mine) and alloc.stale == ()


def test_ipv6_only_reuses_by_public_ipv6() -> None:
    """An IPv6-only host finds its lease by PublicIPv6: every IPv6-only lease says PublicIP
    0.0.0.0, which flanneld compares and so would take another host's lease."""
    theirs = held6(k(None, "fc00:0:0:7::/64"), ip6="fd00::7")
    mine = held6(k(None, "fc00:0:0:8::/64"), ip6=str(ME6))
    alloc = plan_allocation(ONLY6, snap(theirs, mine), NO_PUBLIC_IP, None, rng(), public_ipv6=ME6)
    assert alloc.action == Reuse(mine)
    fresh = plan_allocation(ONLY6, snap(theirs), NO_PUBLIC_IP, None, rng(), public_ipv6=ME6)
    assert create(fresh) != theirs.key and fresh.stale == ()


@pytest.mark.parametrize(
    "key",
    [
        k("172.16.34.0/24"),  # IPv4 only: the IPv6 half is missing
        k("172.16.34.0/24", "fc00::/64"),  # the skipped first IPv6 subnet
        k("172.16.34.0/24", "fc00:0:0:34::/80"),  # another IPv6 prefix length
        k("172.16.34.0/24", "fd00:0:0:34::/64"),  # outside the IPv6 Network
    ],
)
def test_dual_stack_own_lease_that_does_not_fit_is_stale(key: SubnetKey) -> None:
    """Our lease without a fitting IPv6 half is deleted and both halves allocated anew
    (flanneld's isIPv6SubnetConfigCompat)."""
    mine = held6(key, str(ME), str(ME6) if key.ipv6 else None)
    alloc = plan_allocation(DUAL, snap(mine), ME, None, rng(), public_ipv6=ME6)
    assert alloc.stale == (mine,)
    assert DUAL.fits(create(alloc))


def test_ipv4_only_host_finds_its_dual_lease_stale() -> None:
    """An IPv4-only host whose lease has an IPv6 half (it ran dual stack before) deletes it and
    takes an IPv4-only key, as flanneld does."""
    mine = held6(k("172.16.34.0/24", "fc00:0:0:34::/64"), str(ME))
    alloc = plan_allocation(SEED, snap(mine), ME, None, rng())
    assert alloc.stale == (mine,)
    assert create(alloc).ipv6 is None


def test_previous_subnets_used_per_family() -> None:
    """Both halves of the previous subnet.env are taken when free; a held half is replaced by a
    free one while the other half is still kept (flanneld drops both)."""
    hint = k("172.16.42.0/24", "fc00:0:0:42::/64")
    alloc = plan_allocation(DUAL, snap(), ME, hint, rng(), public_ipv6=ME6)
    assert alloc.action == Create(hint, "previous subnet")
    v6_held = snap(held6(k(None, "fc00:0:0:42::/64")))
    key = create(plan_allocation(DUAL, v6_held, ME, hint, rng(), public_ipv6=ME6))
    assert key.ipv4 == hint.ipv4 and key.ipv6 != hint.ipv6
    alloc = plan_allocation(DUAL, v6_held, ME, hint, rng(), public_ipv6=ME6)
    assert isinstance(alloc.action, Create)
    assert alloc.action.reason == "previous IPv4 subnet, free IPv6 subnet"
    v4_hint_only = plan_allocation(DUAL, snap(), ME, hint.ipv4, rng(), public_ipv6=ME6)
    assert create(v4_hint_only).ipv4 == hint.ipv4


@pytest.mark.parametrize(
    "holder",
    [
        k("172.16.42.0/24"),  # an IPv4-only host
        k("172.16.42.0/24", "fc00:0:0:99::/64"),  # a dual-stack host with another IPv6 half
        k(None, "fc00:0:0:42::/64"),  # an IPv6-only host
        k("172.16.99.0/24", "fc00:0:0:42::/64"),  # a dual-stack host with another IPv4 half
    ],
)
def test_previous_subnets_never_stolen_from_any_shape_of_key(holder: SubnetKey) -> None:
    """A half of the previous subnets that any key holds (whatever its other half) is not
    taken: keys of every shape share one keyspace."""
    hint = k("172.16.42.0/24", "fc00:0:0:42::/64")
    other = held6(holder, ip6="fd00::2" if holder.ipv6 else None)
    for _ in range(20):
        key = create(plan_allocation(DUAL, snap(other), ME, hint, rng(_), public_ipv6=ME6))
        assert key.ipv4 != holder.ipv4 or holder.ipv4 is None
        assert key.ipv6 != holder.ipv6 or holder.ipv6 is None


def test_mixed_keyspace_each_family_sees_only_its_halves() -> None:
    """IPv4-only, dual-stack and IPv6-only leases together: an IPv4 host is blocked only by IPv4
    halves (an IPv6-only lease, 0.0.0.0-0&… to flanneld, blocks nothing: flanneld would see a
    /0 overlapping every subnet), an IPv6-only host only by IPv6 halves."""
    tiny = read_network_config(
        '{"Network":"10.0.0.0/28","EnableIPv6":true,"IPv6Network":"fc00::/124",'
        '"Backend":{"Type":"vxlan"}}'
    )
    # Three /30 and three /126 subnets; two of each are held, in keys of three shapes.
    leases = snap(
        held6(k("10.0.0.4/30")),
        held6(k("10.0.0.8/30", "fc00::4/126")),
        held6(k(None, "fc00::8/126")),
    )
    assert create(plan_allocation(tiny, leases, ME, None, rng(), public_ipv6=ME6)) == k(
        "10.0.0.12/30", "fc00::c/126"
    )
    v4_only = read_network_config('{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}')
    assert create(plan_allocation(v4_only, leases, ME, None, rng())) == k("10.0.0.12/30")


def test_ipv6_exhaustion_names_the_ipv6_range() -> None:
    """No free IPv6 subnet is OutOfSubnets naming the IPv6 range, as Go prints it."""
    tiny = read_network_config(
        '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/124",'
        '"Backend":{"Type":"vxlan"}}'
    )
    full = snap(*(held6(k(None, f"fc00::{n:x}/126"), ip6=f"fd00::{n:x}") for n in (4, 8, 12)))
    with pytest.raises(OutOfSubnets, match="between fc00::4 and fc00::c"):
        plan_allocation(tiny, full, NO_PUBLIC_IP, None, rng(), public_ipv6=ME6)
