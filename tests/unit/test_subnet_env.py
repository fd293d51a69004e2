"""subnet.env: the exact text flanneld writes (IPv4, dual stack, IPv6 only), the atomic write,
and the previous-subnet hint."""

from __future__ import annotations

import os
import stat
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from pyflannel.errors import SubnetEnvError
from pyflannel.ipnet import SubnetKey
from pyflannel.subnetenv import (
    check_writable,
    read_subnet_hint,
    subnet_env_text,
    write_subnet_env,
)

SEED_TEXT = (
    "FLANNEL_NETWORK=172.16.0.0/16\n"
    "FLANNEL_SUBNET=172.16.34.1/24\n"
    "FLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=false\n"
)


def test_seed_text_exact() -> None:
    """The seed's cell gets exactly flanneld's four lines, subnet +1, in order, no quotes."""
    text = subnet_env_text(IPv4Network("172.16.0.0/16"), IPv4Network("172.16.34.0/24"), 1450, False)
    assert text == SEED_TEXT


def test_ip_masq_true_and_small_subnet() -> None:
    """FLANNEL_IPMASQ is Go's bool text and the subnet keeps its own prefix length."""
    text = subnet_env_text(IPv4Network("10.4.0.0/24"), IPv4Network("10.4.0.64/26"), 1350, True)
    assert text == (
        "FLANNEL_NETWORK=10.4.0.0/24\n"
        "FLANNEL_SUBNET=10.4.0.65/26\n"
        "FLANNEL_MTU=1350\n"
        "FLANNEL_IPMASQ=true\n"
    )


DUAL_TEXT = (
    "FLANNEL_NETWORK=10.5.0.0/16\n"
    "FLANNEL_SUBNET=10.5.34.1/24\n"
    "FLANNEL_IPV6_NETWORK=fc00::/48\n"
    "FLANNEL_IPV6_SUBNET=fc00:0:0:22::1/64\n"
    "FLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=false\n"
)


def test_dual_stack_text_exact() -> None:
    """Dual stack: the IPv6 pair right after the IPv4 pair (flanneld's WriteSubnetFile order),
    the IPv6 subnet +1 as Go prints it."""
    text = subnet_env_text(
        IPv4Network("10.5.0.0/16"),
        IPv4Network("10.5.34.0/24"),
        1450,
        False,
        ipv6_network=IPv6Network("fc00::/48"),
        ipv6_subnet=IPv6Network("fc00:0:0:22::/64"),
    )
    assert text == DUAL_TEXT


def test_ipv6_only_text_leaves_ipv4_lines_out() -> None:
    """IPv4 off: no FLANNEL_NETWORK or FLANNEL_SUBNET line at all."""
    text = subnet_env_text(
        None,
        None,
        1430,
        True,
        ipv6_network=IPv6Network("fd00:10:244::/56"),
        ipv6_subnet=IPv6Network("fd00:10:244:7::/64"),
    )
    assert text == (
        "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
        "FLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
        "FLANNEL_MTU=1430\n"
        "FLANNEL_IPMASQ=true\n"
    )


def test_read_dual_stack_hint(tmp_path: Path) -> None:
    """read_subnet_hint reads both halves of what a dual-stack run wrote, masked to networks."""
    path = tmp_path / "subnet.env"
    write_subnet_env(path, DUAL_TEXT)
    assert read_subnet_hint(path) == SubnetKey(
        IPv4Network("10.5.34.0/24"), IPv6Network("fc00:0:0:22::/64")
    )


@pytest.mark.parametrize(
    ("content", "v4", "v6"),
    [
        pytest.param("FLANNEL_IPV6_SUBNET=fc00:0:0:22::1/64\n", None, "fc00:0:0:22::/64", id="v6"),
        pytest.param(
            "FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_IPV6_SUBNET=banana\n",
            "10.5.9.0/24",
            None,
            id="bad-v6",
        ),
        pytest.param(
            "FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_IPV6_SUBNET=fe80::1%eth0/64\n",
            "10.5.9.0/24",
            None,
            id="zone",
        ),
        pytest.param(
            "FLANNEL_SUBNET=10.5.9.1/24\nFLANNEL_IPV6_SUBNET=::ffff:10.0.0.1/120\n",
            "10.5.9.0/24",
            None,
            id="no-key-names-it",
        ),
        pytest.param(
            "FLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n",
            None,
            None,
            id="twice",
        ),
        pytest.param(
            "FLANNEL_SUBNET=0.0.0.0/0\nFLANNEL_IPV6_SUBNET=fc00::1/64\n",
            None,
            "fc00::/64",
            id="v4-zero",
        ),
    ],
)
def test_read_hint_halves_independent(
    tmp_path: Path, content: str, v4: str | None, v6: str | None
) -> None:
    """Each half of the hint stands alone: a bad, ambiguous or unnameable one is dropped and
    the other kept; neither usable is no hint."""
    path = tmp_path / "subnet.env"
    path.write_text(content)
    want = (
        None
        if v4 is None and v6 is None
        else SubnetKey(IPv4Network(v4) if v4 else None, IPv6Network(v6) if v6 else None)
    )
    assert read_subnet_hint(path) == want


def test_write_creates_parent_mode_0644_no_temp(tmp_path: Path) -> None:
    """The write creates missing parent directories, leaves a 0644 file and no temporary file."""
    path = tmp_path / "run" / "flannel" / "subnet.env"
    old_umask = os.umask(0o077)  # the mode must not depend on the caller's umask
    try:
        write_subnet_env(path, SEED_TEXT)
    finally:
        os.umask(old_umask)
    assert path.read_text() == SEED_TEXT
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["subnet.env"]


def test_write_replaces_atomically(tmp_path: Path) -> None:
    """Rewriting renames a new file over the old one (a reader never sees a half-written file)."""
    path = tmp_path / "subnet.env"
    path.write_text("FLANNEL_NETWORK=old\n")
    before = path.stat().st_ino
    write_subnet_env(path, SEED_TEXT)
    assert path.read_text() == SEED_TEXT
    assert path.stat().st_ino != before  # a new inode: renamed in, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.env"]


def test_write_failure_leaves_no_temp(tmp_path: Path) -> None:
    """A failed rename (target is a directory) raises one line naming the path and leaves no
    temporary file behind."""
    path = tmp_path / "subnet.env"
    path.mkdir()
    (path / "keep").write_text("x")  # a non-empty directory cannot be replaced by a file
    with pytest.raises(SubnetEnvError, match=f"cannot write {path}: Is a directory"):
        write_subnet_env(path, SEED_TEXT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet.env"]


@pytest.mark.parametrize("check", [True, False], ids=["check_writable", "write_subnet_env"])
def test_file_in_the_path_is_named(tmp_path: Path, check: bool) -> None:
    """A regular file where a directory should be is named as such (mkdir would say the
    misleading "File exists")."""
    (tmp_path / "run").write_text("not a directory")
    path = tmp_path / "run" / "flannel" / "subnet.env"
    with pytest.raises(SubnetEnvError) as err:
        if check:
            check_writable(path)
        else:
            write_subnet_env(path, SEED_TEXT)
    assert str(err.value) == f"cannot write {path}: {tmp_path / 'run'} is not a directory"


def test_check_writable_leaves_nothing(tmp_path: Path) -> None:
    """The early probe creates the directory and leaves no file in it."""
    path = tmp_path / "flannel" / "subnet.env"
    check_writable(path)
    assert list((tmp_path / "flannel").iterdir()) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(SEED_TEXT, "172.16.34.0/24", id="seed"),
        pytest.param("FLANNEL_SUBNET=10.5.34.1/24\n", "10.5.34.0/24", id="host-bits-masked"),
        pytest.param(
            "FLANNEL_NETWORK=10.5.0.0/16\r\nFLANNEL_SUBNET=10.5.34.1/24\r\n",
            "10.5.34.0/24",
            id="crlf",
        ),
        pytest.param("FLANNEL_SUBNET=10.4.0.65/26", "10.4.0.64/26", id="no-newline"),
        pytest.param(
            "# comment\nFLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.9.1/24\n",
            "10.5.9.0/24",
            id="other-lines",
        ),
    ],
)
def test_read_hint_valid(tmp_path: Path, content: str, expected: str) -> None:
    """FLANNEL_SUBNET is read as a CIDR and masked to its network (10.5.34.1/24 -> 10.5.34.0/24)."""
    path = tmp_path / "subnet.env"
    path.write_text(content)
    assert read_subnet_hint(path) == SubnetKey(IPv4Network(expected))


def test_read_hint_round_trip(tmp_path: Path) -> None:
    """What write_subnet_env wrote, read_subnet_hint reads back as the lease subnet."""
    path = tmp_path / "subnet.env"
    write_subnet_env(path, SEED_TEXT)
    assert read_subnet_hint(path) == SubnetKey(IPv4Network("172.16.34.0/24"))


def test_read_hint_missing(tmp_path: Path) -> None:
    """A missing file gives no hint."""
    assert read_subnet_hint(tmp_path / "absent.env") is None


def test_read_hint_directory(tmp_path: Path) -> None:
    """A path that is a directory gives no hint rather than an error."""
    assert read_subnet_hint(tmp_path) is None


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
        pytest.param(b"FLANNEL_NETWORK=10.5.0.0/16\n", id="no-subnet-line"),
        pytest.param(b"FLANNEL_SUBNET=\n", id="empty-value"),
        pytest.param(b"FLANNEL_SUBNET=banana\n", id="not-a-cidr"),
        pytest.param(b"FLANNEL_SUBNET=10.5.34.300/24\n", id="bad-octet"),
        pytest.param(b"FLANNEL_SUBNET=fc00::1/64\n", id="ipv6"),
        pytest.param(b"FLANNEL_SUBNET=10.5.34.1/24,10.5.35.1/24\n", id="two-values"),
    ],
)
def test_read_hint_garbage(tmp_path: Path, content: bytes) -> None:
    """Garbage, an invalid value or more than one value gives no hint."""
    path = tmp_path / "subnet.env"
    path.write_bytes(content)
    assert read_subnet_hint(path) is None
