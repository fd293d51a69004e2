"""Import rules of the architecture, checked on the source with ``ast``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pyflannel"

PURE = [
    "config.py",
    "ipnet.py",
    "lease.py",
    "kernel/plan.py",
    "subnet.py",
    "backend/vxlan.py",
    "iface.py",
    "iptables.py",
    "retry.py",
    "errors.py",
    "kernel/records.py",
    "kernel/codec.py",
    "kernel/mirror.py",
    "kernel/__init__.py",
    "options.py",
    "untrusted.py",
    "stats.py",
]
FORBIDDEN_IN_PURE = {"etcd", "etcd3gw", "requests", "pyroute2", "subprocess", "socket"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module *path* imports, anywhere in the file (functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def package_modules() -> list[Path]:
    """Every Python file of the package."""
    return sorted(PKG.rglob("*.py"))


def test_package_found() -> None:
    """The check looks at the real package (a wrong path would make every rule pass)."""
    names = {p.relative_to(PKG).as_posix() for p in package_modules()}
    assert {"kernel/netlink.py", *PURE} <= names


def test_only_the_kernel_folder_imports_pyroute2() -> None:
    """pyroute2 is imported inside pyflannel/kernel/ and nowhere else (one folder owns the
    kernel)."""
    importers = sorted(
        p.relative_to(PKG).as_posix() for p in package_modules() if "pyroute2" in imported_roots(p)
    )
    assert importers
    assert all(name.startswith("kernel/") for name in importers), importers


def test_cli_and_daemon_do_not_import_each_other_at_module_level() -> None:
    """The options record lives in pyflannel.options; cli loads the daemon only inside main()."""
    tree = ast.parse((PKG / "daemon.py").read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "pyflannel.cli" not in names


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports(module: str) -> None:
    """The pure core imports no etcd client, no HTTP client, no pyroute2, no subprocess and no
    socket."""
    bad = imported_roots(PKG / module) & FORBIDDEN_IN_PURE
    assert bad == set(), f"{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_does_not_load_the_netlink_adapter(module: str) -> None:
    """The pure core takes kernel records from pyflannel.kernel.records, never the netlink side
    of the kernel folder (which would load pyroute2 behind its back)."""
    tree = ast.parse((PKG / module).read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    allowed = {"pyflannel.kernel.records", "pyflannel.kernel.plan", "pyflannel.kernel.codec"}
    kernel = {n for n in names if n.startswith("pyflannel.kernel")}
    assert kernel <= allowed, kernel


def test_prometheus_client_only_in_metrics() -> None:
    """prometheus_client is imported by pyflannel/metrics.py alone (loaded with the listener)."""
    importers = sorted(
        p.relative_to(PKG).as_posix()
        for p in package_modules()
        if "prometheus_client" in imported_roots(p)
    )
    assert importers == ["metrics.py"]


def test_daemon_loads_no_listener_by_default() -> None:
    """Importing the daemon loads neither the health listener nor prometheus_client nor
    http.server: a daemon without --healthz-port does not carry them (memory)."""
    code = (
        "import sys, pyflannel.daemon, pyflannel.cli; "
        "bad = [m for m in ('pyflannel.health', 'pyflannel.metrics', 'prometheus_client', "
        "'http.server') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
