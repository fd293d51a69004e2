"""Masquerade and forward rules end to end, on both etcd APIs: three cells with real iptables
(Debian's default, iptables-nft) in their namespaces and an "outside" host behind the router.

* cell-1 runs with ``--ip-masq --iptables-resync=1``;
* cell-2 runs with the defaults (forward rules, no masquerade) and FORWARD policy DROP;
* cell-3 runs with ``--iptables-forward-rules=false`` and FORWARD policy DROP.

Each container and the outside host run a whoami server that answers with the source address
it saw.  The containers are attached by hand (no CNI bridge plugin, which would masquerade on
its own), so any rewriting seen here is the daemon's rules' doing; the first test checks that
no other NAT rule exists.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from pyflannel.iptables import RuleSet, forward_rules, masq_rules
from pyflannel.lab.topo import OUTSIDE_IP, SEED_CONFIG, Cell, Lab, ip, read_env, run

from .conftest import daemon_log, lease_key, ping, routes, running_lab, subnet_of

pytestmark = [pytest.mark.e2e]

NETWORK = IPv4Network(str(SEED_CONFIG["Network"]))
#: A reservation for a host that does not exist, written over a cell's lease to make the cell
#: take another subnet when it restarts.
FOREIGN = (
    '{"PublicIP":"10.0.9.9","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:09:09"}}'
)


def _drop_forward(lab: Lab) -> None:
    for cell in lab.cells[1:]:
        run("iptables", "-P", "FORWARD", "DROP", ns=cell.ns)


@pytest.fixture(scope="module", params=["v2", "v3"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The three cells described above, one container each, whoami servers everywhere; the
    router routes cell-2's subnet (which is not masqueraded) so the outside host can answer."""
    api = request.param
    with running_lab(
        tmp_path_factory.mktemp(f"lab-ipt-{api}"),
        "pfi",
        api,
        cells=3,
        started=3,
        containers=1,
        resync_interval=2.0,
        before_start=_drop_forward,
        outside=True,
        daemon_args={
            "cell-1": ["--ip-masq", "--iptables-resync=1"],
            "cell-3": ["--iptables-forward-rules=false"],
        },
    ) as lab:
        assert lab.outside_ns is not None
        lab.start_whoami(lab.outside_ns, "outside")
        for cell in lab.cells:
            con = cell.containers[0]
            lab.start_whoami(con.ns, con.name)
        c2 = lab.cells[1]
        ip(lab.router_ns, "route", "add", subnet_of(lab, c2), "via", str(c2.underlay_ip))
        a, b = lab.cells[0].containers[0], c2.containers[0]
        lab.wait(lambda: lab.whoami(a.ns, b.ip, timeout=1) != "", 20, "cell-1 reaching cell-2")
        yield lab


def flannel_lines(cell: Cell, table: str) -> list[str]:
    """What iptables-save prints of *table* in *cell*: rules, and the chains that are not
    built in (no counters, no comments)."""
    out = run("iptables-save", "-t", table, ns=cell.ns).stdout
    builtin = (":PREROUTING ", ":INPUT ", ":OUTPUT ", ":POSTROUTING ", ":FORWARD ")
    return [
        ln for ln in out.splitlines() if ln.startswith(("-A", ":")) and not ln.startswith(builtin)
    ]


def expected(rs: RuleSet) -> list[str]:
    """The chain and rules of *rs* as iptables-save prints them."""
    return [f":{rs.chain} - [0:0]", *(r.line() for r in rs.rules)]


def masq_for(lab: Lab, cell: Cell) -> RuleSet:
    """flanneld's masquerade rules for *cell*'s current subnet (iptables 1.8: --random-fully)."""
    return masq_rules(NETWORK, IPv4Network(subnet_of(lab, cell)), random_fully=True)


def events(lab: Lab, cell: Cell, name: str) -> list[dict[str, object]]:
    """*cell*'s daemon log lines with that event name."""
    return [e for e in daemon_log(lab, cell) if e.get("event") == name]


def test_rules_as_flanneld_installs_them(lab: Lab) -> None:
    """cell-1 holds exactly flanneld's nat FLANNEL-POSTRTG and filter FLANNEL-FWD chains;
    cell-2 only the forward chain, and no NAT rule at all; cell-3 none.  subnet.env records
    the masquerading, so a CNI bridge would not masquerade a second time."""
    c1, c2, c3 = lab.cells
    assert flannel_lines(c1, "nat") == expected(masq_for(lab, c1))
    assert flannel_lines(c1, "filter") == expected(forward_rules(NETWORK))
    assert read_env(lab.subnet_file(c1))["FLANNEL_IPMASQ"] == "true"
    assert flannel_lines(c2, "nat") == []
    assert flannel_lines(c2, "filter") == expected(forward_rules(NETWORK))
    assert read_env(lab.subnet_file(c2))["FLANNEL_IPMASQ"] == "false"
    assert flannel_lines(c3, "nat") == flannel_lines(c3, "filter") == []
    installed = [(e["set"], e["chain"]) for e in events(lab, c1, "iptables_rules_installed")]
    assert installed == [("masq", "nat FLANNEL-POSTRTG"), ("forward", "filter FLANNEL-FWD")]
    assert [e["set"] for e in events(lab, c2, "iptables_rules_installed")] == ["forward"]
    assert events(lab, c3, "iptables_rules_installed") == []
    save = run("iptables-save", ns=c1.ns).stdout
    print(f"--- iptables-save on {c1.name} (--ip-masq) ---\n{save}")


def test_outside_sees_the_cell_address_with_ip_masq(lab: Lab) -> None:
    """A container of cell-1 (--ip-masq) reaches the outside host with cell-1's underlay
    address as source (the outside host has no route back to the overlay)."""
    c1 = lab.cells[0]
    assert lab.whoami(c1.containers[0].ns, OUTSIDE_IP) == str(c1.underlay_ip)


def test_outside_sees_the_container_address_without_ip_masq(lab: Lab) -> None:
    """A container of cell-2 (no --ip-masq) reaches the outside host with its own address:
    nothing else in the lab masquerades (this is what tells the test above apart)."""
    con = lab.cells[1].containers[0]
    assert lab.whoami(con.ns, OUTSIDE_IP) == str(con.ip)


def test_between_cells_the_source_is_never_rewritten(lab: Lab) -> None:
    """Container to container across cells keeps the container's address, in both
    directions, also from the masquerading cell.  cell-2's FORWARD policy is DROP: its
    forward rules let the overlay through."""
    c1, c2, _ = lab.cells
    a, b = c1.containers[0], c2.containers[0]
    assert run("iptables", "-S", "FORWARD", ns=c2.ns).stdout.startswith("-P FORWARD DROP")
    assert lab.whoami(a.ns, b.ip) == str(a.ip)
    assert lab.whoami(b.ns, a.ip) == str(b.ip)
    assert lab.curl(a.ns, b.ip) == lab.curl(b.ns, a.ip) == "200"


def test_forward_drop_needs_the_forward_rules(lab: Lab) -> None:
    """cell-3 (FORWARD DROP, --iptables-forward-rules=false): the overlay is programmed (its
    host reaches cell-1's container) but nothing is forwarded to or from its container.
    Restarted with the forward rules, the same requests work."""
    c1, _, c3 = lab.cells
    a, c = c1.containers[0], c3.containers[0]
    s1, s3 = subnet_of(lab, c1), subnet_of(lab, c3)
    lab.wait(lambda: s3 in routes(c1) and s1 in routes(c3), 15, "cell-1 and cell-3 peered")
    assert ping(c3.ns, str(a.ip), count=2).returncode == 0  # not forwarded at cell-3
    assert lab.curl(a.ns, c.ip, timeout=2) == "000"
    assert lab.curl(c.ns, a.ip, timeout=2) == "000"
    assert lab.kill(f"pyflannel-{c3.name}") == 0
    lab.start_daemon(c3, "--iptables-forward-rules=true")  # the last one on the line wins
    lab.wait(lambda: lab.curl(a.ns, c.ip, timeout=1) == "200", 15, "cell-1 -> cell-3")
    assert lab.curl(c.ns, a.ip) == "200"
    assert flannel_lines(c3, "filter") == expected(forward_rules(NETWORK))


def test_a_masquerade_rule_deleted_by_hand_comes_back_in_place(lab: Lab) -> None:
    """Deleting the MASQUERADE rule for traffic leaving the overlay (5th in its chain):
    within cell-1's resync interval (1 s) it is back in the same position, one log line
    naming it, and the outside host sees the cell's address again."""
    c1 = lab.cells[0]
    before = flannel_lines(c1, "nat")
    gone = before[6]
    assert "! -d 224.0.0.0/4" in gone and gone.endswith("-j MASQUERADE --random-fully")
    run("iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "5", ns=c1.ns)
    t0 = time.monotonic()
    assert gone not in flannel_lines(c1, "nat")
    lab.wait(lambda: flannel_lines(c1, "nat") == before, 10, "the rule back", interval=0.1)
    took = time.monotonic() - t0
    assert took < 1.0 + 2.0, took  # the interval, and a margin for a loaded machine
    restored = events(lab, c1, "iptables_rules_restored")
    assert [(e["set"], e["missing"], e["first_missing"]) for e in restored] == [("masq", 1, gone)]
    assert lab.whoami(c1.containers[0].ns, OUTSIDE_IP) == str(c1.underlay_ip)


def _restart_on_another_subnet(lab: Lab, cell: Cell, *, keep_subnet_env: bool) -> str:
    """Stop *cell*'s daemon (its rules stay), give its subnet to a host that does not exist,
    start it again (without subnet.env unless *keep_subnet_env*); its old subnet."""
    old = subnet_of(lab, cell)
    rules = flannel_lines(cell, "nat")
    assert lab.kill(f"pyflannel-{cell.name}") == 0
    assert flannel_lines(cell, "nat") == rules  # nothing is removed on exit
    lab.put(lease_key(old), FOREIGN)
    if not keep_subnet_env:
        lab.subnet_file(cell).unlink()
    lab.start_daemon(cell)
    lab.wait(
        lambda: lab.subnet_file(cell).exists() and subnet_of(lab, cell) != old,
        20,
        f"{cell.name} on a new subnet",
    )
    return old


def test_a_restart_on_another_subnet_removes_the_old_subnet_s_rules(lab: Lab) -> None:
    """cell-1 restarted on another subnet, once with its old subnet.env (whose subnet tells
    which rules to remove, as flanneld does) and once without (its chain is flushed at start):
    the rules name the new subnet, none the old ones.  (Last: cell-1's container stays on the
    old subnet.)"""
    c1 = lab.cells[0]
    first = _restart_on_another_subnet(lab, c1, keep_subnet_env=True)
    assert flannel_lines(c1, "nat") == expected(masq_for(lab, c1))
    removed = events(lab, c1, "iptables_rules_removed")
    assert [(e["subnet"], e["rules"]) for e in removed] == [(first, 3)]  # those naming it
    second = _restart_on_another_subnet(lab, c1, keep_subnet_env=False)
    nat = flannel_lines(c1, "nat")
    assert nat == expected(masq_for(lab, c1))
    assert not [ln for ln in nat if first in ln or second in ln]
    assert len(events(lab, c1, "iptables_rules_removed")) == 1  # no subnet.env: nothing named
    for cell in lab.cells:
        text = (lab.workdir / cell.name / "pyflannel.log").read_text()
        assert "Traceback" not in text
        assert all(json.loads(ln) for ln in text.splitlines())
