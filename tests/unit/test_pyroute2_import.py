"""pyroute2 is imported without its package ``__init__`` (5-6 MB of modules pyflannel does not
use), and the whole package is still there for whoever asks for it in the same process."""

from __future__ import annotations

import subprocess
import sys


def run(code: str) -> str:
    """Run *code* in a fresh interpreter (the stub is installed at most once per process)."""
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_daemon_does_not_load_pyroute2s_other_subsystems() -> None:
    """The daemon's imports bring IPRoute, not NDB (sqlite3), IPDB or conntrack."""
    out = run(
        "import sys, pyflannel.daemon\n"
        "from pyflannel.kernel._pyroute2 import IPRoute, NetlinkError, setns\n"
        "bad = [m for m in ('pyroute2.ndb', 'pyroute2.ipdb', 'pyroute2.conntrack', 'sqlite3')"
        " if m in sys.modules]\n"
        "print(IPRoute.__name__, NetlinkError.__name__, callable(setns), bad)"
    )
    assert out == "IPRoute NetlinkError True []"


def test_the_whole_package_loads_on_first_use_of_another_name() -> None:
    """A name only pyroute2/__init__.py defines executes it then; submodules stay the same."""
    out = run(
        "import pyflannel.kernel.netlink, pyroute2\n"
        "from pyroute2 import NDB, IPRoute, config\n"
        "from pyflannel.kernel._pyroute2 import IPRoute as ours\n"
        "print(NDB.__name__, IPRoute is ours, config.__name__, pyroute2.__version__ != '')"
    )
    assert out == "NDB True pyroute2.config True"


def test_an_unknown_name_is_an_attribute_error() -> None:
    """After the real __init__ ran, a name it does not define fails as usual."""
    out = run(
        "import pyflannel.kernel.netlink, pyroute2\n"
        "try:\n    pyroute2.no_such_name\nexcept AttributeError as e:\n    print('ok', e)"
    )
    assert out.startswith("ok ")
