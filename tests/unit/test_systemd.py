"""sd_notify: datagrams to a real AF_UNIX socket the test owns, path and abstract; the watchdog."""

from __future__ import annotations

import os
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyflannel import systemd


class Receiver:
    """The service manager's end: a datagram socket that also reports the sender's PID."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> tuple[str, int | None]:
        """One datagram and the PID the kernel vouches for (SCM_CREDENTIALS)."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
        return data.decode("utf-8"), pid

    def pending(self) -> bool:
        """Whether a datagram is waiting."""
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(timeout)
        return True


def _receiver(address: str, env_value: str) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        # As systemd does: have the kernel attach the sender's credentials to each datagram.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(5)
        yield Receiver(sock, env_value)
    finally:
        sock.close()


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A notify socket at a filesystem path, named in $NOTIFY_SOCKET."""
    address = str(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield from _receiver(address, address)


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A notify socket in the abstract namespace, named "@..." in $NOTIFY_SOCKET."""
    name = f"pyflannel-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield from _receiver("\0" + name, "@" + name)


def test_no_variable_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $NOTIFY_SOCKET every helper returns False and sends nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.stopping() is False
    assert systemd.status("x") is False
    assert systemd.watchdog() is False


def test_ready_reaches_path_socket_from_our_pid(path_socket: Receiver) -> None:
    """READY=1 arrives as one datagram, and the kernel names our PID (NotifyAccess=main)."""
    assert systemd.ready() is True
    assert path_socket.receive() == ("READY=1", os.getpid())


def test_abstract_socket(abstract_socket: Receiver) -> None:
    """An "@name" address is the abstract socket name, as sd_notify(3) reads it."""
    assert systemd.notify("READY=1\nSTATUS=serving 10.5.34.0/24") is True
    assert abstract_socket.receive()[0] == "READY=1\nSTATUS=serving 10.5.34.0/24"


def test_helpers_send_their_assignments(path_socket: Receiver) -> None:
    """Each helper sends exactly its assignment(s)."""
    assert systemd.ready("lease 10.5.34.0/24")
    assert path_socket.receive()[0] == "READY=1\nSTATUS=lease 10.5.34.0/24"
    assert systemd.status("renewing")
    assert path_socket.receive()[0] == "STATUS=renewing"
    assert systemd.stopping()
    assert path_socket.receive()[0] == "STOPPING=1"
    assert systemd.watchdog()
    assert path_socket.receive()[0] == "WATCHDOG=1"
    assert not path_socket.pending()


def test_status_is_one_line(path_socket: Receiver) -> None:
    """A newline in a status text cannot start a second, bogus assignment."""
    assert systemd.status("etcd down\nREADY=1")
    assert path_socket.receive()[0] == "STATUS=etcd down READY=1"


def test_empty_state_sends_nothing(path_socket: Receiver) -> None:
    """An empty notification is not sent (sd_notify rejects it too)."""
    assert systemd.notify("") is False
    assert not path_socket.pending()


def test_missing_socket_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket that is gone is reported by the return value, not raised."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False


@pytest.mark.parametrize("value", ["relative/notify.sock", "vsock:2:1234", "@"])
def test_unusable_address_returns_false(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only absolute paths and non-empty abstract names are used."""
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify("READY=1") is False


def test_utf8_payload(path_socket: Receiver) -> None:
    """The status text goes out as UTF-8."""
    assert systemd.status("lease 10.5.34.0/24 \u2192 renewed")
    assert path_socket.receive()[0] == "STATUS=lease 10.5.34.0/24 \u2192 renewed"


# --- watchdog_interval -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 30.0),
        ("500000", "self", 0.5),
        ("30000000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("", None, None),
        ("30000000", "notanumber", None),
    ],
)
def test_watchdog_interval(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC in seconds, only when WATCHDOG_PID is absent or ours (sd_watchdog_enabled)."""
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", value)
    assert systemd.watchdog_interval() == expected


# --- Watchdog ---------------------------------------------------------------------------------


def test_watchdog_pings_at_half_the_interval(path_socket: Receiver) -> None:
    """kick() sends WATCHDOG=1 at most once per half interval, whatever the kick rate."""
    dog = systemd.Watchdog(10.0)
    for now in (100.0, 101.0, 104.9, 105.0, 105.1, 109.99, 110.0):
        dog.kick(now)
    assert dog.sent == 3  # at 100, 105 and 110
    assert [path_socket.receive()[0] for _ in range(3)] == ["WATCHDOG=1"] * 3
    assert not path_socket.pending()


def test_watchdog_off_without_watchdog_usec(
    path_socket: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without $WATCHDOG_USEC (or addressed to another PID) nothing is ever sent."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    dog = systemd.Watchdog.from_env()
    dog.kick(0.0)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    other = systemd.Watchdog.from_env()
    other.kick(0.0)
    assert (dog.sent, other.sent) == (0, 0)
    assert not path_socket.pending()
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    ours = systemd.Watchdog.from_env()
    assert ours.interval == 2.0
    ours.kick(0.0)
    assert path_socket.receive()[0] == "WATCHDOG=1"


def test_full_queue_drops_instead_of_blocking(path_socket: Receiver) -> None:
    """A service manager that does not read never stalls the sender: once its queue is full
    (net.unix.max_dgram_qlen), notify() returns False at once and the datagram is dropped."""
    results = [systemd.status(f"n{i}") for i in range(2000)]  # would block without MSG_DONTWAIT
    assert results[0] is True
    assert results[-1] is False
    assert path_socket.receive()[0] == "STATUS=n0"
