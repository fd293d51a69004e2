"""Soak the real daemon in the seed topology (namespaces, real etcd), both etcd APIs in one run:

* RSS before and after ``--reconciles`` reconciles (``--resync-interval 0.01``, with ``--peers``
  peer leases to reconcile), counted from the daemon's debug log;
* RSS after ``--updates`` lease updates (renewals of the peers' leases with a TTL, written to
  etcd from a thread pool as fast as it takes them), once the daemon has caught up;
* catch-up after an etcd outage: etcd SIGKILLed, restarted; the time from etcd healthy again to
  a lease written then being programmed on the cell.

Run as root: ``.venv/bin/python bench/soak.py [--api v2 v3] [--reconciles N] [--updates N]``
(smaller values for a quick run).  Prints figures and the command line; asserts nothing.  Each
API gets its own namespaces and a work directory in /dev/shm (etcd's fsyncs would otherwise
bound the update rate), all removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import IPRoute

from pyflannel.lab.topo import Lab

KEY = "/coreos.com/network/subnets/{}-24"
CHUNK = 10_000  # updates per bulk write (one RSS figure each)


def lease(i: int) -> bytes:
    """Peer *i*'s lease value, as flanneld writes it."""
    return json.dumps(
        {
            "PublicIP": f"10.0.2.{100 + i}",
            "PublicIPv6": None,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": f"02:00:00:00:{i:02x}:01"},
        },
        separators=(",", ":"),
    ).encode()


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def reconciles(lab: Lab) -> int:
    """How many reconciles cell-1's daemon has logged."""
    log = lab.workdir / lab.cells[0].name / "pyflannel.log"
    return log.read_bytes().count(b'"event": "reconciled"')


def has_route(ipr: IPRoute, subnet: str) -> bool:
    return bool(ipr.route("dump", table=254, dst=subnet, family=2))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", choices=["v2", "v3"], nargs="+", default=["v2", "v3"])
    ap.add_argument("--reconciles", type=int, default=10_000)
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--peers", type=int, default=50)
    args = ap.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]), flush=True)
    for api in args.api:
        with tempfile.TemporaryDirectory(prefix="pf-soak-", dir="/dev/shm") as workdir:
            soak(Path(workdir), api, args.reconciles, args.updates, args.peers)
    return 0


def soak(workdir: Path, api: str, n_reconciles: int, n_updates: int, peers: int) -> None:
    """Print the figures for one etcd API."""
    lab = Lab(workdir, prefix=f"pfk{os.getpid() % 10000}-", cells=1, api=api, resync_interval=0.01)
    c1 = lab.cells[0]
    name = f"pyflannel-{c1.name}"
    try:
        lab.build_underlay()
        lab.start_etcd()
        lab.put_config()
        keys = [KEY.format(f"172.16.{200 + i}.0").encode() for i in range(peers)]
        lab.bulk([("put", k, lease(i), 3600) for i, k in enumerate(keys)])
        lab.start_daemon(c1, "--log-level=debug")
        lab.wait_subnet_env(c1)
        pid = lab.pid(name)
        assert pid is not None
        with IPRoute(netns=c1.ns, flags=0) as ipr:
            lab.wait(lambda: has_route(ipr, f"172.16.{200 + peers - 1}.0/24"), 30, "peers")
            start_count, start_rss = reconciles(lab), rss_kib(pid)
            print(f"[{api}] ready with {peers} peers: RSS {start_rss} KiB", flush=True)
            t0 = time.monotonic()
            lab.wait(
                lambda: reconciles(lab) - start_count >= n_reconciles,
                n_reconciles * 0.1 + 60,
                f"{n_reconciles} reconciles",
                interval=0.5,
            )
            done = reconciles(lab) - start_count
            print(
                f"[{api}] after {done} reconciles ({time.monotonic() - t0:.0f} s): "
                f"RSS {rss_kib(pid)} KiB",
                flush=True,
            )

            t0 = time.monotonic()
            sent = 0
            while sent < n_updates:
                n = min(CHUNK, n_updates - sent)
                ops = [("put", keys[j % peers], lease(j % peers), 3600) for j in range(n)]
                tally = lab.bulk(ops, threads=16)
                sent += n
                # Caught up: a marker lease written after the chunk is programmed.
                marker = f"172.16.{100 + sent // CHUNK % 50}.0"
                lab.bulk([("put", KEY.format(marker).encode(), lease(peers), 3600)])
                lab.wait(lambda m=marker: has_route(ipr, f"{m}/24"), 60, "caught up")
                lab.bulk([("del", KEY.format(marker).encode())])
                rate = sent / (time.monotonic() - t0)
                print(
                    f"[{api}] after {sent} lease updates ({rate:.0f}/s; etcd {tally}): "
                    f"RSS {rss_kib(pid)} KiB",
                    flush=True,
                )

            lab.kill("etcd", signal.SIGKILL)
            time.sleep(3)  # the daemon notices and backs off
            lab.start_etcd(fresh=False)  # returns once /health answers
            healthy = time.monotonic()
            subnet = "172.16.198.0"
            lab.bulk([("put", KEY.format(subnet).encode(), lease(peers + 1), 3600)])
            lab.wait(lambda: has_route(ipr, f"{subnet}/24"), 60, "catch-up", interval=0.005)
            print(
                f"[{api}] etcd healthy again -> lease written then programmed: "
                f"{(time.monotonic() - healthy) * 1000:.0f} ms; final RSS {rss_kib(pid)} KiB",
                flush=True,
            )
        lab.kill(name)
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
