"""A mirror of the kernel state that concerns the VXLAN device, kept current by notifications
(pure: it folds parsed messages from :mod:`pyflannel.kernel.codec`, it never reads the kernel).

It holds, on device index ``dev``: permanent neighbours (IP -> MAC) and permanent ``self``
FDB entries without port/VNI overrides (MAC -> remote IPs); and every route of the main table,
whatever its device, so that a route on another device to a subnet we would route is seen as a
conflict, never replaced or deleted.  Neighbours, FDB remotes and routes are of the device's
address family (IPv4 for ``flannel.<VNI>``, IPv6 for ``flannel-v6.<VNI>``); messages of the
other family are not its business.  Storage is ints and bytes in dicts (no message objects);
records are built on request.

Protocol facts it relies on (shared/reference/kernel-notifications.md):
* A link going down drops its routes without RTM_DELROUTE, so any change of the device (down,
  up, MTU, MAC, name, deleted, re-created with another index) sets ``Touched.device``: the
  caller must re-dump.
* ``bridge fdb replace`` of a MAC with one remote rewrites that remote in place and notifies
  only RTM_NEWNEIGH with the new dst.  With several remotes (made by ``append``) a new dst is
  ambiguous (append or replace?), so ``Touched.resync`` asks for a re-dump.
* RTM_NEWROUTE replaces the route with the same (dst/len, tos, priority) in its table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pyflannel.kernel.codec import (
    AF_BRIDGE,
    AF_INET,
    AF_INET6,
    NTF_SELF,
    NUD_PERMANENT,
    RT_TABLE_MAIN,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTN_BLACKHOLE,
    RTNH_F_ONLINK,
    LinkMsg,
    NeighMsg,
    Parsed,
    RouteMsg,
    mac_bytes,
)
from pyflannel.kernel.plan import (
    Desired,
    Keys,
    Ownership,
    RawFdb,
    RawRoutes,
    address_type,
    compact_fdb,
    compact_routes,
    default_metric,
    expand_routes,
    fdb_remotes,
    network_type,
)
from pyflannel.kernel.records import Fdb, IPAddress, IPNetwork, RouteEntry

_RTPROT_KERNEL = 2
#: Messages folded per step of a stepped re-read (:meth:`Mirror.load_steps`): about a
#: millisecond, so a lease event waits at most that long behind one.
LOAD_STEP = 64

# A route: (priority, tos, oif, gateway, protocol, scope, kind, flags); oif/gateway may be None.
_RVal = tuple[int, int, int | None, int | None, int, int, int, int]
_LinkKey = tuple[str, bool, int, str]


@dataclass(frozen=True, slots=True)
class Touched:
    """What one notification changed in the mirror."""

    neighs: tuple[IPAddress, ...] = ()
    fdb: tuple[str, ...] = ()  # MACs
    routes: tuple[IPNetwork, ...] = ()
    device: bool = False  # our device changed or went away: re-dump everything
    resync: bool = False  # the mirror cannot tell what the kernel holds: re-dump

    @property
    def empty(self) -> bool:
        """True when nothing the mirror holds changed."""
        return not (self.neighs or self.fdb or self.routes or self.device or self.resync)


NOTHING = Touched()


def _ip(raw: bytes | None, size: int = 4) -> int | None:
    """*raw* as an int if it is an address of *size* bytes (4: IPv4, 16: IPv6), else None."""
    return int.from_bytes(raw, "big") if raw is not None and len(raw) == size else None


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _keys(
    kind: str,
    raw: list[Any],
    version: int,
    mirror: Mirror | None = None,
    owner: Ownership | None = None,
) -> Keys:
    """Raw keys of one *kind* as :class:`Keys` of IP *version*; with *mirror* and *owner*, only
    the route keys whose held routes are ours (a key held but not wanted: foreign routes are
    not suspects)."""
    if kind == "neighs":
        addr = address_type(version)
        return Keys(neighs={addr(ip) for ip in raw})
    if kind == "macs":
        return Keys(macs={_mac(m) for m in raw})
    net = network_type(version)
    nets = {net(k) for k in raw}
    if mirror is not None and owner is not None:
        nets = {n for n in nets if any(owner.owns(e) for e in mirror.routes_to(n))}
    return Keys(routes=nets)


def _route_is(v: _RVal, oif: int | None, gw: int | None, onlink: bool) -> bool:
    """Whether the kernel's route *v* is the wanted one (a direct route names no device)."""
    return (
        v[3] == gw
        and v[4] != _RTPROT_KERNEL
        and bool(v[7] & RTNH_F_ONLINK) == onlink
        and (oif is None or v[2] == oif)
    )


class Mirror:
    """The kernel's entries for VXLAN device index *dev* (and the main table's other routes),
    of IP *version* 4 or 6 (by default *canon*'s)."""

    def __init__(self, dev: int, canon: Desired | None = None, version: int | None = None) -> None:
        self.dev = dev
        self.version = version or (canon.version if canon is not None else 4)
        self.family = AF_INET6 if self.version == 6 else AF_INET
        self._size = 16 if self.version == 6 else 4  # bytes of an address
        self._addr = address_type(self.version)
        self._net = network_type(self.version)
        self._metric = default_metric(self.version)  # of our usual route (held compact)
        # When the kernel holds what the leases want (nearly always, for nearly every key), the
        # value folded is stored as the very object *canon* holds for that key: equal values
        # shared, not copied (about 2 MB at 10,000 peers, and as much less garbage per re-read).
        self._canon = canon
        self._link: _LinkKey | None = None
        self._neighs: dict[int, bytes] = {}
        # Both in the compact forms Desired uses (RawFdb, RawRoutes): one remote as an int, the
        # usual route as its gateway.
        self._fdb: dict[bytes, RawFdb] = {}
        self._routes: dict[tuple[int, int], RawRoutes] = {}
        # Kept by every fold, so that counting (a metrics scrape) is O(1): FDB remotes, and
        # routes on the device that are not the kernel's own.
        self._fdb_n = 0
        self._dev_routes = 0

    # --- folding -------------------------------------------------------------------------

    def load(
        self,
        link: LinkMsg | None,
        neighs: Iterable[NeighMsg],
        fdb: Iterable[NeighMsg],
        routes: Iterable[RouteMsg],
    ) -> None:
        """Start over from full dumps (*link* is the device itself, None if it is gone)."""
        for _ in self.load_steps(link, neighs, fdb, routes):
            pass

    def load_steps(
        self,
        link: LinkMsg | None,
        neighs: Iterable[NeighMsg],
        fdb: Iterable[NeighMsg],
        routes: Iterable[RouteMsg],
        every: int = LOAD_STEP,
    ) -> Iterator[None]:
        """:meth:`load`, pausing (a yield) after every *every* messages: a caller reading the
        dumps as they come can serve other work between the steps."""
        self._link = self._link_key(link) if link is not None else None
        self._neighs.clear()
        self._fdb.clear()
        self._routes.clear()
        self._fdb_n = self._dev_routes = 0
        family = self.family
        for i, m in enumerate(neighs, 1):
            if m.ifindex == self.dev and m.family == family:
                self._fold_ip_neigh(m)
            if not i % every:
                yield
        yield  # and between the dumps
        for i, m in enumerate(fdb, 1):
            if not i % every:
                yield
            if m.ifindex != self.dev or m.family != AF_BRIDGE or m.lladdr is None:
                continue
            have = self._remotes(m.lladdr)
            dst = _ip(m.dst, self._size)
            if not have:
                self._fold_fdb(m)
            elif dst is not None and dst not in have and self._fdb_ours(m):
                # A dump lists each remote of a MAC as its own entry: they add up.
                self._fdb[m.lladdr] = (*have, dst)
                self._fdb_n += 1
        yield
        for i, r in enumerate(routes, 1):
            self._fold_route(r)
            if not i % every:
                yield

    def apply(self, msg: Parsed) -> Touched:
        """Fold one notification; return what it changed."""
        if isinstance(msg, NeighMsg):
            return self._fold_neigh(msg)
        if isinstance(msg, RouteMsg):
            key = self._fold_route(msg)
            return Touched(routes=(self._net(key),)) if key is not None else NOTHING
        if isinstance(msg, LinkMsg):
            return self._fold_link(msg)
        return NOTHING

    @staticmethod
    def _link_key(m: LinkMsg) -> _LinkKey:
        return (m.name, m.up, m.mtu, m.mac)

    def _fold_link(self, m: LinkMsg) -> Touched:
        if m.index != self.dev:
            # Our device re-created under another index: everything we hold is stale.
            same_name = self._link is not None and m.name == self._link[0]
            if same_name and m.type == RTM_NEWLINK:
                return Touched(device=True)
            return NOTHING
        if m.type == RTM_DELLINK:
            self._link = None
            return Touched(device=True)
        key = self._link_key(m)
        if key == self._link:
            return NOTHING  # carrier, statistics, operstate: nothing that moves our entries
        self._link = key
        return Touched(device=True)

    def _fold_neigh(self, m: NeighMsg) -> Touched:
        if m.ifindex != self.dev:
            return NOTHING
        if m.family == self.family:
            ip = self._fold_ip_neigh(m)
            return Touched(neighs=(self._addr(ip),)) if ip is not None else NOTHING
        if m.family == AF_BRIDGE:
            changed = self._fold_fdb(m)
            if changed is None:
                return NOTHING
            return Touched(fdb=(_mac(changed[0]),), resync=changed[1])
        return NOTHING

    # The _fold_* helpers change the maps and return what changed (None: nothing), without
    # building records: load() folds tens of thousands of entries.

    def _fold_ip_neigh(self, m: NeighMsg) -> int | None:
        ip = _ip(m.dst, self._size)
        if ip is None:
            return None
        ours = m.type == RTM_NEWNEIGH and m.state & NUD_PERMANENT and m.lladdr
        if ours and m.lladdr is not None:
            mac = m.lladdr
            if self._neighs.get(ip) == mac:
                return None
            if self._canon is not None and (want := self._canon.raw_neighs.get(ip)) == mac:
                mac = want
            self._neighs[ip] = mac
        elif self._neighs.pop(ip, None) is None:
            return None
        return ip

    def _fold_fdb(self, m: NeighMsg) -> tuple[bytes, bool] | None:
        """(MAC, resync needed) when the MAC's remotes changed."""
        mac = m.lladdr
        if mac is None:
            return None
        dst = _ip(m.dst, self._size)  # a remote of the other family: none of ours
        have = self._remotes(mac)
        resync = False
        if m.type == RTM_DELNEIGH:
            if dst is None or dst not in have:
                if dst is not None or not have:
                    return None
                left: tuple[int, ...] = ()  # no dst: the whole MAC is gone
            else:
                left = tuple(d for d in have if d != dst)
        elif dst is None or m.odd or not m.state & NUD_PERMANENT or not m.flags & NTF_SELF:
            if not have:
                return None
            left = ()  # replaced by something we did not write: let the planner rewrite it
        elif dst in have:
            return None
        else:
            resync = len(have) > 1  # append or replace of one of several remotes? unknowable
            left = (dst,)
        if left:
            held = compact_fdb(left)
            if self._canon is not None and (want := self._canon.raw_fdb.get(mac)) == held:
                held = want
            self._fdb[mac] = held
        else:
            self._fdb.pop(mac, None)
        self._fdb_n += len(left) - len(have)
        return mac, resync

    @staticmethod
    def _fdb_ours(m: NeighMsg) -> bool:
        return bool(m.state & NUD_PERMANENT and m.flags & NTF_SELF and not m.odd)

    def _fold_route(self, m: RouteMsg) -> tuple[int, int] | None:
        if m.family != self.family or m.table != RT_TABLE_MAIN:
            return None
        size = self._size
        key = (_ip(m.dst, size) or 0, m.dst_len)
        val: _RVal = (
            m.priority,
            m.tos,
            m.oif,
            _ip(m.gateway, size),
            m.protocol,
            m.scope,
            m.kind,
            m.flags,
        )
        have = self._vals(key)
        others = tuple(v for v in have if v[:2] != val[:2])
        if m.type == RTM_NEWROUTE:
            if val in have:
                return None
            now: tuple[_RVal, ...] = (*others, val)
            self._store_routes(key, now)
        elif len(others) == len(have):
            return None
        elif others:
            now = others
            self._store_routes(key, now)
        else:
            now = ()
            del self._routes[key]
        self._dev_routes += self._on_dev(now) - self._on_dev(have)
        return key

    def _store_routes(self, key: tuple[int, int], vals: tuple[_RVal, ...]) -> None:
        held = compact_routes(vals, self.dev, self._metric)
        if self._canon is not None and (want := self._canon.raw_routes.get(key)) == held:
            held = want
        self._routes[key] = held

    def _vals(self, key: tuple[int, int]) -> tuple[_RVal, ...]:
        held = self._routes.get(key)
        return () if held is None else expand_routes(held, self.dev, self._metric)

    def _remotes(self, mac: bytes) -> tuple[int, ...]:
        held = self._fdb.get(mac)
        return () if held is None else fdb_remotes(held)

    def _on_dev(self, vals: tuple[_RVal, ...]) -> int:
        return sum(1 for v in vals if v[2] == self.dev and v[4] != _RTPROT_KERNEL)

    # --- reading -------------------------------------------------------------------------

    @property
    def device_up(self) -> bool | None:
        """Whether the device is up (None: unknown or gone)."""
        return self._link[1] if self._link is not None else None

    def neighs(self) -> dict[IPAddress, str]:
        """Permanent neighbours on the device: IP -> MAC."""
        return {self._addr(ip): _mac(mac) for ip, mac in self._neighs.items()}

    def fdb(self) -> set[Fdb]:
        """Permanent ``self`` FDB entries on the device (one per remote)."""
        return {
            Fdb(_mac(mac), self._addr(d))
            for mac, held in self._fdb.items()
            for d in fdb_remotes(held)
        }

    def _entry(self, net: IPNetwork, v: _RVal) -> RouteEntry:
        prio, _, oif, gw, proto, scope, kind, flags = v
        gateway = self._addr(gw) if gw is not None else None
        onlink = bool(flags & RTNH_F_ONLINK)
        return RouteEntry(net, gateway, oif, proto, scope, kind, prio, onlink)

    def blackholes(self) -> list[tuple[IPNetwork, int]]:
        """Every main-table blackhole route of its family: (destination, metric)."""
        return [
            (self._net(key), v[0])
            for key, held in self._routes.items()
            if not isinstance(held, int)  # the usual route on our device, never a blackhole
            for v in held
            if v[6] == RTN_BLACKHOLE
        ]

    def dev_routes(self) -> list[RouteEntry]:
        """Every main-table route on the device (any prefix, with or without a gateway)."""
        return [
            self._entry(self._net(key), v)
            for key in self._routes
            for v in self._vals(key)
            if v[2] == self.dev
        ]

    # --- the planner's view, by key (kernel.plan.View) -----------------------------------

    def neigh(self, ip: IPAddress) -> str | None:
        """The MAC of the permanent neighbour *ip* on the device, or None."""
        mac = self._neighs.get(int(ip))
        return _mac(mac) if mac is not None else None

    def fdb_dsts(self, mac: str) -> tuple[IPAddress, ...]:
        """The remotes of the permanent ``self`` FDB entry *mac* on the device."""
        return tuple(self._addr(d) for d in self._remotes(mac_bytes(mac)))

    def routes_to(self, dst: IPNetwork) -> list[RouteEntry]:
        """Every main-table route to exactly *dst*, on any device."""
        key = (int(dst.network_address), dst.prefixlen)
        return [self._entry(dst, v) for v in self._vals(key)]

    def keys(self, owner: Ownership) -> Keys:
        """Every neighbour IP, FDB MAC and destination of an owned route present."""
        routes = set()
        for (addr, plen), held in self._routes.items():
            vals = expand_routes(held, self.dev, self._metric)
            # Cheap filter first: most main-table routes at scale are ours, on the device.
            if any(v[2] == self.dev for v in vals) or owner.direct is not None:
                net = self._net((addr, plen))
                if any(owner.owns(self._entry(net, v)) for v in vals):
                    routes.add(net)
        return Keys(
            {self._addr(ip) for ip in self._neighs},
            {_mac(m) for m in self._fdb},
            routes,
        )

    def suspects(self, desired: Desired, owner: Ownership) -> Keys:
        """The keys where the kernel may differ from *desired*: the full comparison of a
        resync (see :meth:`iter_suspects`), in one go."""
        keys = Keys()
        for part in self.iter_suspects(desired, owner, chunk=1 << 30):
            keys.add(part)
        return keys

    def strays(self, desired: Desired, owner: Ownership) -> Keys:
        """The keys held (routes: held and ours) that no peer wants."""
        keys = Keys()
        for kind in ("neighs", "macs", "routes"):
            keys.add(self._strays(desired, owner, kind))
        return keys

    def _strays(self, desired: Desired, owner: Ownership, kind: str) -> Keys:
        stray: set[Any]
        if kind == "neighs":
            stray = self._neighs.keys() - desired.raw_neighs.keys()
        elif kind == "macs":
            stray = self._fdb.keys() - desired.raw_fdb.keys()
        else:
            # A direct route's key is wanted too (iter_suspects compares its value apart).
            stray = self._routes.keys() - desired.raw_routes.keys() - desired.raw_direct.keys()
        return _keys(kind, list(stray), self.version, self, owner)

    def iter_suspects(
        self, desired: Desired, owner: Ownership, chunk: int = 2000
    ) -> Iterator[Keys]:
        """The full comparison in steps of about *chunk* keys (a few milliseconds each at
        10,000 peers), so that a caller can serve events between steps.

        Each step compares the compact forms (ints and bytes) of the keys it covers as they
        are at that moment; a key that changes later is an event of its own.  What it yields
        are suspects: the keyed plan decides.
        """
        steps: list[tuple[dict[Any, Any], dict[Any, Any], str]] = [
            (desired.raw_neighs, self._neighs, "neighs"),
            (desired.raw_fdb, self._fdb, "macs"),
            (desired.raw_routes, self._routes, "routes"),
        ]
        for want, held, kind in steps:
            keys = list(want)  # a snapshot of the keys: the dict may change between steps
            for start in range(0, len(keys), chunk):
                part = [k for k in keys[start : start + chunk] if held.get(k) != want.get(k)]
                yield _keys(kind, part, self.version)
            yield self._strays(desired, owner, kind)
        part = [k for k, gw in list(desired.raw_direct.items()) if not self._direct_is(k, gw)]
        yield _keys("routes", part, self.version)

    def differing(self, desired: Desired, keys: Keys) -> Keys:
        """Those of *keys* whose entries the kernel holds otherwise than *desired* wants, by
        the compact comparison :meth:`iter_suspects` makes: the only ones a plan can change."""
        want_n, want_f, want_r = desired.raw_neighs, desired.raw_fdb, desired.raw_routes
        neighs = {ip for ip in keys.neighs if self._neighs.get(int(ip)) != want_n.get(int(ip))}
        macs = set()
        for mac in keys.macs:
            raw = mac_bytes(mac)
            if self._fdb.get(raw) != want_f.get(raw):
                macs.add(mac)
        routes = set()
        for dst in keys.routes:
            k = (int(dst.network_address), dst.prefixlen)
            if k in desired.raw_direct:
                if not self._direct_is(k, desired.raw_direct[k]):
                    routes.add(dst)
            elif self._routes.get(k) != want_r.get(k):
                routes.add(dst)
        return Keys(neighs, macs, routes)

    def _direct_is(self, key: tuple[int, int], gw: int | None) -> bool:
        """Whether the kernel holds exactly the wanted direct route (via *gw*) to *key*."""
        vals = self._vals(key)
        return len(vals) == 1 and _route_is(vals[0], None, gw, False)

    def entry_counts(self) -> tuple[int, int, int]:
        """(routes, neighbours, FDB remotes) on the device, routes not the kernel's own; O(1)
        (kept by the folds), so another thread may call it at any time."""
        return self._dev_routes, len(self._neighs), self._fdb_n

    def counts(self) -> tuple[int, int, int]:
        """(neighbours, FDB remotes, main-table routes) held."""
        return (
            len(self._neighs),
            sum(len(fdb_remotes(v)) for v in self._fdb.values()),
            sum(len(expand_routes(v, self.dev, self._metric)) for v in self._routes.values()),
        )
