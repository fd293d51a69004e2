"""Leases as flanneld stores them: the JSON codec, watch event types and the pure lease tracker.

Writing: exactly the bytes flanneld (v0.15 and later, on both etcd APIs) writes for a vxlan node,
compact JSON in Go's field order; an IPv4 node::

    {"PublicIP":"10.0.1.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}

a dual-stack node (v0.17 over v2 and v0.18+ over v3 write the same bytes) adds its IPv6 address
and the IPv6 device's VNI and MAC::

    {"PublicIP":"10.0.1.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{…},"BackendV6Data":{"VNI":1,"VtepMAC":"…"}}

and an IPv6-only node keeps Go's zero IPv4 address and leaves ``BackendData`` out::

    {"PublicIP":"0.0.0.0","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendV6Data":{…}}

Reading: field names case-insensitive, unknown fields ignored, the older forms accepted (v0.14
without ``PublicIPv6``; v0.10-v0.13 without ``VNI``).  A value that does not decode raises
:class:`LeaseDecodeError` (whatever the bytes: size, depth and types are checked, see
:mod:`pyflannel.untrusted`); callers skip it with a warning and never drop a good peer for it.

A lease is named by its :class:`~pyflannel.ipnet.SubnetKey` (IPv4 half, IPv6 half or both):
the tracker keeps leases by it, so IPv4-only, dual-stack and IPv6-only peers coexist.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyflannel.ipnet import (
    NO_IPV4,
    QUAD_PATTERN,
    SubnetKey,
    ipv6_text,
    parse_ipv4,
    quad_value,
)
from pyflannel.untrusted import UntrustedInput, excerpt, load_json

#: The longest lease value decoded.  flanneld writes about 150 bytes; anything past this is not
#: a lease, and refusing it before parsing bounds the work one hostile record can cause.
MAX_LEASE_CHARS = 8 * 1024
#: The largest VXLAN Network Identifier (24 bits).
MAX_VNI = (1 << 24) - 1
#: The PublicIP of a lease without IPv4 (IPv6 only): Go's zero IPv4 address, as flanneld writes.
NO_PUBLIC_IP = IPv4Address(0)

# Matched whole (fullmatch): "$" would also accept a trailing newline.
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")


class LeaseDecodeError(ValueError):
    """A lease value that is not valid flannel lease JSON."""


def normalize_mac(text: str) -> str:
    """Return *text* as a lowercase colon-separated MAC (Go's HardwareAddr.String())."""
    if not _MAC_RE.fullmatch(text):
        raise ValueError(f"invalid MAC address {excerpt(text)}")
    return text.replace("-", ":").lower()


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a lease says about its holder.

    The IPv4 half (``public_ip``, ``vtep_mac``, ``vni``: ``BackendData``) and the IPv6 half
    (``public_ipv6``, ``v6_vtep_mac``, ``v6_vni``: ``BackendV6Data``) are independent; an
    IPv6-only holder has ``public_ip`` :data:`NO_PUBLIC_IP` and no IPv4 backend data.
    """

    public_ip: IPv4Address
    backend_type: str = "vxlan"
    vtep_mac: str | None = None
    vni: int | None = None
    public_ipv6: IPv6Address | None = None
    v6_vtep_mac: str | None = None
    v6_vni: int | None = None

    def encode(self) -> str:
        """Return the exact bytes flanneld writes for these attributes."""
        v6 = None if self.public_ipv6 is None else ipv6_text(self.public_ipv6)
        out: dict[str, Any] = {"PublicIP": str(self.public_ip), "PublicIPv6": v6}
        if self.backend_type:
            out["BackendType"] = self.backend_type
        # Both RawMessage with omitempty: left out when there is nothing to say.
        for name, vni, mac in (
            ("BackendData", self.vni, self.vtep_mac),
            ("BackendV6Data", self.v6_vni, self.v6_vtep_mac),
        ):
            data: dict[str, Any] = {}
            if vni is not None:
                data["VNI"] = vni
            if mac is not None:
                data["VtepMAC"] = mac
            if data:
                out[name] = data
        return json.dumps(out, separators=(",", ":"))


def _fold(obj: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


def decode_attrs(text: str | bytes) -> LeaseAttrs:
    """Decode a lease value written by flanneld (any version since v0.10) or by pyflannel.

    Any input ends as a LeaseAttrs or a :class:`LeaseDecodeError` with a short reason, in time
    bounded by :data:`MAX_LEASE_CHARS`: the value comes from a store every host can write.
    """
    try:
        return _decode_attrs(text)
    except LeaseDecodeError:
        raise
    except UntrustedInput as exc:
        raise LeaseDecodeError(str(exc)) from None
    except Exception as exc:  # a case the checks below missed must still be one bad record
        raise LeaseDecodeError(f"undecodable lease ({type(exc).__name__})") from None


# The value flanneld (v0.15 and later) and pyflannel write for an IPv4 vxlan node, exactly as
# LeaseAttrs.encode spells it: canonical dotted quad, "PublicIPv6":null, a BackendType that JSON
# writes without escapes, the VNI in decimal without leading zeros, a lowercase colon MAC.  At
# 10,000 peers every lease at start has this form, and one regex decodes it at a quarter of the
# cost of JSON, key folding and the re-encoding that tells an exact value.
_CANONICAL_V4_RE = re.compile(
    r'\{"PublicIP":"'
    + QUAD_PATTERN
    + r'","PublicIPv6":null,"BackendType":"([A-Za-z0-9_.-]{1,16})",'
    r'"BackendData":\{"VNI":(0|[1-9][0-9]{0,7}),"VtepMAC":"([0-9a-f]{2}(?::[0-9a-f]{2}){5})"\}\}',
    re.ASCII,
)


def decode_value(value: str | bytes) -> tuple[LeaseAttrs, bool]:
    """Decode a stored lease value: its attributes, and whether the value is exactly what
    :meth:`LeaseAttrs.encode` writes for them (see :attr:`Lease.exact`).

    Raises :class:`LeaseDecodeError` as :func:`decode_attrs` does.
    """
    if len(value) <= 256:
        if isinstance(value, bytes):
            try:
                text = value.decode()
            except UnicodeDecodeError:
                text = ""  # the general path words the error
        else:
            text = value
        m = _CANONICAL_V4_RE.fullmatch(text)
        if m is not None:
            a, b, c, d, btype, vni, mac = m.groups()
            if int(vni) <= MAX_VNI:
                ip = IPv4Address(quad_value(a, b, c, d))
                return LeaseAttrs(ip, sys.intern(btype), mac, int(vni)), True
    attrs = decode_attrs(value)
    text = value.decode() if isinstance(value, bytes) else value  # decode_attrs checked UTF-8
    return attrs, text == attrs.encode()


def _decode_attrs(text: str | bytes) -> LeaseAttrs:
    raw = load_json(text, max_chars=MAX_LEASE_CHARS, what="lease value")
    if not isinstance(raw, dict):
        raise LeaseDecodeError("not a JSON object")
    obj = _fold(raw)
    ip = obj.get("publicip")
    if not isinstance(ip, str):
        raise LeaseDecodeError("PublicIP missing or not a string")
    try:
        public_ip = parse_ipv4(ip)
    except ValueError:
        raise LeaseDecodeError(f"PublicIP {excerpt(ip)} is not an IPv4 address") from None
    btype = obj.get("backendtype") or ""
    if not isinstance(btype, str):
        raise LeaseDecodeError("BackendType is not a string")
    if len(btype) <= 16:
        btype = sys.intern(btype)  # "vxlan" 10,000 times is one string, not 10,000
    vni, mac = _backend_data(obj.get("backenddata"), "BackendData")
    v6_vni, v6_mac = _backend_data(obj.get("backendv6data"), "BackendV6Data")
    return LeaseAttrs(
        public_ip=public_ip,
        backend_type=btype,
        vtep_mac=mac,
        vni=vni,
        public_ipv6=_public_ipv6(obj.get("publicipv6")),
        v6_vtep_mac=v6_mac,
        v6_vni=v6_vni,
    )


def _public_ipv6(raw: Any) -> IPv6Address | None:
    """``PublicIPv6``: null (or absent) is none; else an IPv6 address, or an IPv4 one (Go's
    net.ParseIP takes it, as IPv4-mapped, and flanneld prints such an address back dotted)."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise LeaseDecodeError("PublicIPv6 is not a string")
    try:
        if ":" not in raw:
            return IPv6Address((0xFFFF << 32) | int(IPv4Address(raw)))
        if "%" in raw:  # a zone: Python takes it, Go does not
            raise ValueError(raw)
        return IPv6Address(raw)
    except ValueError:
        raise LeaseDecodeError(f"PublicIPv6 {excerpt(raw)} is not an IP address") from None


def _backend_data(data: Any, name: str) -> tuple[int | None, str | None]:
    """The VNI and VTEP MAC of a vxlan ``BackendData`` or ``BackendV6Data`` object."""
    if data is None:
        return None, None
    if not isinstance(data, dict):
        raise LeaseDecodeError(f"{name} is not a JSON object")
    data = _fold(data)
    mac: str | None = None
    vni: int | None = None
    raw_mac = data.get("vtepmac")
    if raw_mac is not None:
        if not isinstance(raw_mac, str):
            raise LeaseDecodeError(f"{name} VtepMAC is not a string")
        try:
            mac = normalize_mac(raw_mac)
        except ValueError as exc:
            raise LeaseDecodeError(str(exc)) from None
    raw_vni = data.get("vni")
    if raw_vni is not None:
        if isinstance(raw_vni, bool) or not isinstance(raw_vni, int):
            raise LeaseDecodeError(f"{name} VNI is not an integer")
        if not 0 <= raw_vni <= MAX_VNI:
            raise LeaseDecodeError(f"VNI {excerpt(raw_vni)} is not between 0 and {MAX_VNI}")
        vni = raw_vni
    return vni, mac


#: The expiration of a key that has a TTL whose end was not looked up.  etcd v3 only says which
#: lease a key is attached to; one LeaseTimeToLive per key costs ~15 ms, 150 s at 10,000 keys,
#: and a peer's expiry is never needed to program it (only our own, which we wrote ourselves).
EXPIRY_NOT_READ = float("inf")


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet key and its holder, as read from the registry.

    ``key`` names the subnets held (IPv4, IPv6 or both); :attr:`subnet` is its IPv4 half for the
    IPv4 code paths.  ``expiration`` is a wall-clock time (seconds since the epoch), None for a
    key without TTL (a reservation).  ``revision`` is the registry's modification index of the
    record.
    ``exact`` is False when the stored bytes are not what :meth:`LeaseAttrs.encode` writes
    (another casing, field order or an older flanneld form): same meaning, but a daemon whose
    own key reads so rewrites it.
    """

    key: SubnetKey
    attrs: LeaseAttrs
    expiration: float | None = None
    revision: int = 0
    exact: bool = True

    def __post_init__(self) -> None:
        # A bare IPv4Network here would pass every IPv4 code path and then address the wrong
        # etcd key for a dual-stack lease: refuse it at once.
        if not isinstance(self.key, SubnetKey):
            raise TypeError(f"Lease.key must be a SubnetKey, not {type(self.key).__name__}")

    @property
    def subnet(self) -> IPv4Network:
        """The IPv4 subnet; :data:`~pyflannel.ipnet.NO_IPV4` (0.0.0.0/0, flanneld's empty
        IPv4 subnet, never a SubnetLen-sized one) for an IPv6-only lease."""
        return self.key.ipv4 or NO_IPV4

    @property
    def ipv6_subnet(self) -> IPv6Network | None:
        """The IPv6 subnet, or None for an IPv4-only lease."""
        return self.key.ipv6


class EventKind(Enum):
    """What happened to a key under ``subnets/``."""

    ADDED = "added"  # created or rewritten (a renewal too)
    REMOVED = "removed"  # deleted or expired
    INVALID = "invalid"  # written, but not a lease: skipped with a warning


@dataclass(frozen=True)
class LeaseEvent:
    """One change under ``subnets/``; ``lease`` is set for ADDED, ``reason`` for INVALID.

    ``key`` is the etcd key as read; ``subnet`` what it names (None: not a subnet key).
    """

    kind: EventKind
    key: str
    subnet: SubnetKey | None = None
    lease: Lease | None = None
    reason: str = ""


@dataclass(frozen=True)
class Snapshot:
    """Every lease under ``subnets/`` at ``revision``, plus the records that did not decode."""

    leases: tuple[Lease, ...]
    revision: int
    invalid: tuple[LeaseEvent, ...] = ()


@dataclass(frozen=True)
class Events:
    """Incremental changes; ``revision`` is the last one seen (watch again from revision + 1)."""

    events: tuple[LeaseEvent, ...]
    revision: int


WatchBatch = Snapshot | Events


@dataclass(frozen=True)
class Change:
    """A difference in the known set of leases, for logging and for the lease keeper."""

    kind: EventKind  # ADDED, REMOVED, or INVALID (a record skipped)
    subnet: SubnetKey | None
    old: Lease | None = None
    new: Lease | None = None
    key: str = ""
    reason: str = ""

    @property
    def changed(self) -> bool:
        """True for an ADDED that replaced a lease with different attributes."""
        return self.old is not None and self.new is not None and self.old.attrs != self.new.attrs


@dataclass
class LeaseTracker:
    """The set of known leases by subnet; pure, fed by snapshots and watch batches.

    A snapshot is diffed against what is known (leases gone from it are REMOVED); an event applies
    alone.  A record that does not decode changes nothing: a garbage write never removes a peer.
    """

    leases: dict[SubnetKey, Lease] = field(default_factory=dict)

    def apply(self, batch: WatchBatch) -> list[Change]:
        """Fold *batch* into the known set and return what changed."""
        if isinstance(batch, Snapshot):
            return self._reset(batch)
        changes: list[Change] = []
        for ev in batch.events:
            changes.extend(self._update(ev))
        return changes

    def _reset(self, snap: Snapshot) -> list[Change]:
        changes = [
            Change(EventKind.INVALID, ev.subnet, key=ev.key, reason=ev.reason)
            for ev in snap.invalid
        ]
        fresh = {lease.key: lease for lease in snap.leases}
        # A key that exists but holds garbage keeps its last good lease (see module docstring).
        garbage = {ev.subnet for ev in snap.invalid if ev.subnet is not None}
        for subnet, old in list(self.leases.items()):
            if subnet not in fresh and subnet not in garbage:
                del self.leases[subnet]
                changes.append(Change(EventKind.REMOVED, subnet, old=old))
        for subnet, new in fresh.items():
            prev = self.leases.get(subnet)
            self.leases[subnet] = new
            if prev is None or prev.attrs != new.attrs:
                changes.append(Change(EventKind.ADDED, subnet, old=prev, new=new))
        return changes

    def _update(self, ev: LeaseEvent) -> list[Change]:
        if ev.kind is EventKind.INVALID:
            return [Change(EventKind.INVALID, ev.subnet, key=ev.key, reason=ev.reason)]
        if ev.kind is EventKind.REMOVED:
            if ev.subnet is None:
                return []
            old = self.leases.pop(ev.subnet, None)
            return [] if old is None else [Change(EventKind.REMOVED, ev.subnet, old=old)]
        assert ev.lease is not None
        old = self.leases.get(ev.lease.key)
        self.leases[ev.lease.key] = ev.lease
        return [Change(EventKind.ADDED, ev.lease.key, old=old, new=ev.lease)]
