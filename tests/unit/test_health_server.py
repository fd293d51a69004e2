"""The health listener on loopback: flanneld's bodies, /metrics, and clients that are slow,
greedy or many, none of which gets more than its deadline, its byte budget or its slot."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyflannel import health
from pyflannel.health import HealthServer
from pyflannel.stats import Stats

LOOPBACK = IPv4Address("127.0.0.1")


@pytest.fixture
def stats() -> Stats:
    """A Stats the test changes while the listener serves it."""
    return Stats("1.2.3", "v2")


@pytest.fixture
def server(stats: Stats, monkeypatch: pytest.MonkeyPatch) -> Iterator[HealthServer]:
    """A listener on a free loopback port; each connection gets a 1 s deadline."""
    monkeypatch.setattr(health, "DEADLINE", 1.0)
    srv = HealthServer(LOOPBACK, 0, stats)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def get(srv: HealthServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_healthz_is_flanneld_body(server: HealthServer) -> None:
    """GET /healthz: 200 ``flanneld is running``, text/plain, as flanneld answers."""
    status, headers, body = get(server, "/healthz")
    assert (status, body) == (200, b"flanneld is running")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))


def test_readyz_follows_the_stats(server: HealthServer, stats: Stats) -> None:
    """503 with flanneld's text and our reason, then 200 ``flanneld is ready``."""
    stats.set_blocker("waiting for the network config: /coreos.com/network/config not found")
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert body == (
        b"flanneld is not ready yet: waiting for the network config: "
        b"/coreos.com/network/config not found"
    )
    stats.set_blocker(None)
    assert get(server, "/readyz?verbose=1")[::2] == (200, b"flanneld is ready")


def test_head_has_no_body_and_unknown_paths_are_404(server: HealthServer) -> None:
    """HEAD answers the same status without a body; any other path is Go's 404."""
    status, headers, body = get(server, "/healthz", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "19"
    assert get(server, "/")[::2] == (404, b"404 page not found\n")
    assert get(server, "/healthz/extra")[0] == 404


def test_metrics_parse(server: HealthServer, stats: Stats) -> None:
    """/metrics is Prometheus text that prometheus_client's parser reads back."""
    stats.peers_known = 7
    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["pyflannel_peers_known"].samples[0].value == 7


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(4096) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_slow_client_is_cut_at_the_deadline(server: HealthServer) -> None:
    """A client that dribbles its request a byte at a time is disconnected at its deadline
    (1 s here), not kept as long as it keeps sending."""
    cut = False
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        try:
            for ch in b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 100:  # 13 s at this pace
                sock.sendall(bytes([ch]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            cut = True
        elapsed = time.monotonic() - started
    assert cut, "the request was read for longer than its deadline"
    assert elapsed < 6
    assert get(server, "/healthz")[0] == 200


def test_idle_clients_take_only_their_slots(server: HealthServer) -> None:
    """MAX_CLIENTS silent connections fill the slots: one more is closed without an answer
    instead of queueing; once the deadline frees them, requests are answered again."""
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(health.MAX_CLIENTS)]
    try:
        time.sleep(0.2)  # accepted and waiting in their handlers
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert _closed_by_server(extra, 0.9)
        for sock in idle:
            assert _closed_by_server(sock, 5.0)  # cut at the 1 s deadline
    finally:
        for sock in idle:
            sock.close()
    assert get(server, "/healthz")[0] == 200


def test_huge_request_is_not_read(server: HealthServer) -> None:
    """Megabytes of headers are not read past the budget; the listener goes on serving."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(5)
        # The server may stop reading and close mid-send: either way, no answer is owed.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.0\r\n" + b"X-Big: " + b"b" * (1 << 20) + b"\r\n\r\n")
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            sock.recv(4096)
    assert get(server, "/healthz")[0] == 200


def test_port_in_use_is_an_oserror(server: HealthServer, stats: Stats) -> None:
    """A second listener on the same port cannot start: OSError (the daemon exits 1 on it)."""
    with pytest.raises(OSError):
        HealthServer(LOOPBACK, server.port, stats).start()
