"""IPv6 end to end, on both etcd APIs: a dual-stack lab (an IPv6 underlay next to the IPv4 one,
``flannel.1`` and ``flannel-v6.1`` on every cell, containers of both families) and an
IPv6-only lab (no IPv4 anywhere, etcd reached over IPv6).  Real pyflannel processes, real etcd,
curl over each family, VXLAN over IPv6 captured on the underlay, hand damage to the IPv6
device and its entries, ip6tables masquerading."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from ipaddress import IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from pyflannel.lab.topo import OUTSIDE_IP6, Cell, Lab, ip, prefixed_namespaces, run

from .conftest import _require, capture_vxlan, daemon_log, ip_json, running_lab
from .test_lab import lab_cmd

pytestmark = [pytest.mark.e2e]

V6DEV = "flannel-v6.1"
PREFIX = "/coreos.com/network/subnets/"


def wait(cond, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll until *cond()* is true."""
    Lab.wait(cond, timeout, what)


# --- what a cell holds ----------------------------------------------------------------------


def env(lab: Lab, cell: Cell) -> dict[str, str]:
    """The cell's subnet.env, once written."""
    return lab.wait_subnet_env(cell)


def subnet4(lab: Lab, cell: Cell) -> str:
    """The cell's IPv4 lease subnet, e.g. ``172.16.34.0/24``."""
    a, b, c, _ = env(lab, cell)["FLANNEL_SUBNET"].split("/")[0].split(".")
    return f"{a}.{b}.{c}.0/24"


def subnet6(lab: Lab, cell: Cell) -> IPv6Network:
    """The cell's IPv6 lease subnet, e.g. ``fd00:16:0:5::/64``."""
    return IPv6Interface(env(lab, cell)["FLANNEL_IPV6_SUBNET"]).network


def key_of(lab: Lab, cell: Cell) -> str:
    """The cell's lease key as flanneld names it: ``<v4>-24&<v6>-64`` or ``0.0.0.0-0&<v6>-64``."""
    v4 = subnet4(lab, cell).replace("/", "-") if lab.ipv4 else "0.0.0.0-0"
    net6 = subnet6(lab, cell)
    return f"{PREFIX}{v4}&{net6.network_address}-{net6.prefixlen}"


def mac(cell: Cell, dev: str) -> str:
    """*dev*'s MAC on *cell*."""
    return str(ip_json(cell, "link", "show", dev)[0]["address"])


def routes6(cell: Cell) -> dict[str, dict[str, object]]:
    """Main-table IPv6 routes by destination."""
    return {str(r["dst"]): r for r in ip_json(cell, "-6", "route", "show")}


def neighs6(cell: Cell) -> dict[str, str]:
    """Permanent neighbours on flannel-v6.1: IP -> MAC."""
    return {
        str(n["dst"]): str(n.get("lladdr"))
        for n in ip_json(cell, "-6", "neigh", "show", "dev", V6DEV)
        if "PERMANENT" in n.get("state", [])  # type: ignore[operator]
    }


def fdb6(cell: Cell) -> set[tuple[str, str]]:
    """Permanent FDB entries on flannel-v6.1 with a remote: (MAC, dst)."""
    return {
        (str(e["mac"]), str(e["dst"]))
        for e in ip_json(cell, "fdb", "show", "dev", V6DEV)
        if "dst" in e
    }


def programmed6(cell: Cell, net: IPv6Network, vtep_mac: str, remote: str) -> bool:
    """*cell* holds the three IPv6 entries of a peer: neighbour, FDB entry, onlink route."""
    r = routes6(cell).get(str(net))
    gw = str(net.network_address)
    return (
        r is not None
        and r.get("gateway") == gw
        and r.get("dev") == V6DEV
        and "onlink" in r.get("flags", [])  # type: ignore[operator]
        and neighs6(cell).get(gw) == vtep_mac
        and (vtep_mac, remote) in fdb6(cell)
    )


def gone6(cell: Cell, net: IPv6Network, vtep_mac: str) -> bool:
    """Nothing of that peer is left on flannel-v6.1."""
    return (
        str(net) not in routes6(cell)
        and str(net.network_address) not in neighs6(cell)
        and not any(m == vtep_mac for m, _ in fdb6(cell))
    )


def lease(public_ip: str, mac4: str | None, public_ipv6: str, mac6: str) -> str:
    """A lease value as flanneld (v0.17 and later) writes it: dual stack, or IPv6 only."""
    head = f'{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ipv6}","BackendType":"vxlan",'
    v4 = f'"BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},' if mac4 else ""
    return head + v4 + f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}'


# --- the dual-stack lab ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["v2", "v3"])
def dual(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two dual-stack cells with two containers each (cell-1 masquerades, cell-2 blackholes
    its unassigned addresses), an outside host on IPv4 and IPv6, and an idle cell-3."""
    api = request.param
    with running_lab(
        tmp_path_factory.mktemp(f"dual-{api}"),
        "pf6d",
        api,
        cells=3,
        started=2,
        containers=2,
        resync_interval=1.0,
        stack="dual",
        outside=True,
        daemon_args={"cell-1": ["--ip-masq"], "cell-2": ["--ip-blackhole-route"]},
    ) as lab:
        assert lab.outside_ns is not None
        lab.start_whoami(lab.outside_ns, "outside")
        # The outside host answers cell-2's containers (which nobody masquerades) via cell-2.
        c2 = lab.cells[1]
        ip(lab.router_ns, "-6", "route", "add", str(subnet6(lab, c2)), "via", str(c2.underlay_ip6))
        yield lab


def test_dual_stack_lease_and_subnet_env(dual: Lab) -> None:
    """The lease key names both subnets as flanneld does, its value carries PublicIPv6 and the
    IPv6 device's MAC in BackendV6Data, byte for byte; subnet.env gets the IPv6 pair after the
    IPv4 one and the MTU both devices allow."""
    for cell in dual.cells[:2]:
        value = dual.get(key_of(dual, cell))
        assert value == (
            f'{{"PublicIP":"{cell.underlay_ip}","PublicIPv6":"{cell.underlay_ip6}",'
            f'"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac(cell, "flannel.1")}"}},'
            f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac(cell, V6DEV)}"}}}}'
        )
        text = dual.subnet_file(cell).read_text()
        v4, net6 = subnet4(dual, cell), subnet6(dual, cell)
        assert text == (
            "FLANNEL_NETWORK=172.16.0.0/16\n"
            f"FLANNEL_SUBNET={v4.replace('.0/24', '.1/24')}\n"
            "FLANNEL_IPV6_NETWORK=fd00:16::/48\n"
            f"FLANNEL_IPV6_SUBNET={net6.network_address + 1}/64\n"
            "FLANNEL_MTU=1430\n"
            f"FLANNEL_IPMASQ={'true' if cell is dual.cells[0] else 'false'}\n"
        )
        assert net6.subnet_of(IPv6Network("fd00:16::/48")) and net6.prefixlen == 64


def test_ipv6_device(dual: Lab) -> None:
    """flannel-v6.1: vxlan id 1 from the cell's IPv6 underlay address on eth0, port 8472,
    nolearning, MTU 1500 - 70, its own MAC, <v6 subnet>/128, no router advertisements;
    flannel.1 keeps MTU 1500 - 50."""
    for cell in dual.cells[:2]:
        detail = run("ip", "-d", "-n", cell.ns, "link", "show", V6DEV).stdout
        assert "vxlan id 1 " in detail and f"local {cell.underlay_ip6} " in detail
        assert "dev eth0 " in detail and "dstport 8472 " in detail and "nolearning" in detail
        assert "mtu 1430 " in detail
        assert mac(cell, V6DEV) != mac(cell, "flannel.1")
        addrs = run("ip", "-n", cell.ns, "-6", "addr", "show", "dev", V6DEV).stdout
        assert f"inet6 {subnet6(dual, cell).network_address}/128 " in addrs
        accept_ra = run("cat", f"/proc/sys/net/ipv6/conf/{V6DEV}/accept_ra", ns=cell.ns)
        assert accept_ra.stdout.strip() == "0"
        assert "mtu 1450 " in run("ip", "-n", cell.ns, "link", "show", "flannel.1").stdout


def test_each_cell_programs_the_others_ipv6_half(dual: Lab) -> None:
    """Each cell holds, on flannel-v6.1, the other's permanent neighbour, self FDB entry to its
    IPv6 underlay address and onlink route (metric 1024) — and its IPv4 half on flannel.1."""
    c1, c2 = dual.cells[:2]
    for me, peer in ((c1, c2), (c2, c1)):
        net = subnet6(dual, peer)
        wait(lambda: programmed6(me, net, mac(peer, V6DEV), str(peer.underlay_ip6)), what="v6")
        assert routes6(me)[str(net)]["metric"] == 1024
        own = [r for r in ip_json(me, "-6", "route", "show", str(subnet6(dual, me)))]
        assert all(r.get("dev") != V6DEV for r in own)  # our own subnet is not programmed
        v4 = run("ip", "-n", me.ns, "-4", "route", "show", "dev", "flannel.1").stdout
        assert subnet4(dual, peer) in v4


def test_curl_over_both_families_and_ipv6_vxlan_on_the_wire(dual: Lab) -> None:
    """Every container pair answers over IPv4 and IPv6; on the underlay the IPv6 requests are
    IPv6 inside VXLAN (VNI 1, UDP 8472) inside IPv6 between the cells' fd00:: addresses, and
    the IPv4 ones IPv4 in VXLAN over IPv4."""
    c1, c2 = dual.cells[:2]
    for a in c1.containers:
        for b in c2.containers:
            for src, dst in ((a, b), (b, a)):
                assert dual.curl(src.ns, dst.ip6) == "200", (src.name, dst.ip6)
                assert dual.curl(src.ns, dst.ip) == "200", (src.name, dst.ip)
    a, b = c1.containers[0], c2.containers[0]

    def send() -> None:
        assert dual.curl(a.ns, b.ip6) == "200"
        assert dual.curl(a.ns, b.ip) == "200"

    pkts = capture_vxlan(dual, send)
    v6 = [
        p
        for p in pkts
        if p.get("family") == 6
        and p["src"] == str(c1.underlay_ip6)
        and p["dst"] == str(c2.underlay_ip6)
        and p.get("inner_family") == 6
        and p.get("inner_src") == str(a.ip6)
        and p.get("inner_dst") == str(b.ip6)
    ]
    v4 = [
        p
        for p in pkts
        if p.get("family") == 4
        and p["src"] == str(c1.underlay_ip)
        and p.get("inner_family") == 4
        and p.get("inner_dst") == str(b.ip)
    ]
    assert v6 and v4
    assert all(p["dport"] == 8472 and p["vni"] == 1 and p["inner_proto"] == 6 for p in v6)
    print(f"IPv6-in-VXLAN-over-IPv6, first packet: {json.dumps(v6[0])}")


def test_ipv6_entries_deleted_by_hand_come_back(dual: Lab) -> None:
    """The route, then the neighbour, then the FDB entry of a peer, deleted from flannel-v6.1
    with ip/bridge, are put back; traffic flows again."""
    c1, c2 = dual.cells[:2]
    net, peer_mac = subnet6(dual, c2), mac(c2, V6DEV)
    gw = str(net.network_address)
    ok = lambda: programmed6(c1, net, peer_mac, str(c2.underlay_ip6))  # noqa: E731
    run("ip", "-n", c1.ns, "-6", "route", "del", str(net), "dev", V6DEV)
    wait(ok, 10, "route repaired")
    run("ip", "-n", c1.ns, "-6", "neigh", "del", gw, "dev", V6DEV)
    wait(ok, 10, "neighbour repaired")
    run("bridge", "-n", c1.ns, "fdb", "del", peer_mac, "dev", V6DEV, "dst", str(c2.underlay_ip6))
    wait(ok, 10, "FDB entry repaired")
    assert dual.curl(c1.containers[0].ns, c2.containers[0].ip6) == "200"


def test_ipv6_entries_no_lease_backs_are_removed(dual: Lab) -> None:
    """A neighbour, FDB entry and route on flannel-v6.1 for a subnet nobody leases go."""
    c1 = dual.cells[0]
    net = IPv6Network("fd00:16:0:fe01::/64")
    stray = "02:00:00:fe:01:01"
    gw = str(net.network_address)
    neigh = ("neigh", "add", gw, "lladdr", stray, "dev", V6DEV, "nud", "permanent")
    run("ip", "-n", c1.ns, "-6", *neigh)
    fdb = ("fdb", "append", stray, "dev", V6DEV, "dst", "fd00:2::99", "self", "permanent")
    run("bridge", "-n", c1.ns, *fdb)
    run("ip", "-n", c1.ns, "-6", "route", "add", str(net), "via", gw, "dev", V6DEV, "onlink")
    wait(lambda: gone6(c1, net, stray), 10, "stray IPv6 entries removed")


def test_ipv6_peer_lifecycle(dual: Lab) -> None:
    """A dual-stack lease written in etcd is programmed on both devices of both cells; a new
    IPv6 MAC or PublicIPv6 leaves nothing stale; its deletion removes the peer everywhere."""
    c1, c2 = dual.cells[:2]
    key = f"{PREFIX}172.16.202.0-24&fd00:16:0:ca::-64"
    net = IPv6Network("fd00:16:0:ca::/64")
    m4, m6, m6b = "02:00:00:00:ca:04", "02:00:00:00:ca:06", "02:00:00:00:ca:07"
    dual.put(key, lease("10.0.2.77", m4, "fd00:2::77", m6))
    for cell in (c1, c2):
        wait(lambda: programmed6(cell, net, m6, "fd00:2::77"), what="peer added")
        v4 = run("ip", "-n", cell.ns, "-4", "neigh", "show", "dev", "flannel.1").stdout
        assert "172.16.202.0" in v4 and m4 in v4
    dual.put(key, lease("10.0.2.77", m4, "fd00:2::77", m6b))
    for cell in (c1, c2):
        wait(lambda: programmed6(cell, net, m6b, "fd00:2::77") and gone6_mac(cell, m6), what="mac")
    dual.put(key, lease("10.0.2.77", m4, "fd00:2::78", m6b))
    for cell in (c1, c2):
        wait(
            lambda: (
                programmed6(cell, net, m6b, "fd00:2::78") and (m6b, "fd00:2::77") not in fdb6(cell)
            ),
            what="PublicIPv6 change",
        )
    dual.delete(key)
    for cell in (c1, c2):
        wait(lambda: gone6(cell, net, m6b), what="peer removed from flannel-v6.1")
        wait(
            lambda: "172.16.202.0" not in run("ip", "-n", cell.ns, "neigh", "show").stdout,
            what="peer removed from flannel.1",
        )
    changed = [e for e in daemon_log(dual, c1) if e.get("event") == "peer_changed"]
    assert any(e.get("v6_vtep_mac") == m6b and e.get("old_v6_vtep_mac") == m6 for e in changed)


def gone6_mac(cell: Cell, vtep_mac: str) -> bool:
    """No FDB entry for *vtep_mac* is left on flannel-v6.1."""
    return not any(m == vtep_mac for m, _ in fdb6(cell))


def test_unsafe_ipv6_halves_are_skipped(dual: Lab) -> None:
    """A dual-stack lease whose IPv6 half is outside the IPv6Network (or has a multicast
    PublicIPv6) gets its IPv4 half programmed and its IPv6 half skipped with one warning."""
    c1 = dual.cells[0]
    key = f"{PREFIX}172.16.203.0-24&fd99:0:0:1::-64"
    dual.put(key, lease("10.0.2.79", "02:00:00:00:cb:04", "fd00:2::79", "02:00:00:00:cb:06"))
    wait(
        lambda: "172.16.203.0/24" in run("ip", "-n", c1.ns, "-4", "route", "show").stdout,
        what="IPv4 half programmed",
    )
    wait(
        lambda: any(
            e.get("event") == "peer_skipped" and e.get("device") == V6DEV
            for e in daemon_log(dual, c1)
        ),
        what="IPv6 half skipped",
    )
    assert "fd99:0:0:1::/64" not in routes6(c1)
    dual.delete(key)


def test_ipv6_device_deleted_by_hand_is_recreated(dual: Lab) -> None:
    """flannel-v6.1 deleted with ip link del comes back with its address and every peer; a
    new MAC goes into the lease's BackendV6Data and the other cell follows it."""
    c1, c2 = dual.cells[:2]
    run("ip", "-n", c1.ns, "link", "del", V6DEV)
    wait(lambda: V6DEV in run("ip", "-n", c1.ns, "link", "show").stdout, 10, "re-created")
    net2 = subnet6(dual, c2)
    wait(lambda: programmed6(c1, net2, mac(c2, V6DEV), str(c2.underlay_ip6)), 10, "peers back")
    new_mac = mac(c1, V6DEV)
    wait(lambda: f'"VtepMAC":"{new_mac}"}}}}' in dual.get(key_of(dual, c1)), 10, "lease updated")
    net1 = subnet6(dual, c1)
    wait(lambda: programmed6(c2, net1, new_mac, str(c1.underlay_ip6)), 10, "cell-2 follows")
    wait(lambda: dual.curl(c2.containers[0].ns, c1.containers[0].ip6) == "200", 10, "traffic")


def test_restart_reuses_both_devices_and_the_lease(dual: Lab) -> None:
    """A restarted dual-stack daemon finds its lease by PublicIP, reuses flannel.1 and
    flannel-v6.1 with their MACs (nothing changes for the peers) and IPv6 keeps flowing."""
    c1, c2 = dual.cells[:2]
    key, macs = key_of(dual, c1), (mac(c1, "flannel.1"), mac(c1, V6DEV))
    value = dual.get(key)
    assert dual.kill(f"pyflannel-{c1.name}") == 0
    before = len(daemon_log(dual, c1))
    dual.start_daemon(c1)
    wait(
        lambda: any(e.get("event") == "ready" for e in daemon_log(dual, c1)[before:]),
        20,
        "restarted daemon ready",
    )
    new = daemon_log(dual, c1)[before:]
    reused = [e["device"] for e in new if e.get("event") == "device_reused"]
    assert reused == ["flannel.1", V6DEV]
    assert (mac(c1, "flannel.1"), mac(c1, V6DEV)) == macs
    assert key_of(dual, c1) == key and dual.get(key) == value
    assert dual.curl(c2.containers[0].ns, c1.containers[0].ip6) == "200"


def test_ip6tables_masquerade(dual: Lab) -> None:
    """cell-1 (--ip-masq) holds flanneld's IPv6 rules in ip6tables and its containers reach the
    outside host with cell-1's IPv6 underlay address; cell-2's keep their own address."""
    c1, c2 = dual.cells[:2]
    save = run("ip6tables-save", "-t", "nat", ns=c1.ns).stdout
    net6 = subnet6(dual, c1)
    assert f"-A FLANNEL-POSTRTG -s {net6} -d fd00:16::/48" in save
    assert "-A FLANNEL-POSTRTG -s fd00:16::/48 ! -d ff00::/8" in save
    assert "FLANNEL-FWD" in run("ip6tables-save", "-t", "filter", ns=c1.ns).stdout
    assert "FLANNEL-POSTRTG" not in run("ip6tables-save", "-t", "nat", ns=c2.ns).stdout
    assert dual.whoami(c1.containers[0].ns, OUTSIDE_IP6) == str(c1.underlay_ip6)
    con = c2.containers[0]
    assert dual.whoami(con.ns, OUTSIDE_IP6) == str(con.ip6)


def test_blackhole_routes_for_both_subnets(dual: Lab) -> None:
    """--ip-blackhole-route on a dual-stack cell: a blackhole for its IPv4 and for its IPv6
    subnet (as flanneld adds both), at the lowest preference, so the containers on br0 stay
    reachable; one deleted by hand comes back."""
    c1, c2 = dual.cells[:2]
    net6 = str(subnet6(dual, c2))

    def blackholes(family: str) -> set[str]:
        routes = ip_json(c2, family, "route", "show", "type", "blackhole")
        return {str(r["dst"]) for r in routes}

    wait(lambda: net6 in blackholes("-6"), what="IPv6 blackhole")
    assert subnet4(dual, c2) in blackholes("-4")
    run("ip", "-n", c2.ns, "-6", "route", "del", "blackhole", net6, "metric", str(2**32 - 1))
    wait(lambda: net6 in blackholes("-6"), what="IPv6 blackhole put back")
    assert dual.curl(c1.containers[0].ns, c2.containers[1].ip6) == "200"
    assert "blackhole" not in run("ip", "-n", c1.ns, "-6", "route", "show").stdout


# --- the IPv6-only lab ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["v2", "v3"])
def only6(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """Two IPv6-only cells (no IPv4 on the underlay or in the network) and an idle cell-3."""
    api = request.param
    with running_lab(
        tmp_path_factory.mktemp(f"only6-{api}"),
        "pf6o",
        api,
        cells=3,
        started=2,
        containers=2,
        resync_interval=1.0,
        stack="ipv6",
    ) as lab:
        yield lab


def test_ipv6_only_lease_subnet_env_and_devices(only6: Lab) -> None:
    """The key is flanneld's 0.0.0.0-0&<v6>-64, the value has PublicIP 0.0.0.0 and no
    BackendData; subnet.env has no IPv4 line; there is no flannel.1."""
    for cell in only6.cells[:2]:
        assert only6.get(key_of(only6, cell)) == (
            f'{{"PublicIP":"0.0.0.0","PublicIPv6":"{cell.underlay_ip6}","BackendType":"vxlan",'
            f'"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac(cell, V6DEV)}"}}}}'
        )
        net6 = subnet6(only6, cell)
        assert only6.subnet_file(cell).read_text() == (
            "FLANNEL_IPV6_NETWORK=fd00:16::/48\n"
            f"FLANNEL_IPV6_SUBNET={net6.network_address + 1}/64\n"
            "FLANNEL_MTU=1430\n"
            "FLANNEL_IPMASQ=false\n"
        )
        assert "flannel.1" not in run("ip", "-n", cell.ns, "link", "show").stdout
        assert run("ip", "-n", cell.ns, "-4", "addr", "show", "dev", "eth0").stdout == ""


def test_ipv6_only_traffic_and_capture(only6: Lab) -> None:
    """Every container pair answers over IPv6, as IPv6 in VXLAN over IPv6 on the wire."""
    c1, c2 = only6.cells[:2]
    for a in c1.containers:
        for b in c2.containers:
            assert only6.curl(a.ns, b.ip6) == "200"
            assert only6.curl(b.ns, a.ip6) == "200"
    a, b = c1.containers[0], c2.containers[0]

    def send() -> None:
        assert only6.curl(a.ns, b.ip6) == "200"

    pkts = capture_vxlan(only6, send)
    assert any(
        p.get("family") == 6
        and p["src"] == str(c1.underlay_ip6)
        and p.get("inner_src") == str(a.ip6)
        and p.get("inner_dst") == str(b.ip6)
        for p in pkts
    )


def test_ipv6_only_drift_repair_and_peer_deletion(only6: Lab) -> None:
    """The IPv6-only cells repair a deleted route and forget a deleted IPv6-only peer."""
    c1, c2 = only6.cells[:2]
    net = subnet6(only6, c2)
    run("ip", "-n", c1.ns, "-6", "route", "del", str(net), "dev", V6DEV)
    wait(lambda: programmed6(c1, net, mac(c2, V6DEV), str(c2.underlay_ip6)), 10, "repaired")
    key = f"{PREFIX}0.0.0.0-0&fd00:16:0:cc::-64"
    net_x = IPv6Network("fd00:16:0:cc::/64")
    only6.put(key, lease("0.0.0.0", None, "fd00:2::88", "02:00:00:00:cc:06"))
    wait(lambda: programmed6(c1, net_x, "02:00:00:00:cc:06", "fd00:2::88"), what="added")
    only6.delete(key)
    wait(lambda: gone6(c1, net_x, "02:00:00:00:cc:06"), what="removed")


def test_ipv6_only_lease_taken_by_another_ipv6_host(only6: Lab) -> None:
    """An IPv6-only host is known by its PublicIPv6: another IPv6-only host's lease written
    over ours (PublicIP 0.0.0.0 on both) is a takeover, and the daemon exits 1 saying so;
    the same host's lease with another MAC is only rewritten."""
    c3 = only6.cells[2]
    only6.start_daemon(c3)
    only6.wait_subnet_env(c3)
    key = key_of(only6, c3)
    ours = only6.get(key)
    mine = json.loads(ours)
    other_mac = "02:00:00:00:dd:06"
    only6.put(key, lease("0.0.0.0", None, str(mine["PublicIPv6"]), other_mac))
    wait(lambda: only6.get(key) == ours, 10, "own lease rewritten (same host)")
    only6.put(key, lease("0.0.0.0", None, "fd00:2::99", other_mac))
    assert only6.wait_exit(f"pyflannel-{c3.name}", 20) == 1
    fatal = [e for e in daemon_log(only6, c3) if e.get("event") == "fatal"]
    assert fatal and "fd00:2::99" in str(fatal[-1]["error"])


# --- pyflannel-lab, as a newcomer runs it ----------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "api", "cni", "passed"),
    [("--ipv6", "v2", True, 16), ("--ipv6-only", "v3", False, 8)],
)
def test_lab_up_ipv6_check_status_down(
    tmp_path: Path, flag: str, api: str, cni: bool, passed: int
) -> None:
    """`pyflannel-lab up --ipv6` (containers through pyflannel-cni: host-local gets a range per
    family) and `--ipv6-only`: check passes every pair over each family the lab has, status
    shows flannel-v6.1 and its entries, down leaves nothing."""
    _require()
    prefix = f"pfl6{os.getpid() % 10000}{api}-"
    workdir = tmp_path / "lab"
    try:
        up = lab_cmd(workdir, prefix, "up", "--api", api, flag, *(["--cni"] if cni else []))
        assert up.returncode == 0, up.stdout + up.stderr
        check = lab_cmd(workdir, prefix, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"{passed} passed, 0 failed" in check.stdout
        assert "flannel-v6.1 → UDP 8472 fd00:1::3 → fd00:2::3" in check.stdout
        assert ("flannel.1 →" in check.stdout) == (flag == "--ipv6")
        status = lab_cmd(workdir, prefix, "status")
        assert status.returncode == 0, status.stderr
        assert status.stdout.count('"BackendV6Data":{"VNI":1,') == 2
        assert (
            "flannel-v6.1: mac" in status.stdout and "dst fd00:2::3 self permanent" in status.stdout
        )
        assert lab_cmd(workdir, prefix, "down").returncode == 0
        assert prefixed_namespaces(prefix) == []
    finally:
        lab_cmd(workdir, prefix, "down")
