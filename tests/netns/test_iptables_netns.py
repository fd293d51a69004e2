"""The rule keeper against the real iptables, nft and legacy backends, in a throwaway network
namespace per test (its tables go with it): flanneld's rules exactly as ``iptables-save``
prints them, rules deleted by hand put back where they were, a previous run's rules removed,
failures logged once, and ``--ip-masq`` without iptables refused at start.

Needs root, ip(8) and both iptables backends (Debian's iptables package has them); without
them the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pyflannel.iptables import forward_rules, masq_rules
from pyflannel.rulekeeper import Iptables, RuleKeeper

pytestmark = pytest.mark.netns

NET = IPv4Network("10.5.0.0/16")
SUB = IPv4Network("10.5.34.0/24")
OLD_SUB = IPv4Network("10.5.7.0/24")
BACKENDS = ("nft", "legacy")


def _require() -> None:
    tools = [
        "ip",
        "setpriv",
        *(f"iptables-{b}{s}" for b in BACKENDS for s in ("", "-restore", "-save")),
    ]
    missing = [t for t in tools if shutil.which(t) is None]
    problems = (["not root"] if os.geteuid() != 0 else []) + [f"no {t}" for t in missing]
    if problems:
        reason = "needs root, iproute2, util-linux and iptables: " + ", ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _run(*cmd: str) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout


class Host:
    """A namespace standing for a host, with one iptables backend."""

    def __init__(self, ns: str, backend: str) -> None:
        self.ns = ns
        self.backend = backend
        self.prefix = ("ip", "netns", "exec", ns)

    def iptables(self, args: str) -> str:
        """Run ``iptables-<backend> ARGS`` in the namespace (*args* split as a shell would)."""
        return _run(*self.prefix, f"iptables-{self.backend}", *shlex.split(args))

    def tool(self, restore_wrapper: tuple[str, ...] = ()) -> Iptables:
        """The commands as the daemon would find them, run in the namespace (the restore
        behind *restore_wrapper* if given)."""
        return Iptables.probe(
            [*self.prefix, f"iptables-{self.backend}"],
            [*self.prefix, *restore_wrapper, f"iptables-{self.backend}-restore"],
        )

    def save(self, table: str) -> list[str]:
        """The table's chains and rules as iptables-save prints them (no comments, counters)."""
        out = _run(*self.prefix, f"iptables-{self.backend}-save", "-t", table)
        return [ln for ln in out.splitlines() if ln.startswith(("-A", ":FLANNEL"))]


@contextmanager
def _host(backend: str) -> Iterator[Host]:
    _require()
    ns = f"pfipt{os.getpid() % 100000}-{backend}"
    _run("ip", "netns", "add", ns)
    try:
        yield Host(ns, backend)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(params=BACKENDS)
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    """A fresh namespace with the nft or the legacy backend; deleted at the end."""
    with _host(request.param) as h:
        yield h


@pytest.fixture
def nft_host() -> Iterator[Host]:
    """A fresh namespace with Debian's default backend."""
    with _host("nft") as h:
        yield h


def keeper(host: Host, *, subnet: IPv4Network = SUB, stale: bool = False) -> RuleKeeper:
    """A keeper of both sets for *subnet*; with *stale*, told that a previous run had OLD_SUB."""
    ipt = host.tool()
    old = masq_rules(NET, OLD_SUB, random_fully=ipt.random_fully) if stale else None
    sets = [masq_rules(NET, subnet, random_fully=ipt.random_fully), forward_rules(NET)]
    return RuleKeeper(ipt, sets, old)


#: What iptables-save must print: the chain, then the rules as generated (whose words the unit
#: tests hold to flanneld's).
NAT = [
    ":FLANNEL-POSTRTG - [0:0]",
    *(r.line() for r in masq_rules(NET, SUB, random_fully=True).rules),
]
FILTER = [":FLANNEL-FWD - [0:0]", *(r.line() for r in forward_rules(NET).rules)]


def test_installs_flanneld_s_rules(host: Host) -> None:
    """On a clean host: exactly flanneld's chains and rules, --random-fully included (iptables
    1.8), one log line per set; a second check changes nothing and says nothing."""
    k = keeper(host)
    assert k.ipt.random_fully and k.ipt.restore_wait
    with capture_logs() as logs:
        assert k.ensure()
    assert [(e["event"], e["set"]) for e in logs] == [
        ("iptables_rules_installed", "masq"),
        ("iptables_rules_installed", "forward"),
    ]
    assert logs[0]["subnet"] == "10.5.34.0/24" and logs[0]["random_fully"] is True
    assert host.save("nat") == NAT
    assert host.save("filter") == FILTER
    with capture_logs() as logs:
        slow = k.slow_checks
        assert k.ensure()
        assert k.ensure()
    assert logs == []
    assert host.save("nat") == NAT
    # Each check found every rule in the listings of its chains: no `iptables -C` run.
    assert k.slow_checks == slow


def test_start_flushes_our_chain_and_keeps_foreign_rules(host: Host) -> None:
    """A restart: our chain is flushed (an old rule in it goes), a jump already there moves to
    the end of POSTROUTING without being doubled, other rules are not touched."""
    host.iptables("-t nat -N FLANNEL-POSTRTG")
    host.iptables("-t nat -A FLANNEL-POSTRTG -s 10.99.0.0/16 -j RETURN")
    host.iptables("-t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG")
    host.iptables("-t nat -A POSTROUTING -o eth9 -j MASQUERADE")
    assert keeper(host).ensure()
    assert host.save("nat") == [
        NAT[0],
        "-A POSTROUTING -o eth9 -j MASQUERADE",
        *NAT[1:],
    ]


def test_deleted_rules_come_back_in_place(host: Host) -> None:
    """A rule deleted from the middle of each chain, and the jump into each chain: the next
    check puts them back where they were, one log line per set naming what was missing."""
    k = keeper(host)
    assert k.ensure()
    host.iptables("-t nat -A POSTROUTING -o eth9 -j MASQUERADE")
    host.iptables("-t nat -D FLANNEL-POSTRTG 3")
    host.iptables("-t filter -D FORWARD 1")
    with capture_logs() as logs:
        assert k.ensure()
    assert [(e["event"], e["set"], e["missing"]) for e in logs] == [
        ("iptables_rules_restored", "masq", 1),
        ("iptables_rules_restored", "forward", 1),
    ]
    assert logs[0]["first_missing"] == NAT[4]
    assert host.save("nat") == [NAT[0], "-A POSTROUTING -o eth9 -j MASQUERADE", *NAT[1:]]
    assert host.save("filter") == FILTER


def test_deleted_chain_comes_back(host: Host) -> None:
    """The whole chain removed by hand (jump, flush, delete): re-created with its rules."""
    k = keeper(host)
    assert k.ensure()
    host.iptables("-t nat -D POSTROUTING 1")
    host.iptables("-t nat -F FLANNEL-POSTRTG")
    host.iptables("-t nat -X FLANNEL-POSTRTG")
    with capture_logs() as logs:
        assert k.ensure()
    assert [(e["event"], e["first_missing"]) for e in logs] == [
        ("iptables_rules_restored", "chain nat FLANNEL-POSTRTG")
    ]
    assert host.save("nat") == NAT


def test_previous_subnet_rules_are_removed(host: Host) -> None:
    """subnet.env named another subnet: its rules are deleted (one line saying so), then ours
    are installed; no rule names the old subnet any more."""
    assert keeper(host, subnet=OLD_SUB).ensure()
    assert any(str(OLD_SUB) in ln for ln in host.save("nat"))
    with capture_logs() as logs:
        assert keeper(host, stale=True).ensure()
    removed = [e for e in logs if e["event"] == "iptables_rules_removed"]
    assert len(removed) == 1
    # The three rules that name the old subnet; the others belong to the new set too.
    assert (removed[0]["subnet"], removed[0]["rules"]) == (str(OLD_SUB), 3)
    assert host.save("nat") == NAT


def test_failure_is_one_line_then_retried(host: Host) -> None:
    """iptables-restore refusing (here: run as nobody) is one error line quoting its stderr
    for each table, not repeated while the problem lasts; once it works, the rules go in and
    recovery is logged."""
    k = keeper(host)
    k.ipt = host.tool(("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"))
    with capture_logs() as logs:
        assert not k.ensure()
        assert not k.ensure()
    assert [e["event"] for e in logs] == ["iptables_failed"]
    error = str(logs[0]["error"])
    nat, filter_ = error.split("; ")  # both sets were tried, one message each
    assert nat.startswith("iptables-restore (nat table) failed (exit 4): ")
    assert filter_.startswith("iptables-restore (filter table) failed (exit 4): ")
    assert "Permission denied" in error or "can't open lock file" in error
    assert "\n" not in error and len(error) < 600
    k.ipt = host.tool()
    with capture_logs() as logs:
        assert k.ensure()
    assert [e["event"] for e in logs] == [
        "iptables_rules_installed",
        "iptables_rules_installed",
        "iptables_recovered",
    ]
    assert host.save("nat") == NAT


def _daemon_without_iptables(host: Host, tmp_path: Path, *flags: str) -> subprocess.Popen[str]:
    """The real CLI in the namespace, with the iptables binaries hidden (a bind mount of
    /dev/null over them, private to ``ip netns exec``'s mount namespace)."""
    hide = " && ".join(
        f"mount --bind /dev/null {os.path.realpath(shutil.which(t) or t)}"
        for t in ("iptables", "iptables-restore")
    )
    cmd = [
        sys.executable,
        "-m",
        "pyflannel",
        "--etcd-endpoints=http://127.0.0.1:9",  # nothing listens: it would wait for etcd
        f"--subnet-file={tmp_path / 'subnet.env'}",
        "--log-format=json",
        *flags,
    ]
    return subprocess.Popen(
        [*host.prefix, "sh", "-c", f'{hide} && exec "$@"', "sh", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_ip_masq_without_iptables_is_fatal_at_once(nft_host: Host, tmp_path: Path) -> None:
    """--ip-masq on a host without iptables: one fatal line naming it, exit 1, before etcd is
    even asked for anything; without --ip-masq, a warning and the daemon goes on."""
    host = nft_host
    proc = _daemon_without_iptables(host, tmp_path, "--ip-masq")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert [e["event"] for e in lines] == ["fatal"], out
    assert lines[0]["error"] == (
        "--ip-masq needs iptables: iptables not found (install the iptables package)"
    )
    proc = _daemon_without_iptables(host, tmp_path)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "iptables_unavailable"
        assert "iptables not found" in first["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
