"""flanneld's iptables rule sets, string for string, and the iptables-restore payloads that
install, re-order and remove them (pyflannel.iptables is pure: no iptables runs here)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from pyflannel.iptables import (
    RANDOM_FULLY_SINCE,
    forward_rules,
    install_lines,
    masq_rules,
    parse_version,
    remove_lines,
    restore_payload,
)

NET = IPv4Network("10.5.0.0/16")
SUB = IPv4Network("10.5.34.0/24")

#: flanneld v0.20+ (pkg/trafficmngr/iptables/iptables.go masqRules), as iptables-save prints it.
FLANNELD_MASQ = [
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" '
    "-j RETURN",
    '-A FLANNEL-POSTRTG -s 10.5.34.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" '
    "-j RETURN",
    '-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.34.0/24 -m comment --comment "flanneld masq" '
    "-j RETURN",
    '-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.34.0/24 -m comment --comment "flanneld masq" '
    "-j RETURN",
    '-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
    "-j MASQUERADE --random-fully",
    '-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" '
    "-j MASQUERADE --random-fully",
]
#: forwardRules.
FLANNELD_FORWARD = [
    '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
    '-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    '-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
]


def test_masq_rules_are_flanneld_s() -> None:
    """--ip-masq: nat table, the jump from POSTROUTING, the kube-proxy mark rule, the three
    RETURNs and the two MASQUERADEs, in flanneld's order and words."""
    rs = masq_rules(NET, SUB, random_fully=True)
    assert (rs.table, rs.chain) == ("nat", "FLANNEL-POSTRTG")
    assert {r.table for r in rs.rules} == {"nat"}
    assert [r.line() for r in rs.rules] == FLANNELD_MASQ
    assert rs.random_fully


def test_masq_without_random_fully() -> None:
    """Without --random-fully support (or with --ip-masq-fully-random-disable) the MASQUERADE
    rules are the same without it."""
    rs = masq_rules(NET, SUB, random_fully=False)
    assert [r.line() for r in rs.rules] == [
        ln.removesuffix(" --random-fully") for ln in FLANNELD_MASQ
    ]
    assert not rs.random_fully


def test_forward_rules_are_flanneld_s() -> None:
    """--iptables-forward-rules: filter table, FORWARD jumps to FLANNEL-FWD, which accepts the
    Network as source and as destination."""
    rs = forward_rules(NET)
    assert (rs.table, rs.chain) == ("filter", "FLANNEL-FWD")
    assert [r.line() for r in rs.rules] == FLANNELD_FORWARD


def test_rule_words_are_iptables_arguments() -> None:
    """The words passed to ``iptables -C`` carry the comment unquoted (one argument)."""
    jump = masq_rules(NET, SUB, random_fully=True).rules[0]
    assert jump.spec == ("-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG")
    assert jump.own_chain == "FLANNEL-POSTRTG"


def test_start_up_declares_the_chain_and_moves_the_jump_to_the_end() -> None:
    """At start the chain is declared (created, or flushed if it exists: iptables-restore
    --noflush does that), a jump already in POSTROUTING is deleted and appended again, and the
    chain's rules are appended without deleting them first (the flush did)."""
    rs = masq_rules(NET, SUB, random_fully=True)
    lines = install_lines(rs, [True] * 7, declare_chain=True)
    assert lines == [
        ":FLANNEL-POSTRTG - [0:0]",
        FLANNELD_MASQ[0].replace("-A", "-D", 1),
        *FLANNELD_MASQ,
    ]
    assert install_lines(rs, [False] * 7, declare_chain=True) == [
        ":FLANNEL-POSTRTG - [0:0]",
        *FLANNELD_MASQ,
    ]


def test_a_missing_rule_puts_the_whole_set_back_in_order() -> None:
    """One rule missing: every rule that is there is deleted and appended again, the missing
    one appended in its turn, so the chain ends in flanneld's order (replayed here on a list
    standing for the chain)."""
    rs = masq_rules(NET, SUB, random_fully=True)
    present = [True, True, True, False, True, True, True]
    lines = install_lines(rs, present, declare_chain=False)
    assert not any(ln.startswith(":") for ln in lines)
    assert lines.count(FLANNELD_MASQ[3]) == 1
    assert FLANNELD_MASQ[3].replace("-A", "-D", 1) not in lines
    # Replay on the chains as they were (rule 3 deleted by hand, a foreign rule after ours).
    chains = {
        "POSTROUTING": ["-A POSTROUTING -j KUBE-POSTROUTING", FLANNELD_MASQ[0]],
        "FLANNEL-POSTRTG": [FLANNELD_MASQ[i] for i in (1, 2, 4, 5, 6)],
    }
    for ln in lines:
        action, chain = ln.split()[:2]
        rule = "-A " + ln.split(" ", 1)[1]
        if action == "-D":
            chains[chain].remove(rule)
        else:
            chains[chain].append(rule)
    assert chains["FLANNEL-POSTRTG"] == FLANNELD_MASQ[1:]
    assert chains["POSTROUTING"] == ["-A POSTROUTING -j KUBE-POSTROUTING", FLANNELD_MASQ[0]]


def test_a_missing_chain_is_declared_again() -> None:
    """A chain deleted by hand (its jump first, as iptables requires) is declared again."""
    lines = install_lines(forward_rules(NET), [False] * 3, declare_chain=True)
    assert lines == [":FLANNEL-FWD - [0:0]", *FLANNELD_FORWARD]


def test_removal_deletes_only_what_is_there() -> None:
    """Deleting a rule that is not there fails the whole transaction: only present ones go."""
    rs = masq_rules(NET, SUB, random_fully=True)
    present = [True, False, True, False, False, False, True]
    assert remove_lines(rs, present) == [FLANNELD_MASQ[i].replace("-A", "-D", 1) for i in (0, 2, 6)]


def test_restore_payload() -> None:
    """One table per transaction: ``*table``, the lines, ``COMMIT``, newline-terminated."""
    assert restore_payload("nat", [":X - [0:0]", "-A X -j RETURN"]) == (
        "*nat\n:X - [0:0]\n-A X -j RETURN\nCOMMIT\n"
    )


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("iptables v1.8.9 (nf_tables)\n", (1, 8, 9)),
        ("iptables v1.8.9 (legacy)\n", (1, 8, 9)),
        ("iptables v1.6.1\n", (1, 6, 1)),
        ("iptables v1.10.0 (nf_tables)", (1, 10, 0)),
        ("something else", None),
        ("", None),
    ],
)
def test_parse_version(text: str, version: tuple[int, int, int] | None) -> None:
    """``iptables --version`` as the versions print it."""
    assert parse_version(text) == version


@pytest.mark.parametrize(
    ("version", "supported"),
    [((1, 6, 1), False), ((1, 6, 2), True), ((1, 8, 9), True), ((1, 4, 21), False)],
)
def test_random_fully_from_1_6_2(version: tuple[int, int, int], supported: bool) -> None:
    """--random-fully is used from iptables 1.6.2 on, go-iptables' test."""
    assert (version >= RANDOM_FULLY_SINCE) is supported
