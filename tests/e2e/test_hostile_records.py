"""Hostile bytes under ``subnets/`` with the real daemons on a real etcd, both APIs.

A seeded fuzz writes a few thousand random and mutated records (deep nesting, huge strings,
invalid UTF-8, wrong JSON types, leases with unsafe keys, MACs or public IPs, odd key forms) while
two good cells run, and deletes most of them again; then the daemons must be alive, program the
good peers and nothing else, leave the underlay's routes alone, follow a lease written afterwards,
log in bounded lines and volume, and a fresh daemon must start among the leftovers.  Before
that, hostile writes over a live daemon's own key: it is repaired.

The seed is printed; ``PYFLANNEL_FUZZ_SEED=N`` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.lab.topo import Cell, Lab, alive

from .conftest import daemon_log, fdb, ip_json, lease_key, subnet_of, vtep_mac

pytestmark = [pytest.mark.e2e]

SUBNETS = b"/coreos.com/network/subnets/"
NETWORK = IPv4Network("172.16.0.0/16")
#: Valid fuzzed leases live in 172.16.150-239 (outside SubnetMin..Max, so no cell is handed one);
#: the unsafe or broken ones under in-Network keys use 172.16.100-149: the two never share a key.
VALID_THIRD = range(150, 240)
GARBAGE_THIRD = range(100, 150)
RECORDS = 3000
#: How many records of 100-700 kB (deep nesting, huge strings) of each kind.
BIG = 10
#: Keys for them, each used once (so each stays what it was written as): in the Network, but
#: outside SubnetMin..Max and the ranges above.
BIG_THIRDS = [*range(10), *range(246, 256)]
MAX_LINE = 4096


def lease_json(ip: str, mac: str, btype: str = "vxlan", vni: bool = True) -> bytes:
    """A lease value in flanneld's form (without VNI: the v0.10 form, also accepted)."""
    data = {"VNI": 1, "VtepMAC": mac} if vni else {"VtepMAC": mac}
    return json.dumps(
        {"PublicIP": ip, "BackendType": btype, "BackendData": data}, separators=(",", ":")
    ).encode()


def key_of(subnet: str) -> bytes:
    """The etcd key of *subnet* (``a.b.c.d/len``) as bytes."""
    return lease_key(subnet).encode()


# --- the generator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One write: *valid* is the (subnet, public IP, MAC) a correct daemon programs, or None."""

    kind: str
    key: bytes
    value: bytes
    valid: tuple[str, str, str] | None = None


class Fuzz:
    """Seeded record generator for a lab whose cells hold *own* subnets (never written to)."""

    def __init__(self, rng: random.Random, own: list[IPv4Network]) -> None:
        self.rng = rng
        self.own = own
        self.big_keys = iter([key_of(f"172.16.{t}.0/24") for t in BIG_THIRDS])

    def mac(self) -> str:
        """A random unicast, locally administered MAC."""
        octets = [0x02] + [self.rng.randrange(256) for _ in range(5)]
        return ":".join(f"{o:02x}" for o in octets)

    def public_ip(self) -> str:
        """A unicast public IP on the lab's second underlay subnet no lab host uses."""
        return f"10.0.2.{self.rng.randrange(100, 250)}"

    def garbage_key(self) -> bytes:
        """An in-Network /24 key that no valid fuzzed lease and no cell uses."""
        return key_of(f"172.16.{self.rng.choice(GARBAGE_THIRD)}.0/24")

    def good_value(self) -> bytes:
        return lease_json(self.public_ip(), self.mac())

    def record(self) -> Record:
        """One random small record of one of the kinds below (weights: how many of each);
        :meth:`deep` and :meth:`huge` are asked for separately, a few dozen at most."""
        kinds = [
            (self.bad_utf8, 6),
            (self.wrong_types, 10),
            (self.mutated, 10),
            (self.unsafe_key, 8),
            (self.bad_mac, 4),
            (self.bad_ip, 4),
            (self.other_backend, 2),
            (self.odd_key, 8),
            (self.random_bytes, 4),
            (self.valid, 3),
        ]
        make = self.rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
        return make()

    def deep(self) -> Record:
        """200 kB of nesting: ``[[[…``, ``{"a":{"a":…`` or a lease whose PublicIP nests."""
        n = 200_000
        value = self.rng.choice(
            [
                b"[" * n,
                b'{"a":' * (n // 5),
                b'{"PublicIP":' + b"[" * n,
                b"[" * (n // 2) + b"]" * (n // 2),
            ]
        )
        return Record("deep", next(self.big_keys), value)

    def huge(self) -> Record:
        """Huge strings: a 100-700 kB PublicIP, VtepMAC or plain junk."""
        big = "9" * self.rng.randrange(100_000, 700_000)
        value = self.rng.choice(
            [
                lease_json(big, self.mac()),
                lease_json(self.public_ip(), big),
                lease_json(self.public_ip(), self.mac(), btype=big),
                big.encode(),
                b'"' + big.encode() + b'"',
            ]
        )
        return Record("huge", next(self.big_keys), value)

    def bad_utf8(self) -> Record:
        """A lease (v0.10 form: etcd v2 hands invalid UTF-8 on as U+FFFD, and inside an optional
        field name like VNI that would leave a valid lease) with invalid UTF-8 in it, or a lone
        invalid sequence."""
        good = bytearray(lease_json(self.public_ip(), self.mac(), vni=False))
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        pos = self.rng.randrange(len(good) + 1)
        value = bytes(good[:pos]) + bad + bytes(good[pos:])
        return Record("bad_utf8", self.garbage_key(), self.rng.choice([value, bad * 40]))

    def wrong_types(self) -> Record:
        """Valid JSON of the wrong shape or types."""
        ip, mac = self.public_ip(), self.mac()
        value = self.rng.choice(
            [
                {"PublicIP": 167772677, "BackendType": "vxlan", "BackendData": {"VtepMAC": mac}},
                {"PublicIP": [ip], "BackendType": "vxlan", "BackendData": {"VtepMAC": mac}},
                {"PublicIP": None},
                {"PublicIP": ip, "BackendType": 1, "BackendData": {"VtepMAC": mac}},
                {"PublicIP": ip, "BackendType": "vxlan", "BackendData": "vxlan"},
                {"PublicIP": ip, "BackendType": "vxlan", "BackendData": [mac]},
                {"PublicIP": ip, "BackendType": "vxlan", "BackendData": {"VtepMAC": 2}},
                {"PublicIP": ip, "BackendType": "vxlan", "BackendData": {"VtepMAC": None}},
                {"PublicIP": ip, "BackendType": "vxlan", "BackendData": {"VtepMAC": "zz"}},
                {"PublicIP": ip, "BackendData": {"VNI": "1", "VtepMAC": mac}},
                {"PublicIP": ip, "BackendData": {"VNI": -1, "VtepMAC": mac}},
                {"PublicIP": ip, "BackendData": {"VNI": 1.5, "VtepMAC": mac}},
                {"PublicIP": ip, "BackendData": {"VNI": True, "VtepMAC": mac}},
                {"PublicIP": ip, "BackendData": {"VNI": 10**400, "VtepMAC": mac}},
                {"PublicIP": "10.0.2.300", "BackendData": {"VtepMAC": mac}},
                {"PublicIP": "::1", "BackendData": {"VtepMAC": mac}},
                [ip, mac],
                "lease",
                12345,
                None,
                True,
                {},
            ]
        )
        return Record("wrong_types", self.garbage_key(), json.dumps(value).encode())

    def mutated(self) -> Record:
        """A good lease (v0.10 form, so every byte matters) truncated, with a control or
        non-UTF-8 byte inserted, or doubled: never valid JSON any more."""
        good = lease_json(self.public_ip(), self.mac(), vni=False)
        how = self.rng.randrange(3)
        if how == 0:
            value = good[: self.rng.randrange(len(good))]
        elif how == 1:
            pos = self.rng.randrange(len(good) + 1)
            value = good[:pos] + self.rng.choice([b"\x01", b"\x00", b"\x1f", b"\xfe"]) + good[pos:]
        else:
            value = good + good
        return Record("mutated", self.garbage_key(), value)

    def unsafe_key(self) -> Record:
        """A good value under a key a correct daemon must not program: outside the Network,
        another prefix length (the Network, halves of a cell's own subnet, /26, /23), the lab's
        underlay subnets, the default route."""
        own = self.rng.choice(self.own)
        halves = list(own.subnets(new_prefix=25))
        third = self.rng.choice(GARBAGE_THIRD)
        subnet = self.rng.choice(
            [
                f"10.99.{self.rng.randrange(256)}.0/24",
                "192.168.7.0/24",
                str(NETWORK),
                str(halves[0]),
                str(halves[1]),
                f"172.16.{third}.64/26",
                f"172.16.{third & ~1}.0/23",
                "10.0.1.0/24",
                "10.0.2.0/24",
                "10.0.0.0/16",
                "0.0.0.0/0",
            ]
        )
        return Record("unsafe_key", key_of(subnet), self.good_value())

    def bad_mac(self) -> Record:
        """All-zero, broadcast and multicast VTEP MACs."""
        mac = self.rng.choice(
            ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01"]
        )
        return Record("bad_mac", self.garbage_key(), lease_json(self.public_ip(), mac))

    def bad_ip(self) -> Record:
        """Unspecified, loopback, multicast and broadcast public IPs."""
        ip = self.rng.choice(["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"])
        return Record("bad_ip", self.garbage_key(), lease_json(ip, self.mac()))

    def other_backend(self) -> Record:
        """Another backend's lease (not programmed by the vxlan backend)."""
        btype = self.rng.choice(["host-gw", "udp", "", "VXLAN2"])
        return Record("other_backend", self.garbage_key(), lease_json(self.public_ip(), "", btype))

    def odd_key(self) -> Record:
        """Keys that are not ``a.b.c.d-len``, with a good value."""
        t = self.rng.choice(GARBAGE_THIRD)
        name = self.rng.choice(
            [
                f"172.16.{t}.0_24",
                f"172.16.{t}.0-24-1",
                f"172.16.{t}.0/24",  # a directory on v2, a deeper key on v3
                f"172.16.{t}.0-24/extra",
                f"172.16.{t}.7-24",  # host bits set
                f"172.016.{t}.000-24",
                f"172.16.{t}.0-024",
                f"172.16.{t}.0-33",
                f"172.16.{t}.0--24",
                f"172.16.{t}.0- 24",
                f"\u0661\u0667\u0662.16.{t}.0-24",  # Arabic-Indic digits
                f"172.16.{t}.0-24\n",
                "-24",  # not "" or "..": a v2 recursive delete of those would reach the config
                "x" * self.rng.randrange(1000, 6000),
                f"172.16.{t}.0-24%00",
                f"{self.rng.random()}",
            ]
        )
        key = SUBNETS + name.encode()
        if self.rng.random() < 0.1:
            key = SUBNETS + bytes([0xFF, 0xFE]) + f"{t}-24".encode()
        return Record("odd_key", key, self.good_value())

    def random_bytes(self) -> Record:
        """Up to 2 kB of random bytes."""
        value = self.rng.randbytes(self.rng.randrange(2048))
        return Record("random_bytes", self.garbage_key(), value)

    def valid(self) -> Record:
        """A lease a correct daemon programs."""
        subnet = f"172.16.{self.rng.choice(VALID_THIRD)}.0/24"
        ip, mac = self.public_ip(), self.mac()
        return Record("valid", key_of(subnet), lease_json(ip, mac), (subnet, ip, mac))


def rounds(records: list[Record]) -> list[list[Record]]:
    """Split *records* into rounds that can go out in parallel: the n-th write of a valid
    lease's key goes in round n, so that its last write is known; every other record goes in
    the first round (which of them wins on a shared key does not matter: none is valid)."""
    out: list[list[Record]] = [[]]
    writes: Counter[bytes] = Counter()
    for rec in records:
        n = 0
        if rec.valid is not None:
            n = writes[rec.key]
            writes[rec.key] += 1
        if n == len(out):
            out.append([])
        out[n].append(rec)
    return out


# --- what the kernel holds ----------------------------------------------------------------------


@dataclass(frozen=True)
class Entries:
    """Everything pyflannel manages on flannel.1: routes, permanent neighbours, FDB entries."""

    routes: frozenset[tuple[str, str]]  # (dst, gateway or "")
    neighs: frozenset[tuple[str, str]]  # (ip, mac)
    fdb: frozenset[tuple[str, str]]  # (mac, dst)


def on_flannel(cell: Cell) -> Entries:
    """What the kernel holds on *cell*'s flannel.1 (main-table routes of any prefix length)."""
    return Entries(
        frozenset(
            (str(r["dst"]), str(r.get("gateway", "")))
            for r in ip_json(cell, "-4", "route", "show", "dev", "flannel.1")
        ),
        frozenset(
            (str(n["dst"]), str(n.get("lladdr")))
            for n in ip_json(cell, "neigh", "show", "dev", "flannel.1", "nud", "permanent")
        ),
        frozenset(fdb(cell)),
    )


def backed(peers: dict[str, tuple[str, str]]) -> Entries:
    """The entries that *peers* (subnet -> (public IP, MAC)) back."""
    return Entries(
        frozenset((s, s.split("/")[0]) for s in peers),
        frozenset((s.split("/")[0], mac) for s, (_, mac) in peers.items()),
        frozenset((mac, ip) for ip, mac in peers.values()),
    )


def underlay_routes(cell: Cell) -> list[str]:
    """The main table's routes on devices other than flannel.1 (the connected and default
    routes, br0's), comparable as text."""
    return sorted(
        json.dumps(r, sort_keys=True)
        for r in ip_json(cell, "-4", "route", "show", "table", "main")
        if r.get("dev") != "flannel.1"
    )


def running(lab: Lab, cell: Cell) -> bool:
    """True while the daemon the lab started on *cell* runs."""
    pid = lab.pid(f"pyflannel-{cell.name}")
    return pid is not None and alive(pid)


def ensure_running(lab: Lab, cell: Cell, restart: bool = False) -> None:
    """Restart *cell*'s daemon if a test made it exit (or, with *restart*, in any case: after a
    failed test it may be stuck), so that the module's next tests start from a sane daemon."""
    if restart and running(lab, cell):
        lab.kill(f"pyflannel-{cell.name}", signal.SIGTERM)
    if not running(lab, cell):
        lab.kill(f"pyflannel-{cell.name}")  # reaps it, forgets its PID
        readies = sum(e["event"] == "ready" for e in daemon_log(lab, cell))
        lab.start_daemon(cell)
        Lab.wait(
            lambda: sum(e["event"] == "ready" for e in daemon_log(lab, cell)) > readies,
            20,
            f"{cell.name} ready again",
        )


def log_window(lab: Lab, cell: Cell, start: int) -> list[bytes]:
    """*cell*'s daemon log lines from byte offset *start* on."""
    data = (lab.workdir / cell.name / "pyflannel.log").read_bytes()
    return data[start:].splitlines()


def level(line: bytes) -> str:
    """The level of one JSON log line ("" if it is not one)."""
    try:
        return str(json.loads(line).get("level", ""))
    except (ValueError, AttributeError):
        return ""


def log_size(lab: Lab, cell: Cell) -> int:
    return (lab.workdir / cell.name / "pyflannel.log").stat().st_size


# --- own key ------------------------------------------------------------------------------------


def ttl_of(lab: Lab, key: str) -> int:
    """The key's remaining TTL in seconds (0: none; v3: of its attached etcd lease)."""
    if lab.api == "v2":
        out = lab.etcdctl("-o", "extended", "get", key)
        return int(next(ln for ln in out.splitlines() if ln.startswith("TTL:")).split()[1])
    kv = json.loads(lab.etcdctl("get", key, "-w", "json"))["kvs"][0]
    if "lease" not in kv:
        return 0
    out = lab.etcdctl("lease", "timetolive", format(int(kv["lease"]), "x"))
    return int(out.split("remaining(")[1].split("s")[0]) if "remaining(" in out else 0


def test_own_key_without_ttl_gets_it_back(lab: Lab) -> None:
    """The own key rewritten by hand with its exact value but no TTL (v2: no ttl; v3: not
    attached to an etcd lease) is given a TTL again within seconds."""
    c2 = lab.cells[1]
    key = lease_key(subnet_of(lab, c2))
    good = lab.get(key)
    assert ttl_of(lab, key) > 0
    lab.put(key, good)  # etcdctl set/put: no TTL, no lease (the daemon may repair it at once)
    Lab.wait(lambda: ttl_of(lab, key) > 0, 8, "TTL restored")
    assert lab.get(key) == good


@pytest.mark.parametrize(
    "hostile",
    [
        b"garbage",
        b"{not json",
        b"\xff\xfe\x00",
        b'{"PublicIP":"10.0.2.3"}',  # another form: our IP, no backend data
        b'{"PublicIP":"10.0.2.3","BackendType":"vxlan","BackendData":{"VtepMAC":"ff:ff:ff:ff:ff:ff"}}',
        b'{"PublicIP":"0.0.0.0","BackendType":"vxlan","BackendData":{"VtepMAC":"02:00:00:00:00:09"}}',
        b"[" * 50_000,
    ],
    ids=["garbage", "bad-json", "bad-utf8", "other-form", "bcast-mac", "zero-ip", "deep"],
)
def test_own_key_overwritten_is_repaired(lab: Lab, hostile: bytes) -> None:
    """Whatever is written over a live daemon's own key that is not another host's valid lease
    (garbage, invalid UTF-8, deep nesting, another form, an unsafe MAC or public IP) is
    rewritten with its lease within seconds, and the daemon keeps running."""
    c1, c2 = lab.cells[:2]
    key = lease_key(subnet_of(lab, c2))
    good = lab.get(key)
    repaired = False
    try:
        lab.bulk([("put", key.encode(), hostile, 0)])
        Lab.wait(lambda: lab.get(key) == good, 8, "own key rewritten")
        assert running(lab, c2), "the daemon exited"
        assert ttl_of(lab, key) > 0
        repaired = True
    finally:
        if lab.get(key) != good:  # with a TTL: without one a restart would take a reservation
            lab.bulk([("put", key.encode(), good.encode(), 86400)])
        ensure_running(lab, c2, restart=not repaired)
    assert (vtep_mac(c2), str(c2.underlay_ip)) in fdb(c1)


# --- the fuzz -----------------------------------------------------------------------------------


def test_fuzzed_records_program_only_valid_leases(lab: Lab) -> None:
    """A few thousand hostile records, mostly deleted again: the daemons survive, keep exactly
    the entries valid leases back, leave the underlay alone, follow a later lease, log in
    bounded lines and volume; a fresh daemon starts among the leftovers and becomes ready."""
    seed = int(os.environ.get("PYFLANNEL_FUZZ_SEED", "0")) or random.randrange(1, 2**31)
    print(f"fuzz seed {seed} (PYFLANNEL_FUZZ_SEED={seed} replays it)")
    rng = random.Random(seed)
    c1, c2, c3 = lab.cells
    s1, s2 = subnet_of(lab, c1), subnet_of(lab, c2)
    good = {s1: (str(c1.underlay_ip), vtep_mac(c1)), s2: (str(c2.underlay_ip), vtep_mac(c2))}
    gen = Fuzz(rng, [IPv4Network(s1), IPv4Network(s2)])
    underlay = {c.name: underlay_routes(c) for c in (c1, c2)}
    offsets = {c.name: log_size(lab, c) for c in (c1, c2)}

    records = [gen.deep() for _ in range(BIG)] + [gen.huge() for _ in range(BIG)]
    records += [gen.record() for _ in range(RECORDS - len(records))]
    rng.shuffle(records)
    final: dict[bytes, Record] = {}
    started = time.monotonic()
    tallies: Counter[str] = Counter()
    for batch in rounds(records):
        tally = lab.bulk([("put", r.key, r.value, 0) for r in batch])
        tallies["accepted"] += int(str(tally["ok"]))
        for status, n in dict(tally["refused"]).items():  # type: ignore[call-overload]
            tallies[f"refused {status}"] += n
        final.update((r.key, r) for r in batch)
    # Delete most again, but keep at least one record of every kind.
    keep = {
        next(k for k, r in final.items() if r.kind == kind)
        for kind in {r.kind for r in final.values()}
    }
    keep |= {k for k in final if rng.random() < 0.1}
    gone = [k for k in final if k not in keep]
    tally = lab.bulk([("del", k) for k in gone])
    written = time.monotonic() - started
    kinds = Counter(r.kind for r in records)
    print(
        f"fuzz ({lab.api}): {len(records)} writes in {len(rounds(records))} rounds, "
        f"{len(final)} distinct keys, {len(gone)} deleted ({tally}), {len(keep)} kept, "
        f"{written:.1f} s; by kind: {dict(sorted(kinds.items()))}; etcd: {dict(tallies)}"
    )
    pairs = len({(r.key, r.value) for r in records})

    peers = dict(good)
    peers.update({r.valid[0]: r.valid[1:] for k, r in final.items() if k in keep and r.valid})

    def expected(me: str) -> Entries:
        return backed({s: v for s, v in peers.items() if s != me})

    problems: list[str] = []
    for cell, me in ((c1, s1), (c2, s2)):
        try:
            Lab.wait(lambda: on_flannel(cell) == expected(me), 20, "settled", interval=0.5)
        except TimeoutError:
            have, want = on_flannel(cell), expected(me)
            for part in ("routes", "neighs", "fdb"):
                extra = getattr(have, part) - getattr(want, part)
                missing = getattr(want, part) - getattr(have, part)
                if extra or missing:
                    problems.append(
                        f"{cell.name} {part}: unbacked {sorted(extra)[:8]} "
                        f"({len(extra)}), missing {sorted(missing)[:8]} ({len(missing)})"
                    )
        if not running(lab, cell):
            problems.append(f"{cell.name}: the daemon exited")
        if underlay_routes(cell) != underlay[cell.name]:
            problems.append(
                f"{cell.name}: underlay routes changed: {underlay[cell.name]} -> "
                f"{underlay_routes(cell)}"
            )
    if lab.curl(c1.containers[0].ns, c2.containers[0].ip) != "200":
        problems.append("curl cell-1 -> cell-2 failed")

    # Logs: bounded lines, and bounded volume for what was written.
    for cell in (c1, c2):
        lines = log_window(lab, cell, offsets[cell.name])
        longest = max((len(ln) for ln in lines), default=0)
        warnings = sum(level(ln) == "warning" for ln in lines)
        volume = sum(len(ln) + 1 for ln in lines)
        print(
            f"{cell.name}: {len(lines)} log lines, {warnings} warnings, {volume} bytes, "
            f"longest {longest} for {pairs} distinct (key, value) pairs"
        )
        whole = (lab.workdir / cell.name / "pyflannel.log").read_bytes().splitlines()
        if max(len(ln) for ln in whole) >= MAX_LINE:
            problems.append(f"{cell.name}: a log line of {max(len(ln) for ln in whole)} bytes")
        if warnings > 3 * pairs + 50:
            problems.append(f"{cell.name}: {warnings} warnings for {pairs} pairs")
        if volume > 1024 * pairs + 65536:
            problems.append(f"{cell.name}: {volume} log bytes for {pairs} pairs")
    assert not problems, "\n".join(problems)

    # The watch went past it all: a lease written now is programmed everywhere.
    late = "172.16.245.0/24"
    peers[late] = ("10.0.2.240", "02:00:00:00:f0:01")
    lab.put(lease_key(late), lease_json(*peers[late]).decode())
    for cell, me in ((c1, s1), (c2, s2)):
        Lab.wait(lambda: on_flannel(cell) == expected(me), 10, f"{late} programmed on {cell.name}")

    # A fresh daemon starts among the leftovers, becomes ready and programs only valid leases.
    # Whatever the seed kept, the leftovers include keys that cover free subnets with another
    # prefix length (the whole Network, a /23 in SubnetMin..Max): no reason to be out of subnets.
    lab.bulk([("put", key_of(s), gen.good_value(), 0) for s in (str(NETWORK), "172.16.96.0/23")])
    lab.start_daemon(c3)
    Lab.wait(
        lambda: not running(lab, c3) or any(e["event"] == "ready" for e in daemon_log(lab, c3)),
        30,
        "cell-3 ready",
    )
    assert running(lab, c3), [e for e in daemon_log(lab, c3) if e.get("level") == "error"]
    s3 = subnet_of(lab, c3)
    assert IPv4Address(s3.split("/")[0]) in NETWORK
    Lab.wait(lambda: on_flannel(c3) == expected(s3), 10, "cell-3 programs the valid leases")
    assert max(len(ln) for ln in log_window(lab, c3, 0)) < MAX_LINE
    assert lab.kill(f"pyflannel-{c3.name}", signal.SIGTERM) == 0
