"""The network config stored at ``<prefix>/config``: parse, default and validate it like flanneld.

Keys are matched case-insensitively and unknown keys are ignored, as Go's encoding/json does; a
value of the wrong JSON type is an error.  Error texts are flanneld's, so that operators can search
for them.  Pure: no I/O.

Both families are parsed and validated (``EnableIPv4``/``Network``/``Subnet*`` and
``EnableIPv6``/``IPv6Network``/``IPv6Subnet*``), but the daemon does not program IPv6 yet:
:func:`parse_network_config` refuses a config that enables it, in one place
(:func:`refuse_unwired`), and :func:`read_network_config` is the parser without that refusal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Generic, TypeVar

from pyflannel.errors import ConfigError, UnsupportedBackend
from pyflannel.ipnet import (
    GO_DOTTED_RANGES,
    SubnetKey,
    ipv6_text,
    parse_ipv6_address,
    parse_ipv6_cidr,
)
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


_Net = TypeVar("_Net", IPv4Network, IPv6Network)
_Addr = TypeVar("_Addr", IPv4Address, IPv6Address)


@dataclass(frozen=True)
class SubnetRange(Generic[_Net, _Addr]):
    """One family's part of the config: the Network and the subnets handed out of it."""

    network: _Net
    subnet_len: int
    subnet_min: _Addr
    subnet_max: _Addr

    def contains_subnet(self, subnet: _Net) -> bool:
        """True when *subnet* is one this range could hand out (flanneld's compatibility test)."""
        return subnet.prefixlen == self.subnet_len and (
            int(self.subnet_min) <= int(subnet.network_address) <= int(self.subnet_max)
        )


Ipv4Range = SubnetRange[IPv4Network, IPv4Address]
Ipv6Range = SubnetRange[IPv6Network, IPv6Address]


@dataclass(frozen=True)
class NetworkConfig:
    """A validated network config with every default filled in.

    ``ipv4`` is None when ``EnableIPv4`` is false, ``ipv6`` when ``EnableIPv6`` is (the
    default); never both.  ``network``, ``subnet_len``, ``subnet_min``, ``subnet_max`` and
    :meth:`contains_subnet` are the IPv4 range's, for the IPv4 code paths.
    """

    ipv4: Ipv4Range | None
    backend: VxlanConfig
    ipv6: Ipv6Range | None = None

    @property
    def v4(self) -> Ipv4Range:
        """The IPv4 range; ConfigError for an IPv6-only config."""
        if self.ipv4 is None:
            raise ConfigError("this network config has no IPv4 Network (EnableIPv4 is false)")
        return self.ipv4

    @property
    def network(self) -> IPv4Network:
        """The IPv4 Network."""
        return self.v4.network

    @property
    def subnet_len(self) -> int:
        """The IPv4 SubnetLen."""
        return self.v4.subnet_len

    @property
    def subnet_min(self) -> IPv4Address:
        """The IPv4 SubnetMin."""
        return self.v4.subnet_min

    @property
    def subnet_max(self) -> IPv4Address:
        """The IPv4 SubnetMax."""
        return self.v4.subnet_max

    def contains_subnet(self, subnet: IPv4Network) -> bool:
        """True when *subnet* is an IPv4 subnet this config could hand out."""
        return self.ipv4 is not None and self.ipv4.contains_subnet(subnet)

    def fits(self, key: SubnetKey) -> bool:
        """True when the lease *key* could be ours under this config: each half present exactly
        when its family is enabled, and inside that family's range (flanneld's
        isSubnetConfigCompat and isIPv6SubnetConfigCompat)."""
        if (key.ipv4 is None) != (self.ipv4 is None) or (key.ipv6 is None) != (self.ipv6 is None):
            return False
        v4_ok = key.ipv4 is None or self.ipv4 is None or self.ipv4.contains_subnet(key.ipv4)
        v6_ok = key.ipv6 is None or self.ipv6 is None or self.ipv6.contains_subnet(key.ipv6)
        return v4_ok and v6_ok


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
    """Parse and validate the JSON stored at ``<prefix>/config`` for the daemon as it is now:
    :func:`read_network_config`, then :func:`refuse_unwired`.

    Raises:
        ConfigError: as :func:`read_network_config`, or the config enables IPv6.
    """
    cfg = read_network_config(text)
    refuse_unwired(cfg)
    return cfg


# --- The one switch: remove this refusal once the daemon programs IPv6 (issue 10). ----------
# Everything below and beside it (config, keys, lease values, allocation, subnet.env) already
# handles dual-stack and IPv6-only networks; the daemon, the device and the peers do not yet.
def refuse_unwired(cfg: NetworkConfig) -> None:
    """Refuse a config the daemon cannot serve yet: one that enables IPv6 (IPv6-only too)."""
    if cfg.ipv6 is not None:
        raise ConfigError("EnableIPv6: IPv6 networks are not supported by pyflannel yet")


def read_network_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate the JSON stored at ``<prefix>/config``, both address families.

    Any input ends as a NetworkConfig or a ConfigError whose text is at most
    :data:`MAX_ERROR_CHARS` long, in time bounded by :data:`MAX_CONFIG_CHARS`.

    Raises:
        ConfigError: the text is not JSON, a field has the wrong type, or a rule is broken.
    """
    try:
        return _read_network_config(text)
    except ConfigError as exc:
        if len(str(exc)) <= MAX_ERROR_CHARS:
            raise
        # Same class (UnsupportedBackend stays one), shorter text.
        raise type(exc)(clip(str(exc), MAX_ERROR_CHARS)) from None
    except Exception as exc:  # a case the checks missed must still be a config error
        raise ConfigError(f"network config did not parse ({type(exc).__name__})") from None


def _read_network_config(text: str | bytes) -> NetworkConfig:
    try:
        raw = load_json(text, max_chars=MAX_CONFIG_CHARS, what="network config")
    except UntrustedInput as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError("network config must be a JSON object")
    obj = _fold(raw)
    enable_ipv4 = _get(obj, "EnableIPv4", bool, True)
    enable_ipv6 = _get(obj, "EnableIPv6", bool, False)
    # As flanneld's CheckNetworkConfig: a family's fields are looked at only when it is enabled.
    ipv4 = _ipv4_range(obj) if enable_ipv4 else None
    ipv6 = _ipv6_range(obj) if enable_ipv6 else None
    if ipv4 is None and ipv6 is None:
        # flanneld's GetIPFamily text, with the reason.
        raise ConfigError("none defined stack: EnableIPv4 and EnableIPv6 are both false")
    if _get(obj, "EnableNFTables", bool, False):
        raise ConfigError(
            "EnableNFTables: nftables mode is not supported by pyflannel yet; remove it (or set "
            "it to false) to get flanneld's iptables rules"
        )
    return NetworkConfig(ipv4, parse_backend(raw_backend(raw)), ipv6)


def _ipv4_range(obj: dict[str, Any]) -> Ipv4Range:
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
    return Ipv4Range(network, subnet_len, subnet_min, subnet_max)


def _ipv6_range(obj: dict[str, Any]) -> Ipv6Range:
    """flanneld's IPv6 rules (CheckNetworkConfig), with its texts: /124 at least, /64 subnets
    from a /62 or larger network, else prefix + 2; the first subnet skipped."""
    net_text = _get(obj, "IPv6Network", str, "")
    missing = "please define a correct IPv6Network parameter in the flannel config"
    if not net_text:
        raise ConfigError(missing)
    try:
        network = parse_ipv6_cidr(net_text)  # host bits are masked off, as Go does
    except ValueError:
        raise ConfigError(f"IPv6Network: invalid IPv6 CIDR {excerpt(net_text)}") from None
    if network.prefixlen == 0 and not int(network.network_address):
        raise ConfigError(missing)  # "::/0" is Go's empty IP6Net, the same as none

    subnet_len = _get(obj, "IPv6SubnetLen", int, 0)
    if subnet_len == 0:
        if network.prefixlen <= 62:
            subnet_len = 64
        elif network.prefixlen <= 124:
            subnet_len = network.prefixlen + 2
        else:
            raise ConfigError("IPv6Network is too small. Minimum useful network prefix is /124")
    elif subnet_len > 126:
        raise ConfigError("SubnetLen must be less than /127")  # sic: flanneld's text
    elif subnet_len < network.prefixlen + 2:
        raise ConfigError("network must be able to accommodate at least four subnets")

    size = 1 << (128 - subnet_len)
    first = int(network.network_address)
    subnet_min = _ipv6_bound(obj, "IPv6SubnetMin", network, size, IPv6Address(first + size))
    last = first + network.num_addresses - size
    subnet_max = _ipv6_bound(obj, "IPv6SubnetMax", network, size, IPv6Address(last))
    if subnet_min > subnet_max:
        raise ConfigError(
            f"IPv6SubnetMin {ipv6_text(subnet_min)} is greater than "
            f"IPv6SubnetMax {ipv6_text(subnet_max)}"
        )
    for lo, hi in GO_DOTTED_RANGES:
        # The first subnet address at or after lo (subnet addresses are multiples of size).
        dotted = max(int(subnet_min), -(-lo // size) * size)
        if dotted <= min(int(subnet_max), hi):
            raise ConfigError(
                f"IPv6Network {network}: subnet {IPv6Network((dotted, subnet_len))} is one "
                "flanneld spells as an IPv4 address, which no lease key can name; keep "
                "IPv6SubnetMin..IPv6SubnetMax out of ::100:0-::ffff:ffff and ::ffff:0:0/96"
            )
    return Ipv6Range(network, subnet_len, subnet_min, subnet_max)


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


def _ipv6_bound(
    obj: dict[str, Any], field: str, network: IPv6Network, size: int, default: IPv6Address
) -> IPv6Address:
    text = _get(obj, field, str, "")
    if not text:
        return default
    try:
        addr = parse_ipv6_address(text)
    except ValueError:
        raise ConfigError(f"{field}: invalid IPv6 address {excerpt(text)}") from None
    if not int(addr):
        return default  # "::" is Go's empty IP6: the default, as flanneld reads it
    if addr not in network:
        raise ConfigError(f"{field} is not in the range of the IPv6Network")
    if int(addr) % size:
        raise ConfigError(f"{field} is not on a SubnetLen boundary: {ipv6_text(addr)}")
    return addr
