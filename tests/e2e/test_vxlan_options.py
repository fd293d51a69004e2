"""The Backend options honoured end to end: VNI, Port, MTU and DirectRouting, with three cells
(cell-1 and cell-3 share an underlay subnet, cell-2 is behind the router)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pyflannel.lab.topo import Lab, run

from .conftest import _require, capture_vxlan, routes, subnet_of

pytestmark = [pytest.mark.e2e]

CONFIG = {
    "Network": "172.16.0.0/16",
    "SubnetLen": 24,
    "SubnetMin": "172.16.10.0",
    "SubnetMax": "172.16.99.0",
    "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789, "MTU": 1400, "DirectRouting": True},
}


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three running cells with one container each, on the config above."""
    _require()
    lab = Lab(tmp_path_factory.mktemp("lab-opts"), prefix=f"pfo{os.getpid() % 10000}-", cells=3)
    try:
        lab.build_underlay()
        lab.start_etcd()
        lab.put_config(CONFIG)
        lab.start_cells(lab.cells, 1)
        yield lab
    finally:
        lab.down()


def test_vni_port_and_mtu(lab3: Lab) -> None:
    """VNI 42 names the device flannel.42 with dstport 4789; MTU 1400 gives 1350 on the device
    and in subnet.env."""
    for cell in lab3.cells:
        detail = run("ip", "-d", "-n", cell.ns, "link", "show", "flannel.42").stdout
        assert "vxlan id 42 " in detail and "dstport 4789 " in detail and "mtu 1350 " in detail
        assert lab3.wait_subnet_env(cell)["FLANNEL_MTU"] == "1350"


def test_direct_routing_on_link_peers_and_vxlan_to_others(lab3: Lab) -> None:
    """cell-1 reaches cell-3 (same underlay subnet) by a plain route via its address, without
    neighbour or FDB entries, and cell-2 (behind the router) over flannel.42; both answer."""
    c1, c2, c3 = lab3.cells
    s2, s3 = subnet_of(lab3, c2), subnet_of(lab3, c3)
    Lab.wait(lambda: s2 in routes(c1) and s3 in routes(c1), 15, "routes on cell-1")
    direct = routes(c1)[s3]
    assert direct["gateway"] == str(c3.underlay_ip) and direct["dev"] == "eth0"
    assert (
        s3.split("/")[0] not in run("ip", "-n", c1.ns, "neigh", "show", "dev", "flannel.42").stdout
    )
    encap = routes(c1)[s2]
    assert encap["gateway"] == s2.split("/")[0] and encap["dev"] == "flannel.42"
    for dst in (c2, c3):
        code = lab3.curl(c1.containers[0].ns, dst.containers[0].ip)
        assert code == "200", dst.name


def test_vxlan_on_the_wire_uses_vni_42_and_port_4789(lab3: Lab) -> None:
    """Traffic between cell-1 and cell-2 is VXLAN on UDP 4789 with VNI 42."""
    c1, c2 = lab3.cells[:2]

    def send() -> None:
        assert lab3.curl(c1.containers[0].ns, c2.containers[0].ip) == "200"

    pkts = capture_vxlan(lab3, send, port=4789)
    ours = [p for p in pkts if {p["src"], p["dst"]} == {"10.0.1.3", "10.0.2.3"}]
    assert ours and all(p["dport"] == 4789 and p["vni"] == 42 for p in ours)
