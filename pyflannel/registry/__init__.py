"""The storage seam: what pyflannel needs from etcd, whatever the API.

A registry only stores, compares-and-sets and watches, with revisions.  All policy (allocation,
renewal, recovery from compaction, retry and backoff) lives once, above it, in
:mod:`pyflannel.subnet`.  Implementations: :mod:`.etcd2` (python-etcd, v2 keys API),
:mod:`.etcd3` (etcd3gw, v3 JSON gateway) and :mod:`.memory` (an in-memory fake for tests); one
contract suite (``tests/contract``) holds them all to the same behaviour.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pyflannel.ipnet import SubnetKey, parse_subnet_key, subnet_key
from pyflannel.lease import (
    EventKind,
    Events,
    Lease,
    LeaseAttrs,
    LeaseDecodeError,
    LeaseEvent,
    Snapshot,
    decode_value,
)
from pyflannel.untrusted import clip, excerpt

#: flanneld's lease lifetime (subnetTTL): 24 hours.
LEASE_TTL = 86400

__all__ = [
    "LEASE_TTL",
    "EtcdOptions",
    "Events",
    "Registry",
    "Snapshot",
    "decode_record",
    "invalid",
    "join_key",
]


class Registry(Protocol):
    """Network config and subnet leases in a key-value store with revisions."""

    @property
    def endpoint(self) -> str:
        """The endpoint in use now, for log lines."""
        ...

    def get_network_config(self) -> str:
        """Return the raw text at ``<prefix>/config``; NotFound if absent."""
        ...

    def config_hint(self) -> str:
        """Advice for an operator whose config is missing (e.g. it exists in the other API's
        keyspace, and the flag that reads it); empty if there is none."""
        ...

    def list_subnets(self) -> Snapshot:
        """Return every record under ``<prefix>/subnets`` and the revision to watch after."""
        ...

    def get_subnet(self, subnet: SubnetKey) -> Lease | None:
        """Return the lease on *subnet*, or None (also when its value does not decode)."""
        ...

    def create_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """Create the lease only if the key is absent; AlreadyExists otherwise."""
        ...

    def update_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """Write the lease unconditionally with a fresh *ttl* (0: no TTL, a reservation)."""
        ...

    def delete_subnet(self, subnet: SubnetKey) -> None:
        """Delete the lease; deleting an absent key is not an error."""
        ...

    def watch_subnets(self, after: int, stop: threading.Event) -> Iterator[Events]:
        """Yield changes with revision > *after* until *stop* is set.

        Yields an empty batch at least every few seconds so the caller can notice *stop*.
        Raises Compacted when *after* is older than the store's history and
        RegistryUnavailable when the store cannot be reached; the caller re-lists or retries.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd: the flags ``--etcd-*`` resolved."""

    endpoints: tuple[str, ...] = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    prefix: str = "/coreos.com/network"
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = ""
    timeout: float = 5.0  # per request; watches use their own, longer poll period


def join_key(prefix: str, *parts: str) -> str:
    """Join key parts like Go's path.Join: one slash between, none trailing."""
    out = "/" + "/".join(p.strip("/") for p in (prefix, *parts) if p.strip("/"))
    return out


#: The longest reason an INVALID event carries (it ends up in a log line).
MAX_REASON_CHARS = 200
#: The longest key an INVALID event keeps; a longer one is cut (it is only ever logged).
MAX_SHOWN_KEY_CHARS = 200


def shown_key(key: object) -> str:
    """*key* as text fit for an INVALID event: decoded if bytes, cut if long."""
    if isinstance(key, bytes):
        key = key[: MAX_SHOWN_KEY_CHARS + 1].decode("utf-8", "replace")
    if not isinstance(key, str):
        return excerpt(key)
    return clip(key, MAX_SHOWN_KEY_CHARS)


def invalid(key: object, reason: str, subnet: SubnetKey | None = None) -> LeaseEvent:
    """An INVALID event for *key*, with key and reason bounded in length."""
    return LeaseEvent(
        EventKind.INVALID, shown_key(key), subnet=subnet, reason=clip(reason, MAX_REASON_CHARS)
    )


def decode_record(
    key: str, value: str | bytes | None, expiration: float | None, revision: int
) -> LeaseEvent:
    """Turn one stored record into an ADDED event, or an INVALID one saying why it was skipped.

    Whatever the record holds, the answer is an event: one bad record never stops a listing
    or a watch.
    """
    try:
        return _decode_record(key, value, expiration, revision)
    except Exception as exc:  # a case the decoders missed: still only this record is bad
        return invalid(key, f"undecodable record ({type(exc).__name__})")


def _decode_record(
    key: str, value: str | bytes | None, expiration: float | None, revision: int
) -> LeaseEvent:
    subnet = parse_subnet_key(key)
    if subnet is None:
        return invalid(key, "key is not a subnet (a.b.c.d-len[&ipv6-len], as flanneld spells it)")
    if value is None:
        return invalid(key, "no value", subnet)
    try:
        attrs, exact = decode_value(value)
    except LeaseDecodeError as exc:
        return invalid(key, str(exc), subnet)
    lease = Lease(subnet, attrs, expiration, revision, exact=exact)
    return LeaseEvent(EventKind.ADDED, key, subnet=subnet, lease=lease)


def removed(key: str) -> LeaseEvent | None:
    """A REMOVED event for *key*, or None if the key is not a subnet key."""
    subnet = parse_subnet_key(key)
    if subnet is None:
        return None
    return LeaseEvent(EventKind.REMOVED, key, subnet=subnet)


def subnets_key(prefix: str, subnet: SubnetKey | None = None) -> str:
    """``<prefix>/subnets`` or ``<prefix>/subnets/<a.b.c.d-len>[&<ipv6>-<len>]``."""
    if subnet is None:
        return join_key(prefix, "subnets")
    return join_key(prefix, "subnets", subnet_key(subnet))


# A peer that closes the socket mid-handshake (etcd restarting) is an outage, not a refusal.
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def short_reason(text: str) -> str:
    """The useful part of a requests/urllib3 connection error (they run to 300 characters)."""
    m = _ERRNO_RE.search(text)
    if m:
        return m.group(0)
    if "timed out" in text.lower():
        return "timed out"
    return text[:200]


def tls_failure(exc: BaseException | None) -> str | None:
    """The TLS error buried in *exc*, as text, or None if the failure was not TLS.

    requests and urllib3 wrap the :class:`ssl.SSLError` two or three levels deep (in ``args``,
    ``reason``, ``__cause__`` or ``__context__``, depending on the layer); both etcd registries
    need to tell a TLS refusal (final: bad certificate, unknown CA, wrong scheme) from an
    unreachable endpoint (try the next one).
    """
    stack: list[BaseException] = [exc] if exc is not None else []
    seen: set[int] = set()
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError) and not isinstance(err, _TLS_TRANSIENT):
            return str(err)
        nested = (getattr(err, "reason", None), err.__cause__, err.__context__, *err.args)
        stack.extend(x for x in nested if isinstance(x, BaseException))
    return None


def open_registry(
    api: str, opts: EtcdOptions, *, on_error: Callable[[str], None] | None = None
) -> Registry:
    """Build the registry for *api* ("v2" or "v3"); clients are imported only when used.
    *on_error* is told the endpoint of every failed request."""
    # Lazy imports, on purpose: each client library is loaded only when its API is chosen.
    if api == "v2":
        from pyflannel.registry.etcd2 import EtcdV2Registry

        return EtcdV2Registry(opts, on_error=on_error)
    if api == "v3":
        from pyflannel.registry.etcd3 import EtcdV3Registry

        return EtcdV3Registry(opts, on_error=on_error)
    raise ValueError(f"unknown etcd API {api!r}")
