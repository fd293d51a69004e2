"""``subnet.env``: the file that hands the lease to whatever attaches containers.

Written atomically by the daemon in flanneld's exact format; read back at start for the
previous subnet, and by pyflannel-cni and the lab.  Pure apart from the file I/O; imports
nothing heavy, since the CNI plugin loads it for every container.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import TypeVar

from pyflannel.errors import SubnetEnvError
from pyflannel.ipnet import (
    NO_IPV4,
    SubnetKey,
    gateway_address,
    go_prints_dotted,
    ipv6_gateway_text,
    ipv6_text,
    parse_ipv6_cidr,
)

_Net = TypeVar("_Net", IPv4Network, IPv6Network)


def subnet_env_text(
    network: IPv4Network | None,
    subnet: IPv4Network | None,
    mtu: int,
    ip_masq: bool,
    *,
    ipv6_network: IPv6Network | None = None,
    ipv6_subnet: IPv6Network | None = None,
) -> str:
    """The file flanneld writes, in its order, no quotes: the IPv4 pair (left out when IPv4 is
    off, *network* None), the IPv6 pair (when *ipv6_network* is given), MTU, IPMASQ.

    Each subnet line names the first address (network + 1) with the subnet's prefix; IPv6 as
    flanneld prints it (:func:`~pyflannel.ipnet.ipv6_text`).
    """
    lines = []
    if network is not None and subnet is not None:
        lines.append(f"FLANNEL_NETWORK={network}")
        lines.append(f"FLANNEL_SUBNET={gateway_address(subnet)}/{subnet.prefixlen}")
    if ipv6_network is not None and ipv6_subnet is not None:
        lines.append(
            f"FLANNEL_IPV6_NETWORK={ipv6_text(ipv6_network.network_address)}/"
            f"{ipv6_network.prefixlen}"
        )
        lines.append(f"FLANNEL_IPV6_SUBNET={ipv6_gateway_text(ipv6_subnet)}")
    lines.append(f"FLANNEL_MTU={mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}")
    return "".join(f"{line}\n" for line in lines)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, dir_mode: int = 0o755) -> None:
    """Write *data* to *path* atomically: a temporary file in the same directory, fsync,
    rename; a crash leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _why(path: Path, exc: OSError) -> str:
    # mkdir(parents=True) reports a regular file in the way as "File exists": name the file.
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() and not parent.is_dir():
            return f"{parent} is not a directory"
    return exc.strerror or str(exc)


def write_subnet_env(path: Path, text: str) -> None:
    """Write subnet.env atomically, readable by all (the CNI plugin may run as another user).

    Raises:
        SubnetEnvError: the file cannot be written (one line: the path and why).
    """
    try:
        atomic_write(path, text.encode())
    except OSError as exc:
        raise SubnetEnvError(f"cannot write {path}: {_why(path, exc)}") from None


def check_writable(path: Path) -> None:
    """Fail early (before leasing anything) when *path* cannot be written: create its directory
    and a temporary file beside it, then remove the file.

    Raises:
        SubnetEnvError: as :func:`write_subnet_env`.
    """
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", dir=path.parent):
            pass
    except OSError as exc:
        raise SubnetEnvError(f"cannot write {path}: {_why(path, exc)}") from None


def env_pairs(text: str) -> list[tuple[str, str]]:
    """The ``KEY=value`` lines of a subnet.env text, in order (blank and ``#`` lines skipped)."""
    pairs = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def _cidr(pairs: list[tuple[str, str]], name: str, parse: Callable[[str], _Net]) -> _Net | None:
    values = [v for k, v in pairs if k == name]
    if len(values) != 1:
        return None
    try:
        return parse(values[0])
    except ValueError:
        return None


def read_subnet_hint(path: Path) -> SubnetKey | None:
    """The subnets of a previous run: FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET as networks (the
    address masked to its prefix), each half None if absent, unreadable or ambiguous (named
    twice), as flanneld reads them; None when neither is usable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    pairs = env_pairs(text)
    ipv4 = _cidr(pairs, "FLANNEL_SUBNET", lambda v: IPv4Network(v, strict=False))
    ipv6 = _cidr(pairs, "FLANNEL_IPV6_SUBNET", parse_ipv6_cidr)
    if ipv4 == NO_IPV4:
        ipv4 = None
    if ipv6 is not None and go_prints_dotted(ipv6.network_address):
        ipv6 = None  # no lease key can name it
    if ipv4 is None and ipv6 is None:
        return None
    return SubnetKey(ipv4, ipv6)


def read_cidr(path: Path, key: str) -> IPv4Network | None:
    """*key*'s value in the subnet.env at *path*, as a network (host bits dropped); None if
    absent, unreadable, not one IPv4 CIDR or named twice."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return _cidr(env_pairs(text), key, lambda v: IPv4Network(v, strict=False))
