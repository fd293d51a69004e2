"""``subnet.env``: the file that hands the lease to whatever attaches containers.

Written atomically by the daemon in flanneld's exact format; read back at start for the
previous subnet, and by pyflannel-cni and the lab.  Pure apart from the file I/O; imports
nothing heavy, since the CNI plugin loads it for every container.
"""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Network
from pathlib import Path

from pyflannel.errors import SubnetEnvError
from pyflannel.ipnet import gateway_address


def subnet_env_text(network: IPv4Network, subnet: IPv4Network, mtu: int, ip_masq: bool) -> str:
    """The file flanneld writes: four lines in this order, no quotes."""
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={gateway_address(subnet)}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    )


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


def read_subnet_hint(path: Path) -> IPv4Network | None:
    """The FLANNEL_SUBNET of a previous run, as a network; None if absent, unreadable or
    ambiguous (named twice), as flanneld reads it."""
    return read_cidr(path, "FLANNEL_SUBNET")


def read_cidr(path: Path, key: str) -> IPv4Network | None:
    """*key*'s value in the subnet.env at *path*, as a network (host bits dropped); None if
    absent, unreadable, not one IPv4 CIDR or named twice."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    values = [v for k, v in env_pairs(text) if k == key]
    if len(values) != 1:
        return None
    try:
        return IPv4Network(values[0], strict=False)
    except ValueError:
        return None
