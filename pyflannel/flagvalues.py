"""Parsers for flag and ``FLANNELD_*`` values: each returns the typed value or raises
:class:`ValueError` with a short reason, so that :mod:`pyflannel.cli` can refuse a bad value
with one line and exit code 2 before anything starts.

No I/O, except that a TLS file is opened to see that it can be read.  Stricter than Python's
own converters on purpose: ``int()`` takes ``"1_0"``, ``" 5"`` and non-ASCII digits,
``float()`` takes ``"nan"``, ``urlsplit()`` silently drops tabs and newlines and raises on a
bad port only when ``.port`` is read (the traceback the daemon used to print for
``http://127.0.0.1:99999``); a missing CA file was a traceback at the first request.  A value
read from an environment file with Windows line endings ends in ``\\r``: control characters
are refused everywhere, with the reason.
"""

from __future__ import annotations

import os
import re
import stat
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from urllib.parse import urlsplit

from pyflannel.untrusted import excerpt

_INT_RE = re.compile(r"[+-]?[0-9]{1,12}", re.ASCII)
_FLOAT_RE = re.compile(
    r"\+?(?:[0-9]{1,12}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?", re.ASCII
)
# A DNS name: labels of letters, digits, '-' and '_' (seen in internal zones), not starting
# or ending with '-'.
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)", re.ASCII)
# host[:port] after the scheme: a bracketed IPv6 literal or a name without ':' or brackets.
_HOSTPORT_RE = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?")
#: Linux's IFNAMSIZ less the terminating NUL.
MAX_IFNAME = 15


def no_controls(text: str) -> str:
    """*text* unless it holds a control or other unprintable character (an ``\\r`` from a
    CRLF env file, a tab, bytes that are not UTF-8)."""
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"contains the unprintable character {bad!r}")
    return text


def non_empty(text: str) -> str:
    """A value that must say something (an empty command-line value is a mistake)."""
    if not text:
        raise ValueError("must not be empty")
    return no_controls(text)


def whole_number(text: str, low: int, high: int, unit: str) -> int:
    """An ASCII decimal integer between *low* and *high*."""
    if not _INT_RE.fullmatch(text):
        raise ValueError(f"not a whole number of {unit}" if unit else "not a whole number")
    v = int(text)
    if not low <= v <= high:
        raise ValueError(f"must be between {low} and {high} {unit}".rstrip())
    return v


def seconds(text: str, low: float, high: float) -> float:
    """A finite decimal number of seconds between *low* and *high* (no nan, inf, hex)."""
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError("not a number of seconds")
    v = float(text)
    if not low <= v <= high:
        raise ValueError(f"must be between {low:g} and {high:g} seconds")
    return v


def ipv4(text: str) -> IPv4Address:
    """A dotted-quad IPv4 address; an IPv6 one says where IPv6 addresses go."""
    try:
        return IPv4Address(text)
    except ValueError:
        pass
    try:
        IPv6Address(text)
    except ValueError:
        raise ValueError("not an IPv4 address") from None
    raise ValueError("an IPv6 address where an IPv4 one is wanted (IPv6: --public-ipv6)")


def unicast_ipv6(text: str) -> IPv6Address:
    """An IPv6 address another host can send to: no zone (a lease cannot carry one), not ::,
    loopback, multicast or IPv4-mapped; peers would skip a lease with such a PublicIPv6."""
    no_controls(text)
    try:
        ip = IPv6Address(text) if "%" not in text else None
    except ValueError:
        ip = None
    if ip is None:
        raise ValueError("not an IPv6 address (no zone: %eth0 cannot go in a lease)")
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.ipv4_mapped is not None:
        raise ValueError("not a unicast IPv6 address (not ::, ::1, multicast or IPv4-mapped)")
    return ip


def unicast_ipv4(text: str) -> IPv4Address:
    """An IPv4 address another host can send to: not 0.0.0.0, loopback, multicast or
    reserved (255.255.255.255 included); peers would skip a lease with such a PublicIP."""
    ip = ipv4(text)
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_reserved:
        raise ValueError("not a unicast address (not 0.0.0.0, loopback, multicast or broadcast)")
    return ip


def iface(text: str) -> str:
    """An interface name (Linux's rules: 1-15 characters, no '/', ':' or blank, not '.' or
    '..'), an IPv4 address or an IPv6 one (without zone)."""
    no_controls(text)
    if ":" in text:
        try:
            if "%" in text:  # Python takes a zone, Go does not
                raise ValueError(text)
            return str(IPv6Address(text))
        except ValueError:
            raise ValueError("not an IPv6 address (no zone)") from None
    if re.fullmatch(r"[0-9.]+", text):
        return str(ipv4(text))
    if not text or len(text) > MAX_IFNAME or text in (".", "..") or re.search(r"[/:\s]", text):
        raise ValueError(
            f"not an interface name (1-{MAX_IFNAME} characters, no '/', ':' or blank) "
            "or an IP address"
        )
    return text


def regex(text: str) -> str:
    """A regular expression that compiles (Python's syntax, which covers flanneld's uses)."""
    no_controls(text)
    if not text:
        raise ValueError("must not be empty")
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a regular expression: {str(exc)[:80]}") from None
    return text


def readable_file(text: str) -> str:
    """A file the daemon can read (a TLS key, certificate or CA bundle), or "" for none: a
    wrong path is reported now, not as a traceback at the first TLS handshake."""
    no_controls(text)
    if not text:
        return text
    try:
        # Non-blocking: a FIFO given by mistake must not hang the start.
        fd = os.open(text, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    if not regular:
        raise ValueError("not a regular file")
    return text


def file_path(text: str) -> Path:
    """A file name: not empty, not a directory name (ending in '/')."""
    non_empty(text)
    if text.endswith("/"):
        raise ValueError("names a directory, not a file")
    return Path(text)


def etcd_url(text: str) -> str:
    """One etcd endpoint: ``http[s]://host[:port]``, host a name or an IP address, port
    1-65535 (etcd's clients take 2379 when none is given), nothing after the port."""
    no_controls(text)
    if " " in text:
        raise ValueError("contains a blank")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(str(exc)) from None
    if parts.scheme not in ("http", "https") or not text.lower().startswith(parts.scheme + "://"):
        raise ValueError("must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("credentials in the URL: use --etcd-username and --etcd-password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("nothing may follow host:port")
    m = _HOSTPORT_RE.fullmatch(parts.netloc)
    if m is None or not m.group(1):
        raise ValueError("no host")
    _host(m.group(1))
    port = m.group(2)
    if port is not None and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise ValueError(f"port {excerpt(port, 12)} is not a number from 1 to 65535")
    return text


def _host(host: str) -> None:
    if host.startswith("["):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"host {excerpt(host, 48)} is not an IPv6 address") from None
        return
    if re.fullmatch(r"[0-9.]+", host):
        try:
            IPv4Address(host)
        except ValueError:
            raise ValueError(f"host {excerpt(host, 48)} is not an IPv4 address") from None
        return
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"host {excerpt(host, 48)} is not a host name or an IP address")


def etcd_endpoints(text: str) -> tuple[str, ...]:
    """A comma-separated list of etcd endpoints (blanks around the commas are dropped; an
    empty item is a mistake, as in ``a,,b``)."""
    items = [x.strip(" ") for x in text.split(",")]
    if not any(items):
        raise ValueError("no endpoint given")
    out = []
    for n, item in enumerate(items, 1):
        if not item:
            raise ValueError(f"item {n} of the list is empty")
        try:
            out.append(etcd_url(item))
        except ValueError as exc:
            if len(items) == 1:
                raise
            raise ValueError(f"{excerpt(item)}: {exc}") from None
    return tuple(out)


def choice(text: str, allowed: tuple[str, ...]) -> str:
    """One of *allowed*, exactly."""
    if text not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return text


#: flanneld flags pyflannel refuses, with why: a clear "not supported" instead of "unknown".
_KUBE = (
    "is not supported: pyflannel keeps the subnet leases in etcd only and has no Kubernetes "
    "subnet manager; run flanneld for that mode, or give pyflannel --etcd-endpoints"
)
UNSUPPORTED: dict[str, str] = {
    "kube-subnet-mgr": _KUBE,
    "kube-api-url": "only applies with --kube-subnet-mgr, which " + _KUBE,
    "kubeconfig-file": "only applies with --kube-subnet-mgr, which " + _KUBE,
    "kube-annotation-prefix": "only applies with --kube-subnet-mgr, which " + _KUBE,
    "net-config-path": "only applies with --kube-subnet-mgr, which " + _KUBE,
    "set-node-network-unavailable": "only applies with --kube-subnet-mgr, which " + _KUBE,
}
