"""Measure pyflannel at scale: N peer leases, the real ``pyflannel`` process, real etcd.

Topology (all in namespaces named ``pfs<pid>-…``, removed at the end, also on error or Ctrl-C):
an etcd namespace and a cell namespace joined by a veth (192.168.0.1/16 and 192.168.0.2/16);
peers' public IPs are unicast addresses of that /16 (never sent any traffic).  For each API
(v2 and v3 by default, one fresh etcd each) and each N, it writes N leases in flanneld's exact
form (v2: with a TTL through the v2 API; v3: each key on its own etcd lease, as flanneld does),
starts ``.venv/bin/pyflannel`` in the cell and prints:

1. start -> ready (the ``ready`` log event) and -> all 3N kernel entries present: the first
   ``reconciled`` line (logged after the kernel acknowledged every write) when a count right
   after ready finds them all, else the count that does;
2. the same entries written with ``ip -batch`` + ``bridge -batch`` in a fresh namespace, and
   the ratio;
3. event latency: single adds and deletes, one at a time, from the etcd client call returning
   to the kernel's RTM_NEWROUTE/RTM_DELROUTE notification (raw netlink socket in the cell);
4. CPU per idle resync (``/proc/PID/stat``), 5. RSS after ready and after the events,
6. drift repair (``ip route del`` -> route back), 7. re-list after the watch fell behind
   (v3: watch connection cut while SIGSTOPped + compaction; v2: > 1000 events behind).

Run as root: ``.venv/bin/python bench/scale.py [--peers 1000 10000] [--api v2 v3] [--quick]``.
``--dual --start-only``: the same start with a dual-stack network (an IPv6Network in the config,
an IPv6 address on the cell's eth0, every lease dual-stack in flanneld's form), so 3N entries on
``flannel.1`` and 3N on ``flannel-v6.1``; its baseline writes both sets with ip/bridge -batch.
Prints figures and a Markdown summary; asserts nothing.  Uses only the daemon's CLI, its JSON
logs and the kernel, so it works against any daemon that keeps those.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pyflannel.lab.topo import remove_prefixed

ETCD_IP = "192.168.0.1"
CELL_IP = "192.168.0.2"
UNDERLAY_LEN = 16
ETCD_URL = f"http://{ETCD_IP}:2379"
PREFIX = "/coreos.com/network"
NETWORK = ipaddress.IPv4Network("10.128.0.0/9")
FIRST_SUBNET = int(ipaddress.IPv4Address("10.128.1.0"))
CONFIG = {
    "Network": str(NETWORK),
    "SubnetLen": 24,
    "SubnetMin": "10.128.1.0",
    "SubnetMax": "10.255.254.0",
    "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472},
}
NETWORK6 = ipaddress.IPv6Network("fd80::/48")
CELL_IP6 = "fd99::2"
VNI = 1
DEV = f"flannel.{VNI}"
DEV6 = f"flannel-v6.{VNI}"
LEASE_TTL = 86400
PYFLANNEL = Path(sys.executable).parent / "pyflannel"
# Another daemon build or a wrapper (a profiler) can be measured the same way.
DAEMON_CMD = shlex.split(os.environ.get("PYFLANNEL_BENCH_DAEMON", "")) or [str(PYFLANNEL)]

RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTNLGRP_IPV4_ROUTE = 7
CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = 33

_libc = ctypes.CDLL(None, use_errno=True)


# --- helpers -----------------------------------------------------------------------------------


def sh(*cmd: str, check: bool = True, stdin: str | None = None) -> str:
    """Run *cmd*; its stdout."""
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at *path*."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block (this thread) inside netns *ns*; sockets made there stay there."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(f"/var/run/netns/{ns}")
        yield
    finally:
        if _libc.setns(back, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back")
        os.close(back)


def subnet_of(i: int) -> ipaddress.IPv4Network:
    """Peer *i*'s /24 (10.128.1.0/24 onwards)."""
    return ipaddress.IPv4Network((FIRST_SUBNET + i * 256, 24))


def public_ip_of(i: int) -> str:
    """Peer *i*'s public IP: 192.168.1.1 onwards, inside the veth's /16, never .0 or .255."""
    return f"192.168.{1 + i // 250}.{1 + i % 250}"


def mac_of(i: int) -> str:
    return f"02:00:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def subnet6_of(i: int) -> ipaddress.IPv6Network:
    """Peer *i*'s IPv6 /64 (fd80:0:0:1::/64 onwards)."""
    return ipaddress.IPv6Network((int(NETWORK6.network_address) + ((i + 1) << 64), 64))


def public_ipv6_of(i: int) -> str:
    """Peer *i*'s PublicIPv6: inside the cell's eth0 /64 (never sent any traffic)."""
    return str(ipaddress.IPv6Address(f"fd99::{i + 16:x}"))


def mac6_of(i: int) -> str:
    return f"06:00:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def lease_value(i: int, dual: bool = False) -> str:
    """flanneld's exact lease JSON for peer *i* (dual stack: with its IPv6 half)."""
    value: dict[str, Any] = {
        "PublicIP": public_ip_of(i),
        "PublicIPv6": public_ipv6_of(i) if dual else None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": VNI, "VtepMAC": mac_of(i)},
    }
    if dual:
        value["BackendV6Data"] = {"VNI": VNI, "VtepMAC": mac6_of(i)}
    return json.dumps(value, separators=(",", ":"))


def lease_key(net: ipaddress.IPv4Network, net6: ipaddress.IPv6Network | None = None) -> str:
    key = f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"
    if net6 is not None:
        key += f"&{net6.network_address}-{net6.prefixlen}"
    return key


def peer_key(i: int, dual: bool) -> str:
    """Peer *i*'s etcd key (dual stack: both halves, as flanneld names them)."""
    return lease_key(subnet_of(i), subnet6_of(i) if dual else None)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    return (
        f"median {ms(statistics.median(xs))}  p99 {ms(pct(xs, 99))}  max {ms(max(xs))}  "
        f"(n={len(xs)})"
    )


# --- etcd over HTTP (v2 keys API and the v3 JSON gateway) ---------------------------------------


class Etcd:
    """Minimal etcd client on requests; one session per thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    @property
    def s(self) -> requests.Session:
        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
        return self._local.s

    def _v3(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.s.post(f"{self.url}/v3/{path}", json=body, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"etcd v3 {path}: {r.status_code} {r.text[:200]}")
        out: dict[str, Any] = r.json()
        return out

    def put(self, api: str, key: str, value: str, lease: int | None = None) -> None:
        if api == "v2":
            data: dict[str, Any] = {"value": value}
            if lease is not None:
                data["ttl"] = LEASE_TTL
            r = self.s.put(f"{self.url}/v2/keys{key}", data=data, timeout=30)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"etcd v2 put {key}: {r.status_code} {r.text[:200]}")
        else:
            body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
            if lease is not None:
                body["lease"] = lease
            self._v3("kv/put", body)

    def delete(self, api: str, key: str) -> None:
        if api == "v2":
            r = self.s.delete(f"{self.url}/v2/keys{key}", timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"etcd v2 delete {key}: {r.status_code} {r.text[:200]}")
        else:
            self._v3("kv/deleterange", {"key": b64(key)})

    def grant(self) -> int:
        return int(self._v3("lease/grant", {"TTL": LEASE_TTL})["ID"])

    def txn_puts(self, items: list[tuple[str, str, int]]) -> None:
        ops = [
            {"request_put": {"key": b64(k), "value": b64(v), "lease": lease}}
            for k, v, lease in items
        ]
        self._v3("kv/txn", {"success": ops})

    def revision(self) -> int:
        res = self._v3("kv/range", {"key": b64("/"), "count_only": True})
        return int(res["header"]["revision"])

    def compact(self, revision: int) -> None:
        self._v3("kv/compaction", {"revision": revision, "physical": True})


# --- the kernel: netlink notifications and counts -----------------------------------------------


class RouteListener:
    """RTM_NEWROUTE/RTM_DELROUTE of one namespace, time-stamped on arrival by a thread."""

    def __init__(self, ns: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self.sock.bind((0, 1 << (RTNLGRP_IPV4_ROUTE - 1)))
        self.sock.settimeout(0.2)
        self.cond = threading.Condition()
        self.seen: dict[tuple[int, str], list[float]] = {}
        self.overflows = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                if self._stop:
                    return
                raise
            now = time.monotonic()
            found = list(self._parse(data))
            if found:
                with self.cond:
                    for key in found:
                        self.seen.setdefault(key, []).append(now)
                    self.cond.notify_all()

    @staticmethod
    def _parse(data: bytes) -> Iterator[tuple[int, str]]:
        off = 0
        while off + 16 <= len(data):
            length, mtype = struct.unpack_from("=IH", data, off)
            if length < 16:
                return
            if mtype in (RTM_NEWROUTE, RTM_DELROUTE) and length >= 28:
                family, dst_len = data[off + 16], data[off + 17]
                a = off + 28
                while family == socket.AF_INET and a + 4 <= off + length:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == 1 and alen >= 8:  # RTA_DST
                        dst = socket.inet_ntoa(data[a + 4 : a + 8])
                        yield mtype, f"{dst}/{dst_len}"
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3

    def wait(self, mtype: int, dst: str, after: float, timeout: float) -> float | None:
        """Arrival time of the first *mtype* notification for *dst* at or after *after*."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t in self.seen.get((mtype, dst), ()):
                    if t >= after:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def counts(ns: str, dev: str = DEV) -> tuple[int, int, int]:
    """(permanent neighbours, self permanent FDB entries with dst, routes) on the device."""
    family = "-6" if dev == DEV6 else "-4"
    neigh = sh("ip", "-n", ns, family, "neigh", "show", "dev", dev, "nud", "permanent", check=False)
    fdb = sh("bridge", "-n", ns, "fdb", "show", "dev", dev, check=False)
    routes = sh("ip", "-n", ns, family, "route", "show", "dev", dev, "proto", "boot", check=False)
    n_fdb = sum(
        1
        for line in fdb.splitlines()
        if " dst " in line and " self" in line and "permanent" in line
    )
    return len(neigh.splitlines()), n_fdb, len(routes.splitlines())


# --- the daemon -------------------------------------------------------------------------------


class Daemon:
    """The real pyflannel process in the cell; its JSON log lines time-stamped on arrival."""

    def __init__(
        self, ns: str, api: str, workdir: Path, resync: float, log_level: str = "info"
    ) -> None:
        self.subnet_file = workdir / "subnet.env"
        self.cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            *DAEMON_CMD,
            f"--etcd-endpoints={ETCD_URL}",
            f"--etcd-api={api}",
            "--iface=eth0",
            f"--subnet-file={self.subnet_file}",
            f"--resync-interval={resync:g}",
            "--log-format=json",
            f"--log-level={log_level}",
        ]
        self.log_path = workdir / "pyflannel.log"
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.proc.pid  # `ip netns exec` execs: the same PID is the daemon
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("wb") as log:
            for line in self.proc.stdout:
                now = time.monotonic()
                log.write(line)
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"event": "(not json)", "text": line.decode(errors="replace")}
                if not isinstance(ev, dict):
                    ev = {"event": "(not an object)"}
                with self.cond:
                    self.events.append((now, ev))
                    self.cond.notify_all()

    def wait_event(self, name: str, after: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, ev in self.events:
                    if t >= after and ev.get("event") == name:
                        return t
                if self.proc.poll() is not None:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 1.0))

    def events_between(self, t0: float, t1: float) -> list[str]:
        with self.cond:
            return [str(ev.get("event")) for t, ev in self.events if t0 <= t <= t1]

    def lines_between(self, t0: float, t1: float) -> list[str]:
        """What the daemon logged in [t0, t1]: event, reason and duration, relative times."""
        with self.cond:
            return [
                f"+{(t - t0) * 1000:.1f} ms {ev.get('event')} {ev.get('reason', '')} "
                f"{ev.get('duration_ms', '')}".rstrip()
                for t, ev in self.events
                if t0 <= t <= t1
            ]

    def cpu(self) -> float:
        """utime + stime, seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def own_subnet(self) -> ipaddress.IPv4Network | None:
        try:
            text = self.subnet_file.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("FLANNEL_SUBNET="):
                return ipaddress.IPv4Interface(line.split("=", 1)[1].strip()).network
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)


# --- one run: an API and a number of peers --------------------------------------------------------


@dataclass
class Result:
    api: str
    peers: int
    figures: dict[str, str] = field(default_factory=dict)


class Run:
    def __init__(self, args: argparse.Namespace, api: str, n: int, prefix: str) -> None:
        self.args = args
        self.api = api
        self.n = n
        self.prefix = prefix
        self.etcd_ns = f"{prefix}etcd"
        self.cell_ns = f"{prefix}cell"
        self.base_ns = f"{prefix}base"
        self.res = Result(api, n)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemon: Daemon | None = None
        self.listener: RouteListener | None = None
        self.etcd = Etcd(ETCD_URL)
        self.next_index = n  # the next unused peer index
        self.own: ipaddress.IPv4Network | None = None
        self._back: int | None = None
        self.t_kernel: float | None = None

    def say(self, text: str) -> None:
        print(f"[{self.api} N={self.n}] {text}", flush=True)

    # --- set-up and tear-down

    def build(self, workdir: Path) -> None:
        for ns in (self.etcd_ns, self.cell_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # This thread (and the pools it starts) talks to etcd from inside the etcd namespace:
        # the bench's own traffic never leaves the namespaces.
        self._back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        setns(f"/var/run/netns/{self.etcd_ns}")
        sh(
            "ip", "-n", self.etcd_ns, "link", "add", "eth0", "type", "veth",
            "peer", "name", "eth0", "netns", self.cell_ns,
        )  # fmt: skip
        for ns, addr in ((self.etcd_ns, ETCD_IP), (self.cell_ns, CELL_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/{UNDERLAY_LEN}", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if self.args.dual:
            sh("ip", "-n", self.cell_ns, "addr", "add", f"{CELL_IP6}/64", "dev", "eth0", "nodad")
        etcd = shutil.which("etcd") or "etcd"
        log = (workdir / "etcd.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [
                    "ip", "netns", "exec", self.etcd_ns, etcd,
                    "--name", "scale", "--data-dir", str(workdir / "etcd-data"),
                    "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
                    "--listen-peer-urls", "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                    "--initial-cluster", "scale=http://127.0.0.1:2380",
                    "--initial-cluster-state", "new", "--enable-v2=true",
                    "--heartbeat-interval=10", "--election-timeout=100",
                    "--logger=zap", "--log-outputs=stderr",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(requests.RequestException, ValueError):
                r = self.etcd.s.get(f"{ETCD_URL}/health", timeout=0.5)
                if r.ok and r.json().get("health") == "true":
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("etcd not healthy in 20 s")
            time.sleep(0.05)
        config: dict[str, Any] = dict(CONFIG)
        if self.args.dual:
            config.update(EnableIPv6=True, IPv6Network=str(NETWORK6))
        self.etcd.put(self.api, f"{PREFIX}/config", json.dumps(config))

    def teardown(self) -> None:
        if self._back is not None:
            _libc.setns(self._back, CLONE_NEWNET)
            os.close(self._back)
            self._back = None
        if self.listener is not None:
            self.listener.close()
        if self.daemon is not None:
            self.daemon.stop()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        remove_prefixed(self.prefix)

    # --- writing leases

    def write_peers(self, indexes: list[int]) -> float:
        dual = self.args.dual
        t0 = time.monotonic()
        if self.api == "v2":
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda i: self.etcd.put("v2", peer_key(i, dual), lease_value(i, dual), 1),
                        indexes,
                    )
                )
        else:
            per = self.args.keys_per_lease
            with ThreadPoolExecutor(8) as pool:
                grants = list(pool.map(lambda _: self.etcd.grant(), range(0, len(indexes), per)))
            items = [
                (peer_key(i, dual), lease_value(i, dual), grants[k // per])
                for k, i in enumerate(indexes)
            ]
            chunks = [items[k : k + 100] for k in range(0, len(items), 100)]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(self.etcd.txn_puts, chunks))
        return time.monotonic() - t0

    def fresh_index(self) -> int:
        """A peer index not written yet whose subnet is not the cell's own."""
        while True:
            i = self.next_index
            self.next_index += 1
            if subnet_of(i) != self.own:
                return i

    def write_one(self, i: int) -> tuple[float, float]:
        """Write peer *i*'s lease; (sent, acknowledged) monotonic times."""
        lease = 1 if self.api == "v2" else self.etcd.grant()
        t0 = time.monotonic()
        self.etcd.put(self.api, lease_key(subnet_of(i)), lease_value(i), lease)
        return t0, time.monotonic()

    # --- the phases

    def run(self, workdir: Path) -> None:
        self.build(workdir)
        took = self.write_peers(list(range(self.n)))
        self.say(f"wrote {self.n} leases in {took:.1f} s ({self.n / took:.0f}/s)")
        if not self.phase_start(workdir):
            return
        self.phase_baseline()
        self.res.figures["rss_ready"] = f"{self.daemon_().rss_mb():.0f}"
        self.say(f"RSS after ready: {self.res.figures['rss_ready']} MB")
        if self.args.start_only:
            time.sleep(self.args.hold)  # for a profiler attached to the daemon
            return
        self.phase_idle()
        self.listener = RouteListener(self.cell_ns)
        self.phase_events()
        rss = self.daemon_().rss_mb()
        self.res.figures["rss_events"] = f"{rss:.0f}"
        self.say(f"RSS after the events: {rss:.0f} MB")
        self.phase_burst()
        self.phase_drift()
        self.phase_relist()
        if self.listener.overflows:
            self.say(f"netlink listener overflowed {self.listener.overflows} times (ENOBUFS)")

    def daemon_(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def counts(self) -> tuple[int, int, int]:
        """The entries on flannel.1 (dual stack: the fewer of it and flannel-v6.1's)."""
        got = counts(self.cell_ns)
        if self.args.dual:
            got6 = counts(self.cell_ns, DEV6)
            got = (min(got[0], got6[0]), min(got[1], got6[1]), min(got[2], got6[2]))
        return got

    def phase_start(self, workdir: Path) -> bool:
        d = self.daemon = Daemon(
            self.cell_ns, self.api, workdir, self.args.resync_interval, self.args.daemon_log_level
        )
        self.say(f"daemon: {shlex.join(d.cmd)}")
        timeout = self.args.start_timeout or 60 + self.n * 0.03
        t_ready = d.wait_event("ready", d.t_spawn, timeout)
        if t_ready is None:
            state = "exited" if d.proc.poll() is not None else f"not ready after {timeout:.0f} s"
            self.say(f"start: daemon {state}; see {d.log_path}; skipping the other figures")
            tail = d.log_path.read_text(errors="replace").splitlines()[-5:]
            for line in tail:
                self.say(f"  log: {line[:300]}")
            self.res.figures["start"] = state
            return False
        self.own = d.own_subnet()
        ready = t_ready - d.t_spawn
        want = self.n
        deadline = time.monotonic() + timeout
        got = self.counts()
        # Complete at the first count after ready: then every entry was in the kernel when the
        # daemon logged its first `reconciled` (it logs after the kernel's ACK of each write),
        # and that is the time; counting again and again would only add the dumps' own time
        # (~0.3 s at 10,000 peers) and take CPU from the daemon.
        # (Dual stack: each device logs its own; the second one's is the time.)
        with d.cond:
            done = [t for t, ev in d.events if ev.get("event") == "reconciled" and t <= t_ready]
        t_reconciled = done[1 if self.args.dual else 0] if len(done) > self.args.dual else None
        t_kernel = (t_reconciled or t_ready) - d.t_spawn
        while min(got) < want and time.monotonic() < deadline:
            time.sleep(0.2)
            got = self.counts()
            t_kernel = time.monotonic() - d.t_spawn
        complete = min(got) >= want
        self.say(f"start -> ready: {ready:.2f} s")
        with d.cond:
            steps = [
                f"{ev.get('event')} +{t - d.t_spawn:.2f}"
                for t, ev in d.events
                if t <= t_ready and ev.get("event") not in ("peer_added", "record_skipped")
            ]
        self.say(f"start timeline (s after spawn): {', '.join(steps)}")
        self.say(
            f"start -> kernel {'complete' if complete else 'INCOMPLETE'}: {t_kernel:.2f} s "
            f"(neighbours {got[0]}, fdb {got[1]}, routes {got[2]}; want {want} each"
            f"{' on each device' if self.args.dual else ''})"
        )
        self.res.figures["start"] = f"{ready:.2f} s"
        self.res.figures["kernel"] = f"{t_kernel:.2f} s" if complete else f"incomplete {got}"
        self.t_kernel = t_kernel if complete else None
        return True

    def phase_baseline(self) -> None:
        ns = self.base_ns
        sh("ip", "netns", "add", ns)
        try:
            mtu = json.loads(sh("ip", "-n", self.cell_ns, "-j", "link", "show", DEV))[0]["mtu"]
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
            sh("ip", "-n", ns, "addr", "add", f"{CELL_IP}/{UNDERLAY_LEN}", "dev", "eth0")
            for link in ("eth0", "eth1"):
                sh("ip", "-n", ns, "link", "set", link, "up")
            sh(
                "ip", "-n", ns, "link", "add", DEV, "mtu", str(mtu), "type", "vxlan",
                "id", str(VNI), "local", CELL_IP, "dev", "eth0", "dstport", "8472", "nolearning",
            )  # fmt: skip
            own = self.own or subnet_of(self.n + 100000)
            sh("ip", "-n", ns, "addr", "add", f"{own.network_address}/32", "dev", DEV)
            sh("ip", "-n", ns, "link", "set", DEV, "up")
            if self.args.dual:
                sh("ip", "-n", ns, "addr", "add", f"{CELL_IP6}/64", "dev", "eth0", "nodad")
                sh(
                    "ip", "-n", ns, "link", "add", DEV6, "mtu", str(mtu - 20), "type", "vxlan",
                    "id", str(VNI), "local", CELL_IP6, "dev", "eth0", "dstport", "8472",
                    "nolearning",
                )  # fmt: skip
                sh("ip", "-n", ns, "link", "set", DEV6, "up")
            fdb, ipb = [], []
            for i in range(self.n):
                net, pub, mac = subnet_of(i), public_ip_of(i), mac_of(i)
                gw = net.network_address
                fdb.append(f"fdb append {mac} dev {DEV} dst {pub} self permanent")
                ipb.append(f"neigh add {gw} lladdr {mac} dev {DEV} nud permanent")
                ipb.append(f"route add {net} via {gw} dev {DEV} onlink")
                if self.args.dual:
                    net6, pub6, mac6 = subnet6_of(i), public_ipv6_of(i), mac6_of(i)
                    gw6 = net6.network_address
                    fdb.append(f"fdb append {mac6} dev {DEV6} dst {pub6} self permanent")
                    ipb.append(f"neigh add {gw6} lladdr {mac6} dev {DEV6} nud permanent")
                    ipb.append(f"route add {net6} via {gw6} dev {DEV6} onlink proto boot")
            # The daemon is paused meanwhile: its resync dumps would compete for the CPU and
            # the kernel's RTNL lock, and the baseline is meant to be the kernel alone.
            os.kill(self.daemon_().pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                sh("bridge", "-n", ns, "-batch", "-", stdin="\n".join(fdb) + "\n")
                t1 = time.monotonic()
                sh("ip", "-n", ns, "-batch", "-", stdin="\n".join(ipb) + "\n")
                t2 = time.monotonic()
            finally:
                os.kill(self.daemon_().pid, signal.SIGCONT)
            got = counts(ns)
            if self.args.dual:
                got6 = counts(ns, DEV6)
                got = (min(got[0], got6[0]), min(got[1], got6[1]), min(got[2], got6[2]))
            base = t2 - t0
            self.say(
                f"baseline bridge -batch + ip -batch: {base:.3f} s (fdb {t1 - t0:.3f} + "
                f"ip {t2 - t1:.3f}; neighbours {got[0]}, fdb {got[1]}, routes {got[2]})"
            )
            self.res.figures["baseline"] = f"{base:.3f} s"
            if self.t_kernel is not None:
                ratio = self.t_kernel / base
                self.say(f"ratio pyflannel start->kernel complete / baseline: {ratio:.2f}x")
                self.res.figures["ratio"] = f"{ratio:.2f}x"
        finally:
            sh("ip", "netns", "del", ns, check=False)

    def phase_idle(self) -> None:
        d, window, interval = self.daemon_(), self.args.idle_window, self.args.resync_interval
        time.sleep(min(interval, 5))  # let the start's last reconcile finish
        tick = 1 / os.sysconf("SC_CLK_TCK")
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        c0 = d.cpu()
        while time.monotonic() - t0 < window:
            samples.append((time.monotonic(), d.cpu()))
            time.sleep(0.01)
        t1, c1 = time.monotonic(), d.cpu()
        total = c1 - c0
        # Bursts of CPU separated by > 0.5 s of none: one resync each (if they cost >= 30 ms).
        bursts: list[float] = []
        start_cpu: float | None = None
        last_t, last_c, prev = 0.0, c0, c0
        for t, c in samples:
            if c > prev:
                if start_cpu is None or t - last_t > 0.5:
                    if start_cpu is not None:
                        bursts.append(last_c - start_cpu)
                    start_cpu = prev
                last_t, last_c = t, c
            prev = c
        if start_cpu is not None:
            bursts.append(last_c - start_cpu)
        big = [b for b in bursts if b >= 3 * tick - 1e-9]
        by_interval = (t1 - t0) / interval
        logged = sum(1 for e in d.events_between(t0, t1) if e == "reconciled")
        if big and total / by_interval >= 0.05:
            n, how = len(big), f"{len(big)} CPU bursts"
        else:
            n, how = by_interval, f"window/interval = {by_interval:.1f}"
        per = total / max(n, 1e-9)
        self.say(
            f"idle: {total:.2f} s CPU in {t1 - t0:.1f} s; resyncs counted as {how}; "
            f"CPU per resync {ms(per)} (interval {interval:g} s, {logged} 'reconciled' logs)"
        )
        self.res.figures["resync_cpu"] = ms(per)
        lines = [x for x in d.lines_between(t0, t1) if "reconciled resync" not in x]
        if lines:
            self.say("idle: other daemon log lines: " + "; ".join(lines[:10]))

    def _event_loop(
        self, what: str, items: list[int], do: Callable[[int], float | None]
    ) -> list[int]:
        """Run *do* per item until the count or the phase's time budget is reached."""
        budget, done, lat = self.args.event_budget, [], []
        ends: list[float] = []
        t0 = time.monotonic()
        for i in items:
            if time.monotonic() - t0 > budget:
                self.say(f"{what}: time budget of {budget:g} s spent after {len(done)} events")
                break
            x = do(i)
            if x is None:
                self.say(f"{what}: no notification for peer {i}; stopping this phase")
                break
            lat.append(x)
            ends.append(time.monotonic())
            done.append(i)
            time.sleep(self.args.pause)
        self.say(f"{what} (etcd ack -> kernel notification): {summary(lat)}")
        if lat and self.daemon is not None:
            # What the daemon was doing during the slowest event (--daemon-log-level=debug
            # shows the resyncs too).
            slow = max(range(len(lat)), key=lat.__getitem__)
            lines = self.daemon.lines_between(ends[slow] - lat[slow] - 0.05, ends[slow])
            self.say(f"{what}: slowest event's window: " + ("; ".join(lines) or "nothing logged"))
        self.res.figures[what] = f"{ms(pct(lat, 99))} (n={len(lat)})" if lat else "n/a"
        return done

    def phase_events(self) -> None:
        lst = self.listener
        assert lst is not None
        timeout = self.args.event_timeout

        def add(i: int) -> float | None:
            sent, ack = self.write_one(i)
            t = lst.wait(RTM_NEWROUTE, str(subnet_of(i)), sent, timeout)
            return None if t is None else t - ack

        def delete(i: int) -> float | None:
            sent = time.monotonic()
            self.etcd.delete(self.api, lease_key(subnet_of(i)))
            ack = time.monotonic()
            t = lst.wait(RTM_DELROUTE, str(subnet_of(i)), sent, timeout)
            return None if t is None else t - ack

        added = self._event_loop("add", [self.fresh_index() for _ in range(self.args.events)], add)
        self._event_loop("delete", added, delete)

    def phase_burst(self) -> None:
        """A burst of lease changes at once (a rack rebooting): time from the last write's
        acknowledgement (and from the first write) to the last of their routes in the kernel."""
        lst = self.listener
        n = self.args.burst
        if lst is None or n <= 0:
            return
        items = [self.fresh_index() for _ in range(n)]
        t0 = time.monotonic()
        took = self.write_peers(items)
        acked = t0 + took
        last = t0
        for i in items:
            t = lst.wait(RTM_NEWROUTE, str(subnet_of(i)), t0, self.args.event_timeout)
            if t is None:
                self.say(f"burst: no route for peer {i}")
                return
            last = max(last, t)
        self.say(
            f"burst of {n} leases: written in {took:.2f} s; last route "
            f"{(last - acked) * 1000:.0f} ms after the last write's ack, "
            f"{last - t0:.2f} s after the first write"
        )
        self.res.figures["burst"] = f"{(last - acked) * 1000:.0f} ms ({last - t0:.2f} s)"

    def phase_drift(self) -> None:
        lst = self.listener
        assert lst is not None
        timeout = self.args.event_timeout + 3 * self.args.resync_interval
        lat = []
        step = max(1, self.n // max(1, self.args.drift))
        for k in range(self.args.drift):
            net = str(subnet_of(k * step))
            t0 = time.monotonic()
            sh("ip", "-n", self.cell_ns, "route", "del", net, "dev", DEV)
            gone = lst.wait(RTM_DELROUTE, net, t0, 5) or t0
            back = lst.wait(RTM_NEWROUTE, net, gone, timeout)
            if back is None:
                self.say(f"drift: route {net} not back after {timeout:.0f} s")
                break
            lat.append(back - gone)
            time.sleep(self.args.pause)
        self.say(f"drift repair (route deleted -> back): {summary(lat)}")
        self.res.figures["drift"] = (
            f"{ms(statistics.median(lat))} / {ms(max(lat))}" if lat else "n/a"
        )

    def phase_relist(self) -> None:
        d, lst = self.daemon_(), self.listener
        assert lst is not None
        timeout = self.args.start_timeout or 60 + self.n * 0.03
        last = self.fresh_index()
        os.kill(d.pid, signal.SIGSTOP)
        try:
            if self.api == "v3":
                # The open watch stream would deliver the event from its socket buffer: cut the
                # daemon's connections to etcd (the kernel aborts them; the process is stopped),
                # then write, move the revision on and compact past the daemon's position.
                cut = sh(
                    "ip", "netns", "exec", self.cell_ns,
                    "ss", "-t", "-n", "-K", "dst", ETCD_IP, "dport", "=", ":2379",
                    check=False,
                )  # fmt: skip
                n_cut = max(0, len(cut.splitlines()) - 1)
                self.write_one(last)
                self.etcd.put("v3", "/pyflannel-bench/tick", "1")
                rev = self.etcd.revision()
                self.etcd.compact(rev)
                how = f"{n_cut} etcd connections cut, compacted at revision {rev}"
            else:
                count = self.args.v2_updates
                keys = [k % self.n for k in range(count)]
                with ThreadPoolExecutor(8) as pool:
                    list(
                        pool.map(
                            lambda i: self.etcd.put(
                                "v2", lease_key(subnet_of(i)), lease_value(i), 1
                            ),
                            keys,
                        )
                    )
                self.write_one(last)
                how = f"{count} updates written while stopped"
        finally:
            t_cont = time.monotonic()
            os.kill(d.pid, signal.SIGCONT)
        net = str(subnet_of(last))
        t = lst.wait(RTM_NEWROUTE, net, t_cont - 3600, timeout)
        if t is None:
            self.say(f"re-list: route {net} not there after {timeout:.0f} s ({how})")
            self.res.figures["relist"] = "timeout"
            return
        seen = [e for e in d.events_between(t_cont, t) if e not in ("peer_added", "peer_removed")]
        self.say(
            f"re-list (SIGCONT -> last lease's route): {t - t_cont:.2f} s ({how}; "
            f"log events meanwhile: {', '.join(dict.fromkeys(seen)) or 'none'})"
        )
        self.res.figures["relist"] = f"{t - t_cont:.2f} s"


# --- main -----------------------------------------------------------------------------------------

ROWS = (
    ("start → ready", "start"),
    ("start → kernel complete", "kernel"),
    ("baseline (ip/bridge -batch)", "baseline"),
    ("ratio (kernel complete / baseline)", "ratio"),
    ("add p99", "add"),
    ("delete p99", "delete"),
    ("CPU per idle resync", "resync_cpu"),
    ("RSS after ready (MB)", "rss_ready"),
    ("RSS after events (MB)", "rss_events"),
    ("burst of --burst leases: last route after last ack (after first write)", "burst"),
    ("drift repair median / max", "drift"),
    ("re-list", "relist"),
)


def print_tables(results: list[Result], apis: list[str]) -> None:
    for n in dict.fromkeys(r.peers for r in results):
        by_api = {r.api: r for r in results if r.peers == n}
        print(f"\n### N = {n} peers\n")
        print("| figure | " + " | ".join(apis) + " |")
        print("|---|" + "---|" * len(apis))
        for label, key in ROWS:
            cells = [by_api[a].figures.get(key, "n/a") if a in by_api else "n/a" for a in apis]
            print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[10000])
    ap.add_argument("--api", choices=["v2", "v3"], nargs="+", default=["v2", "v3"])
    ap.add_argument("--quick", action="store_true", help="N=1000 only")
    ap.add_argument("--hold", type=float, default=0, help="with --start-only: seconds to wait")
    ap.add_argument(
        "--start-only", action="store_true", help="stop after start, the ip -batch baseline, RSS"
    )
    ap.add_argument("--events", type=int, default=100, help="adds (and as many deletes)")
    ap.add_argument("--event-budget", type=float, default=120, help="seconds per event phase")
    ap.add_argument("--event-timeout", type=float, default=60, help="seconds per event")
    ap.add_argument("--pause", type=float, default=0.1, help="seconds between events")
    ap.add_argument("--resync-interval", type=float, default=2.0)
    ap.add_argument("--burst", type=int, default=1000, help="leases written at once")
    ap.add_argument("--daemon-log-level", default="info", help="debug shows every resync")
    ap.add_argument("--idle-window", type=float, default=20.0)
    ap.add_argument("--drift", type=int, default=5, help="routes deleted by hand")
    ap.add_argument("--v2-updates", type=int, default=1200, help="writes behind the v2 watch")
    ap.add_argument("--keys-per-lease", type=int, default=1, help="v3: peer keys per etcd lease")
    ap.add_argument("--start-timeout", type=float, default=0, help="0: 60 s + 30 ms per peer")
    ap.add_argument(
        "--dual", action="store_true", help="with --start-only: every lease dual-stack (IPv6 too)"
    )
    args = ap.parse_args()
    if args.dual and not args.start_only:
        ap.error("--dual measures the start only: add --start-only")
    if args.quick:
        args.peers = [1000]
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    prefix = f"pfs{os.getpid() % 100000}-"

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: list[Result] = []
    try:
        for n in args.peers:
            for api in args.api:
                with tempfile.TemporaryDirectory(prefix="pf-scale-") as tmp:
                    run = Run(args, api, n, prefix)
                    results.append(run.res)
                    try:
                        run.run(Path(tmp))
                    except Exception as exc:  # report and go on with the next run
                        run.say(f"failed: {type(exc).__name__}: {exc}")
                    finally:
                        run.teardown()
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
    finally:
        remove_prefixed(prefix)
    print_tables(results, args.api)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
