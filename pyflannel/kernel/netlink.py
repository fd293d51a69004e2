"""The one module that talks to the kernel: pyroute2 behind typed, idempotent verbs.

Every other module sees plain records (:class:`Neigh`, :class:`Fdb`, :class:`Route`,
:class:`Link`) and :class:`~pyflannel.errors.KernelError`, never pyroute2 or NetlinkError.
Verbs: ``ensure_*`` creates or verifies (re-creating what is incompatible), ``replace_*`` sets an
exact state whether or not something was there, ``delete_*`` succeeds when the thing is already
gone.  There is no ``add_*``: restarts are routine and find the previous run's state in place.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg
from pyroute2.netns import setns

from pyflannel.errors import KernelError
from pyflannel.kernel.records import Fdb, KernelState, Link, Neigh, Route, VxlanSpec

NUD_PERMANENT = ndmsg.states["permanent"]
NUD_NOARP = ndmsg.states["noarp"]
NTF_SELF = ndmsg.flags["self"]
RTNH_F_ONLINK = 4
RT_TABLE_MAIN = 254
RTPROT_KERNEL = 2
#: flanneld's routes carry proto "boot"; ours do too, so either daemon can take over the other's.
RTPROT_BOOT = 3
_MISSING = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


def random_vtep_mac() -> str:
    """A random unicast, locally administered MAC (what flanneld ≥ 0.15 generates)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@contextmanager
def _kernel(op: str, target: object) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
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

    # --- links and addresses -------------------------------------------------------------

    def links(self) -> list[Link]:
        """Every link with its IPv4 addresses."""
        addrs: dict[int, list[IPv4Interface]] = {}
        for msg in self._ipr.get_addr(family=socket.AF_INET):
            addrs.setdefault(msg["index"], []).append(
                IPv4Interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            )
        return [
            self._link(msg, tuple(addrs.get(msg["index"], ()))) for msg in self._ipr.get_links()
        ]

    @staticmethod
    def _link(msg: Any, addresses: tuple[IPv4Interface, ...] = ()) -> Link:
        return Link(
            index=msg["index"],
            name=msg.get_attr("IFLA_IFNAME"),
            mac=msg.get_attr("IFLA_ADDRESS") or "",
            mtu=msg.get_attr("IFLA_MTU") or 0,
            up=bool(msg["flags"] & 1),
            addresses=addresses,
        )

    def device(self, index: int) -> Link | None:
        """The link with *index* and its IPv4 addresses, or None if it is gone.

        Reads the link table with a dump: pyroute2 0.9.7 leaks about 2 kB on every
        ``link("get")`` and ``link_lookup`` (dependencies.md, "Measured in use"), and this runs
        on every reconcile, where a dump of a few links does not.
        """
        with _kernel("link.dump", index):
            msgs = [m for m in self._ipr.link("dump") if m["index"] == index]
        if not msgs:
            return None
        with _kernel("addr.dump", index):
            addrs = tuple(
                IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
                for m in self._ipr.get_addr(family=socket.AF_INET, index=index)
            )
        return self._link(msgs[0], addrs)

    def link_name(self, index: int) -> str | None:
        """The name of the link with *index*, or None (for log lines)."""
        for m in self._ipr.link("dump"):
            if m["index"] == index:
                return str(m.get_attr("IFLA_IFNAME"))
        return None

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

    def default_route_link(self) -> int | None:
        """The output interface of the first IPv4 default route in the main table."""
        for msg in self._ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            if msg["dst_len"] == 0 and msg.get_attr("RTA_OIF"):
                return int(msg.get_attr("RTA_OIF"))
        return None

    def connected_routes(self, index: int) -> list[IPv4Network]:
        """Main-table routes through link *index* without a gateway (what it reaches directly)."""
        out = []
        for msg in self._ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
            if msg.get_attr("RTA_OIF") == index and not msg.get_attr("RTA_GATEWAY"):
                out.append(IPv4Network(f"{msg.get_attr('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"))
        return out

    def route_is_onlink(self, ip: IPv4Address) -> bool:
        """True when the kernel reaches *ip* directly (no gateway): DirectRouting's test."""
        with _kernel("route.get", ip):
            routes = self._ipr.route("get", dst=str(ip))
        return len(routes) == 1 and routes[0].get_attr("RTA_GATEWAY") is None

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
            "vxlan_local": str(spec.local),
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
        return bool(
            data.get_attr("IFLA_VXLAN_ID") == spec.vni
            and data.get_attr("IFLA_VXLAN_LINK") in (None, 0, spec.underlay_index)
            and data.get_attr("IFLA_VXLAN_LOCAL") in (None, str(spec.local))
            and data.get_attr("IFLA_VXLAN_PORT") in (None, 0, spec.port)
            and data.get_attr("IFLA_VXLAN_GROUP") is None
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

    def ensure_address(self, link: Link, addr: IPv4Interface, network: IPv4Network) -> None:
        """Make *addr* the device's only IPv4 address inside *network*, then set the link up."""
        have = [
            IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in self._ipr.get_addr(family=socket.AF_INET, index=link.index)
        ]
        for a in have:
            if a != addr and a.ip in network:
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

    # --- the managed entries --------------------------------------------------------------

    def observe(self, dev: int, network: IPv4Network, direct_subnet_len: int | None) -> KernelState:
        """Read what pyflannel manages and what it must not touch.

        Ours: permanent neighbours and permanent ``self`` FDB entries on *dev*, every main-table
        route on *dev* (any prefix, with or without a gateway) except the kernel's own, and with
        DirectRouting (*direct_subnet_len* set) our "boot" routes via a gateway to /len subnets
        of *network* on other devices.  Every other main-table route is foreign, by destination.
        """
        state = KernelState()
        with _kernel("neigh.dump", dev):
            for m in self._ipr.neigh("dump", family=socket.AF_INET, ifindex=dev):
                if m["ifindex"] == dev and m["state"] & NUD_PERMANENT and m.get_attr("NDA_LLADDR"):
                    state.neighs[IPv4Address(m.get_attr("NDA_DST"))] = m.get_attr("NDA_LLADDR")
        with _kernel("fdb.dump", dev):
            for m in self._ipr.fdb("dump", ifindex=dev):
                dst = m.get_attr("NDA_DST")
                if (
                    m["ifindex"] == dev
                    and m["state"] & NUD_PERMANENT
                    and dst
                    and m["flags"] & NTF_SELF
                ):
                    state.fdb.add(Fdb(m.get_attr("NDA_LLADDR"), IPv4Address(dst)))
        with _kernel("route.dump", dev):
            for m in self._ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
                if m.get_attr("RTA_TABLE", m["table"]) != RT_TABLE_MAIN:
                    continue
                dst = m.get_attr("RTA_DST") or "0.0.0.0"
                gw = m.get_attr("RTA_GATEWAY")
                oif = m.get_attr("RTA_OIF")
                net = IPv4Network(f"{dst}/{m['dst_len']}")
                route = Route(
                    net,
                    IPv4Address(gw) if gw else None,
                    oif,
                    bool(m["flags"] & RTNH_F_ONLINK),
                )
                direct = (
                    direct_subnet_len is not None
                    and m["proto"] == RTPROT_BOOT
                    and gw is not None
                    and net.prefixlen == direct_subnet_len
                    and net.subnet_of(network)
                )
                if m["proto"] != RTPROT_KERNEL and (oif == dev or direct):
                    state.routes[net] = route
                else:
                    state.foreign[net] = route
        return state

    def replace_neigh(self, dev: int, n: Neigh) -> None:
        """``ip neigh replace IP lladdr MAC dev DEV nud permanent``."""
        with _kernel("neigh.replace", n):
            self._ipr.neigh(
                "replace", ifindex=dev, dst=str(n.ip), lladdr=n.mac, state=NUD_PERMANENT
            )

    def delete_neigh(self, dev: int, n: Neigh) -> None:
        """Delete the neighbour; already gone is fine."""
        try:
            with _kernel("neigh.del", n):
                self._ipr.neigh("del", ifindex=dev, dst=str(n.ip), lladdr=n.mac)
        except KernelError as exc:
            if exc.errno not in _MISSING:
                raise

    def replace_fdb(self, dev: int, f: Fdb) -> None:
        """``bridge fdb replace MAC dev DEV dst IP self permanent``."""
        # pyroute2 fills in state/flags only for add/append/del; replace needs them explicitly.
        with _kernel("fdb.replace", f):
            self._ipr.fdb(
                "replace",
                ifindex=dev,
                lladdr=f.mac,
                dst=str(f.dst),
                state=NUD_PERMANENT | NUD_NOARP,
                flags=NTF_SELF,
            )

    def delete_fdb(self, dev: int, f: Fdb) -> None:
        """Delete the FDB entry; already gone is fine."""
        try:
            with _kernel("fdb.del", f):
                self._ipr.fdb("del", ifindex=dev, lladdr=f.mac, dst=str(f.dst))
        except KernelError as exc:
            if exc.errno not in _MISSING:
                raise

    def replace_route(self, r: Route) -> None:
        """``ip route replace DST via GW [dev DEV onlink]``."""
        kwargs: dict[str, Any] = {
            "dst": str(r.dst),
            "table": RT_TABLE_MAIN,
            "proto": RTPROT_BOOT,
        }
        if r.gateway is not None:
            kwargs["gateway"] = str(r.gateway)
        if r.oif is not None:
            kwargs["oif"] = r.oif
        if r.onlink:
            kwargs["flags"] = RTNH_F_ONLINK
        with _kernel("route.replace", r.dst):
            self._ipr.route("replace", **kwargs)

    def delete_route(self, r: Route) -> None:
        """Delete exactly the route *r* (its device and gateway too, so a route to the same
        destination elsewhere is never hit); already gone is fine."""
        # Scope "nowhere" matches any scope on delete (what ``ip route del`` sends): a route
        # added without a gateway has scope link and would not match the default, universe.
        kwargs: dict[str, Any] = {"dst": str(r.dst), "table": RT_TABLE_MAIN, "scope": 255}
        if r.oif is not None:
            kwargs["oif"] = r.oif
        if r.gateway is not None:
            kwargs["gateway"] = str(r.gateway)
        try:
            with _kernel("route.del", r.dst):
                self._ipr.route("del", **kwargs)
        except KernelError as exc:
            if exc.errno not in _MISSING:
                raise
