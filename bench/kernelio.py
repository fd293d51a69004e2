"""Measure the raw netlink layer (pyflannel.kernel.codec/rtnl/mirror) at scale, as root.

* encode: µs per request (neighbour, FDB, route replace);
* write: N peers (neighbour + FDB + onlink route each) through ``Rtnl.write`` into a fresh
  namespace, against ``bridge -batch`` + ``ip -batch`` of the same entries (process start
  included), median of --runs;
* parse: CPU time to split and parse the dump replies for N peers (3N entries), captured once;
  and the full dump through the socket;
* mirror: memory retained by a Mirror loaded with N entries of each kind (tracemalloc).

``.venv/bin/python bench/kernelio.py [--peers 2000 10000] [--runs 3]``; prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network

from pyflannel.kernel import codec
from pyflannel.kernel.mirror import Mirror
from pyflannel.kernel.records import Route
from pyflannel.kernel.rtnl import (
    NETLINK_GET_STRICT_CHK,
    SOL_NETLINK,
    Request,
    Rtnl,
    open_netlink,
)


def peer(i: int) -> tuple[IPv4Address, str, IPv4Address, IPv4Network]:
    """Peer *i*: VTEP address, MAC, public IP, subnet."""
    hi, lo = divmod(i, 250)
    vtep = IPv4Address(f"10.{100 + hi}.{lo}.0")
    return (
        vtep,
        f"aa:bb:cc:00:{hi:02x}:{lo:02x}",
        IPv4Address(f"192.0.2.{lo + 2}"),
        IPv4Network(f"{vtep}/24"),
    )


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh namespace (IPv6 off) with eth0 (veth) and flannel.1 over it."""
    name = f"pfb-kio-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        script = """link add eth0 type veth peer name eth1
addr add 192.0.2.10/24 dev eth0
link set eth0 up
link set eth1 up
link add flannel.1 type vxlan id 1 dstport 8472 local 192.0.2.10 dev eth0 nolearning
link set flannel.1 up
"""
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
            check=True,
        )
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=script, text=True, check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def requests(dev: int, n: int) -> list[Request]:
    """The 3n requests for n peers."""
    out = []
    for i in range(n):
        vtep, mac, public, net = peer(i)
        out += [
            Request(f"neigh.replace {vtep}", codec.encode_neigh_replace(dev, vtep, mac)),
            Request(f"fdb.replace {mac}", codec.encode_fdb_replace(dev, mac, public)),
            Request(
                f"route.replace {net}", codec.encode_route_replace(Route(net, vtep, dev, True))
            ),
        ]
    return out


def bench_encode(n: int) -> float:
    """µs per encoded request."""
    peers = [peer(i) for i in range(n)]
    t = time.perf_counter()
    for vtep, mac, public, net in peers:
        codec.encode_neigh_replace(4, vtep, mac)
        codec.encode_fdb_replace(4, mac, public)
        codec.encode_route_replace(Route(net, vtep, 4, True))
    return (time.perf_counter() - t) / (3 * n) * 1e6


def bench_write(n: int) -> tuple[float, float, float, float]:
    """Rtnl.write of n peers (encoding included): (wall s, user CPU s, system CPU s — the
    kernel's work happens in our sendmsg —, wall s of an identical second write)."""
    with namespace() as ns, Rtnl(ns) as r:
        dev = next(link.index for link in r.links() if link.name == "flannel.1")
        before = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        result = r.write(requests(dev, n))
        elapsed = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF)
        assert result.ok == 3 * n, result.failures[:3]
        assert len(r.routes()) >= n
        t = time.perf_counter()
        r.write(requests(dev, n))
        user = after.ru_utime - before.ru_utime
        return elapsed, user, after.ru_stime - before.ru_stime, time.perf_counter() - t


def bench_iproute2(n: int) -> float:
    """Seconds for ``bridge -batch`` (FDB) + ``ip -batch`` (neighbours, routes)."""
    fdb, ipb = [], []
    for i in range(n):
        vtep, mac, public, net = peer(i)
        fdb.append(f"fdb replace {mac} dev flannel.1 dst {public} self permanent\n")
        ipb.append(f"neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent\n")
        ipb.append(f"route replace {net} via {vtep} dev flannel.1 onlink\n")
    with namespace() as ns, tempfile.TemporaryDirectory() as d:
        for name, lines in (("fdb", fdb), ("ip", ipb)):
            with open(f"{d}/{name}", "w") as f:
                f.writelines(lines)
        t = time.perf_counter()
        subprocess.run(["bridge", "-n", ns, "-batch", f"{d}/fdb"], check=True)
        subprocess.run(["ip", "-n", ns, "-batch", f"{d}/ip"], check=True)
        return time.perf_counter() - t


def bench_dumps(n: int) -> tuple[float, float, int, int]:
    """(CPU s to split and parse the dump replies of 3n entries, wall s of the three dumps
    through Rtnl, entries, bytes)."""
    with namespace() as ns, Rtnl(ns) as r:
        dev = next(link.index for link in r.links() if link.name == "flannel.1")
        r.write(requests(dev, n))
        t = time.perf_counter()
        counts = len(r.neighs(dev)) + len(r.fdb(dev)) + len(r.routes())
        wall = time.perf_counter() - t
        # The same replies as raw bytes, for a CPU-only parse figure.
        bufs: list[bytes] = []
        with open_netlink(ns) as sock:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            for req in (
                codec.encode_neigh_dump(dev, 1),
                codec.encode_fdb_dump(dev, 2),
                codec.encode_route_dump(254, 3),
            ):
                sock.send(req)
                done = False
                while not done:
                    bufs.append(sock.recv(1 << 20))
                    done = any(m.type == codec.NLMSG_DONE for m in codec.split(bufs[-1]))
    gc.collect()
    t = time.process_time()
    parsed = [codec.parse(m) for b in bufs for m in codec.split(b)]
    cpu = time.process_time() - t
    entries = sum(1 for p in parsed if not isinstance(p, codec.Message))
    assert entries == counts, (entries, counts)
    return cpu, wall, entries, sum(map(len, bufs))


def bench_mirror(n: int) -> tuple[float, float]:
    """(MB retained by a Mirror with n of each kind, s to load it) from synthetic messages."""
    dev = 4
    neighs, fdb, routes = [], [], []
    for i in range(n):
        vtep, mac, public, _ = peer(i)
        mb = codec.mac_bytes(mac)
        neighs.append(codec.NeighMsg(codec.RTM_NEWNEIGH, 2, dev, 0x80, 0, vtep.packed, mb))
        fdb.append(codec.NeighMsg(codec.RTM_NEWNEIGH, 7, dev, 0xC0, 2, public.packed, mb))
        routes.append(
            codec.RouteMsg(
                codec.RTM_NEWROUTE, 2, vtep.packed, 24, 0, 254, 3, 0, 1, 4, vtep.packed, dev, 0
            )
        )
    t = time.perf_counter()
    Mirror(dev).load(None, neighs, fdb, routes)
    elapsed = time.perf_counter() - t
    gc.collect()
    tracemalloc.start()
    m = Mirror(dev)
    m.load(None, neighs, fdb, routes)
    del neighs, fdb, routes
    gc.collect()
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert m.counts() == (n, n, n)
    return size / 1e6, elapsed


def median(f: Callable[[], float], runs: int) -> float:
    """Median of *runs* calls."""
    return statistics.median(f() for _ in range(runs))


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"encode: {median(lambda: bench_encode(10000), args.runs):.2f} µs/request")
    for n in args.peers:
        ours = [bench_write(n) for _ in range(args.runs)]
        theirs = median(lambda n=n: bench_iproute2(n), args.runs)  # type: ignore[misc]
        first, user, system, again = (statistics.median(o[k] for o in ours) for k in range(4))
        print(
            f"write {n} peers ({3 * n} requests): Rtnl.write {first:.3f} s"
            f" (user {user:.3f} s, system {system:.3f} s; identical repeat {again:.3f} s);"
            f" bridge+ip -batch {theirs:.3f} s -> {first / theirs:.2f}x"
        )
        cpu, wall, entries, size = bench_dumps(n)
        print(
            f"dump {entries} entries ({size / 1e6:.1f} MB): parse {cpu:.3f} s CPU;"
            f" three dumps through the socket {wall:.3f} s"
        )
        mb, load = bench_mirror(n)
        print(f"mirror {n} of each kind: {mb:.1f} MB retained, load {load:.3f} s")


if __name__ == "__main__":
    main()
