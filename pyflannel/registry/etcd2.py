"""The etcd v2 keys API registry (flanneld v0.17 and older), over python-etcd.

Wire behaviour follows flanneld's v2 registry: quorum reads, ``prevExist=false`` creates with
``ttl``, plain ``set`` renewals, recursive long-poll watches from ``waitIndex``, and error 401
("event index cleared") turned into :class:`~pyflannel.errors.Compacted`.  Several endpoints are
tried in order; a TLS or authentication failure is final (RegistryRefused), not retried.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd
import requests

from pyflannel.errors import (
    AlreadyExists,
    Compacted,
    NotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
)
from pyflannel.lease import Events, Lease, LeaseAttrs, LeaseEvent, Snapshot
from pyflannel.registry import (
    EtcdOptions,
    decode_record,
    join_key,
    removed,
    short_reason,
    subnets_key,
    tls_failure,
)

T = TypeVar("T")

#: How long one watch long-poll waits before yielding an empty batch (lets the caller see stop).
WATCH_POLL = 5.0

# python-etcd logs every failed request at ERROR; we report failures ourselves, once.
logging.getLogger("etcd").setLevel(logging.CRITICAL)


def _client(endpoint: str, opts: EtcdOptions) -> Any:
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise RegistryRefused(f"invalid etcd endpoint {endpoint!r} (want http[s]://host:port)")
    kwargs: dict[str, Any] = {
        "host": url.hostname,
        "port": url.port or 2379,
        "protocol": url.scheme,
        "read_timeout": opts.timeout,
    }
    if opts.certfile and opts.keyfile:
        kwargs["cert"] = (opts.certfile, opts.keyfile)
    if opts.cafile:
        kwargs["ca_cert"] = opts.cafile
    if opts.username:
        kwargs["username"] = opts.username
        kwargs["password"] = opts.password
    return etcd.Client(**kwargs)


def _long_poll(key: str, index: int) -> Callable[[Any], Any]:
    """One recursive long-poll from *index*, bounded by WATCH_POLL."""
    return lambda c: c.read(key, wait=True, recursive=True, waitIndex=index, timeout=WATCH_POLL)


def _expiration(node: Any) -> float | None:
    ttl = getattr(node, "ttl", None)
    return time.time() + ttl if ttl else None


class EtcdV2Registry:
    """A :class:`~pyflannel.registry.Registry` on the etcd v2 keys API."""

    def __init__(self, opts: EtcdOptions) -> None:
        self._opts = opts
        self._endpoints = list(opts.endpoints)
        self._clients = [_client(e, opts) for e in self._endpoints]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self._endpoints[self._current]

    def _call(self, fn: Callable[[Any], T]) -> T:
        """Run *fn* with a client, failing over to the next endpoint when one is unreachable."""
        errors: list[str] = []
        with self._lock:
            start = self._current
        for step in range(len(self._clients)):
            idx = (start + step) % len(self._clients)
            try:
                result = fn(self._clients[idx])
            except etcd.EtcdWatchTimedOut:
                raise
            except etcd.EtcdConnectionFailed as exc:
                cause = getattr(exc, "cause", None)
                # urllib3 wraps the handshake error in MaxRetryError.reason: look inside.
                tls = tls_failure(cause)
                if tls is not None:
                    raise RegistryRefused(
                        f"TLS to etcd at {self._endpoints[idx]} failed: {tls} "
                        "(check --etcd-cafile/--etcd-certfile/--etcd-keyfile)"
                    ) from None
                errors.append(f"{self._endpoints[idx]}: {short_reason(str(cause or exc))}")
                continue
            except etcd.EtcdInsufficientPermissions:
                raise RegistryRefused(
                    f"etcd at {self._endpoints[idx]} refused the credentials "
                    "(check --etcd-username/--etcd-password)"
                ) from None
            if idx != start:
                with self._lock:
                    self._current = idx
            return result
        raise RegistryUnavailable("etcd unreachable: " + "; ".join(errors))

    def get_network_config(self) -> str:
        """Return the raw config text (quorum read)."""
        key = join_key(self._opts.prefix, "config")
        try:
            node = self._call(lambda c: c.read(key, quorum=True))
        except etcd.EtcdKeyNotFound:
            raise NotFound(f"{key} not found in the etcd v2 keyspace") from None
        return str(node.value)

    def config_hint(self) -> str:
        """What to tell an operator whose config is missing: look in the v3 keyspace, which the
        v2 API cannot see (flannel-io/flannel#755, #1175), and name the flag that reads it."""
        key = join_key(self._opts.prefix, "config")
        url = self.endpoint.rstrip("/") + "/v3/kv/range"
        cert = (self._opts.certfile, self._opts.keyfile) if self._opts.certfile else None
        try:
            res = requests.post(
                url,
                json={"key": base64.b64encode(key.encode()).decode()},
                timeout=self._opts.timeout,
                cert=cert,
                verify=self._opts.cafile or True,
            )
            found = res.status_code == 200 and bool(res.json().get("kvs"))
        except (requests.RequestException, ValueError, AttributeError):
            found = False  # v3 auth on, TLS trouble, an etcd without v3: no hint
        if found:
            return (
                "it exists in the etcd v3 keyspace: run with --etcd-api=v3 "
                "(FLANNELD_ETCD_API=v3), or write it with ETCDCTL_API=2 etcdctl set"
            )
        return (
            "did you create the config with the etcd v2 API (ETCDCTL_API=2 etcdctl set)? "
            "Keys written through the v3 API are invisible to v2"
        )

    def list_subnets(self) -> Snapshot:
        """Recursive quorum read of ``<prefix>/subnets``; X-Etcd-Index is the watch cursor."""
        key = subnets_key(self._opts.prefix)
        try:
            res = self._call(lambda c: c.read(key, recursive=True, quorum=True))
        except etcd.EtcdKeyNotFound as exc:
            # No lease yet: the cursor is the index the error reports.
            return Snapshot((), int((exc.payload or {}).get("index", 0)))
        leases: list[Lease] = []
        invalid: list[LeaseEvent] = []
        for node in res.leaves:
            if node.dir:  # an empty directory lists itself as its only leaf
                continue
            ev = decode_record(node.key, node.value, _expiration(node), node.modifiedIndex)
            if ev.lease is not None:
                leases.append(ev.lease)
            else:
                invalid.append(ev)
        return Snapshot(tuple(leases), int(res.etcd_index), tuple(invalid))

    def get_subnet(self, subnet: IPv4Network) -> Lease | None:
        """Read one lease."""
        key = subnets_key(self._opts.prefix, subnet)
        try:
            node = self._call(lambda c: c.read(key, quorum=True))
        except etcd.EtcdKeyNotFound:
            return None
        return decode_record(node.key, node.value, _expiration(node), node.modifiedIndex).lease

    def _write(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int, **cond: Any) -> Lease:
        key = subnets_key(self._opts.prefix, subnet)
        value = attrs.encode()
        node = self._call(lambda c: c.write(key, value, ttl=ttl or None, **cond))
        return Lease(subnet, attrs, time.time() + ttl if ttl else None, int(node.modifiedIndex))

    def create_subnet(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int) -> Lease:
        """``PUT ?prevExist=false`` with the TTL."""
        try:
            return self._write(subnet, attrs, ttl, prevExist=False)
        except etcd.EtcdAlreadyExist:
            raise AlreadyExists(f"subnet {subnet} is already leased") from None

    def update_subnet(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int) -> Lease:
        """A plain set with the full value and a fresh TTL (watchers see it, as in flanneld)."""
        return self._write(subnet, attrs, ttl)

    def delete_subnet(self, subnet: IPv4Network) -> None:
        """Delete; an absent key is fine."""
        key = subnets_key(self._opts.prefix, subnet)
        with contextlib.suppress(etcd.EtcdKeyNotFound):
            self._call(lambda c: c.delete(key))

    def watch_subnets(self, after: int, stop: threading.Event) -> Iterator[Events]:
        """Recursive long-polls from ``waitIndex=after+1``, one event each."""
        key = subnets_key(self._opts.prefix)
        cursor = after
        while not stop.is_set():
            try:
                res = self._call(_long_poll(key, cursor + 1))
            except etcd.EtcdWatchTimedOut:
                yield Events((), cursor)
                continue
            except etcd.EtcdEventIndexCleared as exc:
                raise Compacted(int((exc.payload or {}).get("index", 0))) from None
            except etcd.EtcdException as exc:
                if isinstance(exc, RegistryError):
                    raise
                raise RegistryUnavailable(f"etcd watch failed: {exc}") from None
            cursor = int(res.modifiedIndex)
            if res.key.rstrip("/") == key:
                # The whole directory changed (``rm -r subnets``): only a re-list can say how.
                raise Compacted(cursor)
            yield Events(self._event(res), cursor)

    @staticmethod
    def _event(res: Any) -> tuple[LeaseEvent, ...]:
        if res.action in ("delete", "expire", "compareAndDelete"):
            ev = removed(res.key)
            return () if ev is None else (ev,)
        rec = decode_record(res.key, res.value, _expiration(res), int(res.modifiedIndex))
        return (rec,)

    def close(self) -> None:
        """python-etcd keeps a urllib3 pool; clearing it closes the sockets."""
        for c in self._clients:
            c.http.clear()


__all__ = ["EtcdV2Registry"]
