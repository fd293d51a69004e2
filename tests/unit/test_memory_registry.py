"""The in-memory registry's own controls; its Registry behaviour is in tests/contract."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.errors import Compacted, RegistryUnavailable
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import EventKind, LeaseAttrs
from pyflannel.testing import FakeClock, MemoryRegistry, watch_until

S1 = SubnetKey(IPv4Network("10.5.1.0/24"))
A1 = LeaseAttrs(IPv4Address("192.0.2.1"), "vxlan", "aa:bb:cc:00:00:01", 1)


def test_history_is_bounded_like_etcd_v2() -> None:
    """Once a change falls out of the bounded history, watching from before it is Compacted."""
    reg = MemoryRegistry(history=10, heartbeat=0.05)
    start = reg.revision
    for i in range(10):
        reg.put_raw("/elsewhere", str(i))
    watch_until(reg, start, lambda evs: True)  # exactly 10 changes kept: still watchable
    reg.put_raw("/elsewhere", "one too many")
    with pytest.raises(Compacted):
        watch_until(reg, start, lambda evs: True)
    watch_until(reg, start + 1, lambda evs: True)


def test_compact_keeps_the_given_revision_watchable_like_etcd_v3() -> None:
    """compact(R) forgets revisions below R: watching after R-1 works, after R-2 does not."""
    reg = MemoryRegistry(heartbeat=0.05)
    for _ in range(3):
        reg.put_raw("/elsewhere", "x")
    rev = reg.revision
    reg.compact(rev)
    watch_until(reg, rev - 1, lambda evs: True)
    with pytest.raises(Compacted):
        watch_until(reg, rev - 2, lambda evs: True)
    with pytest.raises(ValueError, match="future"):
        reg.compact(rev + 1)


def test_ttl_follows_the_injected_clock_only() -> None:
    """Real time does not expire a lease; advancing the fake clock does, as its own change."""
    clock = FakeClock()
    reg = MemoryRegistry(clock=clock, heartbeat=0.05)
    lease = reg.create_subnet(S1, A1, 10)
    assert lease.expiration == clock.time() + 10
    time.sleep(0.1)
    assert reg.get_subnet(S1) is not None
    clock.advance(9.5)
    got = reg.get_subnet(S1)
    assert got is not None
    assert got.expiration == pytest.approx(clock.time() + 0.5)
    clock.advance(0.5)
    assert reg.get_subnet(S1) is None
    assert reg.revision == lease.revision + 1
    with pytest.raises(ValueError, match="backward"):
        clock.advance(-1)


def test_stop_serving_wakes_a_blocked_watch_at_once() -> None:
    """A watch waiting for changes fails as soon as the outage begins, not at its next beat."""
    reg = MemoryRegistry(heartbeat=30)
    stop = threading.Event()
    batches = reg.watch_subnets(reg.revision, stop)
    threading.Timer(0.1, reg.stop_serving).start()
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        next(batches)
    assert time.monotonic() - t0 < 1
    reg.resume()
    reg.create_subnet(S1, A1, 0)
    events, _ = watch_until(reg, 1, lambda evs: len(evs) >= 1)
    assert events[0].kind is EventKind.ADDED
