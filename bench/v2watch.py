"""How fast the etcd v2 watch consumes a burst of lease writes (a real etcd on loopback).

``.venv/bin/python bench/v2watch.py [N] [--no-stream]``: starts etcd, starts the v2 registry's
watch, writes N leases (default 3,000) from 8 writers at once and prints the write rate and
how far behind the watch was when the last write returned.  ``--no-stream`` turns off the
streamed watch (one long-poll per event, as before) for comparison; v2 keeps 1,000 events, so
a watch more than that behind ends in "event index cleared".  Prints; asserts nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import etcd

from pyflannel.errors import Compacted
from pyflannel.lease import LeaseEvent
from pyflannel.registry import EtcdOptions, etcd2
from pyflannel.registry.etcd2 import EtcdV2Registry

PORT, PEER = 23791, 23801
VALUE = (
    '{"PublicIP":"10.0.0.1","BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}'
)


def main() -> int:
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), "3000"))
    if "--no-stream" in sys.argv:
        etcd2._live = lambda _res: False  # type: ignore[attr-defined]  # the old behaviour
    data = tempfile.mkdtemp(prefix="pf-v2watch-")
    url, peer = f"http://127.0.0.1:{PORT}", f"http://127.0.0.1:{PEER}"
    server = subprocess.Popen(
        ["etcd", "--name", "b", "--data-dir", data, "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--initial-cluster", f"b={peer}",
         "--enable-v2=true", "--heartbeat-interval=10", "--election-timeout=100",
         "--logger=zap", "--log-outputs=stderr"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        c = etcd.Client(host="127.0.0.1", port=PORT)
        c.write("/coreos.com/network/subnets/10.255.0.0-24", "x")
        reg = EtcdV2Registry(EtcdOptions(endpoints=(url,)))
        start = reg.list_subnets().revision
        stop, got, failed = threading.Event(), list[LeaseEvent](), list[str]()

        def watch() -> None:
            try:
                for batch in reg.watch_subnets(start, stop):
                    got.extend(batch.events)
                    if len(got) > n:
                        return
            except Compacted as exc:
                failed.append(str(exc))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        c.write("/coreos.com/network/subnets/10.255.0.0-24", "y")  # the watch is live now
        time.sleep(0.3)
        clients = [etcd.Client(host="127.0.0.1", port=PORT) for _ in range(8)]

        def put(i: int) -> None:
            clients[i % 8].write(f"/coreos.com/network/subnets/10.{i // 256}.{i % 256}.0-24", VALUE)

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(n)))
        wrote = time.monotonic() - t0
        behind = n + 1 - len(got)
        print(f"wrote {n} leases in {wrote:.2f} s ({n / wrote:.0f}/s)")
        print(f"watch when the last write returned: {behind} events behind")
        print(f"watch ended: {failed[0]}" if failed else "watch never fell out of etcd's history")
        stop.set()
        reg.close()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
