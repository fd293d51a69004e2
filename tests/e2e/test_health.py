"""Operations as a monitoring system and systemd see them, with real daemons in the lab:
/healthz, /readyz, /metrics (parsed with prometheus_client's parser, counts checked against
the kernel), STATUS= and WATCHDOG=1 on a notify socket the test owns, and the reminder lines
of a daemon that waits.  Each test runs its own daemon on cell-3 (cell-1 and cell-2 are its
peers) and stops it at the end; both etcd APIs."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyflannel import __version__
from pyflannel.lab.topo import ETCD_URL, SEED_CONFIG, Cell, Lab, run

from .conftest import fdb, ip_json, lease_key, neighs

pytestmark = [pytest.mark.e2e]

#: The listener's port inside cell-3's namespace (its loopback: nothing else there).
PORT = 9471
OTHER_HOST = (
    '{"PublicIP":"10.0.2.200","BackendType":"vxlan","BackendData":'
    '{"VNI":1,"VtepMAC":"02:00:00:00:c8:01"}}'
)
_runs = iter(range(1000))


def wait(
    cond: Callable[[], object],
    timeout: float = 15.0,
    what: str = "condition",
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll until *cond()* is true; a timeout names *detail()* (what was seen last)."""
    try:
        Lab.wait(cond, timeout, what, interval=0.1)
    except TimeoutError as exc:
        if detail is None:
            raise
        raise TimeoutError(f"{exc}; last seen: {detail()}") from None


class Notify:
    """The service manager's end of $NOTIFY_SOCKET: a thread reads every datagram as it comes
    (as systemd does; the daemon drops what a full queue will not take), with the sender's
    PID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.seen: list[tuple[float, str, int | None]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading; close and remove the socket."""
        self._done.set()
        self._thread.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            self.seen.append((time.monotonic(), data.decode(), pid))

    def status(self) -> str:
        """The last STATUS= received so far."""
        for _, text, _ in reversed(list(self.seen)):
            for line in text.splitlines():
                if line.startswith("STATUS="):
                    return line.removeprefix("STATUS=")
        return ""

    def wait_status(self, pred: Callable[[str], bool], timeout: float = 15.0) -> str:
        """Wait until the last STATUS= satisfies *pred*; return it."""
        deadline = time.monotonic() + timeout
        while not pred(self.status()):
            assert time.monotonic() < deadline, f"STATUS= still {self.status()!r}"
            time.sleep(0.1)
        return self.status()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notify]:
    """A notify socket the test owns (a path: visible across network namespaces)."""
    n = Notify(tmp_path / "notify.sock")
    try:
        yield n
    finally:
        n.close()


class Run:
    """One daemon on cell-3 with the health listener on 127.0.0.1:PORT."""

    def __init__(self, lab: Lab, *extra: str, env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.cell: Cell = lab.cells[2]
        self.name = f"health-{next(_runs)}"
        self.dir = lab.workdir / self.name
        self.subnet_file = self.dir / "subnet.env"
        self.log = self.dir / "pyflannel.log"
        flags = {
            "--etcd-endpoints": ETCD_URL,
            "--etcd-api": lab.api,
            "--public-ip": str(self.cell.underlay_ip),
            "--subnet-file": str(self.subnet_file),
            "--resync-interval": "1",
            "--log-format": "json",
            "--healthz-ip": "127.0.0.1",
            "--healthz-port": str(PORT),
        }
        for arg in extra:
            key, _, value = arg.partition("=")
            flags[key] = value
        cmd = [sys.executable, "-m", "pyflannel", *(f"{k}={v}" for k, v in flags.items())]
        self.proc = lab.spawn(self.name, self.cell.ns, cmd, self.log, env=env)

    @property
    def pid(self) -> int:
        """The daemon's PID (``ip netns exec`` execs it in place)."""
        return self.proc.pid

    def http(self, path: str) -> tuple[int, str]:
        """Status and body of GET *path*, asked from inside the cell (0: no answer)."""
        res = run(
            "curl", "-s", "-m", "5", "-w", "\n%{http_code}", f"http://127.0.0.1:{PORT}{path}",
            ns=self.cell.ns, check=False,
        )  # fmt: skip
        body, _, code = res.stdout.rpartition("\n")
        return int(code or 0), body

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """/metrics parsed by prometheus_client: sample name -> labels -> value."""
        code, body = self.http("/metrics")
        assert code == 200, body
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(body + "\n"):
            for s in family.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines so far (no tracebacks allowed)."""
        text = self.log.read_text() if self.log.exists() else ""
        assert "Traceback" not in text, text
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def event(self, name: str) -> dict[str, object] | None:
        """The last log line of event *name*, if any."""
        found = [e for e in self.events() if e.get("event") == name]
        return found[-1] if found else None

    def wait_ready(self) -> str:
        """Wait for /readyz 200; return our subnet (from subnet.env)."""
        wait(lambda: self.http("/readyz") == (200, "flanneld is ready"), 30, "/readyz 200")
        env = dict(
            line.split("=", 1) for line in self.subnet_file.read_text().splitlines() if "=" in line
        )
        a, b, c, _ = env["FLANNEL_SUBNET"].split("/")[0].split(".")
        return f"{a}.{b}.{c}.0/24"

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 10 s); the exit code."""
        return self.lab.kill(self.name, signal.SIGTERM)


@pytest.fixture
def runs(lab: Lab) -> Iterator[list[Run]]:
    """The daemons a test starts; all stopped at its end, also when it fails."""
    started: list[Run] = []
    try:
        yield started
    finally:
        for r in started:
            r.stop()
            if r.log.exists():
                print(f"--- {r.name} log (tail) ---\n{r.log.read_text()[-3000:]}")


def one(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    """The value of the sample with exactly *labels*."""
    return samples[tuple(sorted(labels.items()))]


def wipe(lab: Lab, prefix: str) -> None:
    """Delete every key under *prefix*."""
    if lab.api == "v2":
        lab.etcdctl("rm", "-r", prefix)
    else:
        lab.etcdctl("del", "--prefix", prefix)


def kernel_counts(cell: Cell) -> tuple[int, int, int]:
    """(routes, neighbours, FDB remotes) on flannel.1, as ip and bridge list them."""
    routes = [r for r in ip_json(cell, "-4", "route", "show", "dev", "flannel.1")]
    ours = [r for r in routes if r.get("protocol") != "kernel"]
    return len(ours), len(neighs(cell)), len(fdb(cell))


def test_readyz_waits_for_the_config(lab: Lab, runs: list[Run], notify: Notify) -> None:
    """/healthz answers while the config is missing; /readyz is 503 saying so, the wait is
    recalled in the log and in STATUS=; once the config exists, 200 and READY=1."""
    prefix = "/health-cfg"
    env = {"NOTIFY_SOCKET": str(notify.path), "PYFLANNEL_WAIT_REMINDER": "1"}
    r = Run(lab, f"--etcd-prefix={prefix}", env=env)
    runs.append(r)
    try:
        wait(lambda: r.http("/healthz") == (200, "flanneld is running"), 20, "/healthz")
        code, body = r.http("/readyz")
        assert code == 503
        assert body.startswith("flanneld is not ready yet: waiting for the network config: ")
        assert f"{prefix}/config" in body
        wait(lambda: r.event("network_config_still_waiting"), 10, "a reminder line")
        reminder = r.event("network_config_still_waiting")
        assert reminder is not None and int(str(reminder["attempts"])) >= 2
        assert f"{prefix}/config" in str(reminder["problem"])
        status = notify.wait_status(lambda s: s.startswith("waiting for the network config"))
        assert "(attempt " in status and ", last: " in status
        assert one(r.metrics()["pyflannel_ready"]) == 0
        lab.put(f"{prefix}/config", json.dumps(SEED_CONFIG))
        subnet = r.wait_ready()
        notify.wait_status(lambda s: s.startswith("serving"))
        ready = [t for _, t, pid in notify.seen if "READY=1" in t.splitlines()]
        assert ready and ready[0].endswith(f"STATUS=serving {subnet}, 0 peers, etcd ok")
        assert one(r.metrics()["pyflannel_ready"]) == 1
        assert r.stop() == 0
    finally:
        wipe(lab, prefix)


def test_waiting_for_etcd_is_visible(lab: Lab, runs: list[Run], notify: Notify) -> None:
    """With etcd unreachable from the start: reminder lines with attempts and the problem,
    STATUS= "waiting for etcd (attempt …)", /readyz 503, errors counted for that endpoint."""
    dead = "http://10.0.1.2:1"
    env = {"NOTIFY_SOCKET": str(notify.path), "PYFLANNEL_WAIT_REMINDER": "1"}
    r = Run(lab, f"--etcd-endpoints={dead}", env=env)
    runs.append(r)
    wait(lambda: r.event("network_config_still_waiting"), 20, "a reminder line")
    wait(
        lambda: int(str((r.event("network_config_still_waiting") or {})["attempts"])) >= 3,
        10,
        "more attempts",
    )
    assert "unreachable" in str((r.event("network_config_still_waiting") or {})["problem"])
    status = notify.wait_status(lambda s: s.startswith("waiting for etcd (attempt "))
    assert "last: etcd unreachable" in status
    code, body = r.http("/readyz")
    assert code == 503 and body.startswith("flanneld is not ready yet: waiting for etcd: ")
    m = r.metrics()
    assert one(m["pyflannel_etcd_errors_total"], endpoint=dead) >= 3
    assert one(m["pyflannel_etcd_contact_age_seconds"]) >= 1
    assert r.stop() == 0


def test_metrics_match_the_kernel(lab: Lab, runs: list[Run]) -> None:
    """Peer counts and kernel entries in /metrics equal what ip and bridge show on cell-3,
    also after a peer comes and goes; the lease expiry and build info are there."""
    r = Run(lab)
    runs.append(r)
    r.wait_ready()

    last: list[object] = []

    def agree(peers: int) -> bool:
        m = r.metrics()
        entries = m["pyflannel_kernel_entries"]
        seen = tuple(int(one(entries, kind=k)) for k in ("route", "neigh", "fdb"))
        known, programmed = one(m["pyflannel_peers_known"]), one(m["pyflannel_peers_programmed"])
        last[:] = [known, programmed, seen, kernel_counts(r.cell)]  # for the failure message
        return known == programmed == peers and seen == (peers, peers, peers) == last[3]

    wait(lambda: agree(2), 15, "metrics = kernel with cell-1 and cell-2", detail=lambda: last)
    m = r.metrics()
    info = next(iter(m["pyflannel_build_info"]))
    assert dict(info)["version"] == __version__ and dict(info)["etcd_api"] == lab.api
    expiry = one(m["pyflannel_lease_expiry_timestamp_seconds"])
    assert abs(expiry - (time.time() + 86400)) < 300
    assert one(m["pyflannel_reconcile_duration_seconds_count"]) >= 1
    assert one(m["pyflannel_etcd_contact_age_seconds"]) < 30
    assert one(m["process_resident_memory_bytes"]) > 0
    # Above SubnetMax: a subnet no cell of the lab ever leases (172.16.77.0/24, once used
    # here, was now and then cell-1's own lease, which the test then rewrote and deleted).
    key = lease_key("172.16.177.0/24")
    lab.put(key, OTHER_HOST.replace("10.0.2.200", "10.0.2.77"))
    try:
        wait(lambda: agree(3), 15, "metrics = kernel with a third peer", detail=lambda: last)
    finally:
        lab.delete(key)
    wait(lambda: agree(2), 15, "metrics = kernel once it left", detail=lambda: last)


def test_etcd_outage_keeps_readiness(lab: Lab, runs: list[Run], notify: Notify) -> None:
    """etcd going away does not make a serving daemon unready (the kernel keeps the peers);
    the outage is recalled in the log and STATUS=, and counted per endpoint."""
    env = {"NOTIFY_SOCKET": str(notify.path), "PYFLANNEL_WAIT_REMINDER": "1"}
    r = Run(lab, env=env)
    runs.append(r)
    subnet = r.wait_ready()
    notify.wait_status(lambda s: s == f"serving {subnet}, 2 peers, etcd ok")
    lab.kill("etcd", signal.SIGTERM)
    try:
        wait(lambda: r.event("etcd_still_unavailable"), 20, "a reminder line")
        status = notify.wait_status(lambda s: "etcd unreachable (attempt " in s)
        assert status.startswith(f"serving {subnet}, 2 peers, etcd unreachable (attempt ")
        assert r.http("/readyz") == (200, "flanneld is ready")
        m = r.metrics()
        assert one(m["pyflannel_etcd_errors_total"], endpoint=ETCD_URL) >= 1
        assert one(m["pyflannel_etcd_contact_age_seconds"]) >= 1
    finally:
        lab.start_etcd(fresh=False)
    notify.wait_status(lambda s: s == f"serving {subnet}, 2 peers, etcd ok", 30)


def test_lease_taken_by_another_host(lab: Lab, runs: list[Run], notify: Notify) -> None:
    """Another host's lease written over ours: /readyz 503 naming it, STATUS= too, /healthz
    still answering while the daemon lingers, then exit 1 (v2: on its own after the linger;
    v3: at once on SIGTERM)."""
    # A shorter linger than the 30 s default: the test needs a few seconds of it.
    env = {"NOTIFY_SOCKET": str(notify.path), "PYFLANNEL_LEASE_TAKEN_LINGER": "6"}
    r = Run(lab, env=env)
    runs.append(r)
    subnet = r.wait_ready()
    lab.put(lease_key(subnet), OTHER_HOST)
    try:
        reason = f"lease {subnet} taken by 10.0.2.200"
        wait(lambda: r.http("/readyz") == (503, f"flanneld is not ready yet: {reason}"), 15)
        notify.wait_status(lambda s: s.startswith(reason))
        taken = r.event("lease_taken")
        assert taken is not None and taken["by"] == "10.0.2.200"
        time.sleep(2)
        assert r.proc.poll() is None and r.http("/healthz")[0] == 200
        if lab.api == "v2":
            assert lab.wait_exit(r.name, 45) == 1
        else:
            started = time.monotonic()
            assert r.stop() == 1
            assert time.monotonic() - started < 5
        fatal = r.event("fatal")
        assert fatal is not None and "10.0.2.200" in str(fatal["error"])
    finally:
        lab.delete(lease_key(subnet))


def test_watchdog_pings_only_while_the_loop_runs(lab: Lab, runs: list[Run], notify: Notify) -> None:
    """With $WATCHDOG_USEC, WATCHDOG=1 comes from the daemon's PID about every half interval;
    once the main loop is wedged (the test hook) none comes, though /healthz still answers
    (which is why the watchdog is there)."""
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "1000000",
        "PYFLANNEL_TEST_WEDGE_AFTER": "4",
    }
    r = Run(lab, env=env)
    runs.append(r)
    r.wait_ready()
    wait(lambda: r.event("test_wedge"), 20, "the loop wedged")
    wedged_at = time.monotonic()
    time.sleep(3.0)
    pings = [(t, pid) for t, text, pid in notify.seen if text == "WATCHDOG=1"]
    before = [t for t, _ in pings if t < wedged_at - 1]
    assert len(before) >= 4, pings
    assert {pid for _, pid in pings} == {r.pid}
    gaps = [b - a for a, b in itertools.pairwise(before)]
    assert max(gaps) < 1.0, gaps  # half of WATCHDOG_USEC, with slack
    assert not [t for t, _ in pings if t > wedged_at + 0.5], "pinged while wedged"
    assert r.http("/healthz") == (200, "flanneld is running")
    assert r.stop() == 0
