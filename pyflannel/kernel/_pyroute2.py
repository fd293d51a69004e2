"""pyroute2 without its package ``__init__``: the three names pyflannel uses.

pyroute2 0.9's ``pyroute2/__init__.py`` imports every subsystem the library has (NDB with
sqlite3, IPDB, conntrack, nftables, WireGuard, nl80211, ethtool, unittest through its mock):
about 160 modules and 5-6 MB of resident memory, a tenth of the daemon's budget at 10,000
peers, for one class.  Importing a submodule directly still runs that ``__init__`` first, so
the package is registered here, unexecuted, as a module that knows its ``__path__``: its
submodules import as usual, and a name only the real ``__init__`` defines (``pyroute2.NDB``...)
executes it on first use (PEP 562), so other code in the same process that wants the whole
package still gets it.

If pyroute2 was imported before (a test process, a tool), nothing is changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def _install_stub() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not an ordinary package: import it the ordinary way
    package = importlib.util.module_from_spec(spec)  # created, not executed
    loader = spec.loader
    executed = False

    def __getattr__(name: str) -> object:  # noqa: N807 (PEP 562's name)
        nonlocal executed
        if name.startswith("__") and name not in ("__all__", "__version__"):
            raise AttributeError(name)  # probes (inspect, the import system): not a reason
        if executed:  # the real __init__ ran and does not define it either
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}")
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")  # `from pyroute2 import config`
        executed = True
        loader.exec_module(package)  # the real __init__, into this very module
        return getattr(package, name)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package


_install_stub()

# After the stub, on purpose: these must not run pyroute2/__init__.py.
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netns import setns  # noqa: E402

__all__ = ["IPRoute", "NetlinkError", "setns"]
