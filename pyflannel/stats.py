"""The daemon's own numbers and its readiness, as plain Python ints and floats.

The hot paths (every reconcile, every etcd failure, every listing) update a :class:`Stats`
at the cost of an attribute store or an integer addition: no metrics library object is
touched there, and none is even imported unless the health listener is on (then
:mod:`pyflannel.metrics` reads a Stats at scrape time).  Pure: no I/O.

Threads: the main thread, the watch thread and the registries' callers write; the health
listener's thread only reads.  A single store or ``+=`` on an attribute is enough for what a
scrape needs (a torn read shows a count one step old); the two dicts keyed by outside text
(etcd endpoint, re-list cause) change under a lock, since a new key resizes the dict.

Readiness (``/readyz``): not ready until the lease is held, subnet.env written and the first
reconcile done (:meth:`Stats.set_blocker` names what is missing); afterwards not ready while
the lease is lost or taken, or while the kernel is *persistently failing*: every reconcile for
at least :data:`KERNEL_FAILING_SECONDS` and :data:`KERNEL_FAILING_RECONCILES` in a row raised,
or had operations to do and got none of them through.  An unreachable etcd alone does not
make the daemon unready: the kernel keeps the last known peers and traffic flows.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left

#: Upper bounds (seconds) of the reconcile duration histogram's buckets; +Inf is implied.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The kernel counts as persistently failing after this long with no successful reconcile...
KERNEL_FAILING_SECONDS = 30.0
#: ...and at least this many failed reconciles in a row.
KERNEL_FAILING_RECONCILES = 3
#: Causes of a full re-list of the leases by the watch (each exported, zero until it happens).
RELIST_CAUSES = ("start", "compacted")
#: /readyz's bodies: flanneld's, so that probes written for it match (a reason follows ours).
READY_TEXT = "flanneld is ready"
NOT_READY_TEXT = "flanneld is not ready yet"


class Stats:
    """Counters and gauges of one daemon (see the module docstring)."""

    def __init__(self, version: str = "", etcd_api: str = "") -> None:
        self.version = version
        self.etcd_api = etcd_api
        self.started = time.monotonic()
        # Peers: leases of other hosts known from etcd; peers whose entries are wanted.
        self.peers_known = 0
        self.peers_programmed = 0
        # Entries the kernel holds on our device: (routes, neighbours, FDB remotes).
        self.kernel_entries = (0, 0, 0)
        # Reconcile durations: per-bucket (not cumulative) counts, the last one is +Inf.
        self.reconcile_buckets = [0] * (len(RECONCILE_BUCKETS) + 1)
        self.reconcile_seconds = 0.0
        self.kernel_op_failures = 0
        self.reconcile_errors = 0  # reconciles that raised (KernelError, etcd during a repair)
        # Consecutive failed reconciles and when the first of them happened (monotonic).
        self.failing_streak = 0
        self.failing_since: float | None = None
        self.last_failure = ""
        # Our lease's expiry (unix seconds; None: no lease yet, or a reservation).
        self.lease_expiry: float | None = None
        # Last time etcd answered (monotonic; None: never).
        self.etcd_contact: float | None = None
        self._lock = threading.Lock()
        self._etcd_errors: dict[str, int] = {}
        self._relists: dict[str, int] = dict.fromkeys(RELIST_CAUSES, 0)
        # Why we are not ready (None: nothing in the way).
        self.blocker: str | None = "starting"

    # --- updates (hot paths: keep them trivial) --------------------------------------------

    def reconciled(self, seconds: float, applied: int, failed: int) -> None:
        """One reconcile took *seconds*; *applied* operations went through, *failed* did not."""
        self.reconcile_buckets[bisect_left(RECONCILE_BUCKETS, seconds)] += 1
        self.reconcile_seconds += seconds
        if failed:
            self.kernel_op_failures += failed
            if not applied:
                self._failed(f"{failed} kernel operations failed")
                return
        self.failing_streak = 0
        self.failing_since = None

    def reconcile_failed(self, error: str) -> None:
        """A reconcile raised *error* before it could finish."""
        self.reconcile_errors += 1
        self._failed(error)

    def _failed(self, why: str) -> None:
        self.failing_streak += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_failure = why

    def etcd_error(self, endpoint: str) -> None:
        """A request to *endpoint* failed (unreachable, timed out, refused, bad answer)."""
        with self._lock:
            self._etcd_errors[endpoint] = self._etcd_errors.get(endpoint, 0) + 1

    def etcd_ok(self) -> None:
        """etcd answered (a listing, a watch batch or heartbeat, a write, "key not found")."""
        self.etcd_contact = time.monotonic()

    def relisted(self, cause: str) -> None:
        """The watch listed every lease again, because of *cause* (see RELIST_CAUSES)."""
        with self._lock:
            self._relists[cause] = self._relists.get(cause, 0) + 1

    def set_blocker(self, reason: str | None) -> None:
        """What keeps the daemon from being ready (None: nothing)."""
        self.blocker = reason

    # --- reads (the health listener's thread) ----------------------------------------------

    @property
    def reconciles(self) -> int:
        """How many reconciles were timed."""
        return sum(self.reconcile_buckets)

    def etcd_errors(self) -> dict[str, int]:
        """Failed requests by endpoint."""
        with self._lock:
            return dict(self._etcd_errors)

    def relists(self) -> dict[str, int]:
        """Full re-lists by cause."""
        with self._lock:
            return dict(self._relists)

    def etcd_contact_age(self, now: float | None = None) -> float:
        """Seconds since etcd last answered (since start if it never did)."""
        now = time.monotonic() if now is None else now
        return now - (self.etcd_contact if self.etcd_contact is not None else self.started)

    def kernel_failing(self, now: float | None = None) -> str | None:
        """Why the kernel counts as persistently failing now, or None."""
        since = self.failing_since
        if since is None or self.failing_streak < KERNEL_FAILING_RECONCILES:
            return None
        now = time.monotonic() if now is None else now
        if now - since < KERNEL_FAILING_SECONDS:
            return None
        return (
            f"kernel failing: {self.failing_streak} reconciles in a row over "
            f"{now - since:.0f} s, last: {self.last_failure}"
        )

    def readiness(self, now: float | None = None) -> tuple[bool, str]:
        """(ready, body) for ``/readyz``."""
        why = self.blocker or self.kernel_failing(now)
        if why is None:
            return True, READY_TEXT
        return False, f"{NOT_READY_TEXT}: {why}"


__all__ = [
    "KERNEL_FAILING_RECONCILES",
    "KERNEL_FAILING_SECONDS",
    "NOT_READY_TEXT",
    "READY_TEXT",
    "RECONCILE_BUCKETS",
    "RELIST_CAUSES",
    "Stats",
]
