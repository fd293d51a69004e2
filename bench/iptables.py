"""What keeping flanneld's iptables rules costs, as root, in a throwaway namespace.

For each backend (iptables-nft, iptables-legacy) and each way of checking (``iptables -S``
of each chain a rule set touches, as pyflannel does; one ``iptables -C`` per rule, as flanneld
does): the time to install both rule sets, and the wall and CPU time (ours and the
iptables processes') of one periodic check with every rule in place, with *--foreign N* other
rules in the nat table (a kube-proxy host has thousands).  The daemon runs the commands inside
its namespace; this script does too (it re-executes itself there).

``.venv/bin/python bench/iptables.py [--foreign 0 5000] [--checks 20]``; prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from ipaddress import IPv4Network

from pyflannel.iptables import forward_rules, masq_rules
from pyflannel.logs import configure
from pyflannel.rulekeeper import Iptables, RuleKeeper

NETWORK = IPv4Network("172.16.0.0/16")
SUBNET = IPv4Network("172.16.34.0/24")


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _foreign(backend: str, count: int) -> None:
    """*count* rules in a chain of the nat table that is not ours."""
    lines = ["*nat", ":KUBE-BENCH - [0:0]", "-A POSTROUTING -j KUBE-BENCH"]
    lines += [
        f"-A KUBE-BENCH -s 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32 -j RETURN"
        for i in range(count)
    ]
    subprocess.run(
        [f"iptables-{backend}-restore", "--noflush"],
        input="\n".join([*lines, "COMMIT", ""]),
        text=True,
        check=True,
    )


def measure(foreign: int, checks: int) -> None:
    """Print the figures for both backends (run inside a fresh namespace)."""
    for backend in ("nft", "legacy"):
        _foreign(backend, foreign)
        ipt = Iptables.probe([f"iptables-{backend}"], [f"iptables-{backend}-restore"])
        for how in ("iptables -S", "iptables -C"):
            sets = [masq_rules(NETWORK, SUBNET, random_fully=True), forward_rules(NETWORK)]
            keeper = RuleKeeper(ipt, sets)
            if how == "iptables -C":
                keeper._listed = lambda rs: False  # type: ignore[method-assign]  # flanneld's way
            t0 = time.monotonic()
            keeper.ensure()
            install = time.monotonic() - t0
            t0, c0 = time.monotonic(), _cpu()
            for _ in range(checks):
                keeper.ensure()
            wall = (time.monotonic() - t0) / checks
            cpu = (_cpu() - c0) / checks
            print(
                f"{backend:<6} {foreign:>5} foreign rules, checked by {how:<13}: install "
                f"{install * 1000:5.1f} ms; one check {wall * 1000:6.1f} ms wall, "
                f"{cpu * 1000:6.1f} ms CPU"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--foreign", type=int, nargs="+", default=[0, 5000])
    p.add_argument("--checks", type=int, default=20)
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inside:
        configure("console", "error")  # the keeper's info lines would mix with the figures
        measure(args.foreign[0], args.checks)
        return 0
    for count in args.foreign:
        ns = f"pfbench-ipt{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            cmd = [sys.executable, __file__, "--inside", "--foreign", str(count)]
            subprocess.run(
                ["ip", "netns", "exec", ns, *cmd, "--checks", str(args.checks)],
                check=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()},
            )
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
