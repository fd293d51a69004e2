"""The door to the kernel: links and addresses through pyroute2 behind typed, idempotent
verbs, and :meth:`Netlink.peer_sync`, which hands out the engine that keeps the peer entries
(:mod:`pyflannel.kernel.sync`, on our own netlink codec: the hot path).

Every other module sees plain records (:class:`Link`, :class:`VxlanSpec`) and
:class:`~pyflannel.errors.KernelError`, never pyroute2 or NetlinkError.  Verbs: ``ensure_*``
creates or verifies (re-creating what is incompatible); there is no ``add_*``: restarts are
routine and find the previous run's state in place.  Nothing here runs per event or per resync:
pyroute2 0.9.7 leaks about 2 kB per ``link("get")``/``link_lookup`` (dependencies.md), so those
are called at start-up and when the device is re-created only.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Any

from pyflannel.errors import KernelError
from pyflannel.ipnet import address_in
from pyflannel.kernel._pyroute2 import IPRoute, NetlinkError, setns
from pyflannel.kernel.codec import RTN_BLACKHOLE, RTPROT_BOOT
from pyflannel.kernel.monitor import Monitor
from pyflannel.kernel.plan import Ownership
from pyflannel.kernel.records import IPNetwork, Link, RoutePath, VxlanSpec
from pyflannel.kernel.sync import KernelSync, open_monitor

RT_TABLE_MAIN = 254
#: ifaddrmsg flags (linux/if_addr.h): an address being withdrawn is not one to choose.
IFA_F_DEPRECATED = 0x20
RT_SCOPE_HOST = 254
# What `ip route get` answers when there is no usable route: no route at all, a blackhole or
# unreachable route (EINVAL, EHOSTUNREACH), a prohibit route (EACCES).
_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.EACCES}


def random_vtep_mac() -> str:
    """A random unicast, locally administered MAC (what flanneld ≥ 0.15 generates)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@contextmanager
def _kernel(op: str, target: object, fine: Collection[int] = ()) -> Iterator[None]:
    """NetlinkError as KernelError; the errnos in *fine* (EEXIST for an add...) are success."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code in fine:
            return
        raise KernelError(op, str(target), exc.code, os.strerror(exc.code)) from None


class Netlink:
    """Typed netlink operations in the current network namespace (or *netns*)."""

    def __init__(self, netns: str | None = None) -> None:
        # flags=0: a misspelt netns must fail, not be created (pyroute2 defaults to O_CREAT).
        self._ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
        self._netns = netns

    def close(self) -> None:
        """Close the netlink socket."""
        self._ipr.close()

    def peer_sync(
        self, dev: int, owner: Ownership, *, version: int = 4, monitor: Monitor | None = None
    ) -> KernelSync:
        """The engine that keeps the peer entries on device *dev* of IP *version* (same
        namespace as this); *monitor*: a notification socket shared between the devices."""
        return KernelSync(dev, owner, self._netns, version=version, monitor=monitor)

    def monitor(self, versions: tuple[int, ...]) -> Monitor:
        """One notification socket for the devices of IP *versions* (the caller closes it)."""
        return open_monitor(versions, self._netns)

    # --- links and addresses -------------------------------------------------------------

    def links(self, *, ipv6: bool = False) -> list[Link]:
        """Every link with its IPv4 addresses (and, with *ipv6*, its usable IPv6 ones: global
        and link-local, not deprecated, in the kernel's order)."""
        addrs: dict[int, list[IPv4Interface]] = {}
        for msg in self._ipr.get_addr(family=socket.AF_INET):
            addrs.setdefault(msg["index"], []).append(
                IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            )
        addrs6: dict[int, list[IPv6Interface]] = {}
        for msg in self._ipr.get_addr(family=socket.AF_INET6) if ipv6 else ():
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            if flags & IFA_F_DEPRECATED or msg["scope"] == RT_SCOPE_HOST:
                continue  # withdrawn, or ::1
            addrs6.setdefault(msg["index"], []).append(
                IPv6Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            )
        return [
            self._link(msg, tuple(addrs.get(msg["index"], ())), tuple(addrs6.get(msg["index"], ())))
            for msg in self._ipr.get_links()
        ]

    @staticmethod
    def _link(
        msg: Any,
        addresses: tuple[IPv4Interface, ...] = (),
        addresses6: tuple[IPv6Interface, ...] = (),
    ) -> Link:
        return Link(
            index=msg["index"],
            name=msg.get_attr("IFLA_IFNAME"),
            mac=msg.get_attr("IFLA_ADDRESS") or "",
            mtu=msg.get_attr("IFLA_MTU") or 0,
            up=bool(msg["flags"] & 1),
            addresses=addresses,
            addresses6=addresses6,
        )

    def set_mtu(self, link: Link, mtu: int) -> None:
        """``ip link set DEV mtu MTU``."""
        with _kernel("link.set", link.name):
            self._ipr.link("set", index=link.index, mtu=mtu)

    def link(self, name: str) -> Link | None:
        """The link called *name*, or None."""
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            return None
        with _kernel("link.get", name):
            msg = self._ipr.link("get", index=found[0])[0]
        return self._link(msg)

    def default_route_link(self, version: int = 4) -> int | None:
        """The output interface of the first default route of IP *version* in the main table."""
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        for msg in self._ipr.route("dump", family=family, table=RT_TABLE_MAIN):
            if msg["dst_len"] == 0 and msg.get_attr("RTA_OIF"):
                return int(msg.get_attr("RTA_OIF"))
        return None

    def route_to(self, dst: IPv4Address) -> RoutePath | None:
        """``ip route get DST``: the device and source address the kernel uses to reach *dst*;
        None when it has no usable route."""
        try:
            msgs = self._ipr.route("get", dst=str(dst))
        except NetlinkError as exc:
            if exc.code in _NO_ROUTE:
                return None
            raise KernelError("route.get", str(dst), exc.code, os.strerror(exc.code)) from None
        for msg in msgs:
            oif = msg.get_attr("RTA_OIF")
            if oif:
                src = msg.get_attr("RTA_PREFSRC")
                return RoutePath(int(oif), IPv4Address(src) if src else None)
        return None

    def add_blackhole(self, dst: IPNetwork, metric: int) -> None:
        """``ip route add blackhole DST metric METRIC proto boot``; present already is fine."""
        with _kernel("route.add", f"blackhole {dst}", fine={errno.EEXIST}):
            self._ipr.route(
                "add", dst=str(dst), type=RTN_BLACKHOLE, proto=RTPROT_BOOT, priority=metric
            )

    def del_blackhole(self, dst: IPNetwork, metric: int) -> None:
        """``ip route del blackhole DST metric METRIC``; gone already is fine."""
        with _kernel("route.del", f"blackhole {dst}", fine={errno.ESRCH}):
            self._ipr.route("del", dst=str(dst), type=RTN_BLACKHOLE, priority=metric)

    def connected_routes(self, index: int, version: int = 4) -> list[IPNetwork]:
        """Main-table routes of IP *version* through link *index* without a gateway (what it
        reaches directly)."""
        family, net, any_ = (
            (socket.AF_INET6, IPv6Network, "::")
            if version == 6
            else (socket.AF_INET, IPv4Network, "0.0.0.0")
        )
        out: list[IPNetwork] = []
        for msg in self._ipr.route("dump", family=family, table=RT_TABLE_MAIN):
            if msg.get_attr("RTA_OIF") == index and not msg.get_attr("RTA_GATEWAY"):
                out.append(net(f"{msg.get_attr('RTA_DST') or any_}/{msg['dst_len']}"))
        return out

    def ensure_vxlan(self, spec: VxlanSpec) -> tuple[Link, bool]:
        """Create the VXLAN device or reuse a compatible one (keeping its MAC).

        Returns the link and whether it was (re)created.  Incompatible means flanneld's criteria:
        another kind, VNI, underlay device, local address, port or GBP flag.
        """
        existing = self._ipr.link_lookup(ifname=spec.name)
        if existing:
            msg = self._ipr.link("get", index=existing[0])[0]
            if self._compatible(msg, spec):
                link = self._link(msg)
                if link.mtu != spec.mtu:
                    with _kernel("link.set", spec.name):
                        self._ipr.link("set", index=link.index, mtu=spec.mtu)
                return Link(link.index, link.name, link.mac, spec.mtu, link.up), False
            with _kernel("link.del", spec.name):
                self._ipr.link("del", index=existing[0])
        mac = random_vtep_mac()
        kwargs: dict[str, Any] = {
            "ifname": spec.name,
            "kind": "vxlan",
            "vxlan_id": spec.vni,
            "vxlan_link": spec.underlay_index,
            "vxlan_local6" if spec.local.version == 6 else "vxlan_local": str(spec.local),
            "vxlan_learning": int(spec.learning),
            "vxlan_port": spec.port,
            "mtu": spec.mtu,
            "address": mac,
        }
        if spec.gbp:
            kwargs["vxlan_gbp"] = True
        with _kernel("link.add", spec.name):
            self._ipr.link("add", **kwargs)
        created = self.link(spec.name)
        assert created is not None
        self._disable_accept_ra(spec.name)
        return created, True

    @staticmethod
    def _compatible(msg: Any, spec: VxlanSpec) -> bool:
        info = msg.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        if data is None:
            return False
        gbp = data.get_attr("IFLA_VXLAN_GBP") is not None
        # A local address of the other family is a different local address (flanneld's test).
        local4, local6 = data.get_attr("IFLA_VXLAN_LOCAL"), data.get_attr("IFLA_VXLAN_LOCAL6")
        local = local6 if local6 is not None else local4
        if local is not None and spec.local.version == 6:
            local = str(IPv6Network(local).network_address)  # the kernel's spelling, compressed
        return bool(
            data.get_attr("IFLA_VXLAN_ID") == spec.vni
            and data.get_attr("IFLA_VXLAN_LINK") in (None, 0, spec.underlay_index)
            and local in (None, str(spec.local))
            and data.get_attr("IFLA_VXLAN_PORT") in (None, 0, spec.port)
            and data.get_attr("IFLA_VXLAN_GROUP") is None
            and data.get_attr("IFLA_VXLAN_GROUP6") is None
            and not data.get_attr("IFLA_VXLAN_L2MISS")
            and gbp == spec.gbp
        )

    def _disable_accept_ra(self, name: str) -> None:
        # flanneld does this too; a VXLAN device must not configure itself from stray RAs.
        # /proc/sys/net shows the namespace of the thread that opens it, so with a netns the
        # write happens in a short-lived thread that joined it (setns is per thread).
        def write() -> None:
            try:
                if self._netns:
                    setns(self._netns, flags=0)
                with open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", "w") as f:
                    f.write("0")
            except OSError:
                pass  # IPv6 disabled in this namespace: nothing to turn off

        if not self._netns:
            write()
            return
        worker = threading.Thread(target=write, name="pyflannel-accept-ra")
        worker.start()
        worker.join()

    def ensure_address(
        self, link: Link, addr: IPv4Interface | IPv6Interface, network: IPNetwork
    ) -> None:
        """Make *addr* the device's only address of its family inside *network*, then set the
        link up."""
        family, iface = (
            (socket.AF_INET6, IPv6Interface)
            if addr.version == 6
            else (socket.AF_INET, IPv4Interface)
        )
        have = [
            iface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in self._ipr.get_addr(family=family, index=link.index)
        ]
        for a in have:
            if a != addr and address_in(a.ip, network):
                with _kernel("addr.del", a):
                    self._ipr.addr(
                        "del", index=link.index, address=str(a.ip), prefixlen=a.network.prefixlen
                    )
        if addr not in have:
            with _kernel("addr.add", addr):
                self._ipr.addr(
                    "add", index=link.index, address=str(addr.ip), prefixlen=addr.network.prefixlen
                )
        with _kernel("link.up", link.name):
            self._ipr.link("set", index=link.index, state="up")
