"""pyflannel-lab: the classic flannel VXLAN walkthrough on one machine, in seconds: an etcd
host, a router joining two underlay subnets, and hosts ("cells") running pyflannel, each with
containers, all in network namespaces.

    pyflannel-lab up [--api v2|v3] [--cells N] [--cni] [--ipv6 | --ipv6-only]
                             build it and start everything (--ipv6: dual stack,
                             --ipv6-only: no IPv4 anywhere)
    pyflannel-lab check      curl across cells (over each family): a pass/fail table with
                             the packet path
    pyflannel-lab status     leases, flannel.1 (and flannel-v6.1) and the entries pyflannel
                             programmed
    pyflannel-lab down       remove everything (also after a crash)

Everything lives in network namespaces named pfl-... and in the work directory
(/run/pyflannel-lab by default); nothing is added to the root namespace, and only processes
inside the lab's namespaces are ever killed.  Needs root.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from ipaddress import IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from pyflannel.lab.topo import (
    ETCD_IP,
    ETCD_IP6,
    IPV6_NETWORK,
    Cell,
    Container,
    Lab,
    prefixed_namespaces,
    read_env,
    run,
)

DEFAULT_WORKDIR = Path("/run/pyflannel-lab")
PREFIX = "pfl-"


def _up(args: argparse.Namespace) -> int:
    if prefixed_namespaces(args.prefix):
        print(
            f"a lab is already up (namespaces {args.prefix}*); run `pyflannel-lab down` first",
            file=sys.stderr,
        )
        return 1
    t0 = time.monotonic()
    stack = "ipv6" if args.ipv6_only else "dual" if args.ipv6 else "ipv4"
    lab = Lab(
        args.workdir,
        prefix=args.prefix,
        cells=args.cells,
        api=args.api,
        resync_interval=10,
        stack=stack,
    )
    lab.down()  # work files of a lab that was not taken down (a subnet.env would look fresh)
    underlay = {
        "ipv4": "10.0.1.0/24 and 10.0.2.0/24",
        "dual": "10.0.1.0/24 + fd00:1::/64 and 10.0.2.0/24 + fd00:2::/64",
        "ipv6": "fd00:1::/64 and fd00:2::/64 (IPv6 only)",
    }[stack]
    etcd = f"[{ETCD_IP6}]" if stack == "ipv6" else ETCD_IP
    network = {
        "ipv4": "172.16.0.0/16, /24 leases, VXLAN on UDP 8472",
        "dual": f"172.16.0.0/16 and {IPV6_NETWORK}, /24 and /64 leases, VXLAN on UDP 8472",
        "ipv6": f"IPv6 only: {IPV6_NETWORK}, /64 leases, VXLAN on UDP 8472",
    }[stack]
    try:
        step(f"underlay: router, {underlay}", lab.build_underlay)
        step(f"etcd at {etcd}:2379 (serving the {args.api} API)", lab.start_etcd)
        step(f"network config /coreos.com/network/config: {network}", lab.put_config)
        lab.start_cells(lab.cells, 2, cni=args.cni)
        for cell in lab.cells:
            env = read_env(lab.subnet_file(cell))
            addrs = [str(a) for a in (cell.underlay_ip, cell.underlay_ip6) if a is not None]
            leased = [
                str(net) for net in (_subnet(lab, cell), _subnet6(lab, cell)) if net is not None
            ]
            if not lab.ipv4:
                addrs = addrs[1:]
            print(
                f"  {cell.name} ({', '.join(addrs)}): pyflannel leased "
                f"{' and '.join(leased)}, MTU {env['FLANNEL_MTU']}"
            )
        lab.save_state()
        _wait_programmed(lab)
    except BaseException:
        print("up failed; removing what was built", file=sys.stderr)
        lab.down()
        raise
    print(
        f"lab up in {time.monotonic() - t0:.1f} s (work directory {args.workdir}); "
        "try `pyflannel-lab check`"
    )
    return 0


def step(what: str, fn: object) -> None:
    """Run one `up` step and say what it did."""
    fn()  # type: ignore[operator]
    print(f"  {what}")


def _wait_programmed(lab: Lab) -> None:
    """Wait until every cell routes to every other cell's subnets (of each family)."""
    wanted: list[tuple[str, str, dict[str, IPv4Network | IPv6Network | None]]] = [
        ("-4", "flannel.1", {c.name: _subnet(lab, c) for c in lab.cells}),
        ("-6", "flannel-v6.1", {c.name: _subnet6(lab, c) for c in lab.cells}),
    ]

    def done() -> bool:
        for family, dev, subnets in wanted:
            for cell in lab.cells:
                if subnets[cell.name] is None:
                    continue
                have = run("ip", "-n", cell.ns, family, "route", "show", "dev", dev).stdout
                if any(str(subnets[o.name]) not in have for o in lab.cells if o is not cell):
                    return False
        return True

    lab.wait(done, 20, "peers programmed on every cell")


def _subnet(lab: Lab, cell: Cell) -> IPv4Network | None:
    value = read_env(lab.subnet_file(cell)).get("FLANNEL_SUBNET")
    return IPv4Network(value, strict=False) if value else None


def _subnet6(lab: Lab, cell: Cell) -> IPv6Network | None:
    value = read_env(lab.subnet_file(cell)).get("FLANNEL_IPV6_SUBNET")
    return IPv6Interface(value).network if value else None


def _load(args: argparse.Namespace) -> Lab | None:
    try:
        return Lab.load(args.workdir)
    except (OSError, ValueError, KeyError):
        print(f"no lab found in {args.workdir}; run `pyflannel-lab up`", file=sys.stderr)
        return None


def _path(src: Cell, a: Container, dst: Cell, b: Container, v6: bool = False) -> str:
    dev = "flannel-v6.1" if v6 else "flannel.1"
    there, back = (src.underlay_ip6, dst.underlay_ip6) if v6 else (src.underlay_ip, dst.underlay_ip)
    return (
        f"{a.name} → br0@{src.name} → {dev} → UDP 8472 {there} → "
        f"{back} → {dev}@{dst.name} → br0 → {b.name}"
    )


def _check(args: argparse.Namespace) -> int:
    lab = _load(args)
    if lab is None:
        return 1
    rows = []
    failed = 0
    t0 = time.monotonic()
    for src in lab.cells:
        for a in src.containers:
            for dst in lab.cells:
                if dst is src:
                    continue
                for b in dst.containers:
                    # Each family both containers have: IPv4, then IPv6.
                    for v6, here, there in ((False, a.ip, b.ip), (True, a.ip6, b.ip6)):
                        if here is None or there is None:
                            continue
                        code = lab.curl(a.ns, there)
                        ok = code == "200"
                        failed += not ok
                        rows.append(
                            (
                                f"{a.name} ({here})",
                                f"{b.name} ({there})",
                                "PASS" if ok else f"FAIL ({code})",
                                _path(src, a, dst, b, v6),
                            )
                        )
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'from':<{w0}}  {'to (curl :8000)':<{w1}}  result  path")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<6}  {r[3]}")
    total = len(rows)
    print(f"{total - failed} passed, {failed} failed ({time.monotonic() - t0:.1f} s)")
    return 0 if failed == 0 else 1


def _status(args: argparse.Namespace) -> int:
    lab = _load(args)
    if lab is None:
        return 1
    print("leases in etcd (/coreos.com/network/subnets):")
    if lab.api == "v2":
        keys = lab.etcdctl("ls", "/coreos.com/network/subnets").split()
    else:
        keys = lab.etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets").split()
    for key in keys:
        print(f"  {key.rsplit('/', 1)[-1]:<18} {lab.get(key)}")
    devices = [("-4", "flannel.1")] if lab.ipv4 else []
    devices += [("-6", "flannel-v6.1")] if lab.ipv6 else []
    for cell in lab.cells:
        addrs = [str(a) for a in (cell.underlay_ip, cell.underlay_ip6) if a is not None]
        print(f"\n{cell.name} ({', '.join(addrs if lab.ipv4 else addrs[1:])}), namespace {cell.ns}")
        sf = lab.subnet_file(cell)
        print("  subnet.env: " + (" ".join(sf.read_text().split()) if sf.exists() else "(none)"))
        for family, dev in devices:
            _status_device(cell, family, dev)
    return 0


def _status_device(cell: Cell, family: str, dev: str) -> None:
    """One device of *cell*: its MAC and VXLAN settings, routes, neighbours and FDB entries."""
    detail = run("ip", "-d", "-n", cell.ns, "link", "show", dev, check=False).stdout
    words = detail.split()
    mac = words[words.index("link/ether") + 1] if "link/ether" in words else "?"
    vx = detail.split("vxlan", 1)[1].split("ageing")[0].strip() if "vxlan id" in detail else ""
    print(f"  {dev}: mac {mac} vxlan {vx}")
    for title, cmd in (
        ("routes", ("ip", "-n", cell.ns, family, "route", "show", "dev", dev)),
        ("neighbours", ("ip", "-n", cell.ns, family, "neigh", "show", "dev", dev)),
        ("fdb", ("bridge", "-n", cell.ns, "fdb", "show", "dev", dev)),
    ):
        out = run(*cmd, check=False).stdout.strip().splitlines()
        print(f"  {title}:")
        for line in out or ["(none)"]:
            print(f"    {line}")


def _down(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    try:
        lab = Lab.load(args.workdir)
    except (OSError, ValueError, KeyError):
        # No state (a crash during `up`): cell directories are found by name.
        cells = len(list(args.workdir.glob("cell-*"))) if args.workdir.is_dir() else 0
        lab = Lab(args.workdir, prefix=args.prefix, cells=cells)
    gone = lab.down()
    if not (gone.processes or gone.namespaces or gone.files):
        print("nothing to remove")
        return 0
    for what, items in (
        ("stopped processes", gone.processes),
        ("deleted network namespaces", gone.namespaces),
        (f"removed from {args.workdir}", gone.files),
    ):
        if items:
            print(f"  {what}: {', '.join(items)}")
    print(
        f"lab down: removed {len(gone.processes)} processes, {len(gone.namespaces)} "
        f"namespaces and {len(gone.files)} work files in {time.monotonic() - t0:.1f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``pyflannel-lab``."""
    p = argparse.ArgumentParser(
        prog="pyflannel-lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where the lab keeps etcd's data, logs and state (default: {DEFAULT_WORKDIR})",
    )
    p.add_argument("--prefix", default=PREFIX, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the topology and start everything")
    up.add_argument(
        "--api", choices=["v2", "v3"], default="v2", help="etcd API pyflannel uses (default: v2)"
    )
    up.add_argument(
        "--cells",
        type=int,
        default=2,
        choices=range(2, 9),
        metavar="N",
        help="number of cells, 2 to 8, alternating between the two underlay subnets (default: 2)",
    )
    up.add_argument(
        "--cni",
        action="store_true",
        help="attach the containers through pyflannel-cni and the bridge plugin",
    )
    family = up.add_mutually_exclusive_group()
    family.add_argument(
        "--ipv6",
        action="store_true",
        help="dual stack: an IPv6 underlay (fd00:1::/64, fd00:2::/64) too, IPv6Network "
        f"{IPV6_NETWORK} next to the IPv4 Network, containers with both families",
    )
    family.add_argument(
        "--ipv6-only",
        action="store_true",
        help=f"IPv6 only: an IPv6 underlay, IPv6Network {IPV6_NETWORK} and no IPv4 anywhere",
    )
    sub.add_parser("check", help="curl across cells and print a pass/fail table")
    sub.add_parser("status", help="show leases, devices and programmed entries")
    sub.add_parser("down", help="remove everything the lab made")
    args = p.parse_args(argv)
    handlers = {"up": _up, "check": _check, "status": _status, "down": _down}
    try:
        return handlers[args.cmd](args)
    except (RuntimeError, TimeoutError) as exc:
        print(f"pyflannel-lab {args.cmd}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["json", "main"]
