"""Measure pyflannel's two headline latencies in the seed topology (namespaces, real etcd):

* start: ``pyflannel`` process spawned -> subnet.env written (fresh device and lease, then a
  restart that reuses them);
* propagation: a peer lease written in etcd -> its route present on another cell.

Run as root: ``.venv/bin/python bench/latency.py [--api v2 v3] [--runs N]`` (both APIs by
default, one after the other in the same run).  Prints figures (median, min, max in
milliseconds); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import IPRoute

from pyflannel.lab.topo import ETCD_URL, Lab

WRITER = r"""
import sys, time, json
api, url = sys.argv[1], sys.argv[2]
host, port = url.split("//")[1].split(":")
if api == "v2":
    import etcd
    c = etcd.Client(host=host, port=int(port))
    put = lambda k, v: c.write(k, v)
else:
    import etcd3gw
    c = etcd3gw.client(host=host, port=int(port))
    put = lambda k, v: c.put(k, v)
for line in sys.stdin:
    key, value = line.rstrip("\n").split(" ", 1)
    t0 = time.time(); put(key, value); t1 = time.time()
    print(json.dumps([t0, t1]), flush=True)
"""


def fmt(xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    med = statistics.median(ms)
    return f"median {med:7.1f} ms  min {min(ms):7.1f}  max {max(ms):7.1f}  (n={len(ms)})"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", choices=["v2", "v3"], nargs="+", default=["v2", "v3"])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    for api in args.api:
        measure(api, args.runs)
    return 0


def measure(api: str, runs: int) -> None:
    """Print both figures for one etcd API."""
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as workdir:
        measure_in(Path(workdir), api, runs)


def measure_in(workdir: Path, api: str, runs: int) -> None:
    """Build a two-cell lab in *workdir* and measure."""
    lab = Lab(
        workdir,
        prefix=f"pfb{os.getpid() % 10000}-",
        cells=2,
        api=api,
        resync_interval=30,
    )
    try:
        lab.build_underlay()
        lab.start_etcd()
        lab.put_config()
        c1, c2 = lab.cells
        lab.start_daemon(c2)
        lab.wait_subnet_env(c2)
        cold, warm = [], []
        for i in range(runs):
            sf = lab.subnet_file(c1)
            sf.unlink(missing_ok=True)
            t0 = time.monotonic()
            lab.start_daemon(c1)
            lab.wait(sf.exists, 30, "subnet.env", interval=0.002)
            (cold if i == 0 else warm).append(time.monotonic() - t0)
            lab.kill(f"pyflannel-{c1.name}")
        print(
            f"[{api}] start -> subnet.env, first start (new device + lease): "
            f"{cold[0] * 1000:.1f} ms"
        )
        print(f"[{api}] start -> subnet.env, restart (reused device + lease): {fmt(warm)}")

        lab.start_daemon(c1)
        lab.wait_subnet_env(c1)
        writer = subprocess.Popen(
            ["ip", "netns", "exec", lab.etcd_ns, sys.executable, "-c", WRITER, api, ETCD_URL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdin is not None and writer.stdout is not None
        lat = []
        with IPRoute(netns=c1.ns, flags=0) as ipr:
            for i in range(runs):
                subnet = f"172.16.{200 + i}.0"
                value = json.dumps(
                    {
                        "PublicIP": f"10.0.2.{100 + i}",
                        "PublicIPv6": None,
                        "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": f"02:00:00:00:{i:02x}:01"},
                    },
                    separators=(",", ":"),
                )
                writer.stdin.write(f"/coreos.com/network/subnets/{subnet}-24 {value}\n")
                writer.stdin.flush()
                deadline = time.time() + 10
                seen = None
                while time.time() < deadline:
                    if ipr.route("dump", table=254, dst=f"{subnet}/24", family=2):
                        seen = time.time()
                        break
                    time.sleep(0.0005)
                t_start, _t_done = json.loads(writer.stdout.readline())
                assert seen is not None, "route never appeared"
                lat.append(seen - t_start)  # from the write request: includes its round trip
        writer.stdin.close()
        writer.wait()
        print(f"[{api}] lease written in etcd -> route present on another cell: {fmt(lat)}")
    finally:
        lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
