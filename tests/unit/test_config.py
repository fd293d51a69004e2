"""The network config at ``<prefix>/config``: flanneld's defaults, rules and error texts."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from pyflannel.config import (
    KERNEL_VXLAN_PORT,
    Ipv4Range,
    Ipv6Range,
    NetworkConfig,
    VxlanConfig,
    parse_backend,
    parse_network_config,
    read_network_config,
)
from pyflannel.errors import ConfigError
from pyflannel.ipnet import SubnetKey

VXLAN = {"Type": "vxlan"}


def parse(obj: dict[str, Any]) -> NetworkConfig:
    """Parse *obj* (with a vxlan backend unless it names one) as the stored config text."""
    if not any(k.lower() == "backend" for k in obj):
        obj = {**obj, "Backend": VXLAN}
    return parse_network_config(json.dumps(obj))


def test_flanneld_example_defaults() -> None:
    """A bare /16 gets flanneld's defaults: /24 subnets from .1.0 to .255.0 and VNI 1."""
    cfg = parse({"Network": "10.3.0.0/16"})
    assert cfg.network == IPv4Network("10.3.0.0/16")
    assert cfg.subnet_len == 24
    assert cfg.subnet_min == IPv4Address("10.3.1.0")
    assert cfg.subnet_max == IPv4Address("10.3.255.0")
    assert cfg.backend == VxlanConfig()


@pytest.mark.parametrize(
    ("network", "subnet_len", "subnet_min", "subnet_max"),
    [
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.4.0.0/22", 24, "10.4.1.0", "10.4.3.0"),
        ("10.4.0.0/23", 25, "10.4.0.128", "10.4.1.128"),
        ("10.4.0.0/24", 26, "10.4.0.64", "10.4.0.192"),
        ("10.4.0.0/26", 28, "10.4.0.16", "10.4.0.48"),
        ("10.4.0.0/28", 30, "10.4.0.4", "10.4.0.12"),
    ],
)
def test_subnet_len_default(
    network: str, subnet_len: int, subnet_min: str, subnet_max: str
) -> None:
    """SubnetLen defaults to 24 up to /22, to prefix+2 for /23 to /28; subnet 0 is skipped."""
    cfg = parse({"Network": network})
    assert (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max)) == (
        subnet_len,
        subnet_min,
        subnet_max,
    )


@pytest.mark.parametrize("network", ["10.4.0.0/29", "10.4.0.0/30", "10.4.0.4/32"])
def test_network_too_small(network: str) -> None:
    """A network smaller than /28 without SubnetLen is refused with flanneld's text."""
    with pytest.raises(
        ConfigError, match=r"^network is too small\. Minimum useful network prefix is /28$"
    ):
        parse({"Network": network})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Network": "10.0.0.0/8", "SubnetLen": 31}, "SubnetLen must be less than /31"),
        ({"Network": "10.0.0.0/8", "SubnetLen": 32}, "SubnetLen must be less than /31"),
        (
            {"Network": "10.0.0.0/16", "SubnetLen": 17},
            "network must be able to accommodate at least four subnets",
        ),
        (
            {"Network": "10.0.0.0/16", "SubnetLen": 8},
            "network must be able to accommodate at least four subnets",
        ),
        (
            {"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"},
            "SubnetMin is not in the range of the Network",
        ),
        (
            {"Network": "10.0.0.0/16", "SubnetMax": "10.1.0.0"},
            "SubnetMax is not in the range of the Network",
        ),
        (
            {"Network": "10.0.0.0/16", "SubnetMin": "10.0.1.5"},
            "SubnetMin is not on a SubnetLen boundary: 10.0.1.5",
        ),
        (
            {"Network": "10.0.0.0/16", "SubnetLen": 26, "SubnetMax": "10.0.3.32"},
            "SubnetMax is not on a SubnetLen boundary: 10.0.3.32",
        ),
        ({"Network": ""}, "please define a correct Network parameter in the flannel config"),
        ({}, "please define a correct Network parameter in the flannel config"),
    ],
)
def test_rule_violations(fields: dict[str, Any], message: str) -> None:
    """Each broken rule is reported with flanneld's own error text."""
    with pytest.raises(ConfigError) as info:
        parse(fields)
    assert str(info.value) == message


def test_subnet_len_boundaries_accepted() -> None:
    """SubnetLen 30 and exactly prefix+2 are both allowed."""
    assert parse({"Network": "10.0.0.0/8", "SubnetLen": 30}).subnet_len == 30
    assert parse({"Network": "10.0.0.0/16", "SubnetLen": 18}).subnet_len == 18


def test_subnet_min_greater_than_max_rejected() -> None:
    """A SubnetMin above SubnetMax leaves nothing to allocate and is refused."""
    with pytest.raises(ConfigError, match="SubnetMin"):
        parse({"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.3.0"})


def test_host_bits_masked() -> None:
    """Host bits in Network are masked off, as Go's ParseCIDR does."""
    cfg = parse({"Network": "10.3.7.9/16"})
    assert cfg.network == IPv4Network("10.3.0.0/16")
    assert cfg.subnet_min == IPv4Address("10.3.1.0")


def test_keys_case_insensitive() -> None:
    """Top-level and Backend keys match in any case, and the backend type is lower-cased."""
    cfg = parse_network_config(
        json.dumps(
            {
                "network": "10.7.0.0/16",
                "SUBNETLEN": 26,
                "subnetmin": "10.7.0.64",
                "SubNetMax": "10.7.1.0",
                "backend": {"TYPE": "VXLAN", "vni": 4, "port": 4789},
            }
        )
    )
    assert cfg.network == IPv4Network("10.7.0.0/16")
    assert cfg.subnet_len == 26
    assert cfg.subnet_min == IPv4Address("10.7.0.64")
    assert cfg.subnet_max == IPv4Address("10.7.1.0")
    assert (cfg.backend.vni, cfg.backend.port) == (4, 4789)


def test_unknown_keys_ignored() -> None:
    """Keys flanneld does not know (or pyflannel does not use) are ignored, at both levels."""
    cfg = parse(
        {
            "Network": "10.3.0.0/16",
            "Comment": "hi",
            "EnableNFTables": False,
            "Backend": {"Type": "vxlan", "MacPrefix": "0E-2A", "Whatever": [1, 2]},
        }
    )
    assert cfg.subnet_len == 24


@pytest.mark.parametrize(
    "fields",
    [
        {"Network": "10.3.0.0/16", "SubnetLen": True},
        {"Network": "10.3.0.0/16", "SubnetLen": "24"},
        {"Network": "10.3.0.0/16", "SubnetLen": 24.0},
        {"Network": 167968768},
        {"Network": ["10.3.0.0/16"]},
        {"Network": "10.3.0.0/16", "SubnetMin": 1},
        {"Network": "10.3.0.0/16", "EnableIPv4": "true"},
        {"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "VNI": "1"}},
        {"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "VNI": True}},
        {"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "Port": 8472.5}},
        {"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "GBP": 1}},
        {"Network": "10.3.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": "yes"}},
        {"Network": "10.3.0.0/16", "Backend": {"Type": 7}},
        {"Network": "10.3.0.0/16", "Backend": "vxlan"},
    ],
)
def test_wrong_json_types_rejected(fields: dict[str, Any]) -> None:
    """A value of the wrong JSON type is an error, as in Go's encoding/json (no coercion)."""
    with pytest.raises(ConfigError):
        parse(fields)


@pytest.mark.parametrize("text", ["", "not json", "[]", '"10.3.0.0/16"', "{"])
def test_not_a_json_object(text: str) -> None:
    """Text that is not a JSON object is a ConfigError, not a crash."""
    with pytest.raises(ConfigError):
        parse_network_config(text)


@pytest.mark.parametrize(
    "network",
    [
        "10.3.0.0",
        "10.3.0.0/33",
        "fc00::/48",
        "banana",
        "10.3.0.0/255.255.0.0",
        "10.3.0.0/0.0.255.255",
        "10.3.0.0/",
    ],
)
def test_invalid_network(network: str) -> None:
    """A Network that is not an IPv4 CIDR (address/length, as Go's ParseCIDR wants) is refused."""
    with pytest.raises(ConfigError, match="Network"):
        parse({"Network": network})


def test_backend_absent_means_udp() -> None:
    """Without a Backend key flanneld uses udp, which pyflannel refuses with a hint to use vxlan."""
    with pytest.raises(ConfigError) as info:
        parse_network_config('{"Network":"10.3.0.0/16"}')
    text = str(info.value)
    assert '"udp" is not supported' in text
    assert "vxlan" in text


@pytest.mark.parametrize("btype", ["udp", "host-gw", "wireguard", ""])
def test_other_backends_rejected(btype: str) -> None:
    """Only the vxlan backend type is accepted."""
    with pytest.raises(ConfigError, match="not supported"):
        parse({"Network": "10.3.0.0/16", "Backend": {"Type": btype}})


def test_backend_without_type_is_udp() -> None:
    """A Backend object without Type is the udp backend too."""
    with pytest.raises(ConfigError, match='"udp" is not supported'):
        parse({"Network": "10.3.0.0/16", "Backend": {"VNI": 2}})


def test_vxlan_options_parsed() -> None:
    """VNI, Port, GBP, Learning, DirectRouting and MTU are read from the Backend object."""
    cfg = parse(
        {
            "Network": "10.3.0.0/16",
            "Backend": {
                "Type": "vxlan",
                "VNI": 42,
                "Port": 4789,
                "GBP": True,
                "Learning": True,
                "DirectRouting": True,
                "MTU": 9000,
            },
        }
    )
    assert cfg.backend == VxlanConfig(
        vni=42, port=4789, gbp=True, learning=True, direct_routing=True, mtu=9000
    )
    assert cfg.backend.device_name == "flannel.42"
    assert cfg.backend.udp_port == 4789


def test_vxlan_defaults() -> None:
    """A bare vxlan backend: VNI 1, device flannel.1, kernel port 8472, everything else off."""
    b = parse_backend({"Type": "vxlan"})
    assert b == VxlanConfig(vni=1, port=0, gbp=False, learning=False, direct_routing=False, mtu=0)
    assert b.device_name == "flannel.1"
    assert b.udp_port == KERNEL_VXLAN_PORT == 8472


def test_null_values_take_defaults() -> None:
    """A JSON null leaves the field at its default, as Go leaves the zero value."""
    cfg = parse(
        {"Network": "10.3.0.0/16", "SubnetLen": None, "Backend": {"Type": "vxlan", "VNI": None}}
    )
    assert cfg.subnet_len == 24
    assert cfg.backend.vni == 1


@pytest.mark.parametrize(
    ("vni", "ok"), [(0, True), (1, True), (16777215, True), (16777216, False), (-1, False)]
)
def test_vni_range(vni: int, ok: bool) -> None:
    """The VNI must fit VXLAN's 24 bits."""
    backend = {"Type": "vxlan", "VNI": vni}
    if ok:
        assert parse_backend(backend).vni == vni
    else:
        with pytest.raises(ConfigError, match="VNI"):
            parse_backend(backend)


@pytest.mark.parametrize(
    ("port", "ok"), [(0, True), (4789, True), (65535, True), (65536, False), (-1, False)]
)
def test_port_range(port: int, ok: bool) -> None:
    """The Port must be a UDP port number (0 leaves the kernel default)."""
    backend = {"Type": "vxlan", "Port": port}
    if ok:
        assert parse_backend(backend).port == port
    else:
        with pytest.raises(ConfigError, match="Port"):
            parse_backend(backend)


def test_seed_config() -> None:
    """The seed's config parses to exactly what it says, with port 8472 and VNI 1."""
    text = json.dumps(
        {
            "Network": "172.16.0.0/16",
            "SubnetLen": 24,
            "SubnetMin": "172.16.10.0",
            "SubnetMax": "172.16.99.0",
            "Backend": {"Type": "vxlan", "Port": 8472},
        }
    )
    cfg = parse_network_config(text)
    assert cfg == NetworkConfig(
        ipv4=Ipv4Range(
            network=IPv4Network("172.16.0.0/16"),
            subnet_len=24,
            subnet_min=IPv4Address("172.16.10.0"),
            subnet_max=IPv4Address("172.16.99.0"),
        ),
        backend=VxlanConfig(vni=1, port=8472),
    )
    assert cfg.ipv6 is None
    assert cfg.backend.device_name == "flannel.1"


@pytest.mark.parametrize(
    ("subnet", "inside"),
    [
        ("172.16.10.0/24", True),
        ("172.16.99.0/24", True),
        ("172.16.9.0/24", False),
        ("172.16.100.0/24", False),
        ("172.16.10.0/25", False),
        ("10.0.10.0/24", False),
    ],
)
def test_contains_subnet(subnet: str, inside: bool) -> None:
    """A subnet is compatible only with the right length and a start in [SubnetMin, SubnetMax]."""
    cfg = parse(
        {"Network": "172.16.0.0/16", "SubnetMin": "172.16.10.0", "SubnetMax": "172.16.99.0"}
    )
    assert cfg.contains_subnet(IPv4Network(subnet)) is inside


def test_bytes_accepted() -> None:
    """The config may arrive as bytes straight from etcd."""
    text = b'{"Network":"10.3.0.0/16","Backend":{"Type":"vxlan"}}'
    assert parse_network_config(text).subnet_len == 24


@pytest.mark.parametrize(
    "fields",
    [
        {"Network": "10.3.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48"},
        {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48"},
    ],
)
def test_ipv6_refused(fields: dict[str, Any]) -> None:
    """Until the daemon programs IPv6, a config enabling it (dual stack or IPv6 only) is refused
    clearly by parse_network_config, although read_network_config takes it."""
    with pytest.raises(ConfigError, match="EnableIPv6: IPv6 networks are not supported"):
        parse(fields)
    assert read({**fields}).ipv6 is not None


# --- IPv6 (read_network_config: everything is parsed; only the daemon refuses IPv6) -------------


def read(obj: dict[str, Any]) -> NetworkConfig:
    """Parse *obj* (with a vxlan backend) without the refusal of IPv6."""
    return read_network_config(json.dumps({**obj, "Backend": VXLAN}))


def read_error(obj: dict[str, Any]) -> str:
    """The ConfigError text read_network_config raises for *obj*."""
    with pytest.raises(ConfigError) as info:
        read(obj)
    return str(info.value)


def v6(network: str, **extra: Any) -> dict[str, Any]:
    """An IPv6-only config of *network*."""
    return {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": network, **extra}


def test_flanneld_ipv6_example_defaults() -> None:
    """flanneld's example: fc00::/48 gets /64 subnets from fc00:0:0:1:: to fc00:0:0:ffff::,
    next to the IPv4 defaults of a dual-stack config."""
    cfg = read({"Network": "10.3.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48"})
    assert cfg.ipv6 == Ipv6Range(
        IPv6Network("fc00::/48"), 64, IPv6Address("fc00:0:0:1::"), IPv6Address("fc00:0:0:ffff::")
    )
    assert (
        cfg.ipv4 is not None and cfg.subnet_len == 24 and cfg.network == IPv4Network("10.3.0.0/16")
    )


@pytest.mark.parametrize(
    ("network", "subnet_len", "subnet_min", "subnet_max"),
    [
        ("fc00::/8", 64, "fc00:0:0:1::", "fcff:ffff:ffff:ffff::"),
        ("fd00:10:244::/56", 64, "fd00:10:244:1::", "fd00:10:244:ff::"),
        ("fc00::/62", 64, "fc00:0:0:1::", "fc00:0:0:3::"),
        ("fc00::/63", 65, "fc00:0:0:0:8000::", "fc00:0:0:1:8000::"),
        ("fc00::/64", 66, "fc00::4000:0:0:0", "fc00::c000:0:0:0"),
        ("fc00::/120", 122, "fc00::40", "fc00::c0"),
        ("fc00::/124", 126, "fc00::4", "fc00::c"),
        ("fc00::1/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),  # host bits masked
    ],
)
def test_ipv6_subnet_len_default(
    network: str, subnet_len: int, subnet_min: str, subnet_max: str
) -> None:
    """IPv6SubnetLen defaults to 64 up to /62, to prefix+2 up to /124; subnet 0 is skipped."""
    r = read(v6(network)).ipv6
    assert r is not None
    assert (r.subnet_len, r.subnet_min, r.subnet_max) == (
        subnet_len,
        IPv6Address(subnet_min),
        IPv6Address(subnet_max),
    )


def test_ipv6_overrides() -> None:
    """Explicit IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax are kept."""
    r = read(
        v6(
            "fc00::/48",
            IPv6SubnetLen=80,
            IPv6SubnetMin="fc00:0:0:5::",
            IPv6SubnetMax="fc00:0:0:9:ffff::",
        )
    ).ipv6
    assert r is not None
    assert (r.subnet_len, str(r.subnet_min), str(r.subnet_max)) == (
        80,
        "fc00:0:0:5::",
        "fc00:0:0:9:ffff::",
    )
    assert r.contains_subnet(IPv6Network("fc00:0:0:7:1234::/80"))
    assert not r.contains_subnet(IPv6Network("fc00:0:0:7::/64"))
    assert not r.contains_subnet(IPv6Network("fc00:0:0:4:ffff::/80"))


def test_ipv6_min_of_all_zeros_is_the_default() -> None:
    """ "::" is Go's empty IP6: IPv6SubnetMin/Max "::" mean the defaults, as flanneld reads them."""
    r = read(v6("fc00::/48", IPv6SubnetMin="::", IPv6SubnetMax="::")).ipv6
    assert (
        r is not None
        and str(r.subnet_min) == "fc00:0:0:1::"
        and str(r.subnet_max) == "fc00:0:0:ffff::"
    )


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({}, "please define a correct IPv6Network parameter in the flannel config"),
        ({"IPv6Network": ""}, "please define a correct IPv6Network parameter"),
        ({"IPv6Network": "::/0"}, "please define a correct IPv6Network parameter"),  # Go: empty
        (
            {"IPv6Network": "fc00::/125"},
            "IPv6Network is too small. Minimum useful network prefix is /124",
        ),
        ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": 127}, "SubnetLen must be less than /127"),
        (
            {"IPv6Network": "fc00::/48", "IPv6SubnetLen": 49},
            "network must be able to accommodate at least four subnets",
        ),
        (
            {"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fd00::"},
            "IPv6SubnetMin is not in the range of the IPv6Network",
        ),
        (
            {"IPv6Network": "fc00::/48", "IPv6SubnetMax": "fd00::"},
            "IPv6SubnetMax is not in the range of the IPv6Network",
        ),
        (
            {"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::1"},
            "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1",
        ),
        (
            {"IPv6Network": "fc00::/48", "IPv6SubnetMax": "fc00:0:0:2:8000::"},
            "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:2:8000::",
        ),
        (
            {
                "IPv6Network": "fc00::/48",
                "IPv6SubnetMin": "fc00:0:0:9::",
                "IPv6SubnetMax": "fc00:0:0:8::",
            },
            "IPv6SubnetMin fc00:0:0:9:: is greater than IPv6SubnetMax fc00:0:0:8::",
        ),
        ({"IPv6Network": "10.0.0.0/8"}, "IPv6Network: invalid IPv6 CIDR '10.0.0.0/8'"),
        ({"IPv6Network": "fc00::"}, "IPv6Network: invalid IPv6 CIDR 'fc00::'"),
        ({"IPv6Network": "fe80::%eth0/64"}, "IPv6Network: invalid IPv6 CIDR"),
        (
            {"IPv6Network": "fc00::/48", "IPv6SubnetMin": "10.0.0.1"},
            "IPv6SubnetMin: invalid IPv6 address '10.0.0.1'",
        ),
        ({"IPv6Network": 5}, "IPv6Network: expected a str"),
        ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": "64"}, "IPv6SubnetLen: expected an integer"),
        ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": True}, "IPv6SubnetLen: expected an integer"),
        ({"IPv6Network": "::ffff:0:0/96"}, "flanneld spells as an IPv4 address"),
        (
            {"IPv6Network": "::/64", "IPv6SubnetLen": 100},
            "subnet ::1000:0/100 is one flanneld spells as an IPv4",
        ),
    ],
)
def test_ipv6_errors(fields: dict[str, Any], text: str) -> None:
    """Every IPv6 rule, with flanneld's text (sic "SubnetLen must be less than /127") or, where
    pyflannel is stricter, one naming the field."""
    assert text in read_error({"EnableIPv4": False, "EnableIPv6": True, **fields})


def test_ipv6_network_below_the_dotted_range_is_fine() -> None:
    """::/64 is a usable (if odd) network to flanneld and here: with /66 subnets none of them
    is spelled dotted; the same network cut into /100s is refused, see test_ipv6_errors."""
    r = read(v6("::/64")).ipv6
    assert r is not None and r.subnet_len == 66


def test_ipv6_only_config() -> None:
    """EnableIPv4 false and EnableIPv6 true: an IPv6-only network; Network is not looked at, and
    the IPv4 accessors say there is none."""
    cfg = read(v6("fc00::/48", Network="not a CIDR"))
    assert cfg.ipv4 is None and cfg.ipv6 is not None
    assert not cfg.contains_subnet(IPv4Network("10.0.0.0/24"))
    with pytest.raises(ConfigError, match="no IPv4 Network"):
        _ = cfg.network


def test_both_families_off_is_an_error() -> None:
    """EnableIPv4 and EnableIPv6 both false is flanneld's "none defined stack"."""
    assert "none defined stack" in read_error({"EnableIPv4": False, "Network": "10.3.0.0/16"})
    with pytest.raises(ConfigError, match="none defined stack"):
        parse({"EnableIPv4": False, "Network": "10.3.0.0/16"})


def test_ipv6_fields_ignored_when_ipv6_is_off() -> None:
    """As flanneld's CheckNetworkConfig: IPv6 fields are not looked at with EnableIPv6 false."""
    cfg = parse({"Network": "10.3.0.0/16", "IPv6Network": "garbage", "IPv6SubnetLen": 3})
    assert cfg.ipv6 is None and cfg.subnet_len == 24


def test_ipv6_keys_case_insensitive() -> None:
    """IPv6 field names match case-insensitively, as Go's encoding/json."""
    r = read(
        {"enableipv4": False, "ENABLEIPV6": True, "ipv6network": "fc00::/48", "IPV6SUBNETLEN": 80}
    ).ipv6
    assert r is not None and r.subnet_len == 80


@pytest.mark.parametrize(
    ("key", "fits"),
    [
        (SubnetKey(IPv4Network("10.3.7.0/24"), IPv6Network("fc00:0:0:7::/64")), True),
        (SubnetKey(IPv4Network("10.3.7.0/24")), False),  # the IPv6 half missing
        (SubnetKey(None, IPv6Network("fc00:0:0:7::/64")), False),  # the IPv4 half missing
        (SubnetKey(IPv4Network("10.3.7.0/24"), IPv6Network("fc00::/64")), False),  # first v6
        (SubnetKey(IPv4Network("10.3.0.0/24"), IPv6Network("fc00:0:0:7::/64")), False),
        (SubnetKey(IPv4Network("10.3.7.0/24"), IPv6Network("fc00:0:0:7::/80")), False),
    ],
)
def test_dual_stack_fits(key: SubnetKey, fits: bool) -> None:
    """A lease fits a dual-stack config only with both halves, each inside its range
    (flanneld's isSubnetConfigCompat and isIPv6SubnetConfigCompat)."""
    cfg = read({"Network": "10.3.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48"})
    assert cfg.fits(key) is fits


def test_ipv4_config_fits_only_ipv4_keys() -> None:
    """With IPv6 off, a key with an IPv6 half does not fit (flanneld: both absent)."""
    cfg = parse({"Network": "10.3.0.0/16"})
    assert cfg.fits(SubnetKey(IPv4Network("10.3.7.0/24")))
    assert not cfg.fits(SubnetKey(IPv4Network("10.3.7.0/24"), IPv6Network("fc00:0:0:7::/64")))
    assert not cfg.fits(SubnetKey(None, IPv6Network("fc00:0:0:7::/64")))
