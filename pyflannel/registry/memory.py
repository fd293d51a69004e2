"""An in-memory :class:`~pyflannel.registry.Registry` for tests: etcd's semantics without etcd.

It keeps what the daemon relies on from etcd, and the contract suite (``tests/contract``) holds
it to the same behaviour as a real etcd, v2 and v3:

* one revision counter, bumped by every write, delete and expiry (etcd's index / revision);
* TTLs measured on an injected :class:`~pyflannel.clock.Clock`, so a
  :class:`~pyflannel.testing.FakeClock` can expire a lease without sleeping; an expiry is a
  change of its own, seen by watchers as a removal;
* a bounded history of changes (1000, like etcd v2's event history): a watch from a revision
  that has fallen out of it raises :class:`~pyflannel.errors.Compacted`, and :meth:`compact`
  drops history on demand, like etcd v3's compaction API;
* :meth:`stop_serving` / :meth:`resume` to play an outage: meanwhile every call, and every watch
  already running, raises :class:`~pyflannel.errors.RegistryUnavailable`.

Watches block on a condition variable and wake at least every *heartbeat* seconds of real time,
yielding an empty batch so the caller can look at its ``stop`` event; TTLs follow the injected
clock, checked at every call and at every wake-up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from pyflannel.clock import Clock, SystemClock
from pyflannel.errors import AlreadyExists, Compacted, NotFound, RegistryUnavailable
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import Events, Lease, LeaseAttrs, LeaseEvent, Snapshot
from pyflannel.registry import decode_record, join_key, removed, subnets_key

#: etcd v2 keeps the last 1000 events; older watch indexes get "event index cleared".
HISTORY = 1000
#: Real seconds between the empty batches a quiet watch yields.
HEARTBEAT = 0.5


@dataclass(frozen=True)
class _Record:
    value: str
    revision: int
    deadline: float | None  # on clock.monotonic(); None: no TTL


@dataclass(frozen=True)
class _Change:
    revision: int
    key: str
    value: str | None  # None: deleted or expired
    deadline: float | None


class MemoryRegistry:
    """A thread-safe registry in a dict, with revisions, TTLs, history and outages."""

    endpoint = "memory://"

    def __init__(
        self,
        prefix: str = "/coreos.com/network",
        *,
        clock: Clock | None = None,
        history: int = HISTORY,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self._prefix = join_key(prefix)
        self._subnets_dir = subnets_key(self._prefix) + "/"
        self._clock: Clock = clock or SystemClock()
        self._heartbeat = heartbeat
        self._cond = threading.Condition()
        self._data: dict[str, _Record] = {}
        self._history: deque[_Change] = deque(maxlen=history)
        self._revision = 1  # a fresh etcd v3 store is at revision 1
        self._floor = 0  # every change at or below this revision has left the history
        self._serving = True

    @property
    def revision(self) -> int:
        """The revision of the last change."""
        with self._cond:
            return self._revision

    # --- test controls ---------------------------------------------------------------------

    def stop_serving(self) -> None:
        """Start an outage: calls and running watches raise RegistryUnavailable until resume()."""
        with self._cond:
            self._serving = False
            self._cond.notify_all()  # blocked watchers wake up and fail now, as a dropped stream

    def resume(self) -> None:
        """End the outage; data, revisions and history are kept (a restart on the same data)."""
        with self._cond:
            self._serving = True
            self._cond.notify_all()

    def compact(self, revision: int | None = None) -> None:
        """Forget the history before *revision* (default: the current one), as etcd v3 does.

        Afterwards a watch must start at *revision* or later: ``after >= revision - 1``.
        """
        with self._cond:
            rev = self._revision if revision is None else revision
            if rev > self._revision:
                raise ValueError(f"cannot compact to future revision {rev} > {self._revision}")
            while self._history and self._history[0].revision < rev:
                self._history.popleft()
            self._floor = max(self._floor, rev - 1)

    def put_raw(self, key: str, value: str, ttl: int = 0) -> int:
        """Write any key, as another etcd client could (garbage too); return its revision."""
        with self._cond:
            self._enter()
            return self._put(key, value, ttl)

    def get_raw(self, key: str) -> str | None:
        """The stored text of any key, or None."""
        with self._cond:
            self._enter()
            rec = self._data.get(key)
            return None if rec is None else rec.value

    def delete_raw(self, key: str) -> None:
        """Delete any key (absent is fine)."""
        with self._cond:
            self._enter()
            self._delete(key)

    # --- the Registry protocol -------------------------------------------------------------

    def config_hint(self) -> str:
        """There is no other keyspace to look in."""
        return ""

    def get_network_config(self) -> str:
        """The text at ``<prefix>/config``."""
        key = join_key(self._prefix, "config")
        with self._cond:
            self._enter()
            rec = self._data.get(key)
        if rec is None:
            raise NotFound(f"{key} not found in the memory registry")
        return rec.value

    def list_subnets(self) -> Snapshot:
        """Every record under ``subnets/``, at the current revision."""
        with self._cond:
            self._enter()
            records = sorted((k, r) for k, r in self._data.items() if self._is_subnet_key(k))
            revision = self._revision
            events = [
                decode_record(k, r.value, self._expiration(r.deadline), r.revision)
                for k, r in records
            ]
        leases = tuple(ev.lease for ev in events if ev.lease is not None)
        invalid = tuple(ev for ev in events if ev.lease is None)
        return Snapshot(leases, revision, invalid)

    def get_subnet(self, subnet: SubnetKey) -> Lease | None:
        """The lease on *subnet*, or None."""
        key = subnets_key(self._prefix, subnet)
        with self._cond:
            self._enter()
            rec = self._data.get(key)
            if rec is None:
                return None
            return decode_record(key, rec.value, self._expiration(rec.deadline), rec.revision).lease

    def create_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """Create if absent, atomically (the lock is the compare-and-set)."""
        key = subnets_key(self._prefix, subnet)
        with self._cond:
            self._enter()
            if key in self._data:
                raise AlreadyExists(f"subnet {subnet} is already leased")
            revision = self._put(key, attrs.encode(), ttl)
        return Lease(subnet, attrs, self._ttl_expiration(ttl), revision)

    def update_subnet(self, subnet: SubnetKey, attrs: LeaseAttrs, ttl: int) -> Lease:
        """Write unconditionally with a fresh TTL (0: none)."""
        key = subnets_key(self._prefix, subnet)
        with self._cond:
            self._enter()
            revision = self._put(key, attrs.encode(), ttl)
        return Lease(subnet, attrs, self._ttl_expiration(ttl), revision)

    def delete_subnet(self, subnet: SubnetKey) -> None:
        """Delete; absent is fine and, as in etcd, changes no revision."""
        with self._cond:
            self._enter()
            self._delete(subnets_key(self._prefix, subnet))

    def watch_subnets(self, after: int, stop: threading.Event) -> Iterator[Events]:
        """Changes under ``subnets/`` with revision > *after*; empty batches while quiet."""
        cursor = after
        while not stop.is_set():
            with self._cond:
                events, cursor = self._collect(cursor)
                if not events:
                    self._cond.wait(self._heartbeat)
                    events, cursor = self._collect(cursor)
            yield Events(events, cursor)  # outside the lock: the consumer may call us back

    def close(self) -> None:
        """Nothing to release."""

    # --- internals (call with self._cond held) ---------------------------------------------

    def _enter(self) -> None:
        if not self._serving:
            raise RegistryUnavailable("memory registry is not serving (stop_serving() called)")
        self._expire()

    def _is_subnet_key(self, key: str) -> bool:
        return key.startswith(self._subnets_dir)

    def _expiration(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return self._clock.time() + (deadline - self._clock.monotonic())

    def _ttl_expiration(self, ttl: int) -> float | None:
        return self._clock.time() + ttl if ttl else None

    def _record(self, key: str, value: str | None, deadline: float | None) -> int:
        self._revision += 1
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].revision  # about to fall out of the bounded deque
        self._history.append(_Change(self._revision, key, value, deadline))
        self._cond.notify_all()
        return self._revision

    def _put(self, key: str, value: str, ttl: int) -> int:
        deadline = self._clock.monotonic() + ttl if ttl else None
        revision = self._record(key, value, deadline)
        self._data[key] = _Record(value, revision, deadline)
        return revision

    def _delete(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            self._record(key, None, None)

    def _expire(self) -> None:
        now = self._clock.monotonic()
        due = sorted(
            (r.deadline, k)
            for k, r in self._data.items()
            if r.deadline is not None and r.deadline <= now
        )
        for _, key in due:  # each expiry is its own change, oldest deadline first
            self._delete(key)

    def _collect(self, cursor: int) -> tuple[tuple[LeaseEvent, ...], int]:
        """Subnet events after *cursor*, and the revision they bring the watch up to."""
        self._enter()
        if cursor < self._floor:
            raise Compacted(self._revision)
        out: list[LeaseEvent] = []
        for ch in self._history:
            if ch.revision <= cursor or not self._is_subnet_key(ch.key):
                continue
            if ch.value is None:
                ev = removed(ch.key)
                if ev is not None:
                    out.append(ev)
            else:
                out.append(
                    decode_record(ch.key, ch.value, self._expiration(ch.deadline), ch.revision)
                )
        # Every change up to the current revision has been looked at, matching or not.
        return tuple(out), max(cursor, self._revision)


__all__ = ["HEARTBEAT", "HISTORY", "MemoryRegistry"]
