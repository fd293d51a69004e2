"""choose_external: which underlay interface and public IP a node uses (behaviour §4.1)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from pyflannel.errors import ConfigError
from pyflannel.iface import choose_external
from pyflannel.kernel.records import Link, RoutePath


def link(index: int, name: str, *addrs: str, mtu: int = 1500) -> Link:
    """A link record as Netlink.links() returns it."""
    return Link(
        index,
        name,
        f"02:00:00:00:00:{index:02x}",
        mtu,
        True,
        tuple(IPv4Interface(a) for a in addrs),
    )


LO = link(1, "lo", "127.0.0.1/8", mtu=65536)
ETH0 = link(2, "eth0", "10.0.1.3/24")
ETH1 = link(3, "eth1", "10.0.2.3/24", "10.0.2.99/24")
WLAN = link(4, "wlan0", "192.168.7.20/24", mtu=1400)
BARE = link(5, "bare0")  # no IPv4 address
LINKS = [LO, ETH0, ETH1, WLAN, BARE]


@pytest.mark.parametrize(
    ("ifaces", "name", "ip"),
    [
        (("eth1",), "eth1", "10.0.2.3"),
        (("10.0.2.99",), "eth1", "10.0.2.3"),
        (("192.168.7.20",), "wlan0", "192.168.7.20"),
        (("nope", "eth1", "eth0"), "eth1", "10.0.2.3"),
        (("10.9.9.9", "wlan0", "eth0"), "wlan0", "192.168.7.20"),
        (("bare0", "eth0"), "eth0", "10.0.1.3"),
    ],
)
def test_iface_by_name_or_ip_first_match(ifaces: tuple[str, ...], name: str, ip: str) -> None:
    """--iface matches by name or by IP, tried in order; the first with an IPv4 address wins."""
    ext = choose_external(LINKS, ETH0.index, ifaces=ifaces)
    assert ext.link.name == name
    assert ext.iface_ip == IPv4Address(ip)
    assert ext.public_ip == IPv4Address(ip)


def test_iface_ignores_default_route() -> None:
    """--iface wins over the default route."""
    assert choose_external(LINKS, ETH0.index, ifaces=("wlan0",)).link.name == "wlan0"


def test_iface_ip_by_address_uses_interface_primary() -> None:
    """--iface by a secondary address chooses that interface; its first address is the iface IP."""
    ext = choose_external(LINKS, None, ifaces=("10.0.2.99",))
    assert ext.link is ETH1
    assert ext.iface_ip == IPv4Address("10.0.2.3")


@pytest.mark.parametrize(
    ("regexes", "name"),
    [
        ((r"^10\.0\.2\.",), "eth1"),
        ((r"^wlan",), "wlan0"),
        ((r"^192\.168\.", r"^eth"), "wlan0"),
        ((r"^nomatch", r"^eth"), "eth0"),
        ((r"eth1",), "eth1"),
    ],
)
def test_iface_regex(regexes: tuple[str, ...], name: str) -> None:
    """--iface-regex matches addresses, then names; regexes are tried in order."""
    assert choose_external(LINKS, None, iface_regexes=regexes).link.name == name


def test_iface_regex_ip_before_name() -> None:
    """For one regex, a match on any interface's address wins over a match on another's name."""
    links = [link(7, "net10", "192.168.1.5/24"), link(8, "eth0", "10.0.1.3/24")]
    ext = choose_external(links, None, iface_regexes=("10",))
    assert ext.link.name == "eth0"


def test_iface_regex_skips_links_without_ipv4() -> None:
    """A name match on an interface without an IPv4 address is not chosen."""
    ext = choose_external(LINKS, None, iface_regexes=("^(bare0|eth0)$",))
    assert ext.link.name == "eth0"


def test_iface_regex_invalid() -> None:
    """An invalid regex is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="iface-regex"):
        choose_external(LINKS, None, iface_regexes=("([",))


def test_public_ip_owner() -> None:
    """Without --iface the interface owning --public-ip is used, not the default route's."""
    ext = choose_external(LINKS, ETH0.index, public_ip=IPv4Address("10.0.2.99"))
    assert ext.link.name == "eth1"
    assert ext.public_ip == IPv4Address("10.0.2.99")
    assert ext.iface_ip == IPv4Address("10.0.2.3")
    assert ext.vtep_local == IPv4Address("10.0.2.99")


def test_public_ip_not_local_falls_back_to_default_route() -> None:
    """A --public-ip no interface owns (NAT) keeps the default route's interface as underlay."""
    ext = choose_external(LINKS, ETH0.index, public_ip=IPv4Address("203.0.113.5"))
    assert ext.link.name == "eth0"
    assert ext.public_ip == IPv4Address("203.0.113.5")
    assert ext.vtep_local == IPv4Address("10.0.1.3")  # cannot send from an address we lack


def test_public_ip_with_iface() -> None:
    """--public-ip with --iface: the iface is the underlay and the public IP goes in the lease."""
    ext = choose_external(LINKS, ETH0.index, ifaces=("eth1",), public_ip=IPv4Address("203.0.113.5"))
    assert ext.link.name == "eth1"
    assert ext.public_ip == IPv4Address("203.0.113.5")


def test_default_route_fallback() -> None:
    """With no flags the interface of the default route is used."""
    ext = choose_external(LINKS, WLAN.index)
    assert ext.link is WLAN
    assert ext.iface_ip == ext.public_ip == ext.vtep_local == IPv4Address("192.168.7.20")


def test_global_address_preferred_over_link_local() -> None:
    """A global address is preferred over a link-local one on the same interface."""
    eth = link(9, "eth9", "169.254.3.4/16", "10.0.9.9/24")
    assert choose_external([eth], 9).iface_ip == IPv4Address("10.0.9.9")


def test_link_local_only_used_when_nothing_else() -> None:
    """An interface with only a link-local address still has a usable address."""
    eth = link(9, "eth9", "169.254.3.4/16")
    assert choose_external([eth], 9).iface_ip == IPv4Address("169.254.3.4")


@pytest.mark.parametrize(
    ("kwargs", "default", "needle"),
    [
        ({"ifaces": ("nope",)}, ETH0.index, "--iface"),
        ({"ifaces": ("10.9.9.9",)}, ETH0.index, "--iface"),
        ({"ifaces": ("bare0",)}, ETH0.index, "--iface"),
        ({"iface_regexes": ("^zzz",)}, ETH0.index, "--iface-regex"),
        ({}, None, "default route"),
        ({}, 99, "default route"),
        ({}, BARE.index, "no IPv4"),
        ({"public_ip": IPv4Address("203.0.113.5")}, None, "default route"),
    ],
)
def test_errors(kwargs: dict[str, object], default: int | None, needle: str) -> None:
    """No match, no default route, or no IPv4 address is a ConfigError that says which."""
    with pytest.raises(ConfigError) as info:
        choose_external(LINKS, default, **kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_mtu_zero_rejected() -> None:
    """An interface reporting MTU 0 is refused, as flanneld does."""
    with pytest.raises(ConfigError, match="MTU"):
        choose_external([link(2, "eth0", "10.0.1.3/24", mtu=0)], 2)


REACH = IPv4Address("10.0.2.200")


def test_can_reach_takes_the_routes_device_and_source() -> None:
    """--iface-can-reach: the device of the route to the address, and the route's source
    address (not the device's first), as flanneld's `ip route get`."""
    ext = choose_external(
        LINKS, ETH0.index, can_reach=REACH, reach=RoutePath(ETH1.index, IPv4Address("10.0.2.99"))
    )
    assert ext.link is ETH1
    assert ext.iface_ip == ext.public_ip == IPv4Address("10.0.2.99")


def test_can_reach_without_source_uses_the_devices_address() -> None:
    """A route without a source address: the device's first address."""
    ext = choose_external(LINKS, None, can_reach=REACH, reach=RoutePath(WLAN.index, None))
    assert ext.iface_ip == IPv4Address("192.168.7.20")


def test_can_reach_with_public_ip() -> None:
    """--public-ip still names what goes into the lease."""
    ext = choose_external(
        LINKS,
        None,
        can_reach=REACH,
        reach=RoutePath(ETH1.index, None),
        public_ip=IPv4Address("203.0.113.5"),
    )
    assert ext.link is ETH1 and ext.public_ip == IPv4Address("203.0.113.5")


@pytest.mark.parametrize(
    ("ifaces", "regexes", "name"),
    [
        (("wlan0",), (), "wlan0"),  # --iface first
        ((), ("^wlan",), "wlan0"),  # then --iface-regex
        (("nope",), ("^wlan",), "wlan0"),  # an --iface that matches nothing falls through
        (("nope",), ("^zzz",), "eth1"),  # ... to the route
        (("bare0",), (), "eth1"),
    ],
)
def test_precedence_iface_then_regex_then_can_reach(
    ifaces: tuple[str, ...], regexes: tuple[str, ...], name: str
) -> None:
    """As flanneld: every --iface, then every --iface-regex, then --iface-can-reach."""
    ext = choose_external(
        LINKS,
        ETH0.index,
        ifaces=ifaces,
        iface_regexes=regexes,
        can_reach=REACH,
        reach=RoutePath(ETH1.index, IPv4Address("10.0.2.3")),
    )
    assert ext.link.name == name


@pytest.mark.parametrize(
    "reach",
    [None, RoutePath(LO.index, IPv4Address("127.0.0.1")), RoutePath(99, IPv4Address("10.9.9.9"))],
)
def test_can_reach_no_usable_route_is_an_error(reach: RoutePath | None) -> None:
    """No route, a route through the loopback (the address is our own), or a device that is
    gone: a ConfigError naming the flag; the default route is not used instead."""
    with pytest.raises(ConfigError, match=r"--iface-can-reach 10\.0\.2\.200"):
        choose_external(LINKS, ETH0.index, ifaces=("nope",), can_reach=REACH, reach=reach)
