"""The IPv6 half of every lease on the IPv6 device: which leases are safe to program there
(unsafe_reason), their entries (neighbour, FDB entry to PublicIPv6, onlink route at metric
1024), PeerSync taking only the IPv6 half, and what the IPv6 device must look like (Overlay)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network

import pytest

from pyflannel.backend.vxlan import PeerScope, desired_state, peer_entries, unsafe_reason
from pyflannel.config import NetworkConfig, read_network_config
from pyflannel.errors import ConfigError
from pyflannel.iface import ExternalInterface
from pyflannel.ipnet import SubnetKey
from pyflannel.kernel.plan import Desired, Keys, Ownership, StateView, plan
from pyflannel.kernel.records import (
    IPV6_ROUTE_METRIC,
    Fdb,
    KernelState,
    Link,
    Neigh,
    PeerEntries,
    Route,
    RouteEntry,
)
from pyflannel.lease import NO_PUBLIC_IP, Lease, LeaseAttrs
from pyflannel.overlay import Overlay, device_name
from pyflannel.peersync import PeerSync

DEV = 9
NET6 = IPv6Network("fc00::/48")
OWN6 = IPv6Network("fc00:0:0:1::/64")
OWN_IP6 = IPv6Address("fd00:1::3")
SCOPE6 = PeerScope(NET6, 64, own_subnet=OWN6, own_public_ip=OWN_IP6)
S6 = IPv6Network("fc00:0:0:22::/64")
P6 = IPv6Address("fd00::5")
M6 = "7e:1a:8e:5b:29:aa"
S4 = IPv4Network("10.5.34.0/24")
M4 = "c6:d2:32:6f:8f:44"


def dual(**changes: object) -> Lease:
    """flanneld's dual-stack record (key 10.5.34.0-24&fc00:0:0:22::-64), with *changes*."""
    fields: dict[str, object] = {
        "public_ip": IPv4Address("192.168.64.3"),
        "backend_type": "vxlan",
        "vtep_mac": M4,
        "vni": 1,
        "public_ipv6": P6,
        "v6_vtep_mac": M6,
        "v6_vni": 1,
    }
    key = changes.pop("key", SubnetKey(S4, S6))
    fields.update(changes)
    return Lease(key, LeaseAttrs(**fields))  # type: ignore[arg-type]


def entries6(net: IPv6Network = S6, mac: str = M6, public: IPv6Address = P6) -> PeerEntries:
    gw = net.network_address
    return PeerEntries(
        Route(net, gw, DEV, True, IPV6_ROUTE_METRIC), Neigh(gw, mac), Fdb(mac, public)
    )


def test_a_dual_stack_peer_gets_its_ipv6_entries() -> None:
    """Neighbour <v6 subnet>:: -> BackendV6Data's MAC, FDB entry MAC -> PublicIPv6, and the
    onlink route via <v6 subnet>:: at IPv6's default metric."""
    assert unsafe_reason(dual(), SCOPE6) is None
    assert peer_entries(dual(), DEV, SCOPE6) == entries6()


def test_an_ipv6_only_peer_too() -> None:
    """flanneld's IPv6-only record (0.0.0.0-0&…, PublicIP 0.0.0.0, no BackendData)."""
    only6 = dual(key=SubnetKey(None, S6), public_ip=NO_PUBLIC_IP, vtep_mac=None, vni=None)
    assert peer_entries(only6, DEV, SCOPE6) == entries6()


@pytest.mark.parametrize(
    ("lease", "reason"),
    [
        (dual(key=SubnetKey(S4)), "lease has no IPv6 subnet (an IPv4-only peer)"),
        (
            dual(key=SubnetKey(S4, IPv6Network("fd99::/64"))),
            "IPv6 subnet is not a /64 inside the IPv6Network fc00::/48",
        ),
        (
            dual(key=SubnetKey(S4, IPv6Network("fc00:0:0:22::/80"))),
            "IPv6 subnet is not a /64 inside the IPv6Network fc00::/48",
        ),
        (
            dual(key=SubnetKey(S4, OWN6)),
            "IPv6 subnet overlaps our own IPv6 subnet fc00:0:0:1::/64",
        ),
        (dual(backend_type="udp"), "backend type 'udp' is not vxlan"),
        (dual(public_ipv6=None), "lease has no PublicIPv6"),
        (dual(public_ipv6=OWN_IP6), "PublicIPv6 fd00:1::3 is our own"),
        (dual(public_ipv6=IPv6Address("ff02::1")), "PublicIPv6 ff02::1 is not a unicast IPv6"),
        (dual(public_ipv6=IPv6Address("::1")), "PublicIPv6 ::1 is not a unicast IPv6"),
        (dual(public_ipv6=IPv6Address("::")), "PublicIPv6 :: is not a unicast IPv6"),
        (
            dual(public_ipv6=IPv6Address("::ffff:10.0.0.1")),
            "PublicIPv6 ::ffff:a00:1 is not a unicast IPv6",
        ),
        (dual(v6_vtep_mac="01:00:5e:00:00:01"), "VtepMAC 01:00:5e:00:00:01 is multicast"),
        (dual(v6_vtep_mac="00:00:00:00:00:00"), "VtepMAC is all zeros"),
    ],
)
def test_unsafe_ipv6_halves(lease: Lease, reason: str) -> None:
    """Every record is hostile: the IPv6 half is checked as the IPv4 half is."""
    why = unsafe_reason(lease, SCOPE6)
    assert why is not None and why.startswith(reason)


def test_no_ipv6_mac_is_no_entry() -> None:
    """A lease without BackendV6Data's MAC is skipped (nothing to point the neighbour at)."""
    assert peer_entries(dual(v6_vtep_mac=None), DEV, SCOPE6) == (
        "lease has no IPv6 VtepMAC (BackendV6Data)"
    )


def test_a_bad_ipv4_half_does_not_stop_the_ipv6_half() -> None:
    """Each device judges its own half: a dual-stack lease with a broadcast IPv4 MAC is
    programmed on the IPv6 device all the same."""
    assert peer_entries(dual(vtep_mac="ff:ff:ff:ff:ff:ff"), DEV, SCOPE6) == entries6()


def test_direct_routing_over_ipv6() -> None:
    """With DirectRouting and a PublicIPv6 on-link: only ``S via PublicIPv6``."""
    got = peer_entries(dual(), DEV, SCOPE6, direct_routing=True, is_onlink=lambda ip: ip == P6)
    assert got == PeerEntries(Route(S6, P6, None, False))


def test_desired_state_takes_ipv6_halves_only() -> None:
    """IPv4-only peers and our own lease are nothing on the IPv6 device."""
    ours = dual(key=SubnetKey(IPv4Network("10.5.1.0/24"), OWN6), public_ipv6=OWN_IP6)
    v4 = dual(key=SubnetKey(IPv4Network("10.5.9.0/24")))
    d = desired_state([dual(), ours, v4], DEV, SCOPE6)
    assert d.skipped == {}
    assert d.state.routes == {S6: entries6().route}
    assert d.state.neighs == {S6.network_address: M6}


class _Kernel:
    """What PeerSync asks of a KernelSync (the real Desired, no kernel behind it)."""

    def __init__(self, dev: int) -> None:
        self.dev = dev
        self.desired = Desired(version=6)

    def set_peer(self, subnet: IPv6Network, entries: PeerEntries | None) -> Keys:
        return self.desired.set(subnet, entries)

    def route_is_onlink(self, _ip: object) -> bool:
        return False


def test_peer_sync_takes_only_the_ipv6_half() -> None:
    """The IPv6 device is told a dual-stack or IPv6-only peer's IPv6 half; an IPv4-only key
    changes nothing on it; a removal takes the entries away."""
    kernel = _Kernel(DEV)
    sync = PeerSync(lambda dev, _own: kernel, DEV, SCOPE6)  # type: ignore[arg-type,return-value]
    v4 = SubnetKey(S4)
    assert not sync.update(v4, dual(key=v4))
    keys = sync.update(SubnetKey(S4, S6), dual())
    assert keys.routes == {S6} and keys.neighs == {S6.network_address} and keys.macs == {M6}
    assert set(kernel.desired.peers) == {S6}
    assert not kernel.desired.keys().routes - {S6}
    sync.update(SubnetKey(S4, S6), None)
    assert kernel.desired.peers == {}


def test_ipv6_plan_compares_metric_1024() -> None:
    """The kernel reports our IPv6 routes at metric 1024: equal to what we want, no change; a
    second route of ours at another metric is deleted by that metric."""
    d = Desired(version=6)
    keys = d.set(S6, entries6())
    held = KernelState(
        neighs={S6.network_address: M6}, fdb={Fdb(M6, P6)}, routes={S6: entries6().route}
    )
    assert plan(d, StateView(held), Ownership(DEV), keys).empty

    class View(StateView):
        def routes_to(self, dst: object) -> list[RouteEntry]:
            gw = S6.network_address
            return [
                RouteEntry(S6, gw, DEV, 3, 0, 1, IPV6_ROUTE_METRIC, True),
                RouteEntry(S6, gw, DEV, 3, 0, 1, 5, True),
            ]

    p = plan(d, View(held), Ownership(DEV), Keys(routes={S6}))
    assert p.set_routes == () and [r.priority for r in p.del_routes] == [5]


# --- the IPv6 device ---------------------------------------------------------------------------


def ext(mtu: int = 1500) -> ExternalInterface:
    link = Link(
        2, "eth0", "02:00:00:00:00:02", mtu, True, addresses6=(IPv6Interface("fd00:1::3/64"),)
    )
    return ExternalInterface(
        link, NO_PUBLIC_IP, NO_PUBLIC_IP, iface_ipv6=OWN_IP6, public_ipv6=OWN_IP6
    )


def config(**backend: object) -> NetworkConfig:
    """An IPv6-only network config (fc00::/48) with *backend* options."""
    text = json.dumps(
        {
            "EnableIPv4": False,
            "EnableIPv6": True,
            "IPv6Network": "fc00::/48",
            "Backend": {"Type": "vxlan", **backend},
        }
    )
    return read_network_config(text)


def test_ipv6_device_spec() -> None:
    """flannel-v6.<VNI>, the IPv6 underlay address as local, MTU = underlay - 70 (or the
    backend's MTU - 70); the VTEP address is the subnet's /128."""
    fam = Overlay(6, config(), ext())
    assert (fam.name, fam.spec.local, fam.spec.mtu) == ("flannel-v6.1", OWN_IP6, 1430)
    assert Overlay(6, config(MTU=9000, VNI=7), ext()).spec.mtu == 8930
    assert device_name(6, 7) == "flannel-v6.7" and device_name(4, 7) == "flannel.7"
    key = SubnetKey(None, OWN6)
    assert fam.vtep(key) == IPv6Interface("fc00:0:0:1::/128")
    assert fam.scope(key) == PeerScope(NET6, 64, OWN6, OWN_IP6)


def test_ipv6_device_needs_an_mtu_of_1280() -> None:
    """An underlay MTU below 1350 would leave the IPv6 device under IPv6's minimum: refused
    at start with the numbers."""
    with pytest.raises(ConfigError, match="below IPv6's minimum of 1280"):
        Overlay(6, config(), ext(mtu=1300))


def test_ipv6_device_damage() -> None:
    """MTU, a missing /128, a stray address in the IPv6Network and a link down are damage;
    the link-local address and one outside the network are not."""
    fam = Overlay(6, config(), ext())
    key = SubnetKey(None, OWN6)
    good = Link(
        5,
        "flannel-v6.1",
        "02:00:00:00:00:05",
        1430,
        True,
        addresses6=(IPv6Interface("fc00:0:0:1::/128"), IPv6Interface("fe80::1/64")),
    )
    assert fam.damage(good, key) == []
    bad = Link(
        5,
        "flannel-v6.1",
        "02:00:00:00:00:05",
        1400,
        False,
        addresses6=(IPv6Interface("fc00:0:0:9::1/64"), IPv6Interface("2001:db8::1/64")),
    )
    assert fam.damage(bad, key) == [
        "mtu 1400 (want 1430)",
        "VTEP address fc00:0:0:1::/128 missing",
        "stray address fc00:0:0:9::1/64",
        "link down",
    ]
