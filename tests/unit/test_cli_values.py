"""Bad flag and ``FLANNELD_*`` values, by the hundred: each is one line on stderr and exit 2.

The parser runs in-process for the bulk: a generated table of malformed values for every flag
(given as ``--flag=value`` and as its variable), then Hypothesis properties (any text for any
flag ends in options or exit 2 with one line, never a traceback; broken endpoint URLs are always
refused, well-formed ones always taken).  A handful run through the real ``pyflannel`` process.

A flag added to :data:`pyflannel.cli.FLAGS` without an entry in :data:`GOOD` is still fed the
generic families (unprintable characters around its default value).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflannel.cli import FLAGS, MAX_ERROR_CHARS, parse_args
from pyflannel.flagvalues import UNSUPPORTED
from pyflannel.options import DaemonOptions

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: A good value of every flag (the bad ones below are variations of it).
GOOD = {
    "etcd-endpoints": "http://10.0.1.2:2379",
    "etcd-prefix": "/coreos.com/network",
    # Any readable file will do for the parser (it only checks that it can be read).
    "etcd-keyfile": __file__,
    "etcd-certfile": __file__,
    "etcd-cafile": __file__,
    "etcd-username": "flannel",
    "etcd-password": "secret",
    "etcd-api": "v3",
    "iface": "eth0",
    "iface-regex": "^eth[0-9]{1,2}$",
    "iface-can-reach": "10.0.1.1",
    "public-ip": "10.0.1.3",
    "subnet-file": "/run/flannel/subnet.env",
    "subnet-lease-renew-margin": "30",
    "subnet-lease-ttl": "7200",
    "ip-masq": "true",
    "ip-blackhole-route": "true",
    "resync-interval": "5",
    "log-format": "json",
    "log-level": "debug",
}
#: Flags whose empty value means "none" (TLS files, credentials): not a mistake.
EMPTY_OK = {"etcd-keyfile", "etcd-certfile", "etcd-cafile", "etcd-username", "etcd-password"}
UNPRINTABLE = ["\r", "\n", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\udcff", "\xa0"]

BAD_URLS = [
    # not http(s)://
    "notaurl",
    "10.0.1.2:2379",
    "ftp://10.0.1.2:2379",
    "unix:///run/etcd.sock",
    "tcp://10.0.1.2:2379",
    "http//10.0.1.2:2379",
    "http:/10.0.1.2:2379",
    "http:10.0.1.2:2379",
    "://10.0.1.2:2379",
    "httpx://10.0.1.2:2379",
    # no host, or not a host
    "http://",
    "http:///",
    "http://:2379",
    "https://:2379/",
    "http://[::1:2379",
    "http://[zz::1]:2379",
    "http://999.1.1.1:2379",
    "http://10.0.1:2379",
    "http://-etcd:2379",
    "http://etcd-:2379",
    "http://a..b:2379",
    f"http://{'a' * 64}:2379",
    "http://et cd:2379",
    "http://et%63d:2379",
    "http://etcd!:2379",
    "http://user:pw@10.0.1.2:2379",
    "http://10.0.1.2:2379:2380",
    # ports
    *(
        f"http://10.0.1.2:{p}"
        for p in (
            "0",
            "65536",
            "99999",
            "-1",
            "+80",
            "80a",
            "0x50",
            "",
            "1e3",
            "\u0668\u0660",
            "123456",
        )
    ),
    # something after host:port
    "http://10.0.1.2:2379/v2/keys",
    "http://10.0.1.2:2379?x=1",
    "http://10.0.1.2:2379#top",
    "http://10.0.1.2:2379/?",
    # lists
    "http://a:2379,,http://b:2379",
    ",http://a:2379",
    "http://a:2379,",
    ",",
    " , ",
    "http://a:2379,notaurl",
    "http://a:2379;http://b:2379",
    "http://a:2379 http://b:2379",
]
BAD_IPS = [
    "banana",
    "10.0.1",
    "10.0.1.256",
    "010.0.1.3",
    "10.0.1.3/24",
    "1.2.3.4.5",
    "::1",
    "fe80::1",
    "0.0.0.0",
    "127.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
    " 10.0.1.3",
    "10.0.1.3 ",
    "0x0a000103",
    "167772419",
]
BAD_INTS = ["abc", "1_0", " 5", "5 ", "\u0665", "5.0", "1e3", "0x10", "9" * 30, "+", "-", "inf"]
BAD_FILES = ["/nonexistent/ca.pem", "/", str(Path(__file__).parent), "/dev/null"]
BAD = {
    "etcd-endpoints": BAD_URLS,
    "etcd-keyfile": BAD_FILES,
    "etcd-certfile": BAD_FILES,
    "etcd-cafile": BAD_FILES,
    "etcd-api": ["v1", "V2", "v3 ", "3", "etcd3", "v2,v3"],
    "iface": [
        "a" * 16,
        "eth0/1",
        "eth0:1",
        "eth 0",
        ".",
        "..",
        "10.0.1",
        "fe80::1%eth0",
        "1::2::3",
    ],
    "iface-regex": ["([", "*", "a{2,1}", "(?P<x", "\\", "(?<!a+)b", "[z-a]"],
    "iface-can-reach": BAD_IPS,
    "public-ip": BAD_IPS,
    "public-ipv6": [
        *("banana", "10.0.1.3", "::", "::1", "ff02::1", "fe80::1%eth0", "::ffff:10.0.0.1"),
        *(" fd00::1", "fd00::1 ", "fd00::1/64", "1::2::3"),
    ],
    "subnet-file": ["/run/flannel/", "relative/dir/"],
    "subnet-lease-renew-margin": [*BAD_INTS, "0", "1440", "-5", "100000"],
    "subnet-lease-ttl": [*BAD_INTS, "59", "864001", "-86400"],
    "ip-masq": ["maybe", "yes", "no", "on", "off", "2", "tRuE", "1.0", "true "],
    "ip-blackhole-route": ["maybe", "yes", "enabled", "-1", "truee"],
    "resync-interval": [
        *("nan", "inf", "-inf", "NaN", "Infinity", "0", "-1", "1e400", "0x1p3", "1_0"),
        *("86401", "0.001", ".", "e5", "5s", "1m", "\u0661", "5,0"),
    ],
    "log-format": ["text", "JSON", "logfmt"],
    "log-level": ["trace", "INFO", "warn", "fatal", "2"],
}


def variable(flag: str) -> str:
    """The environment variable of *flag*."""
    return "FLANNELD_" + flag.upper().replace("-", "_")


def base(flag: str) -> str:
    """A good value of *flag*: from GOOD, else its default as text."""
    if flag in GOOD:
        return GOOD[flag]
    default = next(f.default for f in FLAGS if f.name == flag)
    if isinstance(default, tuple):
        return ",".join(default) or "x"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default) if default not in ("", None) else "x"


def bad_values(flag: str) -> Iterator[str]:
    """Every malformed value of *flag* the table holds."""
    good = base(flag)
    for c in UNPRINTABLE:
        yield good + c
        yield c + good
        yield good[:1] + c + good[1:]
    yield from BAD.get(flag, [])


def parse(argv: list[str], env: Mapping[str, str]) -> tuple[int | None, str, str]:
    """Run the parser in-process: its exit code (None when it returned) and what it wrote."""
    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            assert isinstance(parse_args(argv, env), DaemonOptions)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else -1
    return code, out.getvalue(), err.getvalue()


def assert_refused(argv: list[str], env: Mapping[str, str], needle: str) -> None:
    """Exit 2 with exactly one short line on stderr naming *needle*, nothing on stdout."""
    code, out, err = parse(argv, env)
    assert code == 2, (argv, env, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), repr(err)
    assert lines[0].startswith("pyflannel: error: ")
    assert len(lines[0]) <= MAX_ERROR_CHARS + 40
    assert needle in lines[0], (needle, lines[0])


CASES = [(f.name, v) for f in FLAGS for v in bad_values(f.name)]
CASES += [(f.name, "") for f in FLAGS if f.name not in EMPTY_OK]


def test_the_table_is_large_and_covers_every_flag() -> None:
    """Hundreds of cases, every flag among them."""
    assert len(CASES) >= 400
    assert {f.name for f in FLAGS} == {name for name, _ in CASES}
    assert set(GOOD) <= {f.name for f in FLAGS}


def test_the_good_values_are_good() -> None:
    """Every base value parses (so each bad one differs from a good one by its fault)."""
    argv = [f"--{name}={value}" for name, value in GOOD.items()]
    assert parse(argv, {})[0] is None
    assert parse([], {variable(name): value for name, value in GOOD.items()})[0] is None


@pytest.mark.parametrize(("flag", "value"), CASES)
def test_bad_value_on_the_command_line(flag: str, value: str) -> None:
    """``--flag=<bad>``: exit 2, one line naming the flag."""
    assert_refused([f"--{flag}={value}"], {}, f"--{flag}")


@pytest.mark.parametrize(("flag", "value"), [(f, v) for f, v in CASES if v])
def test_bad_value_in_the_environment(flag: str, value: str) -> None:
    """``FLANNELD_FLAG=<bad>``: exit 2, one line naming the variable."""
    assert_refused([], {variable(flag): value}, variable(flag))


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FLANNELD_IFACE": "eth0,,eth1"}, "FLANNELD_IFACE"),
        ({"FLANNELD_IFACE": "eth0,"}, "FLANNELD_IFACE"),
        ({"FLANNELD_IFACE": "eth0,eth 1"}, "FLANNELD_IFACE"),
        ({"FLANNELD_V": "loud"}, "FLANNELD_V"),
        ({"FLANNELD_ETCD_KEYFILE": __file__}, "go together"),
        ({"FLANNELD_ETCD_CERTFILE": __file__}, "go together"),
        ({"FLANNELD_V": "-1"}, "FLANNELD_V"),
        ({"FLANNELD_V": "2\r"}, "FLANNELD_V"),
        ({"FLANNELD_KUBE_SUBNET_MGR": "true"}, "not supported"),
        ({"FLANNELD_KUBE_SUBNET_MGR": "1"}, "not supported"),
        ({"FLANNELD_PUBLIC_IPV6": "10.0.1.3"}, "FLANNELD_PUBLIC_IPV6"),
        (
            {"FLANNELD_SUBNET_LEASE_TTL": "600", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "10"},
            "must be shorter",
        ),
    ],
)
def test_bad_environment_specials(env: dict[str, str], needle: str) -> None:
    """Lists, verbosity, unsupported modes and a TTL shorter than the margin, from the env."""
    assert_refused([], env, needle)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--bogus"], "--bogus"),
        (["--etcd-endpoint=http://10.0.1.2:2379"], "--etcd-endpoint"),
        (["--ip-mas"], "--ip-mas"),
        (["--IFACE=eth0"], "--IFACE"),
        (["---iface=eth0"], "---iface"),
        (["positional"], "positional"),
        (["--bo\ngus"], "--bo\\ngus"),
        (["--bo\u2028gus"], "--bo\\u2028gus"),
        (["--" + "x" * 5000], "--xxx"),
        (["--v=x"], "-v"),
        (["--v=-2"], "-v"),
        (["--v=\u0662"], "-v"),
        (["--etcd-prefix"], "--etcd-prefix"),
        (["--iface"], "--iface"),
        *(([f"--{name}"], f"--{name}") for name in UNSUPPORTED),
        *(([f"-{name}=x"], f"-{name}") for name in UNSUPPORTED),
    ],
)
def test_bad_command_lines(argv: list[str], needle: str) -> None:
    """Unknown or unsupported flags, a missing value, a bad verbosity: one escaped line."""
    assert_refused(argv, {}, needle)


def test_kube_subnet_mgr_says_why_and_what_to_use() -> None:
    """--kube-subnet-mgr is refused as not supported (not as unknown), saying what to use."""
    _, _, err = parse(["--kube-subnet-mgr"], {})
    assert "not supported" in err and "etcd" in err and "--etcd-endpoints" in err
    assert "unrecognized" not in err


def test_unsupported_kube_variables_alone_are_ignored() -> None:
    """Kubernetes-only variables other than FLANNELD_KUBE_SUBNET_MGR change nothing (flanneld
    ignores them in etcd mode); =false for the mode itself is fine."""
    env = {"FLANNELD_KUBECONFIG_FILE": "/k", "FLANNELD_KUBE_SUBNET_MGR": "false"}
    assert parse([], env)[0] is None
    assert parse(["--kube-subnet-mgr=false"], {})[0] is None


# --- properties ------------------------------------------------------------------------------

flags = st.sampled_from([f.name for f in FLAGS])


@FUZZ
@given(flag=flags, value=st.text(max_size=60), as_env=st.booleans())
def test_any_text_is_options_or_one_line_and_exit_2(flag: str, value: str, as_env: bool) -> None:
    """Whatever text a flag gets, the parser returns options or exits 2 with one line; text
    with an unprintable character is always refused."""
    argv, env = ([], {variable(flag): value}) if as_env else ([f"--{flag}={value}"], {})
    code, out, err = parse(argv, env)
    assert out == ""
    if code is None:
        assert err == ""
        assert all(c.isprintable() for c in value)
        return
    assert code == 2
    assert len(err.splitlines()) == 1, repr(err)


ports = st.integers(min_value=1, max_value=65535)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hosts = (
    # An all-numeric name reads as a malformed IPv4 address (and is refused as one).
    st.lists(labels, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda h: not re.fullmatch(r"[0-9.]+", h))
    | st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(lambda a: f"[{a}]")
)
urls = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}" + (f":{port}" if port else ""),
    st.sampled_from(["http", "https"]),
    hosts,
    st.none() | ports,
)


@FUZZ
@given(endpoints=st.lists(urls, min_size=1, max_size=4))
def test_well_formed_endpoints_are_taken(endpoints: list[str]) -> None:
    """Any list of http(s)://host[:port] with a name or an IP as host is accepted as given."""
    code, _, err = parse([f"--etcd-endpoints={', '.join(endpoints)}"], {})
    assert code is None, err


@st.composite
def broken_urls(draw: st.DrawFn) -> str:
    """A well-formed URL with one thing broken: port, scheme, host, or what follows."""
    host, port = draw(hosts), draw(ports)
    fault = draw(st.sampled_from(["port", "scheme", "host", "tail", "control"]))
    if fault == "port":
        bad = draw(st.integers(min_value=65536) | st.just(0) | st.integers(max_value=-1))
        return f"http://{host}:{bad}"
    if fault == "scheme":
        scheme = draw(st.from_regex(r"[a-z][a-z0-9+.-]{0,8}", fullmatch=True))
        if scheme in ("http", "https"):
            scheme += "x"
        return f"{scheme}://{host}:{port}"
    if fault == "host":
        junk = draw(st.text(alphabet="!$&'()*+;=%<>\"{}|^`~ ", min_size=1, max_size=3))
        return f"http://{host}{junk}:{port}"
    if fault == "tail":
        tail = draw(st.sampled_from(["/v2", "/keys/x", "?a=1", "#x", "/a/b"]))
        return f"http://{host}:{port}{tail}"
    c = draw(st.sampled_from(UNPRINTABLE))
    return f"http://{host}:{port}{c}"


@FUZZ
@given(bad=broken_urls(), before=st.lists(urls, max_size=2), as_env=st.booleans())
def test_broken_endpoints_are_refused(bad: str, before: list[str], as_env: bool) -> None:
    """One broken URL anywhere in the list is exit 2 and one line."""
    text = ",".join([*before, bad])
    if as_env:
        assert_refused([], {"FLANNELD_ETCD_ENDPOINTS": text}, "FLANNELD_ETCD_ENDPOINTS")
    else:
        assert_refused([f"--etcd-endpoints={text}"], {}, "--etcd-endpoints")


@FUZZ
@given(value=st.integers(), flag=st.sampled_from(["subnet-lease-renew-margin", "v"]))
def test_integers_out_of_range(value: int, flag: str) -> None:
    """A whole number is taken only in range (margin 1-1439, verbosity 0 or more)."""
    code, _, _ = parse([f"--{flag}={value}"], {})
    ok = 1 <= value <= 1439 if flag != "v" else 0 <= value < 2**31
    assert (code is None) == ok


def test_valid_endpoint_forms() -> None:
    """IPv6 literals, names with a trailing dot, https, no port, a trailing slash: taken."""
    endpoints = (
        "http://[::1]:2379",
        "https://etcd.example.com.",
        "http://etcd_1.internal:2379/",
        "HTTP://10.0.1.2:2379",
    )
    o = parse_args([f"--etcd-endpoints={','.join(endpoints)}"], {})
    assert o.etcd.endpoints == endpoints


def test_new_values_parsed() -> None:
    """--iface-can-reach takes an IPv4 address; --ip-blackhole-route is a boolean."""
    o = parse_args(["--iface-can-reach=10.0.1.1", "--ip-blackhole-route"], {})
    assert o.iface_can_reach == IPv4Address("10.0.1.1")
    assert o.ip_blackhole_route is True
    o = parse_args([], {"FLANNELD_IFACE_CAN_REACH": "8.8.8.8", "FLANNELD_IP_BLACKHOLE_ROUTE": "1"})
    assert o.iface_can_reach == IPv4Address("8.8.8.8")
    assert o.ip_blackhole_route is True


def test_iface_regex_variable_is_one_regex() -> None:
    """FLANNELD_IFACE_REGEX is one regex, commas included (as in flanneld), not a list."""
    o = parse_args([], {"FLANNELD_IFACE_REGEX": "^eth[0-9]{1,2}$"})
    assert o.iface_regexes == ("^eth[0-9]{1,2}$",)


# --- the real process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ([b"--etcd-endpoints=http://127.0.0.1:99999"], {}, b"99999"),
        ([b"--etcd-endpoints=notaurl"], {}, b"http://"),
        ([b"--etcd-prefix=/x\xff"], {}, b"--etcd-prefix"),
        ([b"--kube-subnet-mgr"], {}, b"not supported"),
        ([], {"FLANNELD_PUBLIC_IP": "10.0.1.3\r"}, b"FLANNELD_PUBLIC_IP"),
        ([], {"FLANNELD_ETCD_ENDPOINTS": "http://10.0.1.2:2379,,"}, b"empty"),
    ],
)
def test_real_process(args: list[bytes], env: dict[str, str], needle: bytes) -> None:
    """``python -m pyflannel`` with a bad value: exit 2, one stderr line, no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    res = subprocess.run(
        [sys.executable.encode(), b"-m", b"pyflannel", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert res.stdout == b""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
