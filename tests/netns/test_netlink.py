"""The Netlink adapter and apply() against a real kernel, in a throwaway network namespace.

Each test gets its own namespace ``pft-nl-<pid>-<n>`` holding a veth pair (``eth0``
192.0.2.10/24 with a default route via 192.0.2.1, and its peer ``eth1``); nothing is created in
the root namespace, and the namespace is deleted whatever the outcome.  Assertions read the
kernel with ``ip``/``bridge``, as a user would.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from pyflannel.backend.vxlan import PeerScope, desired_state, peer_entries
from pyflannel.errors import KernelError
from pyflannel.ipnet import SubnetKey
from pyflannel.kernel.netlink import Netlink
from pyflannel.kernel.plan import Desired, Keys, Op, Ownership, Plan, plan
from pyflannel.kernel.records import Fdb, KernelState, Link, Neigh, PeerEntries, Route, VxlanSpec
from pyflannel.kernel.sync import KernelSync, SyncResult
from pyflannel.lease import Lease, LeaseAttrs

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("bridge") is None,
        reason="needs iproute2 (ip, bridge)",
    ),
]

NETWORK = IPv4Network("10.5.0.0/16")
OWN = IPv4Network("10.5.34.0/24")
LOCAL = IPv4Address("192.0.2.10")
PEER_IP = IPv4Address("192.0.2.20")  # on eth0's link, not a local address
SCOPE = PeerScope(NETWORK, 24, own_subnet=OWN, own_public_ip=LOCAL)
_counter = itertools.count()


def run(*cmd: str) -> str:
    """Run *cmd*, fail the test with its stderr if it fails, return its stdout."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


def ip(ns: str, *args: str) -> str:
    """``ip -n NS ARGS``."""
    return run("ip", "-n", ns, *args)


def bridge(ns: str, *args: str) -> str:
    """``bridge -n NS ARGS``."""
    return run("bridge", "-n", ns, *args)


def namespaces() -> set[str]:
    """Names of the existing network namespaces."""
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


def root_links() -> set[str]:
    """Names of the links in the root namespace (where these tests must create nothing)."""
    return {
        line.split(":")[1].strip().split("@")[0]
        for line in run("ip", "-o", "link", "show").splitlines()
    }


@pytest.fixture(autouse=True, scope="module")
def _root_namespace_untouched() -> Iterator[None]:
    """No device these tests create ever appears in the root namespace."""
    ours = {"flannel.1", "flannel.2", "flannel.42", "eth1"}
    before = root_links() & ours
    yield
    assert root_links() & ours == before


@pytest.fixture(name="ns")
def _ns() -> Iterator[str]:
    name = f"pft-nl-{os.getpid()}-{next(_counter)}"
    run("ip", "netns", "add", name)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ip(name, "addr", "add", f"{LOCAL}/24", "dev", "eth0")
        ip(name, "link", "set", "eth0", "up")
        ip(name, "link", "set", "eth1", "up")
        ip(name, "route", "add", "default", "via", "192.0.2.1", "dev", "eth0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(name="nl")
def _nl(ns: str) -> Iterator[Netlink]:
    nl = Netlink(netns=ns)
    try:
        yield nl
    finally:
        nl.close()


@pytest.fixture(name="eth0")
def _eth0(nl: Netlink) -> Link:
    link = nl.link("eth0")
    assert link is not None
    return link


def spec_for(eth0: Link, **changes: object) -> VxlanSpec:
    """flanneld's default device on eth0, with *changes*."""
    base: dict[str, object] = {
        "name": "flannel.1",
        "vni": 1,
        "port": 8472,
        "underlay_index": eth0.index,
        "local": LOCAL,
        "mtu": 1450,
    }
    base.update(changes)
    return VxlanSpec(**base)  # type: ignore[arg-type]


@pytest.fixture(name="dev")
def _dev(nl: Netlink, eth0: Link) -> Link:
    """flannel.1 created, carrying 10.5.34.0/32 and up, as after start-up."""
    dev, created = nl.ensure_vxlan(spec_for(eth0))
    assert created
    nl.ensure_address(dev, IPv4Interface(f"{OWN.network_address}/32"), NETWORK)
    return dev


def link_details(ns: str, name: str) -> str:
    """``ip -d link show NAME`` as one string."""
    return ip(ns, "-d", "link", "show", name)


def mac_of(ns: str, name: str) -> str:
    """The MAC of *name* as ip shows it."""
    m = re.search(r"link/ether ([0-9a-f:]{17})", ip(ns, "link", "show", name))
    assert m is not None
    return m.group(1)


@pytest.fixture(name="ks")
def _ks(nl: Netlink, dev: Link) -> Iterator[KernelSync]:
    """The peer-entry engine on flannel.1 (no DirectRouting)."""
    ks = nl.peer_sync(dev.index, Ownership(dev.index))
    try:
        yield ks
    finally:
        ks.close()


def observe(ks: KernelSync) -> KernelState:
    """What pyflannel manages on the device, re-read from the kernel (only routes it owns)."""
    ks.reload()
    m = ks.mirror
    routes = {
        e.dst: e.route
        for dst in m.keys(ks.owner).routes
        for e in m.routes_to(dst)
        if ks.owner.owns(e)
    }
    return KernelState(m.neighs(), m.fdb(), routes)


def write(ks: KernelSync, *ops: tuple[str, Neigh | Fdb | Route]) -> dict[int, KernelError]:
    """Write *ops* through the batched writer; return its failures."""
    return ks.write([Op(kind, target) for kind, target in ops])


def peer(subnet: str, ip_: IPv4Address | str, mac: str) -> Lease:
    """A vxlan peer lease."""
    return Lease(SubnetKey(IPv4Network(subnet)), LeaseAttrs(IPv4Address(ip_), "vxlan", mac, 1))


# --- the device ---------------------------------------------------------------------------------


def test_ensure_vxlan_creates_flanneld_device(ns: str, nl: Netlink, eth0: Link) -> None:
    """ensure_vxlan creates flannel.1 with VNI 1, dstport 8472, local, dev, nolearning and MTU."""
    dev, created = nl.ensure_vxlan(spec_for(eth0))
    assert created
    assert dev.name == "flannel.1"
    assert dev.mtu == 1450
    text = link_details(ns, "flannel.1")
    for token in (
        "mtu 1450",
        "vxlan id 1 ",
        "local 192.0.2.10",
        "dev eth0",
        "dstport 8472",
        "nolearning",
    ):
        assert token in text, f"{token!r} not in {text}"
    assert "gbp" not in text
    assert mac_of(ns, "flannel.1") == dev.mac
    first = int(dev.mac.split(":")[0], 16)
    assert first & 0x01 == 0  # unicast
    assert first & 0x02 == 0x02  # locally administered


def test_ensure_vxlan_options(ns: str, nl: Netlink, eth0: Link) -> None:
    """VNI, port, learning, GBP and MTU from the spec reach the kernel."""
    dev, created = nl.ensure_vxlan(
        spec_for(eth0, name="flannel.42", vni=42, port=4789, learning=True, gbp=True, mtu=1400)
    )
    assert created
    text = link_details(ns, "flannel.42")
    for token in ("mtu 1400", "vxlan id 42 ", "dstport 4789", "gbp"):
        assert token in text, f"{token!r} not in {text}"
    assert "nolearning" not in text
    assert dev.mtu == 1400


def test_ensure_vxlan_turns_accept_ra_off(ns: str, nl: Netlink, eth0: Link) -> None:
    """The new device ignores IPv6 router advertisements, in the namespace it was created in."""
    nl.ensure_vxlan(spec_for(eth0))
    value = run("ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv6/conf/flannel.1/accept_ra")
    assert value.strip() == "0"


def test_ensure_vxlan_reuses_compatible_device(ns: str, nl: Netlink, eth0: Link) -> None:
    """A second ensure_vxlan keeps the device, its index and its MAC."""
    first, _ = nl.ensure_vxlan(spec_for(eth0))
    again, created = nl.ensure_vxlan(spec_for(eth0))
    assert not created
    assert (again.index, again.mac) == (first.index, first.mac)
    assert mac_of(ns, "flannel.1") == first.mac


def test_ensure_vxlan_reuse_fixes_mtu_and_ignores_learning(
    ns: str, nl: Netlink, eth0: Link
) -> None:
    """MTU and learning differences do not re-create the device; the MTU is set in place."""
    first, _ = nl.ensure_vxlan(spec_for(eth0))
    again, created = nl.ensure_vxlan(spec_for(eth0, mtu=1300, learning=True))
    assert not created
    assert (again.index, again.mac, again.mtu) == (first.index, first.mac, 1300)
    assert "mtu 1300" in link_details(ns, "flannel.1")


@pytest.mark.parametrize(
    ("changes", "token"),
    [
        pytest.param({"port": 4789}, "dstport 4789", id="port"),
        pytest.param({"local": IPv4Address("192.0.2.30")}, "local 192.0.2.30", id="local"),
        pytest.param({"vni": 2}, "vxlan id 2 ", id="vni"),
        pytest.param({"gbp": True}, "gbp", id="gbp"),
    ],
)
def test_ensure_vxlan_recreates_incompatible(
    ns: str, nl: Netlink, eth0: Link, changes: dict[str, object], token: str
) -> None:
    """A device with another port, local address, VNI or GBP flag is deleted and re-created."""
    ip(ns, "addr", "add", "192.0.2.30/24", "dev", "eth0")
    first, _ = nl.ensure_vxlan(spec_for(eth0))
    again, created = nl.ensure_vxlan(spec_for(eth0, **changes))
    assert created
    assert again.index != first.index
    assert token in link_details(ns, "flannel.1")
    assert again.mac == mac_of(ns, "flannel.1")


def test_ensure_vxlan_replaces_other_kind(ns: str, nl: Netlink, eth0: Link) -> None:
    """A non-VXLAN device squatting on the name is replaced by the VXLAN device."""
    ip(ns, "link", "add", "flannel.1", "type", "bridge")
    dev, created = nl.ensure_vxlan(spec_for(eth0))
    assert created
    assert "vxlan id 1 " in link_details(ns, "flannel.1")
    assert dev.index == int(ip(ns, "link", "show", "flannel.1").split(":")[0])


def test_ensure_address_keeps_only_vtep_address_in_network(
    ns: str, nl: Netlink, eth0: Link
) -> None:
    """Only <subnet>.0/32 stays inside the network; addresses outside it are kept; link is up."""
    dev, _ = nl.ensure_vxlan(spec_for(eth0))
    ip(ns, "addr", "add", "10.5.9.0/32", "dev", "flannel.1")
    ip(ns, "addr", "add", "10.5.34.7/24", "dev", "flannel.1")
    ip(ns, "addr", "add", "10.99.0.1/24", "dev", "flannel.1")
    for _ in range(2):  # idempotent
        nl.ensure_address(dev, IPv4Interface("10.5.34.0/32"), NETWORK)
        text = ip(ns, "-4", "addr", "show", "dev", "flannel.1")
        assert sorted(re.findall(r"inet (\S+)", text)) == ["10.5.34.0/32", "10.99.0.1/24"]
    flags = re.search(r"<([^>]*)>", ip(ns, "link", "show", "flannel.1"))
    assert flags is not None
    assert "UP" in flags.group(1).split(",")


# --- entries ------------------------------------------------------------------------------------

VTEP = IPv4Address("10.5.51.0")
SUBNET = IPv4Network("10.5.51.0/24")
MAC = "5a:1e:02:33:44:55"
MAC2 = "5a:1e:02:33:44:66"


def test_neigh_fdb_route_round_trip(ns: str, ks: KernelSync, dev: Link) -> None:
    """The batched writer programs what flanneld programs, the mirror reads it back, deletes
    remove it."""
    route = Route(SUBNET, VTEP, dev.index, True)
    assert (
        write(
            ks,
            ("replace_neigh", Neigh(VTEP, MAC)),
            ("replace_fdb", Fdb(MAC, PEER_IP)),
            ("replace_route", route),
        )
        == {}
    )
    assert observe(ks) == KernelState(
        neighs={VTEP: MAC}, fdb={Fdb(MAC, PEER_IP)}, routes={SUBNET: route}
    )
    assert re.search(
        rf"^10\.5\.51\.0 lladdr {MAC} PERMANENT", ip(ns, "neigh", "show", "dev", "flannel.1"), re.M
    )
    assert f"{MAC} dst {PEER_IP} self permanent" in bridge(ns, "fdb", "show", "dev", "flannel.1")
    shown = ip(ns, "route", "show", str(SUBNET))
    assert re.search(r"^10\.5\.51\.0/24 via 10\.5\.51\.0 dev flannel\.1 .*onlink", shown, re.M)
    assert "proto boot" in ip(ns, "-d", "route", "show", str(SUBNET))

    assert (
        write(
            ks,
            ("delete_route", route),
            ("delete_neigh", Neigh(VTEP, MAC)),
            ("delete_fdb", Fdb(MAC, PEER_IP)),
        )
        == {}
    )
    assert observe(ks) == KernelState()
    assert ip(ns, "route", "show", str(SUBNET)).strip() == ""
    assert "10.5.51.0" not in ip(ns, "neigh", "show", "dev", "flannel.1")
    assert MAC not in bridge(ns, "fdb", "show", "dev", "flannel.1")


def test_replace_overwrites(ks: KernelSync, dev: Link) -> None:
    """Replacing existing entries changes them in place (a new MAC, a new destination)."""
    write(
        ks,
        ("replace_neigh", Neigh(VTEP, MAC)),
        ("replace_neigh", Neigh(VTEP, MAC2)),
        ("replace_fdb", Fdb(MAC, PEER_IP)),
        ("replace_fdb", Fdb(MAC, IPv4Address("192.0.2.21"))),
        ("replace_route", Route(SUBNET, IPv4Address("10.5.51.9"), dev.index, True)),
        ("replace_route", Route(SUBNET, VTEP, dev.index, True)),
    )
    st = observe(ks)
    assert st.neighs == {VTEP: MAC2}
    assert st.fdb == {Fdb(MAC, IPv4Address("192.0.2.21"))}
    assert st.routes == {SUBNET: Route(SUBNET, VTEP, dev.index, True)}


def test_delete_absent_is_not_an_error(ks: KernelSync, dev: Link) -> None:
    """Deleting a neighbour, FDB entry or route that is not there is no failure."""
    failed = write(
        ks,
        ("delete_neigh", Neigh(VTEP, MAC)),
        ("delete_fdb", Fdb(MAC, PEER_IP)),
        ("delete_route", Route(SUBNET, VTEP, dev.index, True)),
        ("replace_fdb", Fdb(MAC, PEER_IP)),
        ("delete_fdb", Fdb(MAC, IPv4Address("192.0.2.99"))),  # same MAC, other dst
        ("delete_fdb", Fdb(MAC, PEER_IP)),
        ("delete_fdb", Fdb(MAC, PEER_IP)),
    )
    assert failed == {}
    assert observe(ks) == KernelState()


def test_kernel_errors_are_reported_by_operation(nl: Netlink, dev: Link) -> None:
    """A refused request is a KernelError with the errno and the operation, for that request
    alone; the ones around it are applied."""
    ks = nl.peer_sync(dev.index + 1000, Ownership(dev.index + 1000))  # no such device
    try:
        failed = ks.write(
            [
                Op("replace_route", Route(SUBNET, VTEP, dev.index, True)),
                Op("replace_neigh", Neigh(VTEP, MAC)),
            ]
        )
    finally:
        ks.close()
    assert list(failed) == [1]
    assert failed[1].errno > 0
    assert failed[1].op == "replace_neigh"


def test_routes_on_other_devices_are_not_ours(ns: str, ks: KernelSync, dev: Link) -> None:
    """Routes on other devices (and the kernel's connected routes) are never ours, whatever
    their prefix; every one is seen, by destination."""
    ip(ns, "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
    ip(ns, "route", "add", "10.5.60.0/25", "via", "192.0.2.1")
    ip(ns, "route", "add", str(OWN), "via", "192.0.2.1")
    write(ks, ("replace_route", Route(SUBNET, VTEP, dev.index, True)))
    assert set(observe(ks).routes) == {SUBNET}
    for dst in ("198.51.100.0/24", "10.5.60.0/25", str(OWN), "192.0.2.0/24"):
        seen = ks.mirror.routes_to(IPv4Network(dst))
        assert seen
        assert not any(ks.owner.owns(e) for e in seen)
    connected = ks.mirror.routes_to(IPv4Network("192.0.2.0/24"))[0]
    assert connected.gateway is None


def test_any_route_on_the_device_is_ours(ns: str, ks: KernelSync, dev: Link) -> None:
    """Every route on the VXLAN device is compared with the leases: any prefix length, with or
    without a gateway, inside the Network or not; none backed by a lease survives a sync."""
    ip(ns, "route", "add", "10.5.77.128/25", "via", "10.5.77.0", "dev", "flannel.1", "onlink")
    ip(ns, "route", "add", "10.99.0.0/16", "dev", "flannel.1")
    assert observe(ks).routes == {
        IPv4Network("10.5.77.128/25"): Route(
            IPv4Network("10.5.77.128/25"), IPv4Address("10.5.77.0"), dev.index, True
        ),
        IPv4Network("10.99.0.0/16"): Route(IPv4Network("10.99.0.0/16"), None, dev.index, False),
    }
    converge(ks, KernelState())
    assert observe(ks) == KernelState()


def test_delete_route_spares_same_destination_elsewhere(ns: str, ks: KernelSync, dev: Link) -> None:
    """Deleting our route never deletes a route to the same destination on another device."""
    ip(ns, "route", "add", "10.5.88.0/24", "via", "192.0.2.1")
    gone = Route(IPv4Network("10.5.88.0/24"), IPv4Address("10.5.88.0"), dev.index, True)
    assert write(ks, ("delete_route", gone)) == {}
    assert "10.5.88.0/24 via 192.0.2.1" in ip(ns, "route", "show")


def test_route_is_onlink(ks: KernelSync) -> None:
    """An address on a connected subnet is on-link; one behind the default gateway is not."""
    assert ks.route_is_onlink(PEER_IP) is True
    assert ks.route_is_onlink(IPv4Address("198.51.100.7")) is False


def test_unknown_netns_is_not_created() -> None:
    """Netlink(netns=...) with a misspelt name fails instead of creating a namespace."""
    name = f"pft-nl-{os.getpid()}-missing"
    try:
        with pytest.raises(OSError):
            Netlink(netns=name).close()
        assert name not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


# --- reconcile against the kernel ---------------------------------------------------------------

PEERS = [
    peer("10.5.51.0/24", "192.0.2.20", "5a:1e:02:33:44:51"),
    peer("10.5.52.0/24", "192.0.2.21", "5a:1e:02:33:44:52"),
    peer("10.5.53.0/24", "192.0.2.22", "5a:1e:02:33:44:53"),
]


def desired_of(state: KernelState) -> Desired:
    """A Desired holding exactly the entries of *state*."""
    return Desired.of(state)


def replan(ks: KernelSync, desired: KernelState) -> Plan:
    """The full plan from *desired* to what the kernel holds now."""
    ks.reload()
    return plan(desired_of(desired), ks.mirror, ks.owner)


def converge(ks: KernelSync, desired: KernelState) -> None:
    """Make *desired* the wanted state, sync every key, and check that nothing failed."""
    ks.desired = desired_of(desired)
    ks.reload()
    result = ks.sync()
    assert result.report.errors == []


def test_apply_converges_and_is_idempotent(ns: str, ks: KernelSync, dev: Link) -> None:
    """After apply(plan(desired, observe())) the kernel equals desired; the next plan is empty."""
    desired = desired_state(PEERS, dev.index, SCOPE).state
    converge(ks, desired)
    assert observe(ks) == desired
    assert replan(ks, desired).empty
    fdb = bridge(ns, "fdb", "show", "dev", "flannel.1")
    for le in PEERS:
        assert f"{le.attrs.vtep_mac} dst {le.attrs.public_ip} self permanent" in fdb


def set_in_chunks(ks: KernelSync, leases: list[Lease], size: int) -> Iterator[Keys]:
    """Want the peers of *leases*, *size* at a time, yielding each chunk's keys (what
    PeerSync.sync_all hands to KernelSync.sync_chunks)."""
    ks.desired.clear()
    for start in range(0, len(leases), size):
        keys = Keys()
        for le in leases[start : start + size]:
            entries = peer_entries(le, ks.dev, SCOPE)
            assert not isinstance(entries, str)
            keys.add(ks.set_peer(le.subnet, entries))
        yield keys


MANY = [
    peer(f"10.5.{i}.0/24", f"192.0.2.{100 + i}", f"5a:1e:02:33:45:{i:02x}") for i in range(60, 90)
]


def test_chunked_sync_programs_every_peer_and_removes_strays(
    ns: str, ks: KernelSync, dev: Link
) -> None:
    """Peers set chunk by chunk, their routes written by the helper thread: the kernel ends
    with exactly the peers' entries; a wrong neighbour is fixed, and a route, a neighbour and
    an FDB entry that no lease backs are removed; the next plan is empty."""
    converge(ks, desired_state(MANY[:2], dev.index, SCOPE).state)
    perm = ("dev", "flannel.1", "nud", "permanent")
    ip(ns, "neigh", "replace", "10.5.61.0", "lladdr", "5a:1e:02:33:45:ff", *perm)
    ip(ns, "route", "add", "10.5.99.0/24", "via", "10.5.99.0", "dev", "flannel.1", "onlink")
    ip(ns, "neigh", "add", "10.5.98.0", "lladdr", "5a:1e:02:33:45:98", *perm)
    bridge(ns, "fdb", "append", "5a:1e:02:33:45:97", "dev", "flannel.1", "dst", "192.0.2.97")
    ks.reload()
    result = ks.sync_chunks(set_in_chunks(ks, MANY, 7))
    assert result.report.errors == []
    desired = desired_state(MANY, dev.index, SCOPE).state
    assert observe(ks) == desired
    assert len(result.plan.set_routes) == len(MANY) - 2  # the first two were there already
    assert result.plan.set_neighs[0].ip == IPv4Address("10.5.61.0")
    routes, neighs = ip(ns, "route", "show"), ip(ns, "neigh", "show", "dev", "flannel.1")
    assert "10.5.99.0" not in routes and "10.5.98.0" not in neighs
    assert "5a:1e:02:33:45:97" not in bridge(ns, "fdb", "show", "dev", "flannel.1")
    assert replan(ks, desired).empty


def test_chunked_sync_names_a_failure_and_writes_the_rest(
    ns: str, ks: KernelSync, dev: Link
) -> None:
    """A route the kernel refuses (over a device that does not exist), written by the helper
    thread, is reported by name; every other peer is programmed."""
    chunks = set_in_chunks(ks, MANY[:10], 4)
    bad = IPv4Network("10.5.95.0/24")

    def with_bad_route() -> Iterator[Keys]:
        yield next(chunks)
        route = Route(bad, bad.network_address, 9999, True)
        yield ks.set_peer(bad, PeerEntries(route))
        yield from chunks

    ks.reload()
    result = ks.sync_chunks(with_bad_route())
    assert [(e.op, e.errno) for e in result.report.errors] == [("replace_route", errno.ENODEV)]
    assert "10.5.95.0/24 via 10.5.95.0 dev #9999 onlink" in str(result.report.errors[0])
    assert result.report.applied == 30
    routes = ip(ns, "route", "show")
    assert all(str(le.subnet) in routes for le in MANY[:10])


def test_apply_peer_changes(ns: str, ks: KernelSync, dev: Link) -> None:
    """A changed MAC, a changed public IP and a removed peer leave exactly the new entries."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE).state)
    changed = [
        peer("10.5.51.0/24", "192.0.2.20", "5a:1e:02:33:44:99"),  # new MAC
        peer("10.5.52.0/24", "192.0.2.29", "5a:1e:02:33:44:52"),  # new public IP
    ]  # 10.5.53.0/24 gone
    desired = desired_state(changed, dev.index, SCOPE).state
    converge(ks, desired)
    assert observe(ks) == desired
    fdb = bridge(ns, "fdb", "show", "dev", "flannel.1")
    assert "5a:1e:02:33:44:51" not in fdb  # the old MAC's entry is gone (flanneld leaks it)
    assert "dst 192.0.2.21" not in fdb
    assert "5a:1e:02:33:44:53" not in fdb
    assert "10.5.53.0" not in ip(ns, "route", "show")
    assert "10.5.53.0" not in ip(ns, "neigh", "show", "dev", "flannel.1")
    assert replan(ks, desired).empty


@pytest.mark.parametrize(
    ("remove", "field"),
    [
        pytest.param(("route", "del", "10.5.52.0/24"), "set_routes", id="route"),
        pytest.param(("neigh", "del", "10.5.52.0", "dev", "flannel.1"), "set_neighs", id="neigh"),
    ],
)
def test_hand_deleted_entry_in_next_plan(
    ns: str, ks: KernelSync, dev: Link, remove: tuple[str, ...], field: str
) -> None:
    """An entry deleted by hand shows up in the next plan, and applying it restores it."""
    desired = desired_state(PEERS, dev.index, SCOPE).state
    converge(ks, desired)
    ip(ns, *remove)
    p = replan(ks, desired)
    assert len(getattr(p, field)) == 1
    others = {"set_neighs", "set_fdb", "set_routes", "del_routes", "del_neighs", "del_fdb"}
    assert all(getattr(p, f) == () for f in others - {field})
    converge(ks, desired)
    assert observe(ks) == desired


def test_hand_deleted_fdb_in_next_plan(ns: str, ks: KernelSync, dev: Link) -> None:
    """An FDB entry deleted with ``bridge fdb del`` is planned again and restored."""
    desired = desired_state(PEERS, dev.index, SCOPE).state
    converge(ks, desired)
    bridge(ns, "fdb", "del", "5a:1e:02:33:44:52", "dev", "flannel.1", "dst", "192.0.2.21", "self")
    p = replan(ks, desired)
    assert p.set_fdb == (Fdb("5a:1e:02:33:44:52", IPv4Address("192.0.2.21")),)
    assert (p.set_neighs, p.set_routes, p.del_fdb) == ((), (), ())
    converge(ks, desired)
    assert observe(ks) == desired


def test_stray_entries_removed(ns: str, ks: KernelSync, dev: Link) -> None:
    """A neighbour, FDB entry and route that no lease backs are removed by the next apply."""
    converge(ks, desired_state(PEERS[:1], dev.index, SCOPE).state)
    ip(
        ns,
        "neigh",
        "replace",
        "10.5.77.0",
        "lladdr",
        "5a:1e:02:33:44:77",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    )
    bridge(
        ns,
        "fdb",
        "append",
        "5a:1e:02:33:44:77",
        "dev",
        "flannel.1",
        "dst",
        "192.0.2.77",
        "self",
        "permanent",
    )
    ip(ns, "route", "replace", "10.5.77.0/24", "via", "10.5.77.0", "dev", "flannel.1", "onlink")
    desired = desired_state(PEERS[:1], dev.index, SCOPE).state
    converge(ks, desired)
    assert observe(ks) == desired
    assert "10.5.77.0" not in ip(ns, "route", "show")
    assert "5a:1e:02:33:44:77" not in bridge(ns, "fdb", "show", "dev", "flannel.1")


def test_direct_routing_round_trip(ns: str, nl: Netlink, dev: Link) -> None:
    """A DirectRouting peer gets ``S via P`` on the underlay, and the next plan is empty; when
    its lease goes, that route (ours, on another device) goes too."""
    ks = nl.peer_sync(dev.index, Ownership(dev.index, (NETWORK, 24)))
    try:
        desired = desired_state(
            PEERS[:1], dev.index, SCOPE, direct_routing=True, is_onlink=ks.route_is_onlink
        ).state
        assert desired.routes[IPv4Network("10.5.51.0/24")].oif is None
        converge(ks, desired)
        assert re.search(
            r"^10\.5\.51\.0/24 via 192\.0\.2\.20 dev eth0",
            ip(ns, "route", "show", "10.5.51.0/24"),
            re.M,
        )
        assert "10.5.51.0" not in ip(ns, "neigh", "show", "dev", "flannel.1")
        assert replan(ks, desired).empty
        converge(ks, KernelState())
        assert "10.5.51.0" not in ip(ns, "route", "show")
    finally:
        ks.close()


# --- repaired on the kernel's notifications, without a resync -----------------------------------


def follow(ks: KernelSync, done: Callable[[], bool], timeout: float = 1.0) -> SyncResult | None:
    """Do what the daemon's main loop does on notifications (fold them, sync the keys they
    touched) until *done* holds; fail after *timeout* seconds.  Returns the last sync."""
    deadline = time.monotonic() + timeout
    last = None
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "not repaired from notifications in time"
        select.select([ks.fileno()], [], [], left)
        note = ks.poll()
        if note.device or note.resync:
            ks.reload()
            last = ks.sync()
        elif note.keys:
            last = ks.sync(note.keys)
    return last


def settle(ks: KernelSync) -> None:
    """Fold the echoes of our own writes; they must plan nothing."""
    time.sleep(0.05)
    note = ks.poll()
    assert not (note.device or note.resync)
    assert ks.sync(note.keys).plan.empty


@pytest.mark.parametrize(
    ("damage", "check"),
    [
        pytest.param(
            ("ip", "route", "del", "10.5.52.0/24"),
            lambda ns: "10.5.52.0/24" in ip(ns, "route", "show"),
            id="route",
        ),
        pytest.param(
            ("ip", "neigh", "del", "10.5.52.0", "dev", "flannel.1"),
            lambda ns: "10.5.52.0 " in ip(ns, "neigh", "show", "dev", "flannel.1"),
            id="neigh",
        ),
        pytest.param(
            ("bridge", "fdb", "del", "5a:1e:02:33:44:52", "dev", "flannel.1", "self"),
            lambda ns: "5a:1e:02:33:44:52" in bridge(ns, "fdb", "show", "dev", "flannel.1"),
            id="fdb",
        ),
    ],
)
def test_entry_deleted_by_hand_comes_back_on_notification(
    ns: str, ks: KernelSync, dev: Link, damage: tuple[str, ...], check: Callable[[str], bool]
) -> None:
    """A route, neighbour or FDB entry deleted by hand is put back from the kernel's
    notification alone (no dump, no resync), within a second; our own writes echoing back
    plan nothing."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE).state)
    settle(ks)
    run(damage[0], "-n", ns, *damage[1:])
    assert not check(ns)
    follow(ks, lambda: check(ns))
    settle(ks)
    assert observe(ks) == desired_state(PEERS, dev.index, SCOPE).state


def test_entry_added_by_hand_is_removed_on_notification(ns: str, ks: KernelSync, dev: Link) -> None:
    """A route on our device that no lease backs, added by hand, is removed on its
    notification."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE).state)
    settle(ks)
    ip(ns, "route", "add", "10.5.77.0/24", "via", "10.5.77.0", "dev", "flannel.1", "onlink")
    follow(ks, lambda: "10.5.77.0" not in ip(ns, "route", "show"))


def test_device_down_is_noticed(ns: str, ks: KernelSync, dev: Link) -> None:
    """Setting the device down (which drops its routes without a route notification) is seen
    as a device change."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE).state)
    settle(ks)
    ip(ns, "link", "set", "flannel.1", "down")
    deadline = time.monotonic() + 1.0
    seen = False
    while not seen and time.monotonic() < deadline:
        select.select([ks.fileno()], [], [], 0.1)
        seen = ks.poll().device
    assert seen


def test_stepped_reread_swaps_in_an_exact_mirror(ns: str, ks: KernelSync, dev: Link) -> None:
    """A re-read made in steps, with the kernel changing between them, ends with a mirror
    equal to a fresh dump; the notifications folded while it ran are not lost."""
    converge(ks, desired_state(PEERS, dev.index, SCOPE).state)
    settle(ks)
    ks.start_reload()
    assert ks.reload_step()  # the device and the first neighbours are read
    ip(ns, "route", "del", "10.5.53.0/24")  # before the route dump
    deadline = time.monotonic() + 5
    reloaded = False
    while not reloaded:
        assert time.monotonic() < deadline, "the re-read never finished"
        ks.reload_step()
        reloaded = ks.poll().reloaded
    assert not ks.reload_pending
    m = ks.mirror
    swapped = (m.neighs(), m.fdb(), sorted(map(str, m.dev_routes())))
    ks.reload()  # a fresh dump, in this thread
    m = ks.mirror
    assert swapped == (m.neighs(), m.fdb(), sorted(map(str, m.dev_routes())))
    assert not m.routes_to(IPv4Network("10.5.53.0/24"))
