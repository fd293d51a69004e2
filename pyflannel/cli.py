"""The command line: flanneld's flags and ``FLANNELD_*`` variables into
:class:`~pyflannel.options.DaemonOptions`.

Every flag can also come from ``FLANNELD_<NAME>`` (upper case, ``-`` → ``_``); the command line
wins.  Unlike flanneld (which exits 0), an unknown flag or a bad value is one error line and
exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, NoReturn

from pyflannel import __version__
from pyflannel.options import ANY_IPV4, DaemonOptions
from pyflannel.registry import EtcdOptions
from pyflannel.retry import REMINDER_PERIOD

EXIT_USAGE = 2


def _bool(text: str) -> bool:
    # Go's strconv.ParseBool
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def _ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def _ip6(text: str) -> IPv6Address:
    # No zone ("%eth0"): a lease value cannot carry one.
    if "%" in text:
        raise ValueError("not an IPv6 address (no zone allowed)")
    try:
        return IPv6Address(text)
    except ValueError:
        raise ValueError("not an IPv6 address") from None


def _margin(text: str) -> int:
    v = int(text)
    if not 1 <= v <= 1439:
        raise ValueError("must be between 1 and 1439 minutes")
    return v


def _ttl(text: str) -> int:
    v = int(text)
    if not 60 <= v <= 10 * 86400:
        raise ValueError("must be between 60 and 864000 seconds")
    return v


def _resync(text: str) -> int:
    # Whole seconds, as flanneld's.  (int() would also take "1_0", " 5" or other scripts' digits.)
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise ValueError("not a whole number of seconds")
    v = int(text)
    if not 1 <= v <= 86400:
        raise ValueError("must be between 1 and 86400 seconds")
    return v


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
    v = float(text)
    if not v > 0 or math.isinf(v):
        raise ValueError("must be positive")
    return v


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


@dataclass(frozen=True)
class _Flag:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    repeat: bool = False
    is_bool: bool = False


FLAGS: tuple[_Flag, ...] = (
    _Flag(
        "etcd-endpoints",
        str,
        "http://127.0.0.1:4001,http://127.0.0.1:2379",
        "comma-separated list of etcd endpoints",
    ),
    _Flag("etcd-prefix", str, "/coreos.com/network", "etcd prefix"),
    _Flag("etcd-keyfile", str, "", "SSL key file used to secure etcd communication"),
    _Flag("etcd-certfile", str, "", "SSL certification file used to secure etcd communication"),
    _Flag(
        "etcd-cafile", str, "", "SSL Certificate Authority file used to secure etcd communication"
    ),
    _Flag("etcd-username", str, "", "username for BasicAuth to etcd"),
    _Flag("etcd-password", str, "", "password for BasicAuth to etcd"),
    _Flag(
        "etcd-api",
        _choice("v2", "v3"),
        "v2",
        "etcd API: v2 (flanneld <= 0.17, etcd <= 3.5 with --enable-v2) or v3 (flanneld >= 0.18)",
    ),
    _Flag(
        "iface",
        str,
        (),
        "interface to use (IP or name) for inter-host communication; repeatable, first match wins",
        repeat=True,
    ),
    _Flag(
        "iface-regex",
        str,
        (),
        "regex matching the first interface (by IP, then name) to use; repeatable",
        repeat=True,
    ),
    _Flag("public-ip", _ip, None, "IP accessible by other nodes for inter-host communication"),
    _Flag(
        "public-ipv6",
        _ip6,
        None,
        "IPv6 accessible by other nodes for inter-host communication (with EnableIPv6)",
    ),
    _Flag(
        "subnet-file",
        Path,
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
        "resync-interval",
        _positive,
        30.0,
        "seconds between full reconciliations of the kernel state (pyflannel)",
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

#: pyflannel's own variables (no flag): how often a wait is logged again, in seconds, and a
#: test hook that wedges the main loop after that many seconds of serving (for the watchdog
#: test; never set it in production).
WAIT_REMINDER_VAR = "PYFLANNEL_WAIT_REMINDER"
TEST_WEDGE_VAR = "PYFLANNEL_TEST_WEDGE_AFTER"


def _seconds(text: str) -> float:
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return v


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Let argparse show our reason ("must be between 1 and 1439 minutes"), not its own."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2: scripts and systemd journals show the reason, not a usage dump.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

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
                help=f"{f.help} (default: {f.default})",
            )
    # klog's verbosity flag, accepted for FLANNELD_V compatibility: 2 or more means debug.
    p.add_argument(
        "-v",
        "--v",
        dest="v",
        type=int,
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
            if f.repeat:
                values[f.name] = tuple(f.parse(x.strip()) for x in raw.split(",") if x.strip())
            else:
                values[f.name] = f.parse(raw)
        except ValueError as exc:
            p.error(f"{var}={raw!r}: {exc}")
    verbosity = ns.get("v")
    if verbosity is None and env.get("FLANNELD_V", ""):
        try:
            verbosity = int(env["FLANNELD_V"])
        except ValueError:
            p.error(f"FLANNELD_V={env['FLANNELD_V']!r}: not an integer")
    log_level = values["log-level"]
    if verbosity is not None and verbosity >= 2 and "log-level" not in ns:
        log_level = "debug"
    if values["subnet-lease-renew-margin"] * 60 >= values["subnet-lease-ttl"]:
        p.error(
            f"--subnet-lease-renew-margin ({values['subnet-lease-renew-margin']} min) must be "
            f"shorter than --subnet-lease-ttl ({values['subnet-lease-ttl']} s)"
        )
    hidden: dict[str, float | None] = {}
    for var, parse in ((WAIT_REMINDER_VAR, _positive), (TEST_WEDGE_VAR, _seconds)):
        raw = env.get(var, "")
        try:
            hidden[var] = parse(raw) if raw else None
        except ValueError as exc:
            p.error(f"{var}={raw!r}: {exc}")
    endpoints = tuple(e.strip() for e in values["etcd-endpoints"].split(",") if e.strip())
    if not endpoints:
        p.error("--etcd-endpoints: no endpoint given")
    return DaemonOptions(
        etcd=EtcdOptions(
            endpoints=endpoints,
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
        public_ip=values["public-ip"],
        public_ipv6=values["public-ipv6"],
        subnet_file=values["subnet-file"],
        renew_margin_minutes=values["subnet-lease-renew-margin"],
        lease_ttl=values["subnet-lease-ttl"],
        ip_masq=values["ip-masq"],
        ip_masq_random_fully_disable=values["ip-masq-fully-random-disable"],
        iptables_forward_rules=values["iptables-forward-rules"],
        iptables_resync=values["iptables-resync"],
        resync_interval=values["resync-interval"],
        log_format=values["log-format"],
        log_level=log_level,
        healthz_ip=values["healthz-ip"],
        healthz_port=values["healthz-port"],
        wait_reminder=hidden[WAIT_REMINDER_VAR] or REMINDER_PERIOD,
        test_wedge_after=hidden[TEST_WEDGE_VAR],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyflannel`` command."""
    opts = parse_args(sys.argv[1:] if argv is None else argv, os.environ)
    # Imported here so that --help and flag errors stay fast and never touch netlink or etcd.
    from pyflannel.daemon import run
    from pyflannel.logs import configure

    configure(opts.log_format, opts.log_level)
    return run(opts)
