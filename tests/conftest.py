"""Shared test fixtures: a real etcd on loopback, TLS material, and the no-silent-skip guard.

``etcd_factory`` starts ``etcd`` (Debian's 3.4 at /usr/bin/etcd, or ``$PYFLANNEL_ETCD``) on
127.0.0.1 with free ports in a temporary data dir and the fast-election flags, and always kills
every process it started at teardown, whatever the test's outcome.  ``etcd`` is one plain-HTTP
server.  ``tls_files`` is a CA plus server and client certificates made with the openssl CLI.

With ``PYFLANNEL_REQUIRE_PRIVILEGED=1`` or ``CI=true`` in the environment, every skip (no etcd
binary, no openssl, not root, a missing kernel feature) is reported as a failure instead: a CI
run must never go green by quietly testing nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

# --- skips become failures in CI -------------------------------------------------------------


def _skips_forbidden() -> bool:
    return os.environ.get("PYFLANNEL_REQUIRE_PRIVILEGED") == "1" or os.environ.get("CI") == "true"


def _forbid_skip(report: Any) -> None:
    """Turn a skipped report into a failure that says why (the skip reason is kept)."""
    if not (report.skipped and _skips_forbidden()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, but skips are failures here (PYFLANNEL_REQUIRE_PRIVILEGED=1 or CI=true): "
        f"{reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Skips raised in setup (fixtures) or in the test body."""
    outcome = yield
    _forbid_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Skips raised at import time (``pytest.importorskip``, module-level ``pytest.skip``)."""
    outcome = yield
    _forbid_skip(outcome.get_result())


# --- etcd --------------------------------------------------------------------------------------

ETCD_BIN = os.environ.get("PYFLANNEL_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"

# Without these, a fresh single-member cluster takes up to a second to elect itself and a restart
# up to two; with them, about 0.1 s (dependencies.md section 2).
FAST_ELECTION = ("--heartbeat-interval=10", "--election-timeout=100")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if pytest itself is SIGKILLed (a hung run killed
    # by CI), the kernel kills etcd too, so no teardown is needed to reclaim it.  The signal is
    # tied to the forking thread, and fixtures run in pytest's main thread.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS etcd: one CA signed both the server and the client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def server_args(self) -> tuple[str, ...]:
        """etcd flags for HTTPS on the client port, requiring a client certificate."""
        return (
            "--client-cert-auth",
            f"--trusted-ca-file={self.ca}",
            f"--cert-file={self.server_cert}",
            f"--key-file={self.server_key}",
        )


class EtcdServer:
    """One etcd member on loopback; restartable on the same data dir and ports."""

    def __init__(
        self, data_dir: Path, extra_args: Sequence[str] = (), tls: TlsFiles | None = None
    ) -> None:
        self.data_dir = data_dir
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pick_ports()

    def pick_ports(self) -> None:
        """Choose new free client and peer ports (only before the first start)."""
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.args = [
            ETCD_BIN,
            "--name",
            "t0",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"t0={peer}",
            "--initial-cluster-state",
            "new",
            "--enable-v2=true",
            "--logger=zap",
            "--log-outputs=stderr",
            *FAST_ELECTION,
            *(self.tls.server_args() if self.tls else ()),
            *self.extra_args,
        ]

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def requests_kwargs(self) -> dict[str, Any]:
        """verify/cert arguments for a requests call to this server."""
        if self.tls is None:
            return {}
        return {"verify": self.tls.ca, "cert": (self.tls.client_cert, self.tls.client_key)}

    def start(self, timeout: float = 15.0) -> None:
        """Start (or restart, on the same data dir and ports) and wait until /health is OK."""
        if self.running:
            raise RuntimeError("etcd is already running")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded fixture code
            )
        self._wait_healthy(time.monotonic() + timeout)

    def _wait_healthy(self, deadline: float) -> None:
        kwargs = self.requests_kwargs()
        while True:
            if not self.running:
                raise RuntimeError(f"etcd exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException, ValueError):
                r = requests.get(self.url + "/health", timeout=0.5, **kwargs)
                if r.ok and r.json().get("health") == "true":
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd not healthy in time:\n{self.log_tail()}")
            time.sleep(0.025)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (SIGKILL if it lingers): the data dir is kept for start()."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL and reap; safe to call at any time, any number of times."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        """The end of etcd's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def etcdctl(self, *args: str, user: str | None = None) -> str:
        """Run ``etcdctl`` (v3 API) against this server and return its stdout."""
        cmd = [ETCDCTL_BIN, f"--endpoints={self.url}"]
        if self.tls is not None:
            cmd += [
                f"--cacert={self.tls.ca}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        if user is not None:
            cmd.append(f"--user={user}")
        res = subprocess.run(
            [*cmd, *args],
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout


EtcdFactory = Callable[..., EtcdServer]


@pytest.fixture
def etcd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdFactory]:
    """Return ``make(extra_args=(), tls=None) -> EtcdServer`` (started); all die at teardown."""
    if not os.access(ETCD_BIN, os.X_OK):
        pytest.skip(f"etcd binary not found ({ETCD_BIN}); apt-get install etcd-server")
    servers: list[EtcdServer] = []

    def make(extra_args: Sequence[str] = (), tls: TlsFiles | None = None) -> EtcdServer:
        base = tmp_path_factory.mktemp("etcd")
        server = EtcdServer(base / "data", extra_args, tls)
        servers.append(server)  # before start(): a failed start is still cleaned up
        for attempt in range(3):
            try:
                server.start()
                return server
            except RuntimeError:
                # Another process took a port between free_port() and etcd's bind: pick again.
                if attempt == 2 or "address already in use" not in server.log_tail():
                    raise
                shutil.rmtree(server.data_dir, ignore_errors=True)
                server.pick_ports()
        raise AssertionError("unreachable")

    try:
        yield make
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def etcd(etcd_factory: EtcdFactory) -> EtcdServer:
    """A fresh plain-HTTP etcd (v2 enabled) for this test only."""
    return etcd_factory()


@pytest.fixture
def dead_endpoint() -> str:
    """An http URL on loopback where nothing listens (connections are refused at once)."""
    return f"http://127.0.0.1:{free_port()}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found; apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=pyflannel-test-ca",
        cwd=d,
    )
    for name, ext in (
        # etcd 3.4's JSON gateway dials etcd's own gRPC port with the *server* certificate as
        # its client certificate, so with --client-cert-auth the server certificate must allow
        # clientAuth too, or every /v3 call fails with 503 "use of closed network connection".
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=pyflannel-test-{name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return TlsFiles(
        ca=str(d / "ca.pem"),
        server_cert=str(d / "server.pem"),
        server_key=str(d / "server.key"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
    )
