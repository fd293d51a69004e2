"""The etcd v3 registry (flanneld v0.18 and later), over etcd's JSON gRPC gateway.

Unary calls go through etcd3gw.  The watch is our own loop over requests, because etcd3gw's
watch blocks forever when its start revision has been compacted and when etcd restarts
(dependencies.md section 4).  The wire behaviour is flanneld's v3 registry
(flannel-behaviour.md section 1.4):

* config: ``Range <prefix>/config``; absent is NotFound;
* list: one ``Range <prefix>/subnets`` as a prefix (no trailing slash, as flanneld does); the
  header revision is the cursor.  Unlike flanneld, no ``LeaseTimeToLive`` per key (150 s at
  10,000 keys): a key on a lease is reported with an expiration "not read", since a peer's
  expiry is never needed; only ``get_subnet`` (one key) asks;
* create: ``LeaseGrant(ttl)``, then ``Txn(If Version(key) == 0 Then Put(key, lease))``; the
  lease is revoked again when the transaction fails or does not succeed;
* update: a *new* ``LeaseGrant(ttl)`` and a plain ``Put`` with it; ttl 0 is a ``Put`` without a
  lease, which detaches the key from any lease (a reservation);
* delete: ``DeleteRange(key)``;
* watch: ``POST /v3/watch`` from ``after + 1``, one JSON message per line, no extra round trip
  per event; ``compact_revision``
  is Compacted, an error line or the end of the stream is RegistryUnavailable.

Expirations: a key without a lease has none (a reservation).  flanneld itself reports lease 0 as
"now - 1 s", which silently turns a reservation into a 24 h lease on its holder's next renewal;
we keep reservations.  A key whose lease is already gone (TTL -1: the expiry raced our read) is
reported as expiring now, never as a reservation, so a rewrite gives it a TTL again.

Several endpoints are tried in order while they are unreachable.  A TLS handshake failure or a
credentials problem is final (RegistryRefused, naming the endpoint), never retried as
"unavailable".  With ``--etcd-username`` we authenticate per endpoint (``/v3/auth/authenticate``)
and send the token as the ``Authorization`` header; etcd3gw has no auth of its own, so the token
rides on the requests session we hand it.  A token that the server no longer knows (simple tokens
live five minutes) is renewed once and the call repeated.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as gw
from urllib3.exceptions import ReadTimeoutError

from pyflannel.errors import (
    AlreadyExists,
    Compacted,
    NotFound,
    RegistryError,
    RegistryRefused,
    RegistryUnavailable,
)
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import EXPIRY_NOT_READ, Events, Lease, LeaseAttrs, LeaseEvent, Snapshot
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

if TYPE_CHECKING:
    from requests.sessions import _Settings  # exists in types-requests only

T = TypeVar("T")

#: A watch stream quiet for this long is re-opened from the same revision, after an empty batch
#: that lets the caller look at its stop event (etcd's own progress notifications come only every
#: ten minutes).  Also bounds how long a hung etcd goes unnoticed.
WATCH_POLL = 5.0

# gRPC status codes, as the gateway reports them in its JSON errors.
_INVALID_ARGUMENT = 3
_PERMISSION_DENIED = 7
_FAILED_PRECONDITION = 9
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

# The longest server error text we quote (it is logged, and a proxy may send a whole page).
_MAX_STATUS_CHARS = 300

_CRED_HINT = "check --etcd-username/--etcd-password"
_TLS_HINT = "check --etcd-cafile/--etcd-certfile/--etcd-keyfile"


class _Unreachable(Exception):
    """This endpoint cannot serve now: try the next one."""


class _Reauthenticate(Exception):
    """The server does not (or no longer) accept our token: get a new one and repeat."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _prefix_end(key: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with *key*."""
    end = bytearray(key)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # etcd's "to the end of the keyspace"


def _status(body: Any) -> tuple[int | None, str]:
    """(gRPC code, message) of a gateway error body, unary or streamed."""
    if not isinstance(body, dict):
        return None, clip(str(body), _MAX_STATUS_CHARS)
    err = body.get("error")
    if isinstance(err, dict):  # in a watch stream: {"error": {"grpc_code": 14, "message": ...}}
        code = err.get("grpc_code")
        text = str(err.get("message", err))
    else:
        code = body.get("code")  # unary: {"error": "...", "message": "...", "code": 14}
        text = str(body.get("message") or err or body)
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    return code, clip(text, _MAX_STATUS_CHARS)


def _parse_status(text: str | None) -> tuple[int | None, str]:
    try:
        return _status(json.loads(text or ""))
    except ValueError:
        return None, (text or "").strip() or "no detail"


_RPC_PREFIX = re.compile(r"^rpc error: code = \w+ desc = ")


def _read_timed_out(exc: BaseException) -> bool:
    """True when a streamed read hit its timeout (requests reports it as a ConnectionError)."""
    return any(isinstance(a, ReadTimeoutError) for a in exc.args)


class _Session(requests.Session):
    """A requests session whose own CA file beats ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    requests lets those variables override ``Session.verify`` (psf/requests#3829), so with them
    set (Debian images often set them) ``--etcd-cafile`` would be ignored and every handshake
    with a private-CA etcd fail.  An explicit CA file is what the operator asked for: keep it.
    """

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        """requests' merge, then our CA file back in place of the environment's."""
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if isinstance(self.verify, str) and verify in (None, True):
            settings["verify"] = self.verify
        return settings


class _Endpoint:
    """One etcd URL: its requests session (TLS, token) and the etcd3gw client over it."""

    def __init__(self, url: str, opts: EtcdOptions) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryRefused(f"invalid etcd endpoint {url!r} (want http[s]://host:port)")
        self.url = url.rstrip("/")
        self.session = _Session()
        if opts.cafile:
            self.session.verify = opts.cafile
        if opts.certfile and opts.keyfile:  # as flanneld: a client cert needs both files
            self.session.cert = (opts.certfile, opts.keyfile)
        self.client = etcd3gw.client(
            host=parts.hostname,
            port=parts.port or 2379,
            protocol=parts.scheme,
            timeout=opts.timeout,
            session=self.session,
        )
        self.lock = threading.Lock()
        self.token: str | None = None  # None: not asked yet; "": auth is off on this server


def _ignore(_endpoint: str) -> None:
    pass


class EtcdV3Registry:
    """A :class:`~pyflannel.registry.Registry` on the etcd v3 API (JSON gateway)."""

    def __init__(
        self,
        opts: EtcdOptions,
        *,
        watch_poll: float = WATCH_POLL,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self._opts = opts
        # Told the endpoint of every failed request (for the per-endpoint error metric).
        self._on_error = on_error or _ignore
        self._prefix = join_key(opts.prefix)
        self._endpoints = [_Endpoint(e, opts) for e in opts.endpoints]
        if not self._endpoints:
            raise RegistryRefused("no etcd endpoint given")
        self._current = 0
        self._lock = threading.Lock()
        self.watch_poll = watch_poll

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self._endpoints[self._current].url

    def config_hint(self) -> str:
        """What to tell an operator whose config is missing: look in the v2 keyspace, which the
        v3 API cannot see (flannel-io/flannel#1584), and name the flag that reads it."""
        key = join_key(self._opts.prefix, "config")
        ep = self._endpoints[self._current]
        try:
            res = ep.session.get(f"{ep.url}/v2/keys{key}", timeout=self._opts.timeout)
            found = res.status_code == 200 and "value" in res.json().get("node", {})
        except (requests.RequestException, ValueError, AttributeError):
            found = False
        if found:
            return (
                "it exists in the etcd v2 keyspace: run with --etcd-api=v2 "
                "(FLANNELD_ETCD_API=v2), or write it with ETCDCTL_API=3 etcdctl put"
            )
        return (
            "did you create the config with the etcd v3 API? "
            "Keys written through the v2 API are invisible to v3"
        )

    # --- errors, auth and failover ---------------------------------------------------------

    def _map(self, ep: _Endpoint, exc: BaseException) -> Exception:
        """Translate an etcd3gw or requests failure on *ep* into what to do about it."""
        tls = tls_failure(exc)
        if tls is not None:
            return RegistryRefused(f"TLS with etcd at {ep.url} failed: {tls} ({_TLS_HINT})")
        if isinstance(
            exc,
            (
                gw.ConnectionFailedError,
                gw.ConnectionTimeoutError,
                gw.InternalServerError,
                gw.ApiVersionDiscoveryFailedError,
            ),
        ):
            # etcd3gw raises ConnectionFailedError for HTTP 503 too: a member without a leader.
            _, text = _parse_status(exc.detail_text)
            return _Unreachable(short_reason(text))
        if isinstance(exc, gw.Etcd3Exception):
            code, text = _parse_status(exc.detail_text)
            return self._refusal(ep, code, text) or RegistryUnavailable(f"etcd at {ep.url}: {text}")
        if isinstance(exc, requests.RequestException):
            return _Unreachable(short_reason(str(exc)))
        return RegistryUnavailable(f"etcd at {ep.url}: {exc}")

    def _refusal(self, ep: _Endpoint, code: int | None, text: str) -> Exception | None:
        """The auth problem *code*/*text* describes, or None if it is not one."""
        lowered = text.lower()
        if code == _UNAUTHENTICATED or "invalid auth token" in lowered:
            if self._opts.username:
                return _Reauthenticate(f"etcd at {ep.url} rejected our token: {text}")
            return RegistryRefused(f"etcd at {ep.url} rejected the request: {text}")
        if "user name is empty" in lowered:
            if self._opts.username:  # auth was switched on after we last asked
                return _Reauthenticate(f"etcd at {ep.url} wants a token: {text}")
            return RegistryRefused(
                f"etcd at {ep.url} requires authentication: {text} "
                "(set --etcd-username/--etcd-password)"
            )
        if code == _PERMISSION_DENIED or "permission denied" in lowered:
            return RegistryRefused(
                f"etcd at {ep.url} denied user {self._opts.username!r} access: {text}"
            )
        if code == _INVALID_ARGUMENT and "authentication failed" in lowered:
            return RegistryRefused(
                f"etcd at {ep.url} refused the credentials of user {self._opts.username!r}: "
                f"{text} ({_CRED_HINT})"
            )
        return None

    def _authenticate(self, ep: _Endpoint, *, renew: bool = False) -> None:
        """Make sure *ep*'s session carries a valid token (or learn that auth is off)."""
        if not self._opts.username:
            return
        with ep.lock:
            if ep.token is not None and not renew:
                return
            ep.session.headers.pop("Authorization", None)
            body = {"name": self._opts.username, "password": self._opts.password}
            try:
                res = ep.client.post(ep.client.get_url("/auth/authenticate"), json=body)
            except gw.Etcd3Exception as exc:
                code, text = _parse_status(exc.detail_text)
                if code == _FAILED_PRECONDITION and "not enabled" in text:
                    ep.token = ""  # like etcd's Go client: credentials are optional then
                    return
                mapped = self._map(ep, exc)
                if isinstance(mapped, _Reauthenticate):  # e.g. "authentication failed"
                    raise RegistryRefused(str(mapped)) from None
                raise mapped from None
            ep.token = str(res["token"])
            ep.session.headers["Authorization"] = ep.token

    def _on(self, ep: _Endpoint, fn: Callable[[etcd3gw.Etcd3Client], T]) -> T:
        """Run *fn* on *ep*, authenticated; renew the token once if the server asks."""
        for renew in (False, True):
            try:
                self._authenticate(ep, renew=renew)
                return fn(ep.client)
            except (gw.Etcd3Exception, requests.RequestException) as exc:
                mapped = self._map(ep, exc)
                if isinstance(mapped, _Reauthenticate) and not renew:
                    continue
                if not isinstance(mapped, _Unreachable):  # _failover counts those
                    self._on_error(ep.url)
                if isinstance(mapped, _Reauthenticate):
                    raise RegistryRefused(
                        f"{mapped}, even with a fresh token ({_CRED_HINT})"
                    ) from None
                raise mapped from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns/raises

    def _failover(self, attempt: Callable[[_Endpoint], T]) -> T:
        """Run *attempt* on the current endpoint, then on the next ones while they are
        unreachable (it raises _Unreachable); the first that answers becomes current."""
        errors: list[str] = []
        with self._lock:
            start = self._current
        n = len(self._endpoints)
        for step in range(n):
            idx = (start + step) % n
            ep = self._endpoints[idx]
            try:
                result = attempt(ep)
            except _Unreachable as exc:
                self._on_error(ep.url)
                errors.append(f"{ep.url}: {exc}")
                continue
            if idx != start:
                with self._lock:
                    self._current = idx
            return result
        raise RegistryUnavailable("etcd unreachable: " + "; ".join(errors))

    def _call(self, fn: Callable[[etcd3gw.Etcd3Client], T]) -> T:
        """Run *fn* with failover between endpoints."""
        return self._failover(lambda ep: self._on(ep, fn))

    # --- unary helpers ---------------------------------------------------------------------

    def _range(self, key: str, *, prefix: bool = False) -> Any:
        body = {"key": _b64(key.encode())}
        if prefix:
            body["range_end"] = _b64(_prefix_end(key.encode()))
        return self._call(lambda c: c.post(c.get_url("/kv/range"), json=body))

    def _expiration(self, lease_id: int, cache: dict[int, float]) -> float | None:
        """Wall-clock expiry of a key on *lease_id* (LeaseTimeToLive, as flanneld)."""
        if lease_id == 0:
            return None  # no lease: a reservation
        if lease_id not in cache:
            res = self._call(
                lambda c: c.post(c.get_url("/kv/lease/timetolive"), json={"ID": lease_id})
            )
            # proto3 leaves a zero TTL out of the JSON; -1 means the lease is already gone.
            try:
                ttl = _int64(res.get("TTL", 0) if isinstance(res, dict) else None)
            except ValueError as exc:
                raise RegistryUnavailable(
                    f"etcd sent a bad LeaseTimeToLive answer: {exc}"
                ) from None
            cache[lease_id] = time.time() + max(ttl, 0)
        return cache[lease_id]

    def _lookup(self) -> ExpirationLookup:
        """An expiration lookup with its own cache (one per listing or watch message)."""
        cache: dict[int, float] = {}
        return lambda lease_id: self._expiration(lease_id, cache)

    @staticmethod
    def _revoke(client: etcd3gw.Etcd3Client, lease: etcd3gw.Lease | None) -> None:
        """Best effort: an orphan lease holds no key and expires on its own anyway."""
        if lease is not None:
            with contextlib.suppress(gw.Etcd3Exception, requests.RequestException):
                lease.revoke()

    # --- the Registry protocol -------------------------------------------------------------

    def get_network_config(self) -> str:
        """The raw text at ``<prefix>/config``."""
        key = join_key(self._prefix, "config")
        values = self._call(lambda c: c.get(key.encode()))
        if not values:
            raise NotFound(f"{key} not found in the etcd v3 keyspace")
        return values[0].decode("utf-8", "replace")

    def list_subnets(self) -> Snapshot:
        """Every record under ``<prefix>/subnets`` in one range read; a key on a lease gets
        :data:`~pyflannel.lease.EXPIRY_NOT_READ` (flanneld asks LeaseTimeToLive per key)."""
        res = self._range(subnets_key(self._prefix), prefix=True)
        return parse_range(res, _not_read)

    def get_subnet(self, subnet: SubnetKey) -> Lease | None:
        """Read one lease."""
        kvs = range_kvs(self._range(subnets_key(self._prefix, subnet)))
        return parse_kv(kvs[0], self._lookup()).lease if kvs else None

    def create_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """Lease grant, then a transaction that puts only if the key has no version yet."""
        key = _b64(subnets_key(self._prefix, subnet).encode())
        value = attrs.encode()

        def create(c: etcd3gw.Etcd3Client) -> int | None:
            lease = c.lease(ttl) if ttl else None
            put: dict[str, Any] = {"key": key, "value": _b64(value.encode())}
            if lease is not None:
                put["lease"] = lease.id
            txn = {
                "compare": [{"key": key, "result": "EQUAL", "target": "VERSION", "version": 0}],
                "success": [{"request_put": put}],
                "failure": [],
            }
            try:
                res = c.transaction(txn)
            except BaseException:
                self._revoke(c, lease)
                raise
            if not res.get("succeeded"):  # proto3 JSON omits a false "succeeded"
                self._revoke(c, lease)
                return None
            return int(res["header"]["revision"])

        # If the connection drops after etcd applied the transaction, the retry (possibly on
        # another endpoint) sees our own key and reports AlreadyExists; flanneld has the same
        # window, and the orphan lease expires with its TTL.
        revision = self._call(create)
        if revision is None:
            raise AlreadyExists(f"subnet {subnet} is already leased")
        return Lease(subnet, attrs, time.time() + ttl if ttl else None, revision)

    def update_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """A new lease and a plain put (flanneld never keeps a lease alive: it re-grants)."""
        key = _b64(subnets_key(self._prefix, subnet).encode())
        value = _b64(attrs.encode().encode())

        def update(c: etcd3gw.Etcd3Client) -> int:
            body: dict[str, Any] = {"key": key, "value": value}
            if ttl:
                body["lease"] = c.lease(ttl).id
            return int(c.post(c.get_url("/kv/put"), json=body)["header"]["revision"])

        revision = self._call(update)
        return Lease(subnet, attrs, time.time() + ttl if ttl else None, revision)

    def delete_subnet(self, subnet: SubnetKey) -> None:
        """Delete; absent is fine."""
        key = subnets_key(self._prefix, subnet).encode()
        self._call(lambda c: c.delete(key))

    def close(self) -> None:
        """Close every endpoint's connection pool."""
        for ep in self._endpoints:
            ep.session.close()

    # --- the watch ---------------------------------------------------------------------------

    def watch_subnets(self, after: int, stop: threading.Event) -> Iterator[Events]:
        """Stream changes under ``<prefix>/subnets`` with revision > *after*."""
        key = subnets_key(self._prefix).encode()
        cursor = after
        renewed = False
        while not stop.is_set():
            try:
                resp, ep = self._open_watch(key, cursor)
                with resp:
                    for batch in self._read_stream(resp, ep, cursor, stop):
                        cursor = batch.revision
                        renewed = False
                        yield batch
            except _Reauthenticate as exc:
                if renewed:
                    raise RegistryRefused(
                        f"{exc}, even with a fresh token ({_CRED_HINT})"
                    ) from None
                self._forget_tokens()  # the next open authenticates again
                renewed = True
                continue
            if not stop.is_set():
                yield Events((), cursor)  # the stream was quiet: a heartbeat, then re-open

    def _forget_tokens(self) -> None:
        for ep in self._endpoints:
            with ep.lock:
                ep.token = None

    def _open_watch(self, key: bytes, cursor: int) -> tuple[requests.Response, _Endpoint]:
        """POST /v3/watch on the first endpoint that answers; the response streams."""
        body = {
            "create_request": {
                "key": _b64(key),
                "range_end": _b64(_prefix_end(key)),
                "start_revision": cursor + 1,
                "progress_notify": True,
            }
        }

        def attempt(ep: _Endpoint) -> tuple[requests.Response, _Endpoint]:
            try:
                self._authenticate(ep)
                resp = ep.session.post(
                    ep.client.get_url("/watch"),
                    json=body,
                    stream=True,
                    timeout=(self._opts.timeout, self.watch_poll),
                )
            except (gw.Etcd3Exception, requests.RequestException) as exc:
                raise self._map(ep, exc) from None  # _Unreachable: the next endpoint
            if resp.status_code != requests.codes.ok:
                code, text = _parse_status(resp.text)
                resp.close()
                if resp.status_code == requests.codes.service_unavailable:
                    raise _Unreachable(text)
                self._on_error(ep.url)
                raise self._refusal(ep, code, text) or RegistryUnavailable(
                    f"etcd at {ep.url} refused the watch: {text}"
                )
            return resp, ep

        return self._failover(attempt)

    def _read_stream(
        self, resp: requests.Response, ep: _Endpoint, cursor: int, stop: threading.Event
    ) -> Iterator[Events]:
        """Batches from one watch stream; returns quietly after WATCH_POLL without a message."""
        try:
            yield from self._stream_batches(resp, ep, cursor, stop)
        except Compacted:
            raise  # an answer, not a failure
        except RegistryError:
            self._on_error(ep.url)
            raise

    def _stream_batches(
        self, resp: requests.Response, ep: _Endpoint, cursor: int, stop: threading.Event
    ) -> Iterator[Events]:
        lines = resp.iter_lines()
        while not stop.is_set():
            try:
                line = next(lines, None)
            except requests.RequestException as exc:
                if _read_timed_out(exc):
                    return  # quiet, not dropped: the caller re-opens from the same revision
                raise RegistryUnavailable(
                    f"etcd watch stream from {ep.url} failed: {short_reason(str(exc))}"
                ) from None
            if line is None:
                raise RegistryUnavailable(f"etcd watch stream from {ep.url} ended")
            if not line:
                continue
            batch = self._message(ep, line, cursor)
            if batch is not None:
                cursor = batch.revision
                yield batch

    def _message(self, ep: _Endpoint, line: bytes, cursor: int) -> Events | None:
        """One line of the watch stream as a batch; None for the "created" confirmation."""
        try:
            out = parse_watch_line(line, cursor, _not_read)  # a PUT costs no round trip
        except _BadMessage as exc:
            raise RegistryUnavailable(f"etcd at {ep.url} sent a bad watch message: {exc}") from None
        if isinstance(out, WatchEnd):
            if out.cancelled:
                raise self._refusal(ep, None, out.text) or RegistryUnavailable(
                    f"etcd at {ep.url} cancelled the watch: {out.text}"
                )
            # The gateway lost its gRPC stream (etcd stopping, leader lost).
            raise self._refusal(ep, out.code, out.text) or RegistryUnavailable(
                f"etcd watch stream from {ep.url} failed: {out.text}"
            )
        return out


# --- parsing etcd's JSON, pure: what a server (or anyone who wrote a key) sent -----------------

#: Wall-clock expiry of the keys on a lease ID (None: no lease, a reservation).  Injected, so
#: that parsing needs no server and the lookup can change without touching the parsers.
ExpirationLookup = Callable[[int], float | None]


def _not_read(lease_id: int) -> float | None:
    """The expiration of a key on *lease_id* without asking etcd: None without a lease (a
    reservation), else "has a TTL, end not read"."""
    return None if lease_id == 0 else EXPIRY_NOT_READ


#: The longest watch message parsed: etcd caps one at its request limit (1.5 MiB by default)
#: plus base64 and framing; a far larger line is not from etcd.
MAX_WATCH_MESSAGE_CHARS = 64 * 1024 * 1024

_INT64 = re.compile(r"-?\d{1,19}", re.ASCII)


class _BadMessage(RegistryUnavailable):
    """A response or watch line that is not what etcd sends at all."""


@dataclass(frozen=True)
class WatchEnd:
    """The server ended a watch: an ``error`` line (cancelled False) or a cancellation other
    than compaction; *text* is short."""

    code: int | None
    text: str
    cancelled: bool


def _int64(value: Any) -> int:
    """An int64 field: a JSON string of digits (proto3's form) or a JSON number."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INT64.fullmatch(value):
        number = int(value)
    else:
        raise ValueError(f"not an int64: {excerpt(value)}")
    if not -(1 << 63) <= number < 1 << 63:
        raise ValueError(f"not an int64: {excerpt(value)}")
    return number


def _bytes_field(obj: dict[str, Any], name: str, *, required: bool) -> bytes:
    """A base64 ``bytes`` field; proto3 leaves an empty one out."""
    text = obj.get(name)
    if text is None and not required:
        return b""
    if not isinstance(text, str):
        raise ValueError(f"{name} is not base64 text: {excerpt(text)}")
    return base64.b64decode(text, validate=True)  # binascii.Error is a ValueError


def _kv_key(kv: Any) -> str:
    if not isinstance(kv, dict):
        raise ValueError(f"kv is not an object: {excerpt(kv)}")
    return _bytes_field(kv, "key", required=True).decode("utf-8", "replace")


def _key_for_event(kv: Any) -> object:
    """The key of a malformed kv as best it can be read, for the INVALID event."""
    try:
        return _kv_key(kv)
    except ValueError:
        return kv.get("key", "") if isinstance(kv, dict) else ""


def parse_kv(kv: Any, expiration: ExpirationLookup) -> LeaseEvent:
    """One ``KeyValue`` of a range or watch response as a record; INVALID when malformed."""
    try:
        key = _kv_key(kv)
        value = _bytes_field(kv, "value", required=False)
        lease_id = _int64(kv.get("lease", 0))
        revision = _int64(kv.get("mod_revision"))
        if lease_id < 0:
            raise ValueError(f"lease {lease_id} is negative")
    except Exception as exc:  # ValueError by design; any other is still this record's fault
        return invalid(_key_for_event(kv), f"malformed key-value: {_why(exc)}")
    # Outside the try: a lookup that cannot reach etcd is an outage, not a bad record.
    return decode_record(key, value, expiration(lease_id), revision)


def _why(exc: Exception) -> str:
    return str(exc) if isinstance(exc, ValueError) else type(exc).__name__


def _revision(header: Any) -> int:
    """The revision of a response ``header``; _BadMessage without one."""
    try:
        return _int64(header.get("revision") if isinstance(header, dict) else None)
    except ValueError as exc:
        raise _BadMessage(f"header revision: {exc}") from None


def range_kvs(res: Any) -> list[Any]:
    """The ``kvs`` of a Range response (absent when empty); _BadMessage if it is no list."""
    if not isinstance(res, dict):
        raise _BadMessage(f"range response is not an object: {excerpt(res)}")
    kvs = res.get("kvs") or []
    if not isinstance(kvs, list):
        raise _BadMessage(f"kvs is not a list: {excerpt(kvs)}")
    return kvs


def parse_range(res: Any, expiration: ExpirationLookup) -> Snapshot:
    """A Range response as a snapshot: a malformed kv is an INVALID record, a response
    without a list of kvs or a header revision is RegistryUnavailable."""
    kvs = range_kvs(res)
    revision = _revision(res.get("header"))
    leases: list[Lease] = []
    bad: list[LeaseEvent] = []
    for kv in kvs:
        ev = parse_kv(kv, expiration)
        if ev.lease is not None:
            leases.append(ev.lease)
        else:
            bad.append(ev)
    return Snapshot(tuple(leases), revision, tuple(bad))


def parse_watch_line(
    line: bytes | str, cursor: int, expiration: ExpirationLookup
) -> Events | WatchEnd | None:
    """One line of the watch stream: a batch, None for the "created" confirmation, or the
    WatchEnd the server sent.

    Raises Compacted when the start revision was compacted, and RegistryUnavailable when the
    line is not a watch message at all.  A malformed event is an INVALID record, and the
    cursor still moves past every event whose revision can be read.
    """
    try:
        msg = load_json(line, max_chars=MAX_WATCH_MESSAGE_CHARS, what="watch message")
    except UntrustedInput as exc:
        raise _BadMessage(str(exc)) from None
    if not isinstance(msg, dict):
        raise _BadMessage(f"not an object: {excerpt(msg)}")
    if "error" in msg:
        code, text = _status(msg)
        return WatchEnd(code, text, cancelled=False)
    res = msg.get("result") or {}
    if not isinstance(res, dict):
        raise _BadMessage(f"result is not an object: {excerpt(res)}")
    if res.get("canceled"):
        try:
            compacted = _int64(res.get("compact_revision", 0))
        except ValueError as exc:
            raise _BadMessage(f"compact_revision: {exc}") from None
        if compacted > 0:
            raise Compacted(compacted)
        # "rpc error: code = InvalidArgument desc = etcdserver: ..." -> "etcdserver: ..."
        reason = _RPC_PREFIX.sub("", str(res.get("cancel_reason") or "no reason given"))
        return WatchEnd(None, clip(reason, _MAX_STATUS_CHARS), cancelled=True)
    events = res.get("events") or []
    if not isinstance(events, list):
        raise _BadMessage(f"events is not a list: {excerpt(events)}")
    if not events:
        if res.get("created"):
            return None  # its header revision may be ahead of events still to come
        # A progress notification: nothing under the prefix up to the header revision.
        return Events((), max(cursor, _revision(res.get("header"))))
    out: list[LeaseEvent] = []
    for ev in events:
        kv = ev.get("kv") if isinstance(ev, dict) else None
        if isinstance(kv, dict):
            # Past every event with a readable revision, good or bad: a bad record is skipped
            # once, never re-read forever.
            with contextlib.suppress(ValueError):
                cursor = max(cursor, _int64(kv.get("mod_revision")))
        if isinstance(ev, dict) and ev.get("type") == "DELETE":
            # A PUT has no "type": proto3 omits the zero enum.
            try:
                gone = removed(_kv_key(kv))
            except ValueError as exc:
                out.append(invalid(_key_for_event(kv), f"malformed delete: {exc}"))
                continue
            if gone is not None:
                out.append(gone)
        else:
            # A TimeToLive that fails raises before the batch is yielded: the caller
            # re-watches from its last revision and sees this response again.
            out.append(parse_kv(kv, expiration))
    return Events(tuple(out), cursor)


__all__ = [
    "MAX_WATCH_MESSAGE_CHARS",
    "WATCH_POLL",
    "EtcdV3Registry",
    "ExpirationLookup",
    "WatchEnd",
    "parse_kv",
    "parse_range",
    "parse_watch_line",
    "range_kvs",
]
