"""One registry contract, three implementations: MemoryRegistry, etcd v2 and etcd v3.

Every test runs against the in-memory fake and against a real etcd started on loopback for that
test alone, through the v2 keys API and through the v3 JSON gateway.  When the fake and etcd
disagree, the fake is wrong.  A :class:`Harness` gives each test what it needs beside the
Registry: another client's raw reads and writes, a way to compact history, an outage, and the
passing of TTL time (a FakeClock for memory; real seconds for etcd).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Any

import etcd
import etcd3gw
import pytest

from pyflannel.errors import AlreadyExists, Compacted, NotFound, RegistryUnavailable
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import EXPIRY_NOT_READ, EventKind, LeaseAttrs, LeaseEvent, decode_attrs
from pyflannel.registry import EtcdOptions, Registry, etcd2
from pyflannel.registry.etcd2 import EtcdV2Registry
from pyflannel.registry.etcd3 import EtcdV3Registry
from pyflannel.testing import FakeClock, MemoryRegistry, watch_until

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
S1, S2, S3 = (SubnetKey(IPv4Network(f"10.5.{i}.0/24")) for i in (1, 2, 3))
#: A quiet watch yields an empty batch this often (seconds); short, to keep the suite fast.
POLL = 1.0


def attrs(n: int = 1) -> LeaseAttrs:
    """Distinct, realistic lease attributes for node *n*."""
    return LeaseAttrs(IPv4Address(f"192.0.2.{n}"), "vxlan", f"aa:bb:cc:00:00:{n:02x}", 1)


def key(subnet: SubnetKey) -> str:
    """The etcd key of *subnet*."""
    return f"{PREFIX}/subnets/{subnet.name}"


@dataclass
class Harness:
    """A registry under test plus the out-of-band powers a test needs."""

    name: str
    registry: Registry
    raw_put: Callable[[str, str], None]  # write any key as another client would
    raw_get: Callable[[str], bytes | None]
    compact: Callable[[], None]  # make every revision before the current one unwatchable
    outage_begin: Callable[[], None]  # etcd stopped (memory: stop_serving)
    outage_end: Callable[[], None]  # etcd restarted on the same data (memory: resume)
    pass_ttl: Callable[[float], None]  # let TTL time pass (memory: FakeClock; etcd: real time)
    now: Callable[[], float]  # the wall clock expirations are measured against


def _real_time(seconds: float) -> None:
    """On a real etcd TTLs run on real time: the watch that follows waits for the expiry."""


def _memory() -> Harness:
    clock = FakeClock()
    reg = MemoryRegistry(PREFIX, clock=clock, heartbeat=0.2)

    def raw_get(k: str) -> bytes | None:
        v = reg.get_raw(k)
        return None if v is None else v.encode()

    def raw_put(k: str, v: str) -> None:
        reg.put_raw(k, v)

    return Harness(
        "memory",
        reg,
        raw_put,
        raw_get,
        reg.compact,
        reg.stop_serving,
        reg.resume,
        clock.advance,
        clock.time,
    )


def _etcd2(server: Any, monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setattr(etcd2, "WATCH_POLL", POLL)
    reg = EtcdV2Registry(EtcdOptions(endpoints=(server.url,), prefix=PREFIX))
    raw = etcd.Client(host="127.0.0.1", port=server.client_port, read_timeout=5)

    def raw_get(k: str) -> bytes | None:
        try:
            return str(raw.read(k).value).encode()
        except etcd.EtcdKeyNotFound:
            return None

    def compact() -> None:
        # v2 keeps the last 1000 events; push the watched ones out with writes elsewhere.
        for i in range(1010):
            raw.write("/pyflannel-test/churn", str(i))

    def raw_put(k: str, v: str) -> None:
        raw.write(k, v)

    return Harness(
        "etcd2", reg, raw_put, raw_get, compact, server.stop, server.start, _real_time, time.time
    )


def _etcd3(server: Any) -> Harness:
    reg = EtcdV3Registry(EtcdOptions(endpoints=(server.url,), prefix=PREFIX), watch_poll=POLL)
    raw = etcd3gw.client(host="127.0.0.1", port=server.client_port, timeout=5)

    def raw_get(k: str) -> bytes | None:
        values = raw.get(k.encode())
        return values[0] if values else None

    def compact() -> None:
        rev = int(raw.post(raw.get_url("/kv/range"), json={"key": "AA=="})["header"]["revision"])
        raw.post(raw.get_url("/kv/compaction"), json={"revision": rev, "physical": True})

    def raw_put(k: str, v: str) -> None:
        raw.put(k.encode(), v.encode())

    return Harness(
        "etcd3", reg, raw_put, raw_get, compact, server.stop, server.start, _real_time, time.time
    )


@pytest.fixture(params=["memory", "etcd2", "etcd3"])
def h(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    """The registry under test, with its harness; etcd ones get a fresh server each."""
    if request.param == "memory":
        harness = _memory()
    else:
        server = request.getfixturevalue("etcd")
        harness = _etcd2(server, monkeypatch) if request.param == "etcd2" else _etcd3(server)
    try:
        yield harness
    finally:
        harness.registry.close()


def kinds(events: list[LeaseEvent]) -> list[tuple[EventKind, SubnetKey | None]]:
    """(kind, subnet) of each event, for compact assertions."""
    return [(ev.kind, ev.subnet) for ev in events]


# --- config ------------------------------------------------------------------------------------


def test_config_absent_is_not_found_then_read_verbatim(h: Harness) -> None:
    """A missing config raises NotFound naming the key (and, for v3, the keyspace searched: a
    config written through the v2 API is invisible to v3); a stored one comes back verbatim."""
    with pytest.raises(NotFound, match=re.escape(f"{PREFIX}/config")) as info:
        h.registry.get_network_config()
    if h.name == "etcd3":
        assert "not found in the etcd v3 keyspace" in str(info.value)
    h.raw_put(f"{PREFIX}/config", CONFIG)
    assert h.registry.get_network_config() == CONFIG


# --- create / update / delete ------------------------------------------------------------------


def test_create_twice_raises_already_exists(h: Harness) -> None:
    """create_subnet is create-if-absent: the second one loses and changes nothing."""
    first = h.registry.create_subnet(S1, attrs(1), 60)
    with pytest.raises(AlreadyExists):
        h.registry.create_subnet(S1, attrs(2), 60)
    got = h.registry.get_subnet(S1)
    assert got is not None
    assert got.attrs == attrs(1)
    assert got.revision == first.revision > 0


def test_create_stores_exactly_the_lease_json(h: Harness) -> None:
    """What create_subnet stores is byte for byte LeaseAttrs.encode(), as flanneld writes it."""
    a = attrs(7)
    h.registry.create_subnet(S1, a, 60)
    assert h.raw_get(key(S1)) == a.encode().encode()
    assert h.raw_get(key(S1)) == (
        b'{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:00:00:07"}}'
    )


def test_concurrent_creates_have_exactly_one_winner(h: Harness) -> None:
    """N threads create the same subnet at once: one succeeds, N-1 get AlreadyExists."""
    n = 8
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def race(i: int) -> None:
        barrier.wait()
        try:
            results[i] = h.registry.create_subnet(S1, attrs(i + 1), 60)
        except AlreadyExists as exc:
            results[i] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [i for i, r in enumerate(results) if not isinstance(r, AlreadyExists)]
    assert len(winners) == 1, results
    assert sum(isinstance(r, AlreadyExists) for r in results) == n - 1
    stored = h.registry.get_subnet(S1)
    assert stored is not None
    assert stored.attrs == attrs(winners[0] + 1)


def test_update_sets_a_fresh_ttl_or_none(h: Harness) -> None:
    """update_subnet rewrites unconditionally: ttl > 0 expires then, ttl 0 never (reservation)."""
    created = h.registry.create_subnet(S1, attrs(1), 30)
    assert created.expiration is not None
    assert created.expiration == pytest.approx(h.now() + 30, abs=2)
    listed = h.registry.get_subnet(S1)
    assert listed is not None
    assert listed.expiration == pytest.approx(h.now() + 30, abs=2)

    reserved = h.registry.update_subnet(S1, attrs(2), 0)
    assert reserved.expiration is None
    got = h.registry.get_subnet(S1)
    assert got is not None
    assert (got.attrs, got.expiration, got.revision) == (attrs(2), None, reserved.revision)
    assert reserved.revision > created.revision

    renewed = h.registry.update_subnet(S1, attrs(2), 300)
    got = h.registry.get_subnet(S1)
    assert got is not None
    assert got.expiration == pytest.approx(h.now() + 300, abs=2)
    assert renewed.expiration == pytest.approx(h.now() + 300, abs=2)


def test_update_of_absent_key_creates_it(h: Harness) -> None:
    """An update needs no existing key (flanneld re-creates a lease it lost this way)."""
    lease = h.registry.update_subnet(S2, attrs(2), 60)
    got = h.registry.get_subnet(S2)
    assert got is not None
    assert got.attrs == attrs(2)
    assert got.revision == lease.revision


def test_delete_and_absent_keys(h: Harness) -> None:
    """delete removes; deleting or reading an absent key is not an error."""
    h.registry.create_subnet(S1, attrs(1), 60)
    h.registry.delete_subnet(S1)
    assert h.registry.get_subnet(S1) is None
    h.registry.delete_subnet(S1)
    assert h.registry.get_subnet(S3) is None


def test_get_subnet_with_garbage_value_is_none(h: Harness) -> None:
    """A lease key holding something that is not lease JSON reads as no lease."""
    h.raw_put(key(S1), "{not json")
    assert h.registry.get_subnet(S1) is None


# --- listing -----------------------------------------------------------------------------------


def test_list_returns_leases_with_revisions_and_skips_garbage(h: Harness) -> None:
    """Good leases come back with their revisions; garbage under subnets/ is INVALID, not fatal."""
    empty = h.registry.list_subnets()
    assert empty.leases == ()
    assert empty.invalid == ()
    a = h.registry.create_subnet(S1, attrs(1), 60)
    b = h.registry.create_subnet(S2, attrs(2), 0)
    h.raw_put(f"{PREFIX}/subnets/not-a-subnet", attrs(9).encode())
    h.raw_put(key(S3), "{bad json")
    h.raw_put(f"{PREFIX}/elsewhere", "ignored")  # outside subnets/: not listed at all

    snap = h.registry.list_subnets()
    by_subnet = {lease.key: lease for lease in snap.leases}
    assert set(by_subnet) == {S1, S2}
    assert (by_subnet[S1].attrs, by_subnet[S1].revision) == (attrs(1), a.revision)
    assert (by_subnet[S2].attrs, by_subnet[S2].revision) == (attrs(2), b.revision)
    assert by_subnet[S1].expiration is not None
    assert by_subnet[S2].expiration is None
    assert snap.revision >= b.revision > a.revision > empty.revision
    invalid = {ev.key: ev for ev in snap.invalid}
    assert set(invalid) == {f"{PREFIX}/subnets/not-a-subnet", key(S3)}
    assert all(ev.kind is EventKind.INVALID and ev.reason for ev in snap.invalid)
    assert invalid[key(S3)].subnet == S3


# --- dual stack and IPv6 only: keys of every shape in one keyspace ------------------------------

DUAL = SubnetKey(IPv4Network("10.5.34.0/24"), IPv6Network("fc00:0:0:22::/64"))
ONLY6 = SubnetKey(None, IPv6Network("fc00:0:0:23::/64"))
#: Exactly what flanneld v0.17 (over v2) and v0.18+ (over v3) write for a dual-stack node, as a
#: real Go toolchain encodes it (tests/unit/fixtures/go_ipv6_text.go).
FLANNELD_DUAL = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::5","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"7e:1a:8e:5b:29:aa"}}'
)
FLANNELD_ONLY6 = (
    '{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::6","BackendType":"vxlan",'
    '"BackendV6Data":{"VNI":1,"VtepMAC":"7e:1a:8e:5b:29:ab"}}'
)


def test_flanneld_dual_stack_and_ipv6_only_records_are_leases(h: Harness) -> None:
    """Records exactly as flanneld writes them (dual stack under ``v4&v6``, IPv6 only under
    ``0.0.0.0-0&v6``) list and watch as leases next to an IPv4-only one, byte-exact."""
    start = h.registry.list_subnets().revision
    h.raw_put(f"{PREFIX}/subnets/10.5.34.0-24&fc00:0:0:22::-64", FLANNELD_DUAL)
    h.raw_put(f"{PREFIX}/subnets/0.0.0.0-0&fc00:0:0:23::-64", FLANNELD_ONLY6)
    h.registry.create_subnet(S1, attrs(1), 60)
    snap = h.registry.list_subnets()
    assert snap.invalid == ()
    by_key = {lease.key: lease for lease in snap.leases}
    assert set(by_key) == {DUAL, ONLY6, S1}
    assert by_key[DUAL].exact and by_key[ONLY6].exact
    assert by_key[DUAL].attrs.encode() == FLANNELD_DUAL
    assert by_key[ONLY6].attrs.encode() == FLANNELD_ONLY6
    assert str(by_key[DUAL].attrs.public_ipv6) == "fd00::5"
    assert by_key[DUAL].attrs.v6_vtep_mac == "7e:1a:8e:5b:29:aa"
    events, _ = watch_until(h.registry, start, lambda evs: len(evs) >= 3)
    assert kinds(events) == [
        (EventKind.ADDED, DUAL),
        (EventKind.ADDED, ONLY6),
        (EventKind.ADDED, S1),
    ]


def test_dual_stack_lease_written_and_removed_by_its_whole_key(h: Harness) -> None:
    """create/get/update/delete of a dual-stack or IPv6-only key address that key, with
    flanneld's bytes, and never the IPv4-only key of the same IPv4 subnet."""
    dual = decode_attrs(FLANNELD_DUAL)
    h.registry.create_subnet(DUAL, dual, 60)
    h.registry.create_subnet(ONLY6, decode_attrs(FLANNELD_ONLY6), 60)
    assert h.raw_get(f"{PREFIX}/subnets/10.5.34.0-24&fc00:0:0:22::-64") == FLANNELD_DUAL.encode()
    assert h.raw_get(f"{PREFIX}/subnets/0.0.0.0-0&fc00:0:0:23::-64") == FLANNELD_ONLY6.encode()
    with pytest.raises(AlreadyExists):
        h.registry.create_subnet(DUAL, attrs(2), 60)
    h.registry.create_subnet(SubnetKey(DUAL.ipv4), attrs(2), 60)  # another key: CAS allows it
    got = h.registry.get_subnet(DUAL)
    assert got is not None and got.attrs == dual
    h.registry.update_subnet(DUAL, dual, 0)
    h.registry.delete_subnet(DUAL)
    assert h.registry.get_subnet(DUAL) is None
    assert {lease.key for lease in h.registry.list_subnets().leases} == {
        ONLY6,
        SubnetKey(DUAL.ipv4),
    }


# --- watching ----------------------------------------------------------------------------------


def test_watch_from_revision_sees_put_update_delete_and_garbage(h: Harness) -> None:
    """Changes after the watched revision arrive in order; garbage arrives as INVALID."""
    start = h.registry.list_subnets().revision
    created = h.registry.create_subnet(S1, attrs(1), 60)
    h.registry.update_subnet(S1, attrs(2), 60)
    h.raw_put(key(S2), "{bad json")
    h.registry.delete_subnet(S1)

    events, revision = watch_until(h.registry, start, lambda evs: len(evs) >= 4)
    assert kinds(events) == [
        (EventKind.ADDED, S1),
        (EventKind.ADDED, S1),
        (EventKind.INVALID, S2),
        (EventKind.REMOVED, S1),
    ]
    first, second = events[0].lease, events[1].lease
    assert first is not None
    assert second is not None
    assert (first.attrs, first.revision) == (attrs(1), created.revision)
    assert second.attrs == attrs(2)
    assert second.expiration is not None
    if second.expiration != EXPIRY_NOT_READ:  # v3 events say "has a TTL", not when it ends
        assert second.expiration == pytest.approx(h.now() + 60, abs=2)
    assert revision > second.revision > first.revision

    # Watching again from the last revision seen: nothing old comes back, new things do.
    h.registry.create_subnet(S3, attrs(3), 60)
    again, _ = watch_until(h.registry, revision, lambda evs: len(evs) >= 1)
    assert kinds(again) == [(EventKind.ADDED, S3)]


def test_quiet_watch_yields_empty_batches_and_honours_stop(h: Harness) -> None:
    """With nothing happening a watch still yields (empty batches), so stop is seen."""
    start = h.registry.list_subnets().revision
    stop = threading.Event()
    batches = h.registry.watch_subnets(start, stop)
    t0 = time.monotonic()
    first = next(iter(batches))
    assert first.events == ()
    assert first.revision >= start
    assert time.monotonic() - t0 < POLL + 2
    stop.set()
    assert list(batches) == []


@pytest.mark.timeout(30)
def test_ttl_expiry_is_a_removed_event_and_ttl_0_never_expires(h: Harness) -> None:
    """A lease whose TTL runs out disappears with a REMOVED event; a ttl-0 rewrite stays."""
    start = h.registry.list_subnets().revision
    h.registry.create_subnet(S2, attrs(2), 1)
    h.registry.update_subnet(S2, attrs(2), 0)  # detached from its TTL: now a reservation
    h.registry.create_subnet(S1, attrs(1), 1)
    h.pass_ttl(2)

    events, _ = watch_until(
        h.registry, start, lambda evs: (EventKind.REMOVED, S1) in kinds(evs), timeout=10
    )
    assert (EventKind.REMOVED, S2) not in kinds(events)
    assert h.registry.get_subnet(S1) is None
    kept = h.registry.get_subnet(S2)
    assert kept is not None
    assert kept.expiration is None
    # Gone means gone: it can be created again.
    h.registry.create_subnet(S1, attrs(3), 60)


def test_watch_from_compacted_revision_raises_compacted(h: Harness) -> None:
    """A watch from a revision older than the kept history raises Compacted (caller re-lists)."""
    old = h.registry.list_subnets().revision
    h.registry.create_subnet(S1, attrs(1), 60)
    h.registry.create_subnet(S2, attrs(2), 60)
    h.compact()
    with pytest.raises(Compacted):
        watch_until(h.registry, old, lambda evs: False, timeout=5)
    # Re-listing gives a revision that can be watched again.
    snap = h.registry.list_subnets()
    assert {lease.key for lease in snap.leases} == {S1, S2}
    h.registry.delete_subnet(S2)
    events, _ = watch_until(h.registry, snap.revision, lambda evs: len(evs) >= 1)
    assert kinds(events) == [(EventKind.REMOVED, S2)]


@pytest.mark.timeout(40)
def test_outage_ends_the_watch_promptly_and_it_resumes_from_its_revision(h: Harness) -> None:
    """etcd stopping mid-watch raises RegistryUnavailable at once (no hang); afterwards a watch
    from the last revision seen gets what was written in between, on the same registry object."""
    h.registry.create_subnet(S1, attrs(1), 60)
    start = h.registry.list_subnets().revision
    stop = threading.Event()
    seen = start
    outage_at: list[float] = []

    def outage() -> None:
        outage_at.append(time.monotonic())
        h.outage_begin()

    timer = threading.Timer(0.3, outage)
    timer.start()
    try:
        with pytest.raises(RegistryUnavailable):
            for batch in h.registry.watch_subnets(start, stop):
                seen = batch.revision
        raised_at = time.monotonic()
    finally:
        timer.join()
        stop.set()
    assert outage_at, "the watch ended before the outage began"
    assert raised_at - outage_at[0] < 3.0, "the watch noticed the outage too late"
    with pytest.raises(RegistryUnavailable):
        h.registry.list_subnets()

    h.outage_end()
    h.registry.create_subnet(S2, attrs(2), 60)
    h.registry.delete_subnet(S1)
    events, _ = watch_until(h.registry, seen, lambda evs: len(evs) >= 2)
    assert kinds(events) == [(EventKind.ADDED, S2), (EventKind.REMOVED, S1)]


def test_watch_keeps_up_with_a_burst(h: Harness) -> None:
    """A watch that is live when 1,200 leases are written by 4 writers at once sees every one
    and never falls into a re-list (v2 keeps only 1,000 events: a watch that took one request
    per event fell behind and got "event index cleared" at ~500 writes a second here)."""
    start = h.registry.list_subnets().revision
    h.raw_put(key(S1), attrs(1).encode())  # the watch below is live from this first event
    subnets = [SubnetKey(IPv4Network((0x0A500000 + (i << 8), 24))) for i in range(1200)]
    seen: list[LeaseEvent] = []
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            seen.extend(watch_until(h.registry, start, lambda evs: len(evs) > 1200, 60)[0])
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.3)

    def write(part: int) -> None:
        for s in subnets[part::4]:
            h.raw_put(key(s), attrs(2).encode())

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    watcher.join(90)
    assert errors == []
    assert {ev.subnet for ev in seen[1:]} == set(subnets)
