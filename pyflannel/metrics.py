"""``/metrics``: a :class:`~pyflannel.stats.Stats` in Prometheus text format, rendered by
``prometheus_client`` at scrape time.

The daemon's hot paths only touch plain ints in Stats; this module, and with it
prometheus_client, is imported only when the health listener is on (``--healthz-port``).  A
scrape costs O(1) in the number of peers: every value is a counter or a count kept as the
daemon goes (the kernel entries by the mirror's folds), never a scan.

Names follow Prometheus conventions: the ``pyflannel_`` prefix, units in the name, ``_total``
for counters (which prometheus_client appends), ``_timestamp_seconds`` for points in time.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pyflannel.stats import RECONCILE_BUCKETS, Stats

__all__ = ["CONTENT_TYPE", "StatsCollector", "registry_for", "render"]

#: The Content-Type of a scrape: the classic text format, which generate_latest writes (newer
#: prometheus_client versions call it CONTENT_TYPE_PLAIN_0_0_4; older ones lack the name).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_KINDS = ("route", "neigh", "fdb")


class StatsCollector(Collector):
    """Reads one Stats at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        """Nothing: the registry must not call :meth:`collect` just to learn the names."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """Every pyflannel metric, as it is now."""
        s = self._stats
        yield InfoMetricFamily(
            "pyflannel_build",
            "pyflannel's version, the etcd API in use and the Python that runs it.",
            value={
                "version": s.version,
                "etcd_api": s.etcd_api,
                "python": platform.python_version(),
            },
        )
        ready, _ = s.readiness()
        yield GaugeMetricFamily("pyflannel_ready", "1 when /readyz answers 200.", int(ready))
        yield GaugeMetricFamily(
            "pyflannel_peers_known",
            "Leases of other hosts known from etcd (records that do not decode excluded).",
            s.peers_known,
        )
        yield GaugeMetricFamily(
            "pyflannel_peers_programmed",
            "Peers whose entries are wanted in the kernel (a lease refused as unsafe is not).",
            s.peers_programmed,
        )
        entries = GaugeMetricFamily(
            "pyflannel_kernel_entries",
            "Entries the kernel holds on the VXLAN device, by kind (as its notifications say).",
            labels=["kind"],
        )
        for kind, count in zip(_KINDS, s.kernel_entries, strict=True):
            entries.add_metric([kind], count)
        yield entries
        yield _histogram(s)
        yield CounterMetricFamily(
            "pyflannel_kernel_operation_failures",
            "Netlink operations the kernel refused (retried at the next resync).",
            s.kernel_op_failures,
        )
        yield CounterMetricFamily(
            "pyflannel_reconcile_errors",
            "Reconciles that stopped on an error before finishing.",
            s.reconcile_errors,
        )
        yield _by_label(
            "pyflannel_etcd_errors",
            "Failed requests to etcd, by endpoint (unreachable, timed out, refused, bad answer).",
            "endpoint",
            s.etcd_errors(),
        )
        yield _by_label(
            "pyflannel_watch_relists",
            "Full listings of the leases by the watch, by cause (start: its own first listing, "
            "0 when it goes on from the lease acquisition's; compacted: history lost).",
            "cause",
            s.relists(),
        )
        if s.lease_expiry is not None:
            yield GaugeMetricFamily(
                "pyflannel_lease_expiry_timestamp_seconds",
                "When our lease expires unless renewed (unix time; absent for a reservation).",
                s.lease_expiry,
            )
        yield GaugeMetricFamily(
            "pyflannel_etcd_contact_age_seconds",
            "Seconds since etcd last answered (since start if it never did).",
            round(s.etcd_contact_age(), 3),
        )


def _by_label(name: str, doc: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _histogram(s: Stats) -> HistogramMetricFamily:
    counts = list(s.reconcile_buckets)  # one copy: buckets and count agree
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*RECONCILE_BUCKETS, float("inf")), counts, strict=True):
        total += count
        buckets.append(("+Inf" if math.isinf(bound) else repr(bound), total))
    return HistogramMetricFamily(
        "pyflannel_reconcile_duration_seconds",
        "Time to plan and apply one reconcile (an event, a resync step, the start).",
        buckets=buckets,
        sum_value=s.reconcile_seconds,
    )


def registry_for(stats: Stats) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) with *stats* and the
    process's standard metrics (resident memory, CPU, open files, start time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The scrape's body."""
    return generate_latest(registry)
