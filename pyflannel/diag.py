"""Diagnostics: capture and decode VXLAN on the underlay with scapy (tests and troubleshooting).

``python -m pyflannel.diag capture --iface eth0 --timeout 5`` prints one JSON line per VXLAN
packet seen: outer addresses and ports, the VNI, and the inner packet (IPv4 or IPv6, outside and
inside: ``family`` and ``inner_family`` say which).  Run it inside the host's
network namespace (``ip netns exec …``).  scapy is imported only here: it is never on the data
path, where the kernel does all encapsulation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any


def capture_vxlan(
    iface: str,
    port: int,
    timeout: float,
    count: int = 0,
    on_start: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Sniff *iface* for *timeout* seconds and return the VXLAN packets on UDP *port*;
    *on_start* is called once the capture socket is open."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.vxlan import VXLAN  # registers the layer; it decodes as Raw without it
    from scapy.packet import bind_layers
    from scapy.sendrecv import sniff

    bind_layers(UDP, VXLAN, dport=port)

    def is_vxlan(p: Any) -> bool:
        return UDP in p and port in (p[UDP].sport, p[UDP].dport)

    out: list[dict[str, Any]] = []
    packets = sniff(
        iface=iface, timeout=timeout, count=count, lfilter=is_vxlan, started_callback=on_start
    )
    for p in packets:
        # The frame's own network layer (an IPv6 underlay may carry IPv4 inside, and back).
        outer = p.payload if isinstance(p.payload, (IP, IPv6)) else p[IP] if IP in p else p[IPv6]
        rec: dict[str, Any] = {
            "family": 6 if isinstance(outer, IPv6) else 4,
            "src": outer.src,
            "dst": outer.dst,
            "sport": p[UDP].sport,
            "dport": p[UDP].dport,
            "vni": int(p[VXLAN].vni) if VXLAN in p else None,
        }
        inner = p[VXLAN].payload if VXLAN in p else None
        # The inner packet's network layer: IPv4 (protocol) or IPv6 (next header).
        for family, layer, proto in ((4, IP, "proto"), (6, IPv6, "nh")):
            if inner is not None and layer in inner:
                net = inner[layer]
                rec.update(
                    inner_family=family,
                    inner_src=net.src,
                    inner_dst=net.dst,
                    inner_proto=int(getattr(net, proto)),
                )
                break
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line of the diagnostics helper."""
    p = argparse.ArgumentParser(prog="python -m pyflannel.diag")
    sub = p.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="print VXLAN packets seen on an interface as JSON lines")
    cap.add_argument("--iface", required=True)
    cap.add_argument("--port", type=int, default=8472)
    cap.add_argument("--timeout", type=float, default=5.0)
    cap.add_argument("--count", type=int, default=0, help="stop after this many (0: no limit)")
    args = p.parse_args(argv)
    try:
        # "capturing" on stderr tells a caller (a test) that packets sent now will be seen.
        started = lambda: print("capturing", file=sys.stderr, flush=True)  # noqa: E731
        for rec in capture_vxlan(args.iface, args.port, args.timeout, args.count, started):
            print(json.dumps(rec), flush=True)
    except OSError as exc:
        print(f"capture failed on {args.iface}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
