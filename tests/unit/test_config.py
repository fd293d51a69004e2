"""The network config at ``<prefix>/config``: flanneld's defaults, rules and error texts."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from pyflannel.config import (
    KERNEL_VXLAN_PORT,
    Ipv4Range,
    NetworkConfig,
    VxlanConfig,
    parse_backend,
    parse_network_config,
)
from pyflannel.errors import ConfigError

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


@pytest.mark.parametrize("field", ["EnableIPv6"])
def test_ipv6_refused(field: str) -> None:
    """EnableIPv6 true is refused clearly instead of being silently ignored."""
    with pytest.raises(ConfigError, match=field):
        parse({"Network": "10.3.0.0/16", field: True, "IPv6Network": "fc00::/48"})
