"""The two-cell topology with 2,000 extra peer leases, on both etcd APIs: every peer is
programmed on both cells, containers still talk across cells, a burst of lease changes and a
deleted peer reach the kernel.  (The figures at 10,000 peers are bench/scale.py's.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from pyflannel.lab.topo import Cell, Lab

from .conftest import fdb, ip_json, lease_key, running_lab

pytestmark = [pytest.mark.e2e]

EXTRA = 2000
# A Network with room for the extra peers (172.17.0.0 and up) beside the cells' own range.
CONFIG = {
    "Network": "172.16.0.0/12",
    "SubnetLen": 24,
    "SubnetMin": "172.16.10.0",
    "SubnetMax": "172.16.99.0",
    "Backend": {"Type": "vxlan", "VNI": 1},
}


def extra_peer(i: int) -> tuple[str, bytes]:
    """The subnet and lease value (flanneld's exact form) of fake peer *i*."""
    subnet = IPv4Network((0xAC110000 + (i << 8), 24))  # 172.17.0.0/24 + i
    value = {
        "PublicIP": f"10.0.{3 + i // 250}.{1 + i % 250}",
        "PublicIPv6": None,
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": f"02:aa:00:00:{i >> 8:02x}:{i & 0xFF:02x}"},
    }
    return str(subnet), json.dumps(value, separators=(",", ":")).encode()


def puts(first: int, last: int) -> list[tuple[str, bytes, bytes, int]]:
    """Bulk put operations for fake peers first..last-1 (no TTL)."""
    out = []
    for i in range(first, last):
        subnet, value = extra_peer(i)
        out.append(("put", lease_key(subnet).encode(), value, 0))
    return out


def flannel_routes(cell: Cell) -> set[str]:
    """Destinations of the routes on the cell's flannel.1."""
    return {str(r["dst"]) for r in ip_json(cell, "-4", "route", "show", "dev", "flannel.1")}


@pytest.fixture(scope="module", params=["v2", "v3"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two cells started while half of the extra peers already exist."""

    def preload(lab: Lab) -> None:
        tally = lab.bulk(puts(0, EXTRA // 2))
        assert tally["ok"] == EXTRA // 2, tally

    api = request.param
    with running_lab(
        tmp_path_factory.mktemp(f"many-{api}"),
        "pfm",
        api,
        cells=2,
        started=2,
        containers=1,
        resync_interval=5.0,
        config=CONFIG,
        before_start=preload,
    ) as lab:
        yield lab


def test_thousands_of_peers_are_programmed_and_traffic_flows(lab: Lab) -> None:
    """1,000 peers at start and a burst of 1,000 more while running: each cell holds a route,
    a neighbour and an FDB entry for every one, and containers still answer across cells."""
    tally = lab.bulk(puts(EXTRA // 2, EXTRA))
    assert tally["ok"] == EXTRA // 2, tally
    want = {extra_peer(i)[0] for i in range(EXTRA)}
    for cell in lab.cells:
        Lab.wait(lambda: want <= flannel_routes(cell), 60, f"{cell.name}: {EXTRA} peer routes")
        assert len(flannel_routes(cell)) == EXTRA + 1  # and the other cell
        neighs = ip_json(cell, "neigh", "show", "dev", "flannel.1", "nud", "permanent")
        assert len(neighs) == EXTRA + 1
        assert len(fdb(cell)) == EXTRA + 1
    c1, c2 = lab.cells
    assert Lab.curl(c1.containers[0].ns, c2.containers[0].ip) == "200"
    assert Lab.curl(c2.containers[0].ns, c1.containers[0].ip) == "200"


def test_peer_deleted_in_etcd_leaves_every_cell(lab: Lab) -> None:
    """Deleting one of the thousands of leases removes that peer's route, neighbour and FDB
    entry from both cells, and nothing else."""
    subnet, value = extra_peer(1234)
    mac = json.loads(value)["BackendData"]["VtepMAC"]
    for cell in lab.cells:
        Lab.wait(lambda: subnet in flannel_routes(cell), 60, f"{cell.name}: peer programmed")
    lab.delete(lease_key(subnet))
    for cell in lab.cells:
        Lab.wait(lambda: subnet not in flannel_routes(cell), 10, f"{cell.name}: route removed")
        Lab.wait(lambda: all(m != mac for m, _ in fdb(cell)), 10, f"{cell.name}: FDB removed")
        assert len(flannel_routes(cell)) == EXTRA  # 1,999 extra peers and the other cell
