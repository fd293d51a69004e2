"""The network config stored at ``<prefix>/config``: parse, default and validate it like flanneld.

Keys are matched case-insensitively and unknown keys are ignored, as Go's encoding/json does; a
value of the wrong JSON type is an error.  Error texts are flanneld's, so that operators can search
for them.  Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from pyflannel.errors import ConfigError, UnsupportedBackend
from pyflannel.lease import MAX_VNI
from pyflannel.untrusted import UntrustedInput, clip, excerpt, load_json

#: The VXLAN UDP port the Linux kernel uses when none is given (flanneld sends none for Port 0).
KERNEL_VXLAN_PORT = 8472
#: Bytes VXLAN over IPv4 adds to every packet: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
VXLAN_OVERHEAD = 50
#: The longest network config text parsed.  A real one is a few hundred bytes; refusing a
#: larger one before parsing bounds what a hostile write to ``<prefix>/config`` can cost.
MAX_CONFIG_CHARS = 64 * 1024
#: The longest error text parse_network_config raises: operators read it in one log line.
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class VxlanConfig:
    """The ``Backend`` object of a vxlan network."""

    vni: int = 1
    port: int = 0  # 0: not sent to the kernel, which then uses KERNEL_VXLAN_PORT
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int = 0  # 0: the external interface's MTU

    @property
    def device_name(self) -> str:
        """The VXLAN device name, ``flannel.<VNI>``."""
        return f"flannel.{self.vni}"

    @property
    def udp_port(self) -> int:
        """The UDP port peers send VXLAN to."""
        return self.port or KERNEL_VXLAN_PORT


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config with every default filled in."""

    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: VxlanConfig

    def contains_subnet(self, subnet: IPv4Network) -> bool:
        """True when *subnet* is one this config could hand out (flanneld's compatibility test)."""
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


def _fold(obj: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


def _get(obj: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = obj.get(key.lower())
    if value is None:
        return default
    # JSON true is a Python int subclass; Go refuses a bool where a number is wanted and vice versa.
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {_shown(value)}")
    if kind is not int and not isinstance(value, kind):
        raise ConfigError(f"{key}: expected a {kind.__name__}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    """*value* as JSON for an error text, cut short (it may be anything a host wrote)."""
    try:
        return clip(json.dumps(value), 48)
    except Exception:  # e.g. an int too long to print
        return excerpt(value)


def _ipv4(value: str, field: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise ConfigError(f"{field}: invalid IPv4 address {excerpt(value)}") from None


def parse_backend(raw: Any) -> VxlanConfig:
    """Parse the ``Backend`` object; only the vxlan type is supported."""
    if raw is None:
        # flanneld's parseBackendType: no Backend key means the udp backend.
        btype = "udp"
        obj: dict[str, Any] = {}
    else:
        if not isinstance(raw, dict):
            raise ConfigError("Backend: expected a JSON object")
        obj = _fold(raw)
        btype = str(_get(obj, "Type", str, "udp")).lower()
    if btype != "vxlan":
        raise UnsupportedBackend(
            f'backend type "{clip(btype, 48)}" is not supported: pyflannel implements only "vxlan" '
            '(set "Backend": {"Type": "vxlan"} in the network config)'
        )
    cfg = VxlanConfig(
        vni=_get(obj, "VNI", int, 1),
        port=_get(obj, "Port", int, 0),
        gbp=_get(obj, "GBP", bool, False),
        learning=_get(obj, "Learning", bool, False),
        direct_routing=_get(obj, "DirectRouting", bool, False),
        mtu=_get(obj, "MTU", int, 0),
    )
    if not 0 <= cfg.vni <= MAX_VNI:
        raise ConfigError(f"VNI must be between 0 and {MAX_VNI}, got {cfg.vni}")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"Port must be between 0 and 65535, got {cfg.port}")
    if cfg.mtu and not VXLAN_OVERHEAD + 68 <= cfg.mtu <= 65535:
        raise ConfigError(f"MTU must be between {VXLAN_OVERHEAD + 68} and 65535, got {cfg.mtu}")
    return cfg


def parse_network_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate the JSON stored at ``<prefix>/config``.

    Any input ends as a NetworkConfig or a ConfigError whose text is at most
    :data:`MAX_ERROR_CHARS` long, in time bounded by :data:`MAX_CONFIG_CHARS`.

    Raises:
        ConfigError: the text is not JSON, a field has the wrong type, or a rule is broken.
    """
    try:
        return _parse_network_config(text)
    except ConfigError as exc:
        if len(str(exc)) <= MAX_ERROR_CHARS:
            raise
        # Same class (UnsupportedBackend stays one), shorter text.
        raise type(exc)(clip(str(exc), MAX_ERROR_CHARS)) from None
    except Exception as exc:  # a case the checks missed must still be a config error
        raise ConfigError(f"network config did not parse ({type(exc).__name__})") from None


def _parse_network_config(text: str | bytes) -> NetworkConfig:
    try:
        raw = load_json(text, max_chars=MAX_CONFIG_CHARS, what="network config")
    except UntrustedInput as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError("network config must be a JSON object")
    obj = _fold(raw)

    if _get(obj, "EnableIPv6", bool, False):
        raise ConfigError("EnableIPv6: IPv6 networks are not supported by pyflannel yet")
    if _get(obj, "EnableNFTables", bool, False):
        raise ConfigError(
            "EnableNFTables: nftables mode is not supported by pyflannel yet; remove it (or set "
            "it to false) to get flanneld's iptables rules"
        )
    if not _get(obj, "EnableIPv4", bool, True):
        raise ConfigError("EnableIPv4: false is not supported (etcd mode always leases IPv4)")

    net_text = _get(obj, "Network", str, "")
    if not net_text:
        raise ConfigError("please define a correct Network parameter in the flannel config")
    try:
        # Go's ParseCIDR wants "a.b.c.d/len"; Python would also take a bare address (as a /32)
        # or a netmask after the slash.
        if not re.fullmatch(r"[^/]+/\d{1,2}", net_text):
            raise ValueError(net_text)
        network = IPv4Network(net_text, strict=False)  # host bits are masked off, as Go does
    except ValueError:
        raise ConfigError(f"Network: invalid IPv4 CIDR {excerpt(net_text)}") from None

    subnet_len = _get(obj, "SubnetLen", int, 0)
    if subnet_len == 0:
        if network.prefixlen <= 22:
            subnet_len = 24
        elif network.prefixlen <= 28:
            subnet_len = network.prefixlen + 2
        else:
            raise ConfigError("network is too small. Minimum useful network prefix is /28")
    elif subnet_len > 30:
        raise ConfigError("SubnetLen must be less than /31")
    elif subnet_len < network.prefixlen + 2:
        raise ConfigError("network must be able to accommodate at least four subnets")

    size = 1 << (32 - subnet_len)
    subnet_min = _bound(obj, "SubnetMin", network, subnet_len, network.network_address + size)
    subnet_max = _bound(obj, "SubnetMax", network, subnet_len, network.broadcast_address + 1 - size)
    if subnet_min > subnet_max:
        raise ConfigError(f"SubnetMin {subnet_min} is greater than SubnetMax {subnet_max}")
    return NetworkConfig(
        network, subnet_len, subnet_min, subnet_max, parse_backend(raw_backend(raw))
    )


def raw_backend(raw: dict[str, Any]) -> Any:
    """Return the ``Backend`` value of a config object, matched case-insensitively."""
    return _fold(raw).get("backend")


def _bound(
    obj: dict[str, Any], field: str, network: IPv4Network, subnet_len: int, default: IPv4Address
) -> IPv4Address:
    text = _get(obj, field, str, "")
    if not text:
        return default
    addr = _ipv4(text, field)
    if addr not in network:
        raise ConfigError(f"{field} is not in the range of the Network")
    if int(addr) % (1 << (32 - subnet_len)):
        raise ConfigError(f"{field} is not on a SubnetLen boundary: {addr}")
    return addr
