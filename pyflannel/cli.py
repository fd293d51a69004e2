"""The command line: flanneld's flags and ``FLANNELD_*`` variables into
:class:`~pyflannel.options.DaemonOptions`.

Every flag can also come from ``FLANNELD_<NAME>`` (upper case, ``-`` → ``_``); the command line
wins.  Unlike flanneld (which exits 0), an unknown flag or a bad value is one error line and
exit code 2, checked here before anything starts (:mod:`pyflannel.flagvalues` says what a good
value is); flanneld flags pyflannel does not support are refused with the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, NoReturn

from pyflannel import __version__
from pyflannel import flagvalues as fv
from pyflannel.options import ANY_IPV4, LEASE_TAKEN_LINGER, DaemonOptions
from pyflannel.registry import EtcdOptions
from pyflannel.retry import REMINDER_PERIOD
from pyflannel.untrusted import clip, excerpt

EXIT_USAGE = 2
#: The longest error line (a value is quoted cut short, see untrusted.excerpt).
MAX_ERROR_CHARS = 400


_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def _bool(text: str) -> bool:
    # Go's strconv.ParseBool
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in _FALSE:
        return False
    raise ValueError("not a boolean (true or false)")


def _margin(text: str) -> int:
    return fv.whole_number(text, 1, 1439, "minutes")


def _ttl(text: str) -> int:
    return fv.whole_number(text, 60, 10 * 86400, "seconds")


def _interval(text: str) -> float:
    return fv.seconds(text, 0.01, 86400)


def _resync(text: str) -> int:
    return fv.whole_number(text, 1, 86400, "seconds")  # whole seconds, as flanneld's


def _verbosity(text: str) -> int:
    return fv.whole_number(text, 0, 2**31 - 1, "")


def _listen_ip(text: str) -> IPv4Address | IPv6Address:
    try:
        return ip_address(text)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def _port(text: str) -> int:
    # Digits only: int() would also take " 80", "+80" and "8_0".
    if not re.fullmatch(r"[0-9]{1,5}", text) or int(text) > 65535:
        raise ValueError("must be a port number between 0 and 65535")
    return int(text)


def _positive(text: str) -> float:
    v = fv.seconds(text, 0, 86400)
    if v == 0:
        raise ValueError("must be positive")
    return v


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        return fv.choice(text, allowed)

    return parse


@dataclass(frozen=True)
class _Flag:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    repeat: bool = False
    is_bool: bool = False
    env_split: bool = False  # the FLANNELD_ variable may list several, comma-separated


FLAGS: tuple[_Flag, ...] = (
    _Flag(
        "etcd-endpoints",
        fv.etcd_endpoints,
        ("http://127.0.0.1:4001", "http://127.0.0.1:2379"),
        "comma-separated list of etcd endpoints, http[s]://host[:port]",
    ),
    _Flag("etcd-prefix", fv.non_empty, "/coreos.com/network", "etcd prefix"),
    _Flag("etcd-keyfile", fv.readable_file, "", "SSL key file used to secure etcd communication"),
    _Flag(
        "etcd-certfile",
        fv.readable_file,
        "",
        "SSL certification file used to secure etcd communication",
    ),
    _Flag(
        "etcd-cafile",
        fv.readable_file,
        "",
        "SSL Certificate Authority file used to secure etcd communication",
    ),
    _Flag("etcd-username", fv.no_controls, "", "username for BasicAuth to etcd"),
    _Flag("etcd-password", fv.no_controls, "", "password for BasicAuth to etcd"),
    _Flag(
        "etcd-api",
        _choice("v2", "v3"),
        "v2",
        "etcd API: v2 (flanneld <= 0.17, etcd <= 3.5 with --enable-v2) or v3 (flanneld >= 0.18)",
    ),
    _Flag(
        "iface",
        fv.iface,
        (),
        "interface to use (IP or name) for inter-host communication; repeatable, first match wins",
        repeat=True,
        env_split=True,
    ),
    _Flag(
        "iface-regex",
        fv.regex,
        (),
        "regex matching the first interface (by IP, then name) to use; repeatable; tried when "
        "no --iface matches",
        repeat=True,
    ),
    _Flag(
        "iface-can-reach",
        fv.unicast_ipv4,
        None,
        "use the interface the kernel routes this IPv4 address through (`ip route get`); "
        "tried when no --iface or --iface-regex matches",
    ),
    _Flag(
        "public-ip",
        fv.unicast_ipv4,
        None,
        "IP accessible by other nodes for inter-host communication",
    ),
    _Flag(
        "public-ipv6",
        fv.unicast_ipv6,
        None,
        "IPv6 accessible by other nodes for inter-host communication (with EnableIPv6)",
    ),
    _Flag(
        "subnet-file",
        fv.file_path,
        Path("/run/flannel/subnet.env"),
        "filename where env variables (subnet, MTU, ...) will be written to",
    ),
    _Flag(
        "subnet-lease-renew-margin",
        _margin,
        60,
        "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    ),
    _Flag(
        "subnet-lease-ttl",
        _ttl,
        86400,
        "lifetime of the subnet lease in seconds (flanneld: fixed 24 h); shorter frees the "
        "subnets of vanished hosts sooner; must exceed the renew margin (pyflannel)",
    ),
    _Flag(
        "ip-masq",
        _bool,
        False,
        "masquerade traffic from the overlay network to the outside with this host's "
        "address (flanneld's rules: nat chain FLANNEL-POSTRTG); recorded in subnet.env, so "
        "that the CNI bridge does not masquerade too",
        is_bool=True,
    ),
    _Flag(
        "ip-masq-fully-random-disable",
        _bool,
        False,
        "masquerade without --random-fully (used by default when iptables supports it)",
        is_bool=True,
    ),
    _Flag(
        "iptables-forward-rules",
        _bool,
        True,
        "accept the overlay network's traffic in the FORWARD chain (filter chain "
        "FLANNEL-FWD), for hosts whose FORWARD policy is DROP (default: true)",
        is_bool=True,
    ),
    _Flag(
        "iptables-resync",
        _resync,
        5,
        "seconds between checks of the iptables rules; missing ones are put back in order",
    ),
    _Flag(
        "ip-blackhole-route",
        _bool,
        False,
        "add a blackhole route for our own subnet, so that traffic to its unassigned addresses "
        "is dropped instead of leaving by the default route",
        is_bool=True,
    ),
    _Flag(
        "resync-interval",
        _interval,
        30.0,
        "seconds between full reconciliations of the kernel state, 0.01 to 86400 (pyflannel)",
    ),
    _Flag(
        "log-format",
        _choice("auto", "console", "json"),
        "auto",
        "log format: console (key=value), json, or auto (console on a terminal, else json)",
    ),
    _Flag("log-level", _choice("debug", "info", "warning", "error"), "info", "log level"),
    _Flag(
        "healthz-ip",
        _listen_ip,
        ANY_IPV4,
        "the IP address for healthz server to listen",
    ),
    _Flag(
        "healthz-port",
        _port,
        0,
        "the port for healthz server to listen (0 to disable); serves /healthz, /readyz and "
        "/metrics",
    ),
)

#: pyflannel's own variables (no flag): how often a wait is logged again, in seconds; how
#: long a daemon whose lease another host took keeps answering health checks before it exits;
#: and a test hook that wedges the main loop after that many seconds of serving (for the
#: watchdog test; never set it in production).
WAIT_REMINDER_VAR = "PYFLANNEL_WAIT_REMINDER"
LINGER_VAR = "PYFLANNEL_LEASE_TAKEN_LINGER"
TEST_WEDGE_VAR = "PYFLANNEL_TEST_WEDGE_AFTER"


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _seconds(text: str) -> float:
    return fv.seconds(text, 0, 10 * 86400)


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Let argparse show our reason ("must be between 1 and 1439 minutes"), not its own."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{excerpt(text)}: {exc}") from None

    return convert


def _shown(default: Any) -> str:
    if isinstance(default, tuple):
        return ",".join(default)
    return "none" if default in ("", None) else str(default)


class _Refuse(argparse.Action):
    """A flanneld flag pyflannel does not support: refused with the reason, not as unknown."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        if self.dest == "kube-subnet-mgr" and values in _FALSE:
            return  # =false asks for etcd mode: that is what we do
        parser.error(f"{option} {fv.UNSUPPORTED[self.dest]}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: scripts and systemd journals show the reason, not a usage dump.
        # argparse quotes unknown arguments as given: escape what would break the line.
        line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {clip(line, MAX_ERROR_CHARS)}\n")

    def _get_option_tuples(self, option_string: str) -> list[Any]:
        # Go's flag package matches names exactly: a typo like --etcd-endpoint must fail, not
        # silently mean --etcd-endpoints.  (allow_abbrev=False would not do: Python 3.11 still
        # expands single-dash prefixes such as -etcd-pre.)
        return []


def _parser() -> _Parser:
    p = _Parser(
        prog="pyflannel",
        description="flanneld-compatible VXLAN overlay daemon; every "
        "flag can also be set as FLANNELD_<FLAG> (e.g. FLANNELD_ETCD_ENDPOINTS).",
        epilog="Refused with the reason: "
        + ", ".join(f"--{name}" for name in fv.UNSUPPORTED)
        + " (no Kubernetes subnet manager, no IPv6 yet).  A bad flag or value exits with code 2.",
    )
    for f in FLAGS:
        # Go's flag package takes -name and --name alike.
        names = [f"--{f.name}", f"-{f.name}"]
        if f.is_bool:
            p.add_argument(
                *names,
                dest=f.name,
                type=_typed(f.parse),
                nargs="?",
                const=True,
                default=argparse.SUPPRESS,
                help=f.help,
                metavar="true|false",
            )
        elif f.repeat:
            p.add_argument(
                *names,
                dest=f.name,
                type=_typed(f.parse),
                action="append",
                default=argparse.SUPPRESS,
                help=f.help,
            )
        else:
            p.add_argument(
                *names,
                dest=f.name,
                type=_typed(f.parse),
                default=argparse.SUPPRESS,
                help=f"{f.help} (default: {_shown(f.default)})",
            )
    for name in fv.UNSUPPORTED:
        p.add_argument(
            f"--{name}", f"-{name}", dest=name, nargs="?", action=_Refuse, help=argparse.SUPPRESS
        )
    # klog's verbosity flag, accepted for FLANNELD_V compatibility: 2 or more means debug.
    p.add_argument(
        "-v",
        "--v",
        dest="v",
        type=_typed(_verbosity),
        default=argparse.SUPPRESS,
        help="verbosity (klog compatible): 2 or more turns on debug logs",
    )
    p.add_argument("--version", "-version", action="store_true", help="print the version and exit")
    return p


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> DaemonOptions:
    """Parse *argv* and *env* into options; exits 2 with one error line on bad input."""
    p = _parser()
    ns = vars(p.parse_args(list(argv)))
    if ns.pop("version", False):
        print(__version__, file=sys.stderr)  # flanneld prints its version to stderr
        raise SystemExit(0)
    values: dict[str, Any] = {}
    for f in FLAGS:
        if f.name in ns:
            values[f.name] = tuple(ns[f.name]) if f.repeat else ns[f.name]
            continue
        var = "FLANNELD_" + f.name.upper().replace("-", "_")
        raw = env.get(var, "")
        if not raw:
            values[f.name] = f.default
            continue
        try:
            if f.env_split:
                items = [x.strip(" ") for x in raw.split(",")]
                if not all(items):
                    raise ValueError("an item of the comma-separated list is empty")
                values[f.name] = tuple(f.parse(x) for x in items)
            elif f.repeat:
                values[f.name] = (f.parse(raw),)  # a regex may hold commas: {1,3}
            else:
                values[f.name] = f.parse(raw)
        except ValueError as exc:
            p.error(f"{var}={excerpt(raw)}: {exc}")
    _refuse_env(p, env)
    verbosity = ns.get("v")
    if verbosity is None and env.get("FLANNELD_V", ""):
        try:
            verbosity = _verbosity(env["FLANNELD_V"])
        except ValueError as exc:
            p.error(f"FLANNELD_V={excerpt(env['FLANNELD_V'])}: {exc}")
    log_level = values["log-level"]
    if verbosity is not None and verbosity >= 2 and "log-level" not in ns:
        log_level = "debug"
    if bool(values["etcd-keyfile"]) != bool(values["etcd-certfile"]):
        p.error("--etcd-keyfile and --etcd-certfile go together: give both or neither")
    if values["subnet-lease-renew-margin"] * 60 >= values["subnet-lease-ttl"]:
        p.error(
            f"--subnet-lease-renew-margin ({values['subnet-lease-renew-margin']} min) must be "
            f"shorter than --subnet-lease-ttl ({values['subnet-lease-ttl']} s)"
        )
    hidden: dict[str, float | None] = {}
    for var, parse in (
        (WAIT_REMINDER_VAR, _positive),
        (LINGER_VAR, _seconds),
        (TEST_WEDGE_VAR, _seconds),
    ):
        raw = env.get(var, "")
        try:
            hidden[var] = parse(raw) if raw else None
        except ValueError as exc:
            p.error(f"{var}={excerpt(raw)}: {exc}")
    return DaemonOptions(
        etcd=EtcdOptions(
            endpoints=values["etcd-endpoints"],
            prefix=values["etcd-prefix"],
            keyfile=values["etcd-keyfile"],
            certfile=values["etcd-certfile"],
            cafile=values["etcd-cafile"],
            username=values["etcd-username"],
            password=values["etcd-password"],
        ),
        etcd_api=values["etcd-api"],
        ifaces=values["iface"],
        iface_regexes=values["iface-regex"],
        iface_can_reach=values["iface-can-reach"],
        public_ip=values["public-ip"],
        public_ipv6=values["public-ipv6"],
        subnet_file=values["subnet-file"],
        renew_margin_minutes=values["subnet-lease-renew-margin"],
        lease_ttl=values["subnet-lease-ttl"],
        ip_masq=values["ip-masq"],
        ip_masq_random_fully_disable=values["ip-masq-fully-random-disable"],
        iptables_forward_rules=values["iptables-forward-rules"],
        iptables_resync=values["iptables-resync"],
        ip_blackhole_route=values["ip-blackhole-route"],
        resync_interval=values["resync-interval"],
        log_format=values["log-format"],
        log_level=log_level,
        healthz_ip=values["healthz-ip"],
        healthz_port=values["healthz-port"],
        wait_reminder=hidden[WAIT_REMINDER_VAR] or REMINDER_PERIOD,
        lease_taken_linger=_or(hidden[LINGER_VAR], LEASE_TAKEN_LINGER),
        test_wedge_after=hidden[TEST_WEDGE_VAR],
    )


def _refuse_env(p: _Parser, env: Mapping[str, str]) -> None:
    """A FLANNELD_ variable asking for an unsupported mode is refused like its flag (the others
    only matter in that mode, as in flanneld, and are ignored)."""
    kube = env.get("FLANNELD_KUBE_SUBNET_MGR", "")
    if kube and kube not in _FALSE:
        reason = fv.UNSUPPORTED["kube-subnet-mgr"]
        p.error(f"FLANNELD_KUBE_SUBNET_MGR={excerpt(kube)}: --kube-subnet-mgr {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyflannel`` command."""
    opts = parse_args(sys.argv[1:] if argv is None else argv, os.environ)
    # Imported here so that --help and flag errors stay fast and never touch netlink or etcd.
    from pyflannel.daemon import run
    from pyflannel.logs import configure

    configure(opts.log_format, opts.log_level)
    return run(opts)
