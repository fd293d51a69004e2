"""The health listener (``--healthz-ip``/``--healthz-port``): ``/healthz``, ``/readyz`` and
``/metrics`` over HTTP, in threads of its own.

Bodies are flanneld's (``main.go``): ``/healthz`` answers 200 ``flanneld is running`` while
the process serves; ``/readyz`` answers 200 ``flanneld is ready``, or 503 ``flanneld is not
ready yet`` followed by ``: <reason>`` (see :meth:`pyflannel.stats.Stats.readiness`);
``text/plain; charset=utf-8``, as Go's content sniffing labels them.  Any other path is 404.

Nobody a client can be makes the daemon wait or grow: the listener never takes a lock the
main loop holds (it reads a Stats); at most :data:`MAX_CLIENTS` connections are served at
once (more are closed at once); each has :data:`DEADLINE` seconds in all, however slowly it
sends, and :data:`MAX_REQUEST_BYTES` of request (request line and headers; the rest is not
read); one request per connection (HTTP/1.0).  No access log: a probe every second would
flood the journal.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from urllib.parse import urlsplit

from pyflannel import __version__, metrics
from pyflannel.stats import Stats

__all__ = ["DEADLINE", "HEALTHY_TEXT", "MAX_CLIENTS", "MAX_REQUEST_BYTES", "HealthServer"]

HEALTHY_TEXT = "flanneld is running"
NOT_FOUND_TEXT = "404 page not found\n"  # Go's http.NotFound
TEXT = "text/plain; charset=utf-8"
#: Connections served at once; more are closed without an answer.
MAX_CLIENTS = 4
#: Seconds one connection may take, from accept to the last byte of the answer.
DEADLINE = 5.0
#: Bytes of request read at most (request line and headers).
MAX_REQUEST_BYTES = 8192


class _BoundedReader:
    """The request stream with a byte budget and a deadline: every read waits at most until
    the connection's deadline, and past the budget the stream looks ended."""

    def __init__(self, raw: io.BufferedIOBase, sock: socket.socket, deadline: float) -> None:
        self._raw = raw
        self._sock = sock
        self._deadline = deadline
        self._left = MAX_REQUEST_BYTES

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)

    def _take(self, read: Callable[[int], bytes], size: int) -> bytes:
        if self._left <= 0:
            return b""
        self._arm()
        data = read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        """One line, cut at *size* and at what is left of the budget."""
        return self._take(self._raw.readline, size)

    def read(self, size: int = -1) -> bytes:
        """At most *size* bytes, within the budget."""
        return self._take(self._raw.read, size)

    def close(self) -> None:
        """Close the underlying stream."""
        self._raw.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.deadline = time.monotonic() + DEADLINE
        super().setup()
        self.rfile = _BoundedReader(self.rfile, self.connection, self.deadline)  # type: ignore[assignment]

    def version_string(self) -> str:
        return f"pyflannel/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # see the module docstring: no access log

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        stats = self.server.stats
        if path == "/healthz":
            self._send(200, TEXT, HEALTHY_TEXT.encode(), head)
        elif path == "/readyz":
            ready, text = stats.readiness()
            self._send(200 if ready else 503, TEXT, text.encode(), head)
        elif path == "/metrics":
            self._send(200, metrics.CONTENT_TYPE, self.server.scrape(), head)
        else:
            self._send(404, TEXT, NOT_FOUND_TEXT.encode(), head)

    def _send(self, code: int, content_type: str, body: bytes, head: bool) -> None:
        # The answer, too, must fit in what is left of the deadline.
        self.connection.settimeout(max(self.deadline - time.monotonic(), 0.1))
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(HTTPServer):
    """One accepting thread; each connection in a short-lived thread, at most MAX_CLIENTS."""

    request_queue_size = 16

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, stats: Stats):
        self.address_family = family
        self.stats = stats
        self._registry = metrics.registry_for(stats)
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn): no DNS on our start path.
        socket_bind = super(HTTPServer, self).server_bind
        socket_bind()
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def scrape(self) -> bytes:
        """The metrics body."""
        return metrics.render(self._registry)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: close rather than queue up
            return
        try:
            threading.Thread(
                target=self._serve_one, args=(request, client_address), name="health", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had: drop this one, keep accepting
            self._slots.release()
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # socketserver would print a traceback to stderr; a client's error is not ours

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # a client that went away or sent garbage: nothing to do
            pass
        finally:
            self.shutdown_request(request)
            self._slots.release()


class HealthServer:
    """The listener on *ip*:*port* answering from *stats*; :meth:`start` binds (raising
    OSError if it cannot) and serves in a daemon thread until :meth:`close`."""

    def __init__(self, ip: IPv4Address | IPv6Address, port: int, stats: Stats) -> None:
        self._address = (str(ip), port)
        self._family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self._stats = stats
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0 in tests)."""
        assert self._server is not None
        return self._server.server_port

    def start(self) -> None:
        """Bind and start serving."""
        self._server = _Server(self._address, self._family, self._stats)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-listener", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and close the socket (connections in flight end by their deadline)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
