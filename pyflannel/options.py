"""What the daemon is told at start (flags and ``FLANNELD_*`` variables, validated by
:mod:`pyflannel.cli`); a plain record shared by the CLI and the daemon, so that neither imports
the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from pyflannel.registry import EtcdOptions
from pyflannel.retry import REMINDER_PERIOD

#: How long a daemon whose lease another host took keeps answering /healthz and /readyz
#: (503, naming the holder) before it exits 1, so that a health check sees why.
LEASE_TAKEN_LINGER = 30.0

#: flanneld's --healthz-ip default: every IPv4 address.
ANY_IPV4 = IPv4Address("0.0.0.0")


@dataclass(frozen=True)
class DaemonOptions:
    """Everything the daemon is told at start, validated."""

    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    etcd_api: str = "v2"
    ifaces: tuple[str, ...] = ()
    iface_regexes: tuple[str, ...] = ()
    iface_can_reach: IPv4Address | None = None
    public_ip: IPv4Address | None = None
    public_ipv6: IPv6Address | None = None
    subnet_file: Path = Path("/run/flannel/subnet.env")
    renew_margin_minutes: int = 60
    lease_ttl: int = 86400
    ip_blackhole_route: bool = False
    ip_masq: bool = False
    ip_masq_random_fully_disable: bool = False
    iptables_forward_rules: bool = True
    iptables_resync: int = 5
    resync_interval: float = 30.0
    log_format: str = "auto"
    log_level: str = "info"
    # The health listener (/healthz, /readyz, /metrics); port 0: off, as in flanneld.
    healthz_ip: IPv4Address | IPv6Address = ANY_IPV4
    healthz_port: int = 0
    # From PYFLANNEL_* variables, not flags: how often a wait says so again (seconds), and a
    # test hook that wedges the main loop after that many seconds of serving (None: never).
    wait_reminder: float = REMINDER_PERIOD
    lease_taken_linger: float = LEASE_TAKEN_LINGER
    test_wedge_after: float | None = None
