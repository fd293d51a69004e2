"""One VXLAN device per address family the network enables, as flanneld makes them:
``flannel.<VNI>`` for IPv4 and ``flannel-v6.<VNI>`` for IPv6 (flannel-behaviour.md §4.2).

An :class:`Overlay` knows what its device must look like (:class:`VxlanSpec`: the underlay
address of its family as local, the MTU), which half of a lease is its own (the VTEP address
``<subnet>/32`` or ``<subnet>/128``), what a peer lease must fit on it (:class:`PeerScope`) and
what damage to the device looks like.  The daemon holds one or two and drives them alike; an
IPv4-only daemon holds exactly the one it always had.

The IPv6 device's MTU is the underlay's minus 70 (outer IPv6 40 + UDP 8 + VXLAN 8 + inner
Ethernet 14), not flanneld's 50, which makes every full-sized IPv6 packet of a container too
big for the underlay; it must leave IPv6's minimum of 1280.
"""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface

from pyflannel.backend.vxlan import PeerScope
from pyflannel.blackhole import BlackholeRoute
from pyflannel.config import VXLAN_OVERHEAD, NetworkConfig
from pyflannel.errors import ConfigError
from pyflannel.iface import ExternalInterface
from pyflannel.ipnet import SubnetKey, address_in
from pyflannel.kernel.records import IPAddress, IPNetwork, Link, VxlanSpec
from pyflannel.peersync import PeerSync

#: Bytes VXLAN over IPv6 adds: outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14.
VXLAN6_OVERHEAD = 70
#: IPv6's minimum link MTU: below it the kernel turns IPv6 off on the device.
IPV6_MIN_MTU = 1280


def device_name(version: int, vni: int) -> str:
    """``flannel.<VNI>`` or ``flannel-v6.<VNI>``."""
    return f"flannel-v6.{vni}" if version == 6 else f"flannel.{vni}"


class Overlay:
    """The device of one address family (*version* 4 or 6) and, once :attr:`dev` and
    :attr:`peers` are set by the daemon, its peers."""

    def __init__(self, version: int, cfg: NetworkConfig, ext: ExternalInterface) -> None:
        self.version = version
        self.family = f"IPv{version}"
        backend = cfg.backend
        if version == 6:
            assert cfg.ipv6 is not None and ext.vtep_local6 is not None
            self.network: IPNetwork = cfg.ipv6.network
            self.subnet_len = cfg.ipv6.subnet_len
            local: IPAddress = ext.vtep_local6
            self.public: IPAddress | None = ext.public_ipv6
            mtu = (backend.mtu or ext.link.mtu) - VXLAN6_OVERHEAD
            if mtu < IPV6_MIN_MTU:
                raise ConfigError(
                    f"{device_name(6, backend.vni)} would get MTU {mtu} (underlay MTU "
                    f"{backend.mtu or ext.link.mtu} - {VXLAN6_OVERHEAD}), below IPv6's minimum "
                    f"of {IPV6_MIN_MTU}: the underlay needs an MTU of at least "
                    f"{IPV6_MIN_MTU + VXLAN6_OVERHEAD} for an IPv6 overlay"
                )
        else:
            self.network = cfg.network
            self.subnet_len = cfg.subnet_len
            local = ext.vtep_local
            self.public = ext.public_ip
            mtu = (backend.mtu or ext.link.mtu) - VXLAN_OVERHEAD
        self.spec = VxlanSpec(
            name=device_name(version, backend.vni),
            vni=backend.vni,
            port=backend.udp_port,
            underlay_index=ext.link.index,
            local=local,
            mtu=mtu,
            learning=backend.learning,
            gbp=backend.gbp,
        )
        self.direct_routing = backend.direct_routing
        # Set by the daemon: the device as created or reused, then the engine of its peers
        # and the keeper of our subnet's blackhole route (--ip-blackhole-route).
        self.dev: Link
        self.peers: PeerSync
        self.blackhole: BlackholeRoute

    @property
    def name(self) -> str:
        """The device's name."""
        return self.spec.name

    def own_subnet(self, key: SubnetKey) -> IPNetwork:
        """Our lease's subnet of this family."""
        half = key.ipv6 if self.version == 6 else key.ipv4
        if half is None:
            raise ConfigError(f"our lease {key} has no {self.family} subnet")
        return half

    def vtep(self, key: SubnetKey) -> IPv4Interface | IPv6Interface:
        """The device's address: our subnet's network address as a host address."""
        net = self.own_subnet(key)
        if net.version == 6:
            return IPv6Interface((net.network_address, 128))
        return IPv4Interface((net.network_address, 32))

    def scope(self, key: SubnetKey) -> PeerScope:
        """What a peer lease must fit to be programmed on this device."""
        return PeerScope(self.network, self.subnet_len, self.own_subnet(key), self.public)

    def addresses(self, link: Link) -> tuple[IPv4Interface | IPv6Interface, ...]:
        """*link*'s addresses of this family."""
        return link.addresses6 if self.version == 6 else link.addresses

    def damage(self, current: Link, key: SubnetKey) -> list[str]:
        """What is wrong with the device as the kernel has it now (empty: nothing)."""
        vtep = self.vtep(key)
        have = self.addresses(current)
        found = []
        if current.mtu != self.spec.mtu:
            found.append(f"mtu {current.mtu} (want {self.spec.mtu})")
        if vtep not in have:
            found.append(f"VTEP address {vtep} missing")
        found.extend(
            f"stray address {a}" for a in have if a != vtep and address_in(a.ip, self.network)
        )
        if not current.up:
            found.append("link down")
        return found


__all__ = ["IPV6_MIN_MTU", "VXLAN6_OVERHEAD", "Overlay", "device_name"]
