"""The exception tree of pyflannel; third-party exceptions are mapped to these where they enter.

PyflannelError
├── ConfigError            bad flags, bad network config (text says what and where)
├── RegistryError
│   ├── RegistryUnavailable  etcd unreachable, timed out, 5xx      -> retry with backoff
│   ├── RegistryRefused      TLS or auth failure                    -> fatal, one clear line
│   ├── AlreadyExists        create lost a compare-and-set race     -> pick again
│   ├── NotFound             key absent
│   └── Compacted            v2 event index cleared, v3 compaction  -> re-list and diff
├── KernelError            a netlink operation failed (errno kept)
├── SubnetEnvError         subnet.env cannot be written (path and reason)
├── IptablesError          iptables missing, or a command of it failed (stderr cut short)
├── OutOfSubnets           no free subnet between SubnetMin and SubnetMax
└── LeaseLost              our lease vanished and its subnet is now someone else's
"""

from __future__ import annotations


class PyflannelError(Exception):
    """Base class of every error pyflannel raises on purpose."""


class ConfigError(PyflannelError):
    """A flag, environment variable or network config value is invalid."""


class UnsupportedBackend(ConfigError):
    """The network config asks for a backend pyflannel does not implement."""


class RegistryError(PyflannelError):
    """A registry (etcd) operation failed."""


class RegistryUnavailable(RegistryError):
    """The registry could not be reached or did not answer in time; retrying may help."""


class RegistryRefused(RegistryError):
    """The registry refused us for good (TLS handshake, bad credentials); retrying will not help."""


class AlreadyExists(RegistryError):
    """A create-if-absent found the key already there."""


class NotFound(RegistryError):
    """The key does not exist."""


class Compacted(RegistryError):
    """The watch cursor is older than the registry's history; re-list and diff."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"watch history compacted (current revision {revision})")
        self.revision = revision


class KernelError(PyflannelError):
    """A netlink request failed; ``errno`` is the kernel's error code."""

    def __init__(self, op: str, target: str, errno: int, message: str) -> None:
        super().__init__(f"{op} {target}: {message} (errno {errno})")
        self.op = op
        self.target = target
        self.errno = errno


class SubnetEnvError(PyflannelError):
    """subnet.env cannot be written; the text names the path and the reason in one line."""


class IptablesError(PyflannelError):
    """iptables is not installed, or one of its commands failed; the text is one line."""


class OutOfSubnets(PyflannelError):
    """Every subnet between SubnetMin and SubnetMax is leased."""


class LeaseLost(PyflannelError):
    """Our lease disappeared and its subnet can no longer be ours."""
