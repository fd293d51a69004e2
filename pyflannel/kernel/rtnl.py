"""A raw ``NETLINK_ROUTE`` socket: batched writes with per-request results, and dumps.

The requests come from :mod:`pyflannel.kernel.codec`.  :meth:`Rtnl.write` sends many requests
per ``send`` (the kernel handles them one by one in our context and queues one ACK each, going
on after a failure), then reads the ACKs and matches them to the requests by ``seq``.
:meth:`Rtnl.dump` reads a multi-part reply to NLMSG_DONE and starts over when the kernel flags
it NLM_F_DUMP_INTR (the table changed during the dump, so the result may be inconsistent).
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Self, TypeVar

from pyflannel.errors import KernelError
from pyflannel.kernel import codec
from pyflannel.kernel._pyroute2 import setns
from pyflannel.kernel.mirror import Mirror
from pyflannel.kernel.records import IPAddress

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # ACKs carry only the request's header, not the whole request back
NETLINK_EXT_ACK = 11  # failures carry the kernel's explanation
NETLINK_GET_STRICT_CHK = 12  # dump requests' header fields filter (device, table)
SO_RCVBUFFORCE = 33  # root may exceed net.core.rmem_max
NETNS_RUN_DIR = "/run/netns"

#: Bounds of one send: the kernel's ACKs for a batch must fit the receive buffer (each queued
#: ACK costs about 1 kB of buffer accounting, whatever its size).
BATCH_BYTES = 64 * 1024
BATCH_MESSAGES = 256
#: Batches a pipelined write may have queued for its sender thread: enough to keep the kernel
#: busy while ACKs are read, few enough that their ACKs fit the receive buffer (~1 kB each).
PIPELINE = 2
RCVBUF = 8 * 1024 * 1024
# The kernel sends dumps in datagrams of at most 32 KiB (it sizes them from the reader's buffer,
# capped there) and every other message is smaller: a bigger buffer would only cost memory.
RECV_SIZE = 64 * 1024
DUMP_TRIES = 5
TIMEOUT = 10.0


def open_netlink(netns: str | None, groups: int = 0, rcvbuf: int = RCVBUF) -> socket.socket:
    """A bound NETLINK_ROUTE socket in the current namespace or in the named *netns*.

    A namespace name that does not exist raises FileNotFoundError (never creates one).  The
    socket is made in a short-lived thread that joined the namespace: ``setns`` is per thread
    and a socket stays in the namespace it was created in.
    """

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((0, groups))
        except BaseException:
            s.close()
            raise
        return s

    if netns is None:
        return make()
    if "/" in netns or netns in ("", ".", ".."):
        raise ValueError(f"not a netns name: {netns!r}")
    fd = os.open(os.path.join(NETNS_RUN_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    result: list[socket.socket | BaseException] = []

    def worker() -> None:
        try:
            setns(fd, flags=0)  # pyroute2: setns(2) with CLONE_NEWNET on this thread
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    try:
        t = threading.Thread(target=worker, name="pyflannel-netns-socket")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


@dataclass(frozen=True, slots=True)
class Request:
    """One request to write, with the label its failure is reported under."""

    label: str
    data: bytes  # from a codec.encode_*; its seq is replaced when sent


@dataclass(frozen=True, slots=True)
class Failure:
    """A request the kernel refused."""

    label: str
    errno: int
    strerror: str
    message: str = ""  # the kernel's extended-ack text, if any


@dataclass(slots=True)
class BatchResult:
    """What a :meth:`Rtnl.write` did: counts and the failures, in request order."""

    sent: int = 0
    ok: int = 0
    failures: list[Failure] = field(default_factory=list)


P = TypeVar("P", bound=codec.Parsed)


class DumpInterrupted(Exception):
    """The kernel marked a dump inconsistent (NLM_F_DUMP_INTR): read it again."""


_ABSENT = {errno.ENODEV, errno.ENOENT, errno.ENETUNREACH, errno.EHOSTUNREACH}


class NetlinkSocket:
    """Owns one netlink socket and a receive buffer; closes as a context manager."""

    def __init__(self, netns: str | None, groups: int, rcvbuf: int) -> None:
        self._sock = open_netlink(netns, groups, rcvbuf)
        self._buf = bytearray(RECV_SIZE)

    def fileno(self) -> int:
        """For ``select``/``selectors``."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Sender:
    """Makes the ``send`` calls of one pipelined :meth:`Rtnl.write` in a thread of its own.

    At most :data:`PIPELINE` batches wait for it; :meth:`acked_target` tells the writer how
    many requests may stay unanswered: those of the batches not sent yet.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._queue: queue.Queue[tuple[bytes, int] | None] = queue.Queue(PIPELINE)
        self._lock = threading.Lock()
        self._unsent = 0  # requests queued and not yet sent
        self._error: OSError | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="netlink-sender", daemon=True)
        self._thread.start()

    def put(self, data: bytes, count: int) -> None:
        """Queue one batch of *count* requests (blocks while PIPELINE batches wait)."""
        self._raise()
        with self._lock:
            self._unsent += count
        self._queue.put((data, count))

    def acked_target(self) -> int:
        """How many requests may be unanswered now: those not sent yet."""
        with self._lock:
            return self._unsent

    def finish(self) -> None:
        """Wait until every queued batch is sent; raise what a ``send`` raised."""
        if not self._finished:
            self._finished = True
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            data, count = item
            if self._error is None:
                try:
                    self._sock.send(data)
                except OSError as exc:
                    self._error = exc
            with self._lock:
                self._unsent -= count


class Rtnl(NetlinkSocket):
    """A NETLINK_ROUTE socket for requests (no multicast groups)."""

    def __init__(self, netns: str | None = None, rcvbuf: int = RCVBUF) -> None:
        super().__init__(netns, 0, rcvbuf)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            self._sock.setsockopt(SOL_NETLINK, opt, 1)
        self._sock.settimeout(TIMEOUT)
        self._seq = int.from_bytes(os.urandom(4), "big")

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _recv(self) -> list[codec.Message]:
        n = self._sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
        if n > len(self._buf):
            raise codec.CodecError(f"netlink message of {n} bytes truncated")
        return codec.split(bytes(memoryview(self._buf)[:n]))

    def write(self, requests: Iterable[Request]) -> BatchResult:
        """Send every request (bounded batches per ``send``); return counts and failures.

        One failure never stops the others.  If ACKs are lost (receive buffer overflow), the
        requests without one are reported with ENOBUFS: their outcome is unknown, re-read.

        More than one batch is pipelined: a sender thread makes the ``send`` calls, in which
        the kernel does the work with the GIL released, while this thread encodes the next
        batches (*requests* may be a generator) and reads the ACKs of those already handled.
        """
        result = BatchResult()
        pending: dict[int, str] = {}
        sender: _Sender | None = None
        batch: list[bytes] = []
        size = 0
        try:
            for req in requests:
                seq = self._next_seq()
                batch.append(codec.with_seq(req.data, seq))
                pending[seq] = req.label
                size += len(req.data)
                if size >= BATCH_BYTES or len(batch) >= BATCH_MESSAGES:
                    if sender is None:
                        sender = _Sender(self._sock)
                    sender.put(b"".join(batch), len(batch))
                    result.sent += len(batch)
                    batch, size = [], 0
                    # ACKs of the batches already sent are waiting: read them, so that no
                    # more than a few batches' ACKs ever fill the receive buffer.
                    self._read_acks(pending, sender.acked_target(), result)
            if batch:
                if sender is None:
                    self._sock.send(b"".join(batch))
                else:
                    sender.put(b"".join(batch), len(batch))
                result.sent += len(batch)
            if sender is not None:
                sender.finish()
            self._read_acks(pending, 0, result)
        finally:
            if sender is not None:
                sender.finish()
        return result

    def _read_acks(self, pending: dict[int, str], leave: int, out: BatchResult) -> None:
        """Read ACKs until at most *leave* requests are unanswered; the requests whose ACK was
        lost (ENOBUFS) are failures with that errno."""
        try:
            while len(pending) > leave:
                for m in self._recv():
                    if m.type != codec.NLMSG_ERROR:
                        continue
                    ack = codec.parse_error(m)
                    label = pending.pop(ack.seq, None)
                    if label is None:
                        continue  # a late ACK of an earlier, abandoned write
                    if ack.errno == 0:
                        out.ok += 1
                    else:
                        out.failures.append(
                            Failure(label, ack.errno, os.strerror(ack.errno), ack.message)
                        )
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            # Which ACKs the overflow took is unknown: every request sent and unanswered so far
            # is reported; an ACK of one of them read later is ignored.
            out.failures.extend(
                Failure(label, errno.ENOBUFS, "ACK lost (receive buffer overflow)")
                for label in pending.values()
            )
            pending.clear()

    def dump(self, request: bytes, kind: type[P], op: str = "dump") -> list[P]:
        """Send the dump *request* and return its messages of type *kind*, retrying while the
        kernel marks the dump interrupted.  A refused request raises KernelError."""
        for _ in range(DUMP_TRIES):
            try:
                return list(self.stream(request, kind, op))
            except DumpInterrupted:
                continue
        raise KernelError(op, "", errno.EINTR, "dump interrupted on every try")

    def stream(self, request: bytes, kind: type[P], op: str = "dump") -> Iterator[P]:
        """The messages of type *kind* of one dump, as they are read (no list of tens of
        thousands of them at once).  Raises DumpInterrupted at the end if the kernel marked the
        dump inconsistent: whatever consumed it must start over."""
        seq = self._next_seq()
        self._sock.send(codec.with_seq(request, seq))
        interrupted = False
        while True:
            for m in self._recv():
                if m.seq != seq:
                    continue
                interrupted |= bool(m.flags & codec.NLM_F_DUMP_INTR)
                if m.type == codec.NLMSG_DONE:
                    if err := codec.done_errno(m):
                        raise KernelError(op, "", err, os.strerror(err))
                    if interrupted:
                        raise DumpInterrupted(op)
                    return
                parsed = codec.parse(m)
                if isinstance(parsed, codec.Ack):
                    if parsed.errno:
                        raise KernelError(op, "", parsed.errno, os.strerror(parsed.errno))
                    return
                if isinstance(parsed, kind):
                    yield parsed

    def load_mirror(self, mirror: Mirror) -> None:
        """Fill *mirror* from full dumps of its device's entries and the main table of its
        family, streamed into it (a 10,000-peer dump never exists as a list of messages)."""
        for _ in self.load_mirror_steps(mirror):
            pass

    def load_mirror_steps(self, mirror: Mirror) -> Iterator[None]:
        """:meth:`load_mirror` in steps of about a millisecond (see Mirror.load_steps); the
        kernel goes on with a dump only as it is read, so nothing piles up between steps."""
        dev, family = mirror.dev, mirror.family
        for _ in range(DUMP_TRIES):
            try:
                yield from mirror.load_steps(
                    self.link(dev),
                    self.stream(
                        codec.encode_neigh_dump(dev, family=family), codec.NeighMsg, "neigh.dump"
                    ),
                    self.stream(codec.encode_fdb_dump(dev), codec.NeighMsg, "fdb.dump"),
                    self.stream(
                        codec.encode_route_dump(family=family), codec.RouteMsg, "route.dump"
                    ),
                )
            except DumpInterrupted:
                continue  # the dumps after it were never sent: nothing is left to read
            return
        raise KernelError("dump", str(dev), errno.EINTR, "dump interrupted on every try")

    # --- the dumps pyflannel uses ------------------------------------------------------------

    def neighs(self, ifindex: int = 0, family: int = codec.AF_INET) -> list[codec.NeighMsg]:
        """Neighbours of *family* (of device *ifindex* only, when given)."""
        request = codec.encode_neigh_dump(ifindex, family=family)
        found = self.dump(request, codec.NeighMsg, "neigh.dump")
        return [m for m in found if not ifindex or m.ifindex == ifindex]

    def fdb(self, ifindex: int = 0) -> list[codec.NeighMsg]:
        """FDB entries (of device *ifindex* only, when given)."""
        found = self.dump(codec.encode_fdb_dump(ifindex), codec.NeighMsg, "fdb.dump")
        return [m for m in found if not ifindex or m.ifindex == ifindex]

    def routes(
        self, table: int = codec.RT_TABLE_MAIN, family: int = codec.AF_INET
    ) -> list[codec.RouteMsg]:
        """Routes of *family* in *table* (0: every table)."""
        request = codec.encode_route_dump(table, family=family)
        found = self.dump(request, codec.RouteMsg, "route.dump")
        return [m for m in found if not table or m.table == table]

    def links(self) -> list[codec.LinkMsg]:
        """Every link."""
        return self.dump(codec.encode_link_dump(), codec.LinkMsg, "link.dump")

    def addresses(self, index: int = 0, family: int = codec.AF_INET) -> list[codec.AddrMsg]:
        """Addresses of *family* (of link *index* only, when given)."""
        request = codec.encode_addr_dump(0, index, family)
        found = self.dump(request, codec.AddrMsg, "addr.dump")
        return [m for m in found if not index or m.index == index]

    def link(self, index: int) -> codec.LinkMsg | None:
        """The link with *index*, or None when there is none."""
        return self._get(codec.encode_link_get(index), codec.LinkMsg, "link.get", str(index))

    def route_get(self, dst: IPAddress) -> codec.RouteMsg | None:
        """The route the kernel uses to reach *dst* (``ip route get``), or None (unreachable)."""
        return self._get(codec.encode_route_get(dst), codec.RouteMsg, "route.get", str(dst))

    def _get(self, request: bytes, kind: type[P], op: str, target: str) -> P | None:
        """Send a get *request* and return its one reply; None when the kernel says there is
        none (ENODEV, ENOENT, ENETUNREACH, EHOSTUNREACH)."""
        seq = self._next_seq()
        self._sock.send(codec.with_seq(request, seq))
        while True:
            for m in self._recv():
                if m.seq != seq:
                    continue
                parsed = codec.parse(m)
                if isinstance(parsed, kind):
                    return parsed
                if isinstance(parsed, codec.Ack):
                    if parsed.errno in _ABSENT:
                        return None
                    if parsed.errno:
                        raise KernelError(op, target, parsed.errno, os.strerror(parsed.errno))
