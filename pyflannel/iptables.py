"""flanneld's iptables rules, as data: the masquerade and forward rule sets and the
``iptables-restore`` payloads that install, re-order and remove them.

The rules are flanneld v0.20+'s (``pkg/trafficmngr/iptables``), string for string: same
chains (``FLANNEL-POSTRTG`` in nat, ``FLANNEL-FWD`` in filter), same comments, same order, so a
host can switch between flanneld and pyflannel and find its rules, not a second copy.

Pure: no process is run here (see :mod:`pyflannel.rulekeeper` for that).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

MASQ_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
#: kube-proxy marks what it will masquerade itself: flanneld leaves it alone (double NAT).
KUBE_PROXY_MARK = "0x4000/0x4000"
#: flanneld never masquerades multicast.
MULTICAST = "224.0.0.0/4"
#: iptables got ``--random-fully`` (MASQUERADE) and ``iptables-restore --wait`` in 1.6.2.
RANDOM_FULLY_SINCE = (1, 6, 2)
RESTORE_WAIT_SINCE = (1, 6, 2)
#: ``iptables --wait`` appeared in 1.4.20.
WAIT_SINCE = (1, 4, 20)


@dataclass(frozen=True)
class Rule:
    """One rule: ``iptables -t <table> -A <chain> <spec...>``."""

    table: str
    chain: str
    spec: tuple[str, ...]

    @property
    def own_chain(self) -> str:
        """The flannel chain this rule lives in, or jumps to from a built-in chain."""
        return self.chain if self.chain.startswith("FLANNEL-") else self.spec[-1]

    def line(self, action: str = "-A") -> str:
        """The rule as an ``iptables-restore`` line (the comment quoted, as flanneld does)."""
        words = [action, self.chain]
        for i, word in enumerate(self.spec):
            words.append(f'"{word}"' if i and self.spec[i - 1] == "--comment" else word)
        return " ".join(words)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one feature, in order; *chain* is created (or flushed) at start."""

    name: str  # "masq" or "forward": what log lines call it
    table: str
    chain: str
    rules: tuple[Rule, ...]
    network: IPv4Network
    subnet: IPv4Network | None = None  # masq: our lease's

    @property
    def random_fully(self) -> bool:
        """Whether its MASQUERADE rules use ``--random-fully``."""
        return any(r.spec[-1] == "--random-fully" for r in self.rules)


def masq_rules(network: IPv4Network, subnet: IPv4Network, *, random_fully: bool) -> RuleSet:
    """flanneld's ``--ip-masq`` rules for overlay *network* and our lease *subnet*."""
    n, s = str(network), str(subnet)
    comment = ("-m", "comment", "--comment", MASQ_COMMENT)
    masquerade = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")

    def rule(*spec: str) -> Rule:
        return Rule("nat", MASQ_CHAIN, spec)

    return RuleSet(
        "masq",
        "nat",
        MASQ_CHAIN,
        (
            # The jump from POSTROUTING, appended as flanneld does (flanneld's comment says
            # "before other rules on the node", its code appends).
            Rule("nat", "POSTROUTING", (*comment, "-j", MASQ_CHAIN)),
            rule("-m", "mark", "--mark", KUBE_PROXY_MARK, *comment, "-j", "RETURN"),
            # Inside the overlay, in either direction: addresses are kept.
            rule("-s", s, "-d", n, *comment, "-j", "RETURN"),
            rule("-s", n, "-d", s, *comment, "-j", "RETURN"),
            # From outside to our containers (e.g. a NodePort forwarded here): kept.
            rule("!", "-s", n, "-d", s, *comment, "-j", "RETURN"),
            # Leaving the overlay (not multicast): the host's address.
            rule("-s", n, "!", "-d", MULTICAST, *comment, *masquerade),
            # From the host (outside the overlay) into the overlay: the host's overlay address.
            rule("!", "-s", n, "-d", n, *comment, *masquerade),
        ),
        network,
        subnet,
    )


def forward_rules(network: IPv4Network) -> RuleSet:
    """flanneld's ``--iptables-forward-rules``: accept the overlay's traffic in FORWARD (a
    host whose FORWARD policy is DROP, as Docker sets it, would drop it otherwise)."""
    n = str(network)
    comment = ("-m", "comment", "--comment", FORWARD_COMMENT)
    return RuleSet(
        "forward",
        "filter",
        FORWARD_CHAIN,
        (
            Rule("filter", "FORWARD", (*comment, "-j", FORWARD_CHAIN)),
            Rule("filter", FORWARD_CHAIN, ("-s", n, *comment, "-j", "ACCEPT")),
            Rule("filter", FORWARD_CHAIN, ("-d", n, *comment, "-j", "ACCEPT")),
        ),
        network,
    )


def restore_payload(table: str, lines: Iterable[str]) -> str:
    """One table's ``iptables-restore`` input: ``*table``, the lines, ``COMMIT``."""
    return "".join([f"*{table}\n", *(f"{ln}\n" for ln in lines), "COMMIT\n"])


def install_lines(rules: RuleSet, present: Sequence[bool], *, declare_chain: bool) -> list[str]:
    """Lines that leave *rules* at the end of their chains, contiguous and in order.

    A rule already there (``present[i]``) is deleted and appended again, as flanneld does:
    appending the missing ones alone would put them after the others, out of order.
    *declare_chain* names the chain first, which creates it, or flushes it if it exists (the
    start-up, as flanneld's ClearChain).  A flushed chain's rules must not be deleted again.
    """
    out = [f":{rules.chain} - [0:0]"] if declare_chain else []
    for rule, there in zip(rules.rules, present, strict=True):
        if there and not (declare_chain and rule.chain == rules.chain):
            out.append(rule.line("-D"))
        out.append(rule.line("-A"))
    return out


def remove_lines(rules: RuleSet, present: Sequence[bool]) -> list[str]:
    """Lines that delete the rules of *rules* that are there (the others would fail the
    whole transaction)."""
    return [r.line("-D") for r, there in zip(rules.rules, present, strict=True) if there]


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``iptables v1.8.9 (nf_tables)`` -> (1, 8, 9); None when there is no version."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))
