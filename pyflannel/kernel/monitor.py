"""Kernel change notifications: a non-blocking NETLINK_ROUTE socket in the link, neighbour
(neighbours and FDB entries alike) and route multicast groups.

Use: put :meth:`Monitor.fileno` in ``select``; when readable, :meth:`Monitor.read` returns the
parsed messages queued now, or :data:`OVERFLOW` when the kernel had to drop some because the
receive buffer was full (``recv`` fails with ENOBUFS).  Then the caller must drain, re-dump and
rebuild its mirror: what was lost cannot be asked for again.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

from pyflannel.kernel import codec
from pyflannel.kernel.rtnl import NetlinkSocket

# Group numbers (linux/rtnetlink.h); bind() takes a mask with bit (group - 1) set.
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV6_ROUTE = 11
DEFAULT_GROUPS = (RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE)
#: Several MB: a 10,000-peer bulk write echoes ~30,000 notifications of ~1 kB accounting each.
MONITOR_RCVBUF = 32 * 1024 * 1024
#: Bound on the messages one read() returns, so a flood cannot starve the caller's loop.
MAX_PER_READ = 100_000


class Overflow:
    """Notifications were lost (ENOBUFS): the mirror must be rebuilt from dumps."""

    def __repr__(self) -> str:
        return "OVERFLOW"


OVERFLOW: Final = Overflow()


def group_mask(groups: tuple[int, ...]) -> int:
    """The ``bind`` mask for *groups* (all below 32)."""
    mask = 0
    for g in groups:
        if not 1 <= g <= 32:
            raise ValueError(f"group {g} needs NETLINK_ADD_MEMBERSHIP")
        mask |= 1 << (g - 1)
    return mask


class Monitor(NetlinkSocket):
    """A notification socket in the current namespace or in *netns*."""

    def __init__(
        self,
        netns: str | None = None,
        groups: tuple[int, ...] = DEFAULT_GROUPS,
        rcvbuf: int = MONITOR_RCVBUF,
    ) -> None:
        super().__init__(netns, group_mask(groups), rcvbuf)
        self._sock.setblocking(False)

    def read(self, limit: int = MAX_PER_READ) -> list[codec.Parsed] | Overflow:
        """The notifications queued now (possibly none), or OVERFLOW."""
        out: list[codec.Parsed] = []
        view = memoryview(self._buf)
        while len(out) < limit:
            try:
                n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return OVERFLOW
                raise
            if n > len(self._buf):
                # Cut off: a notification was lost as surely as with ENOBUFS.
                return OVERFLOW
            out.extend(
                codec.parse(m)
                for m in codec.split(bytes(view[:n]))
                if m.type not in (codec.NLMSG_DONE, codec.NLMSG_NOOP)
            )
        return out

    def drain(self) -> None:
        """Discard everything queued (before a re-dump after an overflow)."""
        while True:
            try:
                self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
