"""The command line: flanneld's flag names, defaults and FLANNELD_* variables."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from pyflannel import __version__
from pyflannel.cli import parse_args
from pyflannel.options import DaemonOptions
from pyflannel.registry import EtcdOptions

REPO = Path(__file__).resolve().parents[2]


def opts(*argv: str, env: Mapping[str, str] | None = None) -> DaemonOptions:
    """Parse *argv* with *env* (empty by default: the test's own environment never leaks in)."""
    return parse_args(list(argv), env or {})


def usage_error(
    capsys: pytest.CaptureFixture[str], *argv: str, env: Mapping[str, str] | None = None
) -> str:
    """Parse *argv*, expect exit code 2, and return the single stderr line."""
    with pytest.raises(SystemExit) as info:
        opts(*argv, env=env)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyflannel: error: ")
    return lines[0]


def test_defaults_are_flanneld_defaults() -> None:
    """With no flags and no environment, every value is flanneld's default."""
    o = opts()
    assert o.etcd == EtcdOptions(
        endpoints=("http://127.0.0.1:4001", "http://127.0.0.1:2379"),
        prefix="/coreos.com/network",
        keyfile="",
        certfile="",
        cafile="",
        username="",
        password="",
    )
    assert o.ifaces == ()
    assert o.iface_regexes == ()
    assert o.public_ip is None
    assert o.subnet_file == Path("/run/flannel/subnet.env")
    assert o.renew_margin_minutes == 60
    assert o.ip_masq is False
    assert o.log_level == "info"


def test_flanneld_flag_names(tmp_path: Path) -> None:
    """Every flanneld etcd-mode flag is accepted under its flanneld name."""
    for name in ("k", "c", "ca"):
        (tmp_path / name).write_text("PEM\n")
    o = opts(
        "--etcd-endpoints=http://10.0.1.2:2379",
        "--etcd-prefix=/my/net",
        f"--etcd-keyfile={tmp_path / 'k'}",
        f"--etcd-certfile={tmp_path / 'c'}",
        f"--etcd-cafile={tmp_path / 'ca'}",
        "--etcd-username=u",
        "--etcd-password=p",
        "--iface=eth1",
        "--iface-regex=^en",
        "--public-ip=10.0.1.3",
        "--subnet-file=/tmp/s.env",
        "--subnet-lease-renew-margin=30",
        "--ip-masq",
    )
    assert o.etcd == EtcdOptions(
        endpoints=("http://10.0.1.2:2379",),
        prefix="/my/net",
        keyfile=str(tmp_path / "k"),
        certfile=str(tmp_path / "c"),
        cafile=str(tmp_path / "ca"),
        username="u",
        password="p",
    )
    assert o.ifaces == ("eth1",)
    assert o.iface_regexes == ("^en",)
    assert o.public_ip == IPv4Address("10.0.1.3")
    assert o.subnet_file == Path("/tmp/s.env")
    assert o.renew_margin_minutes == 30
    assert o.ip_masq is True


@pytest.mark.parametrize(
    "argv",
    [
        ["-etcd-prefix", "/x"],
        ["--etcd-prefix", "/x"],
        ["-etcd-prefix=/x"],
        ["--etcd-prefix=/x"],
    ],
)
def test_go_flag_syntax(argv: list[str]) -> None:
    """``-flag value``, ``--flag value``, ``-flag=value`` and ``--flag=value`` work, as in Go."""
    assert opts(*argv).etcd.prefix == "/x"


def test_endpoints_comma_separated() -> None:
    """--etcd-endpoints is a comma-separated list; blanks around commas are dropped."""
    o = opts("--etcd-endpoints", "http://a:2379, http://b:2379")
    assert o.etcd.endpoints == ("http://a:2379", "http://b:2379")


def test_env_used_when_flag_absent() -> None:
    """FLANNELD_<FLAG> supplies a flag that is not on the command line."""
    env = {
        "FLANNELD_ETCD_ENDPOINTS": "http://10.0.1.2:2379",
        "FLANNELD_ETCD_PREFIX": "/env/net",
        "FLANNELD_PUBLIC_IP": "10.0.2.3",
        "FLANNELD_SUBNET_FILE": "/tmp/env.env",
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "15",
        "FLANNELD_IFACE_REGEX": "^eth",
    }
    o = opts(env=env)
    assert o.etcd.endpoints == ("http://10.0.1.2:2379",)
    assert o.etcd.prefix == "/env/net"
    assert o.public_ip == IPv4Address("10.0.2.3")
    assert o.subnet_file == Path("/tmp/env.env")
    assert o.renew_margin_minutes == 15
    assert o.iface_regexes == ("^eth",)


def test_cli_wins_over_env() -> None:
    """A flag on the command line wins over its FLANNELD_* variable."""
    env = {
        "FLANNELD_ETCD_PREFIX": "/env",
        "FLANNELD_IFACE": "eth9",
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "5",
    }
    o = opts(
        "--etcd-prefix=/cli",
        "-iface",
        "eth1",
        "--ip-masq=false",
        "--subnet-lease-renew-margin",
        "90",
        env=env,
    )
    assert o.etcd.prefix == "/cli"
    assert o.ifaces == ("eth1",)
    assert o.ip_masq is False
    assert o.renew_margin_minutes == 90


def test_empty_env_ignored() -> None:
    """An empty FLANNELD_* variable counts as unset, as in flanneld."""
    o = opts(env={"FLANNELD_ETCD_PREFIX": "", "FLANNELD_IFACE": ""})
    assert o.etcd.prefix == "/coreos.com/network"
    assert o.ifaces == ()


def test_unrelated_env_ignored() -> None:
    """Variables without the FLANNELD_ prefix (or for unknown flags) change nothing."""
    o = opts(env={"ETCD_PREFIX": "/no", "FLANNELD_BOGUS": "1", "FLANNEL_SUBNET": "10.0.0.1/24"})
    assert o == opts()


def test_iface_repeatable_in_order() -> None:
    """--iface may be repeated; the order is kept (first match wins later)."""
    o = opts("--iface", "eth1", "-iface=10.0.1.3", "--iface=eth0")
    assert o.ifaces == ("eth1", "10.0.1.3", "eth0")


def test_iface_regex_repeatable() -> None:
    """--iface-regex may be repeated too."""
    assert opts("--iface-regex=^en", "--iface-regex", "^eth").iface_regexes == ("^en", "^eth")


def test_iface_env_comma_separated() -> None:
    """FLANNELD_IFACE may list several interfaces separated by commas."""
    o = opts(env={"FLANNELD_IFACE": "eth1, 10.0.1.3,eth0"})
    assert o.ifaces == ("eth1", "10.0.1.3", "eth0")


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--ip-masq"], {}, True),
        (["-ip-masq"], {}, True),
        (["--ip-masq=true"], {}, True),
        (["--ip-masq=1"], {}, True),
        (["--ip-masq=false"], {}, False),
        (["--ip-masq=0"], {}, False),
        (["--ip-masq=F"], {}, False),
        ([], {"FLANNELD_IP_MASQ": "true"}, True),
        ([], {"FLANNELD_IP_MASQ": "1"}, True),
        ([], {"FLANNELD_IP_MASQ": "false"}, False),
        (["--ip-masq=false"], {"FLANNELD_IP_MASQ": "true"}, False),
    ],
)
def test_bool_forms(argv: list[str], env: dict[str, str], expected: bool) -> None:
    """Booleans take Go's forms: bare flag, =true/=false (and ParseBool spellings), or the env."""
    assert opts(*argv, env=env).ip_masq is expected


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--bogus"], {}, "--bogus"),
        (["--public-ip=banana"], {}, "public-ip"),
        (["--public-ip=fd00::1"], {}, "public-ip"),
        (["--public-ipv6=10.0.1.3"], {}, "public-ipv6"),
        (["--public-ipv6=fe80::1%eth0"], {}, "public-ipv6"),
        (["--public-ipv6=banana"], {}, "public-ipv6"),
        ([], {"FLANNELD_PUBLIC_IPV6": "fd00::1::2"}, "FLANNELD_PUBLIC_IPV6"),
        (["--ip-masq=maybe"], {}, "ip-masq"),
        (["--subnet-lease-renew-margin=abc"], {}, "subnet-lease-renew-margin"),
        (["--subnet-lease-renew-margin=0"], {}, "subnet-lease-renew-margin"),
        (["--subnet-lease-renew-margin=1440"], {}, "subnet-lease-renew-margin"),
        (["--subnet-lease-renew-margin=-5"], {}, "subnet-lease-renew-margin"),
        (["--etcd-prefix"], {}, "etcd-prefix"),
        (["--etcd-endpoints="], {}, "etcd-endpoints"),
        ([], {"FLANNELD_PUBLIC_IP": "banana"}, "FLANNELD_PUBLIC_IP"),
        ([], {"FLANNELD_IP_MASQ": "yes"}, "FLANNELD_IP_MASQ"),
        ([], {"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "0"}, "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"),
        ([], {"FLANNELD_V": "loud"}, "FLANNELD_V"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], needle: str
) -> None:
    """A bad value or unknown flag exits with code 2 and one error line naming the culprit."""
    line = usage_error(capsys, *argv, env=env)
    assert needle in line


@pytest.mark.parametrize(
    "argv",
    [
        ["--etcd-endpoint=http://10.0.1.2:2379"],
        ["-etcd-pre", "/x"],
        ["--public=10.0.1.3"],
        ["--ip-mas"],
    ],
)
def test_abbreviations_rejected(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """A shortened flag name is unknown, as in Go's flag package (a typo never half-works)."""
    usage_error(capsys, *argv)


@pytest.mark.parametrize(
    ("margin", "ok"), [("1", True), ("60", True), ("1439", True), ("0", False), ("1440", False)]
)
def test_renew_margin_range(capsys: pytest.CaptureFixture[str], margin: str, ok: bool) -> None:
    """--subnet-lease-renew-margin accepts 1 to 1439 minutes, as flanneld does."""
    if ok:
        assert opts("--subnet-lease-renew-margin", margin).renew_margin_minutes == int(margin)
    else:
        usage_error(capsys, "--subnet-lease-renew-margin", margin)


@pytest.mark.parametrize(
    ("argv", "env", "level"),
    [
        ([], {"FLANNELD_V": "2"}, "debug"),
        ([], {"FLANNELD_V": "10"}, "debug"),
        ([], {"FLANNELD_V": "1"}, "info"),
        ([], {"FLANNELD_V": "0"}, "info"),
        (["-v", "2"], {}, "debug"),
        (["--v=3"], {}, "debug"),
        (["-v", "0"], {"FLANNELD_V": "5"}, "info"),
    ],
)
def test_verbosity(argv: list[str], env: dict[str, str], level: str) -> None:
    """klog verbosity 2 or more (flag or FLANNELD_V) turns on debug logs; the flag wins over env."""
    assert opts(*argv, env=env).log_level == level


def test_version_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version on stderr and exits 0, like flanneld."""
    with pytest.raises(SystemExit) as info:
        opts("--version")
    assert info.value.code == 0
    assert capsys.readouterr().err.strip() == __version__


def test_real_process_bogus_flag() -> None:
    """``python -m pyflannel --bogus`` exits 2 with one line on stderr and nothing on stdout."""
    res = subprocess.run(
        [sys.executable, "-m", "pyflannel", "--bogus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "--bogus" in lines[0]


def test_lease_ttl_defaults_to_flanneld_24h_and_is_settable() -> None:
    """--subnet-lease-ttl defaults to 86400 s and reads FLANNELD_SUBNET_LEASE_TTL."""
    assert opts().lease_ttl == 86400
    assert opts("--subnet-lease-ttl=7200").lease_ttl == 7200
    assert (
        opts(
            env={"FLANNELD_SUBNET_LEASE_TTL": "600", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "5"}
        ).lease_ttl
        == 600
    )


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (("--subnet-lease-ttl=59",), "between 60 and 864000"),
        (("--subnet-lease-ttl=3600",), "must be shorter than --subnet-lease-ttl"),
        (("--subnet-lease-ttl=600", "--subnet-lease-renew-margin=10"), "must be shorter"),
    ],
)
def test_lease_ttl_must_be_in_range_and_exceed_the_margin(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], reason: str
) -> None:
    """A TTL out of range, or not longer than the renew margin, is a usage error."""
    assert reason in usage_error(capsys, *argv)


# --- the health listener and pyflannel's own variables -----------------------------------------


def test_healthz_flags_default_off_like_flanneld() -> None:
    """--healthz-ip defaults to 0.0.0.0 and --healthz-port to 0 (no listener), as in flanneld."""
    o = opts()
    assert (o.healthz_ip, o.healthz_port) == (IPv4Address("0.0.0.0"), 0)
    assert (o.wait_reminder, o.test_wedge_after) == (60.0, None)


@pytest.mark.parametrize(
    ("argv", "env", "ip", "port"),
    [
        (["--healthz-port=8471"], {}, "0.0.0.0", 8471),
        (["-healthz-ip", "127.0.0.1", "-healthz-port", "65535"], {}, "127.0.0.1", 65535),
        ([], {"FLANNELD_HEALTHZ_IP": "::1", "FLANNELD_HEALTHZ_PORT": "9000"}, "::1", 9000),
        (["--healthz-port=1"], {"FLANNELD_HEALTHZ_PORT": "2"}, "0.0.0.0", 1),
    ],
)
def test_healthz_flags_and_variables(
    argv: list[str], env: dict[str, str], ip: str, port: int
) -> None:
    """Flags and FLANNELD_HEALTHZ_* set the listener; an IPv6 address is taken too."""
    o = opts(*argv, env=env)
    assert (str(o.healthz_ip), o.healthz_port) == (ip, port)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--healthz-port=65536"], {}, "--healthz-port"),
        (["--healthz-port=-1"], {}, "--healthz-port"),
        (["--healthz-port=8_0"], {}, "--healthz-port"),
        (["--healthz-port= 80"], {}, "--healthz-port"),
        (["--healthz-port=http"], {}, "--healthz-port"),
        (["--healthz-ip=localhost"], {}, "--healthz-ip"),
        (["--healthz-ip=10.0.0.256"], {}, "--healthz-ip"),
        ([], {"FLANNELD_HEALTHZ_PORT": "99999"}, "FLANNELD_HEALTHZ_PORT"),
        ([], {"FLANNELD_HEALTHZ_IP": "eth0"}, "FLANNELD_HEALTHZ_IP"),
        ([], {"PYFLANNEL_WAIT_REMINDER": "0"}, "PYFLANNEL_WAIT_REMINDER"),
        ([], {"PYFLANNEL_WAIT_REMINDER": "nan"}, "PYFLANNEL_WAIT_REMINDER"),
        ([], {"PYFLANNEL_WAIT_REMINDER": "soon"}, "PYFLANNEL_WAIT_REMINDER"),
        ([], {"PYFLANNEL_TEST_WEDGE_AFTER": "-1"}, "PYFLANNEL_TEST_WEDGE_AFTER"),
        ([], {"PYFLANNEL_TEST_WEDGE_AFTER": "inf"}, "PYFLANNEL_TEST_WEDGE_AFTER"),
    ],
)
def test_bad_health_values_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], needle: str
) -> None:
    """A bad listener address, port or PYFLANNEL_* value is one line naming it, exit 2."""
    assert needle in usage_error(capsys, *argv, env=env)


def test_pyflannel_variables() -> None:
    """PYFLANNEL_WAIT_REMINDER shortens the reminder period; the wedge hook is off unless set."""
    o = opts(env={"PYFLANNEL_WAIT_REMINDER": "1.5", "PYFLANNEL_TEST_WEDGE_AFTER": "0"})
    assert (o.wait_reminder, o.test_wedge_after) == (1.5, 0.0)


def test_real_process_healthz_cannot_listen() -> None:
    """A listener address that is not ours: one fatal line naming it, exit 1, no traceback
    (before etcd or the kernel is touched)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyflannel",
            "--healthz-ip=192.0.2.123",
            "--healthz-port=8471",
            "--log-format=json",
            "--etcd-endpoints=http://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert '"fatal"' in lines[0] and "192.0.2.123:8471" in lines[0]


def test_public_ipv6_flag_and_variable() -> None:
    """--public-ipv6 (flanneld ≥ 0.15) and FLANNELD_PUBLIC_IPV6; the flag wins."""
    assert opts().public_ipv6 is None
    assert opts("--public-ipv6=fd00:1::3").public_ipv6 == IPv6Address("fd00:1::3")
    env = {"FLANNELD_PUBLIC_IPV6": "fd00:1::4"}
    assert opts(env=env).public_ipv6 == IPv6Address("fd00:1::4")
    assert opts("-public-ipv6", "fd00:1::5", env=env).public_ipv6 == IPv6Address("fd00:1::5")
