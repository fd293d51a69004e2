"""The daemon's lease keeping while etcd is away: one line per loss, one per failed try, and
no etcd call before the backoff says so (the main loop passes here on every event)."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from pyflannel.daemon import Daemon
from pyflannel.options import DaemonOptions
from pyflannel.retry import Backoff
from pyflannel.subnet import LeaseManager
from pyflannel.testing import MemoryRegistry

from .test_lease_manager import CFG, ME, MY_ATTRS


def daemon(registry: MemoryRegistry) -> Daemon:
    """A daemon holding its lease on *registry*, as after start-up (no kernel needed here)."""
    d = Daemon(DaemonOptions(), registry, nl=None)  # type: ignore[arg-type]
    d.attrs = MY_ATTRS
    d.manager = LeaseManager(registry, ME)
    d.lease = d.manager.acquire(CFG, MY_ATTRS)
    return d


def events(logs: list[dict[str, Any]], name: str) -> int:
    """How many lines named *name*."""
    return sum(1 for e in logs if e["event"] == name)


def test_lost_lease_during_an_outage_is_said_once_and_retried_after_the_backoff() -> None:
    """A deleted lease with etcd away: one lease_lost, one failed try per backoff period however
    often the loop comes by; once etcd is back and the backoff over, the lease is back."""
    registry = MemoryRegistry()
    d = daemon(registry)
    registry.delete_subnet(d.lease.key)
    registry.stop_serving()
    d._own.gone = True
    backoff = Backoff(initial=30.0, maximum=60.0)
    with capture_logs() as logs:
        for _ in range(200):
            d._keep_lease(backoff)
    assert (events(logs, "lease_lost"), events(logs, "lease_reacquire_failed")) == (1, 1)
    registry.resume()
    with capture_logs() as logs:
        d._keep_lease(backoff)  # still inside the backoff: nothing tried
        assert events(logs, "lease_reacquired") == 0
        d._lease_retry_at = 1.0  # the backoff has passed
        d._keep_lease(backoff)
    assert events(logs, "lease_reacquired") == 1
    assert registry.get_subnet(d.lease.key) is not None
    assert events(logs, "lease_lost") == 0


def test_failed_renewal_is_retried_after_the_backoff_only() -> None:
    """Our key rewritten (stale) with etcd away: one lease_renew_failed per backoff period."""
    registry = MemoryRegistry()
    d = daemon(registry)
    registry.stop_serving()
    d._own.stale = True
    backoff = Backoff(initial=30.0, maximum=60.0)
    with capture_logs() as logs:
        for _ in range(200):
            d._keep_lease(backoff)
    assert events(logs, "lease_renew_failed") == 1
