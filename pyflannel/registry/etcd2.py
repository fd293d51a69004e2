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
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import Events, Lease, LeaseAttrs, LeaseEvent, Snapshot
from pyflannel.registry import (
    EtcdOptions,
    decode_record,
    invalid,
    join_key,
    removed,
    short_reason,
    subnets_key,
    tls_failure,
)
from pyflannel.untrusted import UntrustedInput, clip, excerpt, load_json

T = TypeVar("T")

#: The longest line of a streamed watch read (one event: a lease value and its key).
MAX_STREAM_LINE = 64 * 1024
#: How long one watch long-poll waits before yielding an empty batch (lets the caller see stop).
WATCH_POLL = 5.0

# python-etcd logs every failed request at ERROR; we report failures ourselves, once.
logging.getLogger("etcd").setLevel(logging.CRITICAL)


def _ignore(_endpoint: str) -> None:
    pass


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


def _live(res: Any) -> bool:
    """True when a watch result is a live event (newer than the store index when the watch
    began), i.e. the watch has caught up with etcd's history."""
    try:
        return _index(_field(res, "modifiedIndex")) > _index(getattr(res, "etcd_index", None))
    except ValueError:
        return False


def _stream_event(line: bytes) -> dict[str, Any] | None:
    """One line of a streamed watch as a flat node dict with its action; None for an error
    object or anything else that is not an event."""
    try:
        obj = load_json(line, max_chars=MAX_STREAM_LINE, max_depth=8, what="watch event")
    except UntrustedInput:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("node"), dict):
        return None
    return {**obj["node"], "action": obj.get("action")}


# --- result nodes, pure: what etcd (or anyone who wrote a key) sent ------------------------------

#: The longest TTL taken at its word (ten years); a larger one is a lease that never ends anyway,
#: and an unbounded int would overflow the float expiration.
MAX_TTL = 10 * 365 * 86400


def _field(node: Any, name: str) -> Any:
    """A node field: a raw dict child of a listing, or an attribute of a python-etcd result."""
    if isinstance(node, dict):
        return node.get(name)
    return getattr(node, name, None)


def _index(value: Any) -> int:
    """An etcd index (modifiedIndex, X-Etcd-Index); ValueError when it is not a whole number."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"index is not a whole number: {excerpt(value)}")
    return value


def _expiration(ttl: Any) -> float | None:
    """Wall-clock expiry of a node with *ttl* seconds left; None without a TTL (a reservation)."""
    if ttl is None or ttl == 0:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ValueError(f"ttl is not a whole number: {excerpt(ttl)}")
    return time.time() + min(max(ttl, 0), MAX_TTL)


def node_event(node: Any, dir_key: str) -> LeaseEvent | None:
    """A listed or watched node as a record: None for a directory (skipped), INVALID for a key
    that is not directly under *dir_key* or for odd fields; never an exception."""
    key = _field(node, "key")
    if not isinstance(key, str):
        return invalid(key, "node without a key")
    if _field(node, "dir"):
        return None
    if key.rpartition("/")[0] != dir_key:
        # flanneld reads only the direct children; a deeper key would alias a real subnet.
        return invalid(key, f"not directly under {dir_key}")
    value = _field(node, "value")
    try:
        revision = _index(_field(node, "modifiedIndex"))
        expiration = _expiration(_field(node, "ttl"))
    except ValueError as exc:
        return invalid(key, str(exc))
    if value is not None and not isinstance(value, str):
        return invalid(key, f"value is not text: {excerpt(value)}")
    return decode_record(key, value, expiration, revision)


def parse_listing(res: Any, dir_key: str) -> Snapshot:
    """A one-level read of *dir_key* as a snapshot; RegistryUnavailable without an index."""
    try:
        index = _index(getattr(res, "etcd_index", None))
    except ValueError as exc:
        raise RegistryUnavailable(f"etcd sent a listing without an index: {exc}") from None
    # The raw child dicts: python-etcd's ``leaves`` recurses, and builds a result from each child
    # without checking its type.  A non-recursive read has one level of children only.
    children = getattr(res, "_children", None) or []
    if not isinstance(children, list):
        raise RegistryUnavailable(f"etcd sent a listing without a list: {excerpt(children)}")
    leases: list[Lease] = []
    bad: list[LeaseEvent] = []
    for child in children:
        ev = node_event(child, dir_key) if isinstance(child, dict) else invalid("", "odd node")
        if ev is None:
            continue
        if ev.lease is not None:
            leases.append(ev.lease)
        else:
            bad.append(ev)
    return Snapshot(tuple(leases), index, tuple(bad))


def watch_batch(res: Any, dir_key: str, cursor: int) -> Events:
    """One watch result (waited for from ``cursor + 1``) as a batch.

    Raises Compacted when the directory itself changed (``rm -r subnets``): only a re-list can
    say how.  The cursor always moves forward, also past an event it cannot read.
    """
    try:
        index = _index(_field(res, "modifiedIndex"))
    except ValueError:
        index = cursor + 1  # the event is at cursor + 1 or later: at least that far is safe
    index = max(index, cursor + 1)
    key = _field(res, "key")
    if isinstance(key, str) and key.rstrip("/") == dir_key:
        raise Compacted(index)
    if _field(res, "action") in ("delete", "expire", "compareAndDelete"):
        ev = removed(key) if isinstance(key, str) and key.rpartition("/")[0] == dir_key else None
        return Events(() if ev is None else (ev,), index)
    rec = node_event(res, dir_key)
    return Events(() if rec is None else (rec,), index)


def _error_index(exc: Any) -> int:
    """The current index an etcd error reports (0 if it reports none we can read)."""
    payload = getattr(exc, "payload", None)
    try:
        return _index(payload.get("index", 0) if isinstance(payload, dict) else 0)
    except ValueError:
        return 0


def _unavailable(what: str, exc: Exception) -> RegistryError:
    """A python-etcd failure as ours: kept if it already is one, else RegistryUnavailable."""
    if isinstance(exc, RegistryError):
        return exc
    return RegistryUnavailable(f"etcd {what} failed: {clip(str(exc), 200)}")


class EtcdV2Registry:
    """A :class:`~pyflannel.registry.Registry` on the etcd v2 keys API."""

    def __init__(self, opts: EtcdOptions, *, on_error: Callable[[str], None] | None = None) -> None:
        self._opts = opts
        # Told the endpoint of every failed request (for the per-endpoint error metric).
        self._on_error = on_error or _ignore
        self._endpoints = list(opts.endpoints)
        self._clients = [_client(e, opts) for e in self._endpoints]
        # The streamed watch's own HTTP session (python-etcd has no streaming), with the same
        # TLS and credentials as the clients.
        self._session = requests.Session()
        if opts.certfile and opts.keyfile:
            self._session.cert = (opts.certfile, opts.keyfile)
        if opts.cafile:
            self._session.verify = opts.cafile
        if opts.username:
            self._session.auth = (opts.username, opts.password)
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
                self._on_error(self._endpoints[idx])
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
                self._on_error(self._endpoints[idx])
                raise RegistryRefused(
                    f"etcd at {self._endpoints[idx]} refused the credentials "
                    "(check --etcd-username/--etcd-password)"
                ) from None
            except (etcd.EtcdKeyError, etcd.EtcdEventIndexCleared):
                raise  # answers, not failures
            except etcd.EtcdException:
                self._on_error(self._endpoints[idx])
                raise
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
            # One level, as flanneld reads it (it uses only the direct children): a recursive
            # read of a deep tree someone wrote would make python-etcd's json.loads recurse.
            res = self._call(lambda c: c.read(key, quorum=True))
        except etcd.EtcdKeyNotFound as exc:
            # No lease yet: the cursor is the index the error reports.
            return Snapshot((), _error_index(exc))
        except etcd.EtcdException as exc:
            raise _unavailable("listing", exc) from None
        return parse_listing(res, key)

    def get_subnet(self, subnet: SubnetKey) -> Lease | None:
        """Read one lease."""
        key = subnets_key(self._opts.prefix, subnet)
        try:
            node = self._call(lambda c: c.read(key, quorum=True))
        except etcd.EtcdKeyNotFound:
            return None
        except etcd.EtcdException as exc:
            raise _unavailable("read", exc) from None
        ev = node_event(node, subnets_key(self._opts.prefix))
        return None if ev is None else ev.lease

    def _write(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int, **cond: Any) -> Lease:
        key = subnets_key(self._opts.prefix, subnet)
        value = attrs.encode()
        node = self._call(lambda c: c.write(key, value, ttl=ttl or None, **cond))
        return Lease(
            SubnetKey.of(subnet), attrs, time.time() + ttl if ttl else None, int(node.modifiedIndex)
        )

    def create_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """``PUT ?prevExist=false`` with the TTL."""
        try:
            return self._write(subnet, attrs, ttl, prevExist=False)
        except etcd.EtcdAlreadyExist:
            raise AlreadyExists(f"subnet {subnet} is already leased") from None

    def update_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """A plain set with the full value and a fresh TTL (watchers see it, as in flanneld)."""
        return self._write(subnet, attrs, ttl)

    def delete_subnet(self, subnet: SubnetKey) -> None:
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
                raise Compacted(_error_index(exc)) from None
            except etcd.EtcdException as exc:
                raise _unavailable("watch", exc) from None
            batch = watch_batch(res, key, cursor)
            cursor = batch.revision
            yield batch
            if _live(res):
                # Caught up: take the next events over one streamed connection instead of a
                # request each (a long-poll costs ~1 ms; 1,000 changes a second need less).
                for batch in self._stream(key, cursor, stop):
                    cursor = batch.revision
                    yield batch

    def _stream(self, key: str, cursor: int, stop: threading.Event) -> Iterator[Events]:
        """Events from one ``wait=true&stream=true`` watch from ``cursor + 1``.

        etcd replays history to a stream as one event and then sends nothing more (that
        watcher is never registered), so the stream ends at an event older than the store
        index it started at; it also ends on any error or after WATCH_POLL of silence.  Each
        end hands back to the long-poll, which maps errors and fails over as usual.
        """
        url = f"{self.endpoint.rstrip('/')}/v2/keys{key}"
        params = {
            "wait": "true",
            "recursive": "true",
            "stream": "true",
            "waitIndex": str(cursor + 1),
        }
        try:
            with self._session.get(
                url, params=params, stream=True, timeout=(self._opts.timeout, WATCH_POLL)
            ) as resp:
                if resp.status_code != requests.codes.ok:
                    return
                start = _index(int(resp.headers.get("X-Etcd-Index", "")))
                for line in resp.iter_lines():
                    if stop.is_set():
                        return
                    if not line:
                        continue
                    event = _stream_event(line)
                    if event is None:
                        return  # an error object (e.g. index cleared): the long-poll says it
                    batch = watch_batch(event, key, cursor)
                    cursor = batch.revision
                    yield batch
                    if cursor <= start:
                        return  # replayed from history: this stream will say nothing more
        except (requests.RequestException, ValueError):
            return

    def close(self) -> None:
        """python-etcd keeps a urllib3 pool; clearing it closes the sockets."""
        for c in self._clients:
            c.http.clear()
        self._session.close()


__all__ = ["MAX_TTL", "EtcdV2Registry", "node_event", "parse_listing", "watch_batch"]
