"""The daemon's plain counters (Stats), readiness, the /metrics rendering read back with
prometheus_client's own parser, and the waiting account behind the reminder lines; pure."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pyflannel import metrics
from pyflannel.retry import Waiting, duration
from pyflannel.stats import (
    KERNEL_FAILING_RECONCILES,
    KERNEL_FAILING_SECONDS,
    NOT_READY_TEXT,
    READY_TEXT,
    RECONCILE_BUCKETS,
    Stats,
)


def scrape(stats: Stats) -> dict[str, list[Sample]]:
    """The samples of one scrape, by family name, as Prometheus would parse them."""
    text = metrics.render(metrics.registry_for(stats)).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the sample *name* with exactly *labels*."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


# --- readiness ----------------------------------------------------------------------------


def test_not_ready_until_told_and_flanneld_bodies() -> None:
    """A new Stats is not ready ("starting"); the bodies start with flanneld's own texts."""
    s = Stats()
    assert s.readiness() == (False, f"{NOT_READY_TEXT}: starting")
    s.set_blocker("waiting for etcd: connection refused")
    assert s.readiness() == (False, f"{NOT_READY_TEXT}: waiting for etcd: connection refused")
    s.set_blocker(None)
    assert s.readiness() == (True, READY_TEXT)
    assert (NOT_READY_TEXT, READY_TEXT) == ("flanneld is not ready yet", "flanneld is ready")


def test_kernel_failing_needs_time_and_a_streak() -> None:
    """Failed reconciles make the daemon unready only after KERNEL_FAILING_SECONDS and
    KERNEL_FAILING_RECONCILES in a row; one that gets something through resets it."""
    s = Stats()
    s.set_blocker(None)
    s.reconcile_failed("replace_route 10.5.2.0/24: No such device (errno 19)")
    assert s.failing_since is not None
    t0 = s.failing_since
    late = t0 + KERNEL_FAILING_SECONDS + 1
    assert s.kernel_failing(late) is None  # one failure, however long ago
    for _ in range(KERNEL_FAILING_RECONCILES - 1):
        s.reconciled(0.01, applied=0, failed=3)  # nothing went through
    assert s.kernel_failing(t0 + 1) is None  # a streak, but a short one
    why = s.kernel_failing(late)
    assert why is not None and "3 kernel operations failed" in why
    ready, body = s.readiness(late)
    assert not ready and body.startswith(f"{NOT_READY_TEXT}: kernel failing: ")
    s.reconciled(0.01, applied=1, failed=2)  # partly through: the kernel works
    assert s.kernel_failing(late) is None
    assert s.readiness(late) == (True, READY_TEXT)
    assert s.kernel_op_failures == 3 * (KERNEL_FAILING_RECONCILES - 1) + 2
    assert s.reconcile_errors == 1


def test_empty_reconcile_is_a_success() -> None:
    """A reconcile with nothing to do ends a failing streak."""
    s = Stats()
    for _ in range(5):
        s.reconcile_failed("boom")
    s.reconciled(0.0001, applied=0, failed=0)
    assert s.failing_streak == 0 and s.failing_since is None


# --- the scrape ----------------------------------------------------------------------------


def test_scrape_parses_and_names_follow_conventions() -> None:
    """Every family parses with prometheus_client's parser, carries the pyflannel_ prefix
    (the process_ ones aside), and counters end in _total."""
    families = list(
        text_string_to_metric_families(metrics.render(metrics.registry_for(Stats())).decode())
    )
    names = {f.name: f.type for f in families}
    ours = {n: t for n, t in names.items() if not n.startswith("process_")}
    assert set(ours) == {
        "pyflannel_build_info",
        "pyflannel_ready",
        "pyflannel_peers_known",
        "pyflannel_peers_programmed",
        "pyflannel_kernel_entries",
        "pyflannel_reconcile_duration_seconds",
        "pyflannel_kernel_operation_failures",
        "pyflannel_reconcile_errors",
        "pyflannel_etcd_errors",
        "pyflannel_watch_relists",
        "pyflannel_etcd_contact_age_seconds",
    }
    assert "process_resident_memory_bytes" in names
    for f in families:
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name


def test_scrape_reports_the_counters() -> None:
    """What the hot paths counted comes out as samples with the right labels and values."""
    s = Stats("9.9.9", "v3")
    s.peers_known, s.peers_programmed = 12, 11
    s.kernel_entries = (11, 10, 9)
    s.etcd_error("http://10.0.1.2:2379")
    s.etcd_error("http://10.0.1.2:2379")
    s.etcd_error("http://10.0.1.3:2379")
    s.relisted("start")
    s.relisted("compacted")
    s.relisted("compacted")
    s.reconciled(0.0004, applied=30, failed=0)
    s.reconciled(0.2, applied=1, failed=2)
    s.reconciled(99.0, applied=0, failed=0)
    s.lease_expiry = 1_800_000_000.0
    s.set_blocker(None)
    s.started -= 5.0  # etcd never answered: the age counts from the start (a scrape rounds it
    # to milliseconds, so a scrape right after the start could read 0.0)
    got = scrape(s)
    info = got["pyflannel_build_info"][0]
    assert info.labels["version"] == "9.9.9" and info.labels["etcd_api"] == "v3"
    assert value(got["pyflannel_ready"], "pyflannel_ready") == 1
    assert value(got["pyflannel_peers_known"], "pyflannel_peers_known") == 12
    assert value(got["pyflannel_peers_programmed"], "pyflannel_peers_programmed") == 11
    entries = got["pyflannel_kernel_entries"]
    assert [value(entries, "pyflannel_kernel_entries", kind=k) for k in ("route", "neigh", "fdb")]
    assert value(entries, "pyflannel_kernel_entries", kind="route") == 11
    assert value(entries, "pyflannel_kernel_entries", kind="fdb") == 9
    errors = got["pyflannel_etcd_errors"]
    assert value(errors, "pyflannel_etcd_errors_total", endpoint="http://10.0.1.2:2379") == 2
    assert value(errors, "pyflannel_etcd_errors_total", endpoint="http://10.0.1.3:2379") == 1
    relists = got["pyflannel_watch_relists"]
    assert value(relists, "pyflannel_watch_relists_total", cause="start") == 1
    assert value(relists, "pyflannel_watch_relists_total", cause="compacted") == 2
    fails = got["pyflannel_kernel_operation_failures"]
    assert value(fails, "pyflannel_kernel_operation_failures_total") == 2
    expiry = got["pyflannel_lease_expiry_timestamp_seconds"]
    assert value(expiry, "pyflannel_lease_expiry_timestamp_seconds") == 1_800_000_000.0
    age = value(got["pyflannel_etcd_contact_age_seconds"], "pyflannel_etcd_contact_age_seconds")
    assert 5.0 <= age < 60.0


def test_histogram_buckets_are_cumulative() -> None:
    """The per-bucket counts kept as plain ints come out cumulative, with +Inf, count, sum."""
    s = Stats()
    for seconds in (0.0005, 0.001, 0.003, 0.3, 0.3, 20.0):
        s.reconciled(seconds, applied=1, failed=0)
    samples = scrape(s)["pyflannel_reconcile_duration_seconds"]
    name = "pyflannel_reconcile_duration_seconds_bucket"
    buckets = {float(x.labels["le"]): x.value for x in samples if x.name == name}
    assert sorted(buckets) == [*RECONCILE_BUCKETS, math.inf]
    assert buckets[0.001] == 2  # le is inclusive
    assert buckets[0.005] == 3
    assert buckets[0.25] == 3
    assert buckets[0.5] == 5
    assert buckets[10.0] == 5
    assert buckets[math.inf] == 6
    assert value(samples, "pyflannel_reconcile_duration_seconds_count") == 6
    total = value(samples, "pyflannel_reconcile_duration_seconds_sum")
    assert total == pytest.approx(20.6045)


def test_no_lease_expiry_for_a_reservation() -> None:
    """A reservation never expires: the expiry gauge is absent rather than a made-up value."""
    assert "pyflannel_lease_expiry_timestamp_seconds" not in scrape(Stats())


def test_contact_age_counts_from_start_until_etcd_answers() -> None:
    """Before etcd ever answered the age runs from start; etcd_ok() resets it."""
    s = Stats()
    assert s.etcd_contact_age(s.started + 42) == 42
    s.etcd_ok()
    assert s.etcd_contact is not None
    assert s.etcd_contact_age(s.etcd_contact + 3) == 3


# --- the waiting account ------------------------------------------------------------------


def test_waiting_reminds_once_a_period() -> None:
    """failed() says a reminder is due once per period, counting attempts meanwhile."""
    w = Waiting(period=60)
    due = [w.failed("connection refused", t) for t in range(0, 181)]
    assert [t for t, d in enumerate(due) if d] == [60, 120, 180]
    assert w.attempts == 181
    assert w.summary(181.0) == "attempt 181, 3m, last: connection refused"
    w.clear()
    assert w.attempts == 0 and w.waited(500.0) == 0
    assert not w.failed("again", 500.0)  # a new wait starts its own period
    assert w.failed("again", 560.0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (7500, "2h05m")]
)
def test_duration(seconds: float, text: str) -> None:
    """Waiting times as an operator reads them."""
    assert duration(seconds) == text
