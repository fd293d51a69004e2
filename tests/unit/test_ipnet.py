"""Subnet keys as flanneld spells them, and subnet ranges."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.ipnet import (
    SubnetKey,
    gateway_address,
    parse_subnet_key,
    subnet_key,
    subnets_between,
)


@pytest.mark.parametrize(
    ("subnet", "key"),
    [
        ("10.5.34.0/24", "10.5.34.0-24"),
        ("172.16.10.0/24", "172.16.10.0-24"),
        ("10.4.0.128/25", "10.4.0.128-25"),
        ("10.0.0.4/30", "10.0.0.4-30"),
        ("10.0.0.0/8", "10.0.0.0-8"),
    ],
)
def test_subnet_key_round_trip(subnet: str, key: str) -> None:
    """subnet_key spells a subnet as flanneld does and parse_subnet_key reads it back."""
    net = IPv4Network(subnet)
    assert subnet_key(net) == key
    assert parse_subnet_key(key) == SubnetKey(net)
    assert parse_subnet_key(f"/coreos.com/network/subnets/{key}") == SubnetKey(net)


@pytest.mark.parametrize(
    "key",
    [
        "/coreos.com/network/config",
        "/coreos.com/network/subnets",
        "/coreos.com/network/subnets/",
        "/coreos.com/network/subnets/foo",
        "/coreos.com/network/subnets/10.5.34.0",
        "/coreos.com/network/subnets/10.5.34.0/24",
        "/coreos.com/network/subnets/10.5.34.0-24x",
        "/coreos.com/network/subnets/10.5.34-24",
        "/coreos.com/network/subnets/10.5.34.0-",
        "/coreos.com/network/subnets/10.5.34.0-24&",
        "fc00::-64",
        "",
    ],
)
def test_non_subnet_keys(key: str) -> None:
    """A key that is not ``a.b.c.d-len`` is not a subnet: None, not an exception."""
    assert parse_subnet_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "256.5.34.0-24",
        "10.5.300.0-24",
        "10.5.34.999-24",
        "10.5.34.0-33",
        "10.5.34.0-99",
        "1000.5.34.0-24",
    ],
)
def test_invalid_octets_or_length(key: str) -> None:
    """Octets above 255 or a prefix above 32 are not subnets."""
    assert parse_subnet_key(key) is None


def test_subnets_between_inclusive() -> None:
    """subnets_between yields every subnet from first to last inclusive, in order."""
    got = list(subnets_between(IPv4Address("10.5.1.0"), IPv4Address("10.5.4.0"), 24))
    assert got == [IPv4Network(f"10.5.{i}.0/24") for i in range(1, 5)]


def test_subnets_between_small_subnets() -> None:
    """Steps follow the prefix length (here /30: four addresses)."""
    got = list(subnets_between(IPv4Address("10.0.0.4"), IPv4Address("10.0.0.12"), 30))
    assert got == [
        IPv4Network("10.0.0.4/30"),
        IPv4Network("10.0.0.8/30"),
        IPv4Network("10.0.0.12/30"),
    ]


def test_subnets_between_single_and_empty() -> None:
    """first == last yields one subnet; first > last yields none."""
    one = IPv4Address("172.16.10.0")
    assert list(subnets_between(one, one, 24)) == [IPv4Network("172.16.10.0/24")]
    assert list(subnets_between(IPv4Address("172.16.11.0"), one, 24)) == []


def test_subnets_between_seed_range() -> None:
    """The seed's SubnetMin..SubnetMax holds 90 /24 subnets."""
    got = list(subnets_between(IPv4Address("172.16.10.0"), IPv4Address("172.16.99.0"), 24))
    assert len(got) == 90
    assert got[0] == IPv4Network("172.16.10.0/24")
    assert got[-1] == IPv4Network("172.16.99.0/24")


def test_subnets_between_top_of_address_space() -> None:
    """The range may end at the last subnet of the IPv4 space without overflowing."""
    got = list(subnets_between(IPv4Address("255.255.255.0"), IPv4Address("255.255.255.0"), 24))
    assert got == [IPv4Network("255.255.255.0/24")]


def test_gateway_address() -> None:
    """FLANNEL_SUBNET's address is the network address plus one."""
    assert gateway_address(IPv4Network("172.16.34.0/24")) == IPv4Address("172.16.34.1")
