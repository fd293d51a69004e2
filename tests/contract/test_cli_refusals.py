"""The real `pyflannel` process against an etcd that refuses it: one clear line naming the
endpoint and exit code 1, not a retry storm and not a traceback.  (It never gets as far as the
kernel, so it can run in the root namespace.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest


def run_daemon(*args: str, timeout: float = 30) -> tuple[int, list[dict[str, Any]], float]:
    """Run pyflannel with *args*; its exit code, JSON log lines and run time."""
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "pyflannel", "--log-format=json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return res.returncode, lines, time.monotonic() - t0


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_tls_without_client_certificate_exits_1(api: str, tls_etcd: Any, tls_files: Any) -> None:
    """An etcd that requires a client certificate refuses us: exit 1 at once, naming it."""
    code, lines, took = run_daemon(
        f"--etcd-endpoints={tls_etcd.url}", f"--etcd-api={api}", f"--etcd-cafile={tls_files.ca}"
    )
    assert code == 1
    fatal = [e for e in lines if e["event"] == "fatal"]
    assert len(fatal) == 1 and tls_etcd.url in fatal[0]["error"]
    assert "TLS" in fatal[0]["error"] or "certificate" in fatal[0]["error"]
    assert not [e for e in lines if e["event"].endswith("_waiting")]
    assert took < 15


def test_wrong_password_exits_1(auth_etcd: Any) -> None:
    """v3 auth with a wrong password: exit 1 with one line naming the endpoint."""
    code, lines, _ = run_daemon(
        f"--etcd-endpoints={auth_etcd.url}",
        "--etcd-api=v3",
        "--etcd-username=flannel",
        "--etcd-password=wrong",
    )
    assert code == 1
    fatal = [e for e in lines if e["event"] == "fatal"]
    assert len(fatal) == 1 and auth_etcd.url in fatal[0]["error"]
