"""The underlay's IPv6 side: the interface and addresses of a dual-stack or IPv6-only host
(flannel-behaviour.md §4.1, flanneld's LookupExtIface for its ipv6 and dual stacks)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network

import pytest

from pyflannel.errors import ConfigError
from pyflannel.iface import choose_external, choose_external_ipv6, underlay_overlaps6, with_ipv6
from pyflannel.kernel.records import Link
from pyflannel.lease import NO_PUBLIC_IP


def link(index: int, name: str, *addrs: str, mtu: int = 1500) -> Link:
    """A link record with IPv4 and IPv6 addresses, as Netlink.links(ipv6=True) returns it."""
    v4 = tuple(IPv4Interface(a) for a in addrs if ":" not in a)
    v6 = tuple(IPv6Interface(a) for a in addrs if ":" in a)
    return Link(index, name, f"02:00:00:00:00:{index:02x}", mtu, True, v4, v6)


ETH0 = link(2, "eth0", "10.0.1.3/24", "fe80::1/64", "fd00:1::3/64")
ETH1 = link(3, "eth1", "10.0.2.3/24", "fd00:2::3/64", "fd00:2::99/64")
V6ONLY = link(4, "v6only", "fe80::4/64", "2001:db8::4/64")
LLONLY = link(5, "llonly", "10.0.5.3/24", "fe80::5/64")
LINKS = [ETH0, ETH1, V6ONLY, LLONLY]


def test_dual_stack_takes_the_ipv4_interface_s_global_ipv6_address() -> None:
    """The IPv4 choice decides the interface; its first global IPv6 address (not the
    link-local one) is the IPv6 VXLAN source and, without --public-ipv6, the lease's."""
    ext = with_ipv6(choose_external(LINKS, ETH0.index), ETH0.index)
    assert ext.link is ETH0
    assert ext.iface_ipv6 == ext.public_ipv6 == IPv6Address("fd00:1::3")
    assert ext.vtep_local6 == IPv6Address("fd00:1::3")
    assert ext.public_ip == IPv4Address("10.0.1.3")


def test_public_ipv6_goes_in_the_lease() -> None:
    """--public-ipv6 not on the interface (NAT): in the lease, but VXLAN leaves from the
    interface's own address; one that is on it is also the source."""
    base = choose_external(LINKS, ETH1.index)
    nat = with_ipv6(base, None, public_ipv6=IPv6Address("2001:db8:9::1"))
    assert nat.public_ipv6 == IPv6Address("2001:db8:9::1")
    assert nat.vtep_local6 == IPv6Address("fd00:2::3")
    local = with_ipv6(base, None, public_ipv6=IPv6Address("fd00:2::99"))
    assert local.vtep_local6 == IPv6Address("fd00:2::99")


def test_iface_by_ipv6_address() -> None:
    """--iface may name an IPv6 address: its interface is chosen and that address used."""
    base = choose_external(LINKS, ETH0.index, ifaces=("fd00:2::99",))
    assert base.link is ETH1
    ext = with_ipv6(base, ETH0.index, ifaces=("fd00:2::99",))
    assert ext.iface_ipv6 == IPv6Address("fd00:2::99")


def test_iface_regex_over_ipv6_addresses() -> None:
    """--iface-regex matches IPv6 addresses too: for an IPv6-only network it picks the
    interface; for a dual-stack one the matching address of the chosen interface."""
    ext = choose_external_ipv6(LINKS, None, iface_regexes=(r"^2001:db8::",))
    assert (ext.link, ext.iface_ipv6) == (V6ONLY, IPv6Address("2001:db8::4"))
    dual = with_ipv6(choose_external(LINKS, ETH1.index), None, iface_regexes=(r"::99$",))
    assert dual.iface_ipv6 == IPv6Address("fd00:2::99")


def test_ipv6_default_route_on_another_interface_is_refused() -> None:
    """As flanneld: a dual-stack host uses one interface; without --iface an IPv6 default
    route elsewhere is an error naming the way out."""
    with pytest.raises(ConfigError, match="--iface"):
        with_ipv6(choose_external(LINKS, ETH0.index), ETH1.index)
    ext = with_ipv6(
        choose_external(LINKS, ETH0.index, ifaces=("eth0",)), ETH1.index, ifaces=("eth0",)
    )
    assert ext.link is ETH0


def test_link_local_only_as_flanneld_falls_back() -> None:
    """Only a link-local IPv6 address: used (flanneld's order: global, then link-local)."""
    ext = with_ipv6(choose_external(LINKS, LLONLY.index), LLONLY.index)
    assert ext.iface_ipv6 == IPv6Address("fe80::5")


def test_no_ipv6_address_is_an_error() -> None:
    """An interface without any IPv6 address cannot carry the IPv6 overlay."""
    bare = link(9, "bare", "10.0.9.3/24")
    with pytest.raises(ConfigError, match="has no IPv6 address"):
        with_ipv6(choose_external([bare], 9), None)


def test_ipv6_only_host() -> None:
    """No IPv4 needed: the IPv6 default route's interface, PublicIP 0.0.0.0 (what flanneld
    writes then), the interface's global IPv6 address; --public-ipv6 picks its owner."""
    ext = choose_external_ipv6(LINKS, V6ONLY.index)
    assert (ext.link, ext.iface_ip, ext.public_ip) == (V6ONLY, NO_PUBLIC_IP, NO_PUBLIC_IP)
    assert ext.public_ipv6 == ext.vtep_local6 == IPv6Address("2001:db8::4")
    owner = choose_external_ipv6(LINKS, V6ONLY.index, public_ipv6=IPv6Address("fd00:2::99"))
    assert owner.link is ETH1 and owner.public_ipv6 == IPv6Address("fd00:2::99")


@pytest.mark.parametrize(
    ("kwargs", "default", "needle"),
    [
        ({"ifaces": ("nope",)}, None, "--iface"),
        ({"ifaces": ("fd00:9::1",)}, None, "--iface"),
        ({"iface_regexes": ("^zzz",)}, None, "--iface-regex"),
        ({"iface_regexes": ("([",)}, None, "--iface-regex"),
        ({}, None, "no IPv6 default route"),
    ],
)
def test_ipv6_only_errors(kwargs: dict[str, object], default: int | None, needle: str) -> None:
    """No match, no IPv6 default route: a ConfigError that says which."""
    with pytest.raises(ConfigError) as info:
        choose_external_ipv6(LINKS, default, **kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_ipv6_network_overlapping_the_underlay() -> None:
    """An IPv6Network over the interface's addresses or connected routes is named; the
    link-local ones never count."""
    ext = with_ipv6(choose_external(LINKS, ETH0.index), None)
    assert underlay_overlaps6(IPv6Network("fc00::/48"), ext, [IPv6Network("fe80::/64")]) == []
    found = underlay_overlaps6(IPv6Network("fd00::/8"), ext, [IPv6Network("fd00:7::/64")])
    assert found == ["address fd00:1::3/64 of eth0", "route fd00:7::/64 dev eth0"]
