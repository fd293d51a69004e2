"""sd_notify(3) without libsystemd: tell the service manager about readiness and health.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: an ``AF_UNIX`` datagram socket,
either a filesystem path (``/run/systemd/notify``) or an abstract name written with a leading
``@``.  A notification is one datagram of newline-separated ``KEY=value`` assignments
(``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``).  systemd checks the sender's PID
against ``NotifyAccess=`` (``main`` by default for ``Type=notify``), which the kernel attaches
as ``SCM_CREDENTIALS``; sending from any thread of the main process is therefore fine.

Outside systemd (no variable) every call is a no-op that returns False, as go-systemd's
``SdNotify`` is for flanneld, so the daemon never has to ask where it runs.  Sending failures
are reported by the return value, never raised: a service manager that went away must not take
the daemon down with it.

This module and :mod:`pyflannel.cli` / :mod:`pyflannel.logs` are the only readers of
``os.environ`` (architecture rule 8): the variables are systemd's interface.
"""

from __future__ import annotations

import os
import socket

__all__ = [
    "Watchdog",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(value: str) -> str | None:
    # sd_notify accepts absolute paths and "@abstract"; anything else (a relative path, or
    # systemd ≥ 254's "vsock:" form, which a host service never gets) is not for us.
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(state: str) -> bool:
    """Send *state* (``KEY=value`` lines) to ``$NOTIFY_SOCKET``.

    Returns:
        True when the datagram was sent; False without ``$NOTIFY_SOCKET``, for an address this
        module cannot use, for an empty *state*, or when sending failed (socket gone, refused,
        or its queue full: sending never blocks).
    """
    target = os.environ.get("NOTIFY_SOCKET", "")
    address = _address(target) if target else None
    if address is None or not state:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never wait: a service manager that does not read (a full queue) must not stall
            # the main loop, whose pings would then stop too; the notification is dropped.
            sock.sendto(state.encode("utf-8"), socket.MSG_DONTWAIT, address)
    except OSError:
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would end the STATUS= assignment and start a bogus one.
    return " ".join(text.splitlines())


def ready(status_text: str | None = None) -> bool:
    """Report that start-up is complete (``READY=1``), optionally with a status line."""
    if status_text is None:
        return notify("READY=1")
    return notify(f"READY=1\nSTATUS={_one_line(status_text)}")


def stopping() -> bool:
    """Report that the service is shutting down (``STOPPING=1``)."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status ``systemctl status`` shows (``STATUS=``)."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """Keep the watchdog from firing (``WATCHDOG=1``); call it only after real progress."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds if systemd expects pings from this process, else None.

    Mirrors sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` must be a positive integer, and when
    ``$WATCHDOG_PID`` is set it must be our PID (the variables are inherited by children, which
    must not take them as addressed to themselves).  Ping at about half of the returned value.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    try:
        micros = int(usec)
    except ValueError:
        return None
    if micros <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return micros / 1_000_000


class Watchdog:
    """``WATCHDOG=1`` at half the interval systemd expects (``$WATCHDOG_USEC``), sent only
    when the caller says it made progress: the daemon calls :meth:`kick` from its main loop,
    never from a timer thread, so a wedged loop stops the pings and systemd restarts it."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self._next = 0.0
        self.sent = 0

    @classmethod
    def from_env(cls) -> Watchdog:
        """The watchdog systemd asked for (disabled when it asked for none)."""
        return cls(watchdog_interval())

    def kick(self, now: float) -> None:
        """The loop made progress at *now* (monotonic): ping if half the interval has passed."""
        if self.interval is None or now < self._next:
            return
        self._next = now + self.interval / 2
        if watchdog():
            self.sent += 1
