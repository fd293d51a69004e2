"""The seed topology as a fixture: etcd, a router and three cells in network namespaces.

cell-1 and cell-2 run pyflannel from the start, with br0, two containers each and HTTP servers;
cell-3's namespace is wired to the underlay but its daemon is started by the tests that need it.
Everything is removed at the end, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyflannel.lab.topo import Cell, Lab, run

TOOLS = ("etcd", "etcdctl", "curl", "ping", "ss", "bridge")


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("the end-to-end tests need root (network namespaces)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


@contextmanager
def running_lab(
    workdir: Path,
    tag: str,
    api: str,
    *,
    cells: int,
    started: int,
    containers: int,
    resync_interval: float,
    config: dict[str, object] | None = None,
    before_start: Callable[[Lab], None] | None = None,
    outside: bool = False,
    daemon_args: Mapping[str, Sequence[str]] | None = None,
    stack: str = "ipv4",
) -> Iterator[Lab]:
    """The lab's topology (IPv4, dual-stack or IPv6-only: *stack*) with etcd, the network
    config (*config*, else the seed's of that stack) and
    *started* of its *cells* running with *containers* containers each; *before_start* runs
    once etcd is up; *outside* and *daemon_args* (extra flags by cell name) go to the Lab.
    Everything goes when the block ends, and the daemons' log tails are printed (a failing
    test shows them)."""
    _require()
    lab = Lab(
        workdir,
        prefix=f"{tag}{os.getpid() % 10000}{api}-",
        cells=cells,
        api=api,
        resync_interval=resync_interval,
        outside=outside,
        daemon_args=daemon_args,
        stack=stack,
    )
    try:
        lab.build_underlay()
        lab.start_etcd()
        lab.put_config(config)
        if before_start is not None:
            before_start(lab)
        lab.start_cells(lab.cells[:started], containers)
        yield lab
    finally:
        for cell in lab.cells:
            log = lab.workdir / cell.name / "pyflannel.log"
            if log.exists():
                print(f"--- {cell.name} log (tail) ---\n{log.read_text()[-4000:]}")
        lab.down()


@pytest.fixture(scope="module", params=["v2", "v3"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two running cells (plus an idle cell-3) on the given etcd API."""
    api = request.param
    with running_lab(
        tmp_path_factory.mktemp(f"lab-{api}"),
        "pfe",
        api,
        cells=3,
        started=2,
        containers=2,
        resync_interval=1.0,
    ) as lab:
        yield lab


def spawn_pyflannel(
    lab: Lab,
    cell: Cell,
    name: str,
    prefix: str,
    *extra: str,
    subnet_file: Path | None = None,
    wrapper: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> None:
    """Start pyflannel on *cell* as *name*, on the lab's etcd under its own etcd *prefix* and
    subnet file (or *subnet_file*), behind the *wrapper* command if any, with *env* added;
    JSON logs in ``<workdir>/<name>/pyflannel.log``."""
    lab.spawn(
        name,
        cell.ns,
        [
            *wrapper,
            sys.executable,
            "-m",
            "pyflannel",
            "--etcd-endpoints=http://10.0.1.2:2379",
            f"--etcd-prefix={prefix}",
            f"--subnet-file={subnet_file or lab.workdir / name / 'subnet.env'}",
            "--log-format=json",
            *extra,
        ],
        lab.workdir / name / "pyflannel.log",
        env=env,
    )


def ip_json(cell: Cell, *args: str) -> list[dict[str, object]]:
    """``ip -j`` (or ``bridge -j``) output in *cell*'s namespace, parsed."""
    tool = "bridge" if args and args[0] == "fdb" else "ip"
    out = run(tool, "-j", "-n", cell.ns, *args).stdout
    data = json.loads(out or "[]")
    assert isinstance(data, list)
    return data


def routes(cell: Cell) -> dict[str, dict[str, object]]:
    """Main-table IPv4 routes by destination."""
    return {str(r["dst"]): r for r in ip_json(cell, "-4", "route", "show")}


def neighs(cell: Cell) -> dict[str, str]:
    """Neighbours on flannel.1: IP -> MAC."""
    return {
        str(n["dst"]): str(n.get("lladdr"))
        for n in ip_json(cell, "neigh", "show", "dev", "flannel.1")
    }


def fdb(cell: Cell) -> set[tuple[str, str]]:
    """Permanent FDB entries on flannel.1 with a destination: (MAC, dst)."""
    return {
        (str(e["mac"]), str(e["dst"]))
        for e in ip_json(cell, "fdb", "show", "dev", "flannel.1")
        if "dst" in e
    }


def subnet_of(lab: Lab, cell: Cell) -> str:
    """The cell's lease subnet, e.g. ``172.16.34.0/24``, from its subnet.env."""
    gw = lab.wait_subnet_env(cell)["FLANNEL_SUBNET"]
    a, b, c, _ = gw.split("/")[0].split(".")
    return f"{a}.{b}.{c}.0/24"


def lease_key(subnet: str) -> str:
    """The etcd key of a /24 lease."""
    return "/coreos.com/network/subnets/" + subnet.replace("/", "-")


def vtep_mac(cell: Cell) -> str:
    """flannel.1's MAC on *cell*."""
    return str(ip_json(cell, "link", "show", "flannel.1")[0]["address"])


def daemon_log(lab: Lab, cell: Cell) -> list[dict[str, object]]:
    """The JSON log lines of *cell*'s daemon so far."""
    out = []
    for line in (lab.workdir / cell.name / "pyflannel.log").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": "non-json", "line": line})
    return out


def ping(
    src_ns: str, dst: str, count: int = 1, interval: float = 0.2, timeout: int = 2
) -> subprocess.CompletedProcess[str]:
    """ping from a namespace."""
    return run(
        "ping",
        "-c",
        str(count),
        "-i",
        str(interval),
        "-W",
        str(timeout),
        dst,
        ns=src_ns,
        check=False,
    )


def capture_vxlan(
    lab: Lab, send: Callable[[], None], iface: str = "p-c1", port: int = 8472
) -> list[dict[str, object]]:
    """VXLAN packets seen on the router's *iface* while *send* runs (pyflannel.diag capture)."""
    cap = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.router_ns,
            sys.executable,
            "-m",
            "pyflannel.diag",
            "capture",
            "--iface",
            iface,
            "--port",
            str(port),
            "--timeout",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert cap.stderr is not None
        assert cap.stderr.readline().strip() == "capturing"  # the socket is open
        send()
        out, err = cap.communicate(timeout=20)
    finally:
        cap.kill()
        cap.wait()
    pkts = [json.loads(line) for line in out.splitlines()]
    assert pkts, f"no VXLAN captured: {err}"
    return pkts
