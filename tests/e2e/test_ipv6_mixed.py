"""A mixed cluster on one etcd, on both APIs: an IPv4-only cell (its lease in flanneld's IPv4
form) next to dual-stack cells, and leases exactly as flanneld writes them for dual-stack and
IPv6-only hosts (v0.17 over etcd v2, v0.28 over v3: the same bytes).

cell-3 starts while the network config has no IPv6 (as a node running a flanneld that does not
enable it, or one not restarted since the config changed); then the config gains an
IPv6Network and cell-1 and cell-2 start dual-stack.  Every cell programs what its devices can
carry: the dual-stack cells the IPv4 half of cell-3, cell-3 the IPv4 halves of the others
(ignoring their IPv6 halves, as flanneld does).  The networks are flanneld's examples
(10.5.0.0/16, fc00::/48) so that flanneld's own records fit them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from pyflannel.lab.topo import SEED_CONFIG, Cell, Lab, run

from .conftest import fdb, ip_json, neighs, running_lab
from .test_ipv6 import PREFIX, V6DEV, env, fdb6, gone6, mac, neighs6, programmed6, subnet6, wait

pytestmark = [pytest.mark.e2e]

#: What a real Go toolchain encodes as flanneld's records (tests/unit/fixtures/go_ipv6_text.go).
GO = json.loads(
    (Path(__file__).parents[1] / "unit" / "fixtures" / "go_ipv6_text.json").read_text()
)["flanneld"]
BACKEND = SEED_CONFIG["Backend"]
#: The cells allocate above 10.5.40.0 and fc00:0:0:40:: so that flanneld's records (subnet
#: 10.5.34.0/24 and fc00:0:0:22::/64) never collide with a lease of theirs.
V4_CONFIG = {"Network": "10.5.0.0/16", "SubnetMin": "10.5.40.0", "Backend": BACKEND}
DUAL_CONFIG = {
    **V4_CONFIG,
    "EnableIPv6": True,
    "IPv6Network": "fc00::/48",
    "IPv6SubnetMin": "fc00:0:0:40::",
}


def subnet4(lab: Lab, cell: Cell) -> str:
    a, b, c, _ = env(lab, cell)["FLANNEL_SUBNET"].split("/")[0].split(".")
    return f"{a}.{b}.{c}.0/24"


def routes4(cell: Cell, dev: str = "flannel.1") -> list[str]:
    return [str(r["dst"]) for r in ip_json(cell, "-4", "route", "show", "dev", dev)]


def has_v6_device(cell: Cell) -> bool:
    return V6DEV in run("ip", "-n", cell.ns, "link", "show").stdout


@pytest.fixture(scope="module", params=["v2", "v3"])
def mixed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """cell-3 IPv4-only, then cell-1 and cell-2 dual-stack, one container each."""
    api = request.param
    with running_lab(
        tmp_path_factory.mktemp(f"mixed-{api}"),
        "pf6m",
        api,
        cells=3,
        started=0,
        containers=1,
        resync_interval=1.0,
        stack="dual",
        config=V4_CONFIG,
    ) as lab:
        c1, c2, c3 = lab.cells
        lab.start_daemon(c3)
        lab.wait_subnet_env(c3)
        lab.put_config(DUAL_CONFIG)
        for cell in (c1, c2):
            lab.start_daemon(cell)
        for i, cell in enumerate((c3, c1, c2)):
            lab.wait_subnet_env(cell)
            lab.attach_containers(cell, 1, start=i)
            for con in cell.containers:
                lab.start_http(con)
        for cell in lab.cells:
            for con in cell.containers:
                lab.wait_http(con)
        yield lab


def test_the_ipv4_only_cell_writes_flanneld_s_ipv4_form(mixed: Lab) -> None:
    """cell-3's key has no IPv6 half, its value PublicIPv6 null and no BackendV6Data, its
    subnet.env no IPv6 line and it has no flannel-v6.1; the others are dual-stack."""
    c1, c2, c3 = mixed.cells
    key = PREFIX + subnet4(mixed, c3).replace("/", "-")
    assert mixed.get(key) == (
        f'{{"PublicIP":"{c3.underlay_ip}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac(c3, "flannel.1")}"}}}}'
    )
    assert "FLANNEL_IPV6_SUBNET" not in env(mixed, c3)
    assert not has_v6_device(c3)
    for cell in (c1, c2):
        assert "FLANNEL_IPV6_SUBNET" in env(mixed, cell) and has_v6_device(cell)


def test_each_cell_programs_what_its_devices_carry(mixed: Lab) -> None:
    """The dual-stack cells route cell-3's IPv4 subnet on flannel.1 (nothing for it on
    flannel-v6.1) and each other on both devices; cell-3 routes both dual-stack cells'
    IPv4 halves and ignores their IPv6 halves."""
    c1, c2, c3 = mixed.cells
    s1, s2, s3 = (subnet4(mixed, c) for c in mixed.cells)
    for me, others in ((c1, (s2, s3)), (c2, (s1, s3)), (c3, (s1, s2))):
        wait(lambda: set(others) <= set(routes4(me)), what=f"IPv4 peers of {me.name}")
    wait(lambda: programmed6(c1, subnet6(mixed, c2), mac(c2, V6DEV), str(c2.underlay_ip6)))
    wait(lambda: programmed6(c2, subnet6(mixed, c1), mac(c1, V6DEV), str(c1.underlay_ip6)))
    for cell in (c1, c2):
        assert len(neighs6(cell)) == 1 and len(fdb6(cell)) == 1  # the other dual-stack cell
    assert not has_v6_device(c3)


def test_traffic_between_the_families_it_has(mixed: Lab) -> None:
    """IPv4 between the IPv4-only cell and both dual-stack cells, both ways; IPv6 between the
    dual-stack cells."""
    c1, c2, c3 = mixed.cells
    a, b, c = (cell.containers[0] for cell in (c1, c2, c3))
    assert c.ip6 is None and a.ip6 is not None
    for src, dst in ((c, a), (a, c), (c, b), (b, c), (a, b)):
        wait(lambda: mixed.curl(src.ns, dst.ip, timeout=2) == "200", 10, f"{src.name}->{dst.name}")
    assert mixed.curl(a.ns, b.ip6) == "200" and mixed.curl(b.ns, a.ip6) == "200"


@pytest.mark.parametrize("form", ["dual", "ipv6-only"])
def test_flanneld_s_own_records_are_programmed(mixed: Lab, form: str) -> None:
    """A lease exactly as flanneld writes it (dual stack: v0.17 over etcd v2 and v0.28 over v3
    write the same bytes; IPv6-only: flanneld's 0.0.0.0-0 key) is programmed on each device
    its halves fit: dual-stack cells take both halves, the IPv4-only cell the IPv4 half; its
    deletion removes it everywhere."""
    c1, c2, c3 = mixed.cells
    if form == "dual":
        value = GO["dual_v0.17"] if mixed.api == "v2" else GO["dual_head"]
        key = PREFIX + GO["key_dual"]
    else:
        value, key = GO["v6only_head"], PREFIX + GO["key_v6only"]
    net6 = IPv6Network("fc00:0:0:22::/64")
    mac4, mac6 = "c6:d2:32:6f:8f:44", "7e:1a:8e:5b:29:aa"
    mixed.put(key, value)
    for cell in (c1, c2):
        wait(lambda: programmed6(cell, net6, mac6, "fd00::5"), what=f"IPv6 half on {cell.name}")
    if form == "dual":
        for cell in (c1, c2, c3):
            wait(
                lambda: (
                    "10.5.34.0/24" in routes4(cell)
                    and neighs(cell).get("10.5.34.0") == mac4
                    and (mac4, "192.168.64.3") in fdb(cell)
                ),
                what=f"IPv4 half on {cell.name}",
            )
    else:
        assert "10.5.34.0/24" not in routes4(c1)
    assert not has_v6_device(c3)
    mixed.delete(key)
    for cell in (c1, c2):
        wait(lambda: gone6(cell, net6, mac6), what=f"removed from {cell.name}")
    for cell in (c1, c2, c3):
        wait(lambda: "10.5.34.0/24" not in routes4(cell), what=f"IPv4 removed on {cell.name}")
