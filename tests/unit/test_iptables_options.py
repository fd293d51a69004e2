"""The iptables flags (``--ip-masq``, ``--ip-masq-fully-random-disable``,
``--iptables-forward-rules``, ``--iptables-resync``) and their ``FLANNELD_*`` forms, the
refusal of ``EnableNFTables``, and reading a previous run's network from subnet.env."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pyflannel.cli import parse_args
from pyflannel.config import parse_network_config
from pyflannel.errors import ConfigError
from pyflannel.subnetenv import read_cidr


def test_defaults_are_flanneld_s() -> None:
    """No masquerade, forward rules on, a check every 5 s, --random-fully allowed."""
    o = parse_args([], {})
    assert o.ip_masq is False
    assert o.ip_masq_random_fully_disable is False
    assert o.iptables_forward_rules is True
    assert o.iptables_resync == 5


def test_flags_and_variables() -> None:
    """Go's bool forms on the command line, FLANNELD_* otherwise; the command line wins."""
    o = parse_args(
        [
            "--ip-masq",
            "--ip-masq-fully-random-disable",
            "--iptables-forward-rules=false",
            "-iptables-resync",
            "2",
        ],
        {},
    )
    assert (o.ip_masq, o.ip_masq_random_fully_disable) == (True, True)
    assert (o.iptables_forward_rules, o.iptables_resync) == (False, 2)
    env = {
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE": "1",
        "FLANNELD_IPTABLES_FORWARD_RULES": "false",
        "FLANNELD_IPTABLES_RESYNC": "30",
    }
    o = parse_args([], env)
    assert (o.ip_masq, o.ip_masq_random_fully_disable) == (True, True)
    assert (o.iptables_forward_rules, o.iptables_resync) == (False, 30)
    o = parse_args(["--iptables-forward-rules", "--iptables-resync=7"], env)
    assert (o.iptables_forward_rules, o.iptables_resync) == (True, 7)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--iptables-resync=0"], {}, "between 1 and 86400 seconds"),
        (["--iptables-resync=-5"], {}, "iptables-resync"),
        (["--iptables-resync=1.5"], {}, "iptables-resync"),
        (["--iptables-resync=5s"], {}, "iptables-resync"),
        (["--iptables-resync=86401"], {}, "iptables-resync"),
        (["--iptables-resync=99999999999999999999999"], {}, "iptables-resync"),
        (["--iptables-resync"], {}, "iptables-resync"),
        (["--iptables-resync=1_0"], {}, "not a whole number of seconds"),
        (["--iptables-resync= 5"], {}, "iptables-resync"),
        (["--iptables-resync=\u0665"], {}, "iptables-resync"),
        (["--iptables-forward-rules=no"], {}, "iptables-forward-rules"),
        (["--ip-masq-fully-random-disable=2"], {}, "ip-masq-fully-random-disable"),
        ([], {"FLANNELD_IPTABLES_RESYNC": "often"}, "FLANNELD_IPTABLES_RESYNC"),
        ([], {"FLANNELD_IPTABLES_FORWARD_RULES": "yes"}, "FLANNELD_IPTABLES_FORWARD_RULES"),
        ([], {"FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE": "x"}, "FULLY_RANDOM_DISABLE"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], needle: str
) -> None:
    """A bad value is one line naming the flag or variable, exit code 2."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv, env)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert needle in err


def test_help_says_what_ip_masq_does(capsys: pytest.CaptureFixture[str]) -> None:
    """--help tells what --ip-masq installs, and names the other flags."""
    with pytest.raises(SystemExit):
        parse_args(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    assert "FLANNEL-POSTRTG" in text
    for flag in ("--ip-masq-fully-random-disable", "--iptables-forward-rules", "--iptables-resync"):
        assert flag in text


@pytest.mark.parametrize("key", ["EnableNFTables", "enablenftables"])
def test_enable_nftables_is_refused(key: str) -> None:
    """nftables mode is not implemented: refused with a message that says what to do."""
    with pytest.raises(ConfigError, match="EnableNFTables: nftables mode is not supported"):
        parse_network_config(
            f'{{"Network":"10.5.0.0/16","{key}":true,"Backend":{{"Type":"vxlan"}}}}'
        )
    cfg = parse_network_config(
        f'{{"Network":"10.5.0.0/16","{key}":false,"Backend":{{"Type":"vxlan"}}}}'
    )
    assert cfg.network == IPv4Network("10.5.0.0/16")


@pytest.mark.parametrize(
    ("content", "network", "subnet"),
    [
        (
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\n",
            "10.5.0.0/16",
            "10.5.34.0/24",
        ),
        ("FLANNEL_SUBNET=10.5.34.1/24\n", None, "10.5.34.0/24"),
        ("FLANNEL_NETWORK=10.5.0.0/16,10.6.0.0/16\n", None, None),
        ("FLANNEL_NETWORK=banana\nFLANNEL_SUBNET=\n", None, None),
        ("", None, None),
    ],
)
def test_previous_network_and_subnet(
    tmp_path: Path, content: str, network: str | None, subnet: str | None
) -> None:
    """What a previous run wrote, as networks; anything else is unknown (None)."""
    path = tmp_path / "subnet.env"
    path.write_text(content)
    assert read_cidr(path, "FLANNEL_NETWORK") == (network and IPv4Network(network))
    assert read_cidr(path, "FLANNEL_SUBNET") == (subnet and IPv4Network(subnet))
    assert read_cidr(tmp_path / "absent.env", "FLANNEL_SUBNET") is None
