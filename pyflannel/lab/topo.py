"""Build and tear down the demo's topology (docs/demo.md) from network namespaces.

Two underlay subnets joined by a router namespace: 10.0.1.0/24 (etcd at .2, cell-1 at .3) and
10.0.2.0/24 (cell-2 at .3); more cells alternate between the two subnets.  Each cell runs the
real ``pyflannel`` process, builds ``br0`` from its FLANNEL_SUBNET and attaches two
"containers" (namespaces on veths) with an HTTP server on :8000.  Used by the demo command and
by the end-to-end tests.  On request, an "outside" host sits behind the router on 203.0.113.0/24
(an address outside the overlay, for masquerading tests), and a cell's daemon gets extra flags.

IPv6 (*stack*): ``dual`` adds an IPv6 underlay of unique local addresses (fd00:1::/64 and
fd00:2::/64, the router at ::1, etcd at fd00:1::2, cells at ::3, ::4...) and an IPv6Network
(fd00:16::/48) to the config; the cells then run both devices and the containers get an
address of each family.  ``ipv6`` is the same with IPv4 left out everywhere: an IPv6-only
underlay (etcd reached at ``http://[fd00:1::2]:2379``), an IPv6-only network
(``"EnableIPv4": false``) and IPv6-only containers.

Everything is created inside namespaces named with one prefix, so the root namespace gets no
link, and :meth:`Lab.down` (or :func:`remove_prefixed`) removes it all, even after a crash;
only processes this lab started (by PID, recorded in its work directory) are killed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, ip_address
from pathlib import Path

from pyflannel.lab.whoami import PORT as WHOAMI_PORT
from pyflannel.subnetenv import env_pairs

SEED_CONFIG = {
    "Network": "172.16.0.0/16",
    "SubnetLen": 24,
    "SubnetMin": "172.16.10.0",
    "SubnetMax": "172.16.99.0",
    "Backend": {"Type": "vxlan", "Port": 8472},
}
ETCD_IP = "10.0.1.2"
ETCD_URL = f"http://{ETCD_IP}:2379"
#: The outside host (TEST-NET-3: documentation addresses, never routed on the internet).
OUTSIDE_IP = IPv4Address("203.0.113.10")
OUTSIDE_GW = IPv4Address("203.0.113.1")  # the router's side
#: What a lab's underlay and network carry: IPv4 only (the seed), both, or IPv6 only.
STACKS = ("ipv4", "dual", "ipv6")
#: The IPv6 overlay of the dual-stack and IPv6-only labs.
IPV6_NETWORK = "fd00:16::/48"
#: The IPv6 underlay: fd00:<n>::/64 per switch; etcd and the outside host.
ETCD_IP6 = "fd00:1::2"
ETCD_URL6 = f"http://[{ETCD_IP6}]:2379"
OUTSIDE_IP6 = IPv6Address("fd00:99::10")
OUTSIDE_GW6 = IPv6Address("fd00:99::1")


def config_for(stack: str) -> dict[str, object]:
    """The network config of a lab of *stack*: the seed's, with the IPv6Network added (dual),
    or instead of the IPv4 Network (ipv6)."""
    if stack == "ipv4":
        return dict(SEED_CONFIG)
    if stack == "dual":
        return {**SEED_CONFIG, "EnableIPv6": True, "IPv6Network": IPV6_NETWORK}
    return {
        "EnableIPv4": False,
        "EnableIPv6": True,
        "IPv6Network": IPV6_NETWORK,
        "Backend": SEED_CONFIG["Backend"],
    }


def url_host(addr: IPv4Address | IPv6Address | str) -> str:
    """*addr* as the host part of a URL (an IPv6 address in brackets)."""
    text = str(addr)
    return f"[{text}]" if ":" in text else text


CONTAINER_NAMES = "abcdefghijklmnopqrstuvwxyz"
#: What the lab writes in its work directory (besides one directory per cell).
LAB_FILES = ("etcd-data", "etcd.log", "www", "state.json", "pids.json")
#: Where the standard CNI plugins are: Debian's containernetworking-plugins, then the usual path.
CNI_PATH = "/usr/lib/cni:/opt/cni/bin"


def run(*cmd: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run *cmd* (inside netns *ns* if given) and return the finished process."""
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    res = subprocess.run(full, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def ip(ns: str, *args: str) -> None:
    """``ip -n NS ARGS``."""
    run("ip", "-n", ns, *args)


@dataclass
class Container:
    """A namespace on a veth to its cell's br0."""

    name: str
    ns: str
    host_veth: str
    ip: IPv4Address | None = None
    cni_result: dict[str, object] | None = None  # what pyflannel-cni ADD returned
    ip6: IPv6Address | None = None  # with an IPv6 network


@dataclass
class Cell:
    """A host running pyflannel."""

    name: str
    ns: str
    underlay_ip: IPv4Address
    gateway: IPv4Address
    containers: list[Container] = field(default_factory=list)
    underlay_ip6: IPv6Address | None = None  # with an IPv6 underlay

    @property
    def subnet_index(self) -> int:
        """1 or 2: which underlay subnet the cell is on."""
        return int(str(self.underlay_ip).split(".")[2])


def read_env(path: Path) -> dict[str, str]:
    """Parse a subnet.env file."""
    return dict(env_pairs(path.read_text()))


class Lab:
    """One instance of the topology; *prefix* names every namespace it makes."""

    def __init__(
        self,
        workdir: Path,
        prefix: str = "pfl-",
        cells: int = 2,
        api: str = "v2",
        resync_interval: float = 2.0,
        *,
        outside: bool = False,
        daemon_args: Mapping[str, Sequence[str]] | None = None,
        stack: str = "ipv4",
    ) -> None:
        if stack not in STACKS:
            raise ValueError(f"stack {stack!r} is not one of {', '.join(STACKS)}")
        self.workdir = workdir
        self.prefix = prefix
        self.api = api
        self.stack = stack
        self.ipv4 = stack != "ipv6"  # the underlay and the network carry IPv4
        self.ipv6 = stack != "ipv4"  # ... and IPv6
        self.etcd_url = ETCD_URL if self.ipv4 else ETCD_URL6
        self.resync_interval = resync_interval
        self.etcd_ns = f"{prefix}etcd"
        self.router_ns = f"{prefix}router"
        self.outside_ns = f"{prefix}outside" if outside else None
        self.daemon_args = dict(daemon_args or {})  # cell name -> extra pyflannel flags
        self.cells = [self._cell(i) for i in range(1, cells + 1)]
        self.pidfile = workdir / "pids.json"
        # Popen objects of what this instance started: waiting through them gets the exit code
        # even when subprocess's own bookkeeping reaped the child first.
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def _cell(self, i: int) -> Cell:
        subnet = 1 if i % 2 else 2
        host = 3 + (i - 1) // 2
        return Cell(
            f"cell-{i}",
            f"{self.prefix}cell{i}",
            IPv4Address(f"10.0.{subnet}.{host}"),
            IPv4Address(f"10.0.{subnet}.1"),
            underlay_ip6=IPv6Address(f"fd00:{subnet}::{host}") if self.ipv6 else None,
        )

    # --- processes ------------------------------------------------------------------------------

    def _pids(self) -> dict[str, int]:
        try:
            data = json.loads(self.pidfile.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def _record(self, name: str, pid: int | None) -> None:
        pids = self._pids()
        if pid is None:
            pids.pop(name, None)
        else:
            pids[name] = pid
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(json.dumps(pids))

    def spawn(
        self,
        name: str,
        ns: str,
        cmd: list[str],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start *cmd* in *ns*, output to *log*, and record its PID under *name*."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        self._record(name, proc.pid)
        self._procs[name] = proc
        return proc

    def pid(self, name: str) -> int | None:
        """The PID recorded for *name*."""
        return self._pids().get(name)

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait for *name* (started by this instance) to exit by itself; its exit code, or
        None if it still runs after *timeout* seconds."""
        proc = self._procs[name]
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._procs.pop(name)
        self._record(name, None)
        return code

    def kill(self, name: str, sig: int = signal.SIGTERM, wait: float = 10.0) -> int | None:
        """Signal the process recorded as *name*; wait for it; return its exit code if ours."""
        pid = self._pids().get(name)
        if pid is None:
            return None
        proc = self._procs.pop(name, None)
        if proc is not None and proc.pid == pid:
            if proc.poll() is None:
                proc.send_signal(sig)
            try:
                own = proc.wait(wait)
            except subprocess.TimeoutExpired:
                proc.kill()
                own = proc.wait()
            self._record(name, None)
            return own
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            self._record(name, None)
            return None
        deadline = time.monotonic() + wait
        code: int | None = None
        while time.monotonic() < deadline:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (a previous `up`): poll for it
                if not alive(pid):
                    break
                time.sleep(0.05)
                continue
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._record(name, None)
        return code

    # --- underlay and etcd ----------------------------------------------------------------------

    def add_namespace(self, ns: str) -> None:
        """A new namespace of the lab, its loopback up.  With IPv6, no duplicate address
        detection on the links made in it later: every lab address is unique by construction,
        and a link-local address still tentative delays a container's first IPv6 packets by
        about two seconds."""
        run("ip", "netns", "add", ns)
        ip(ns, "link", "set", "lo", "up")
        if self.ipv6:
            for conf in ("all", "default"):
                run("sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0", ns=ns)

    def build_underlay(self) -> None:
        """Namespaces, the router with two switches, etcd host and cells on their subnets."""
        for ns in (self.etcd_ns, self.router_ns, *(c.ns for c in self.cells)):
            self.add_namespace(ns)
        r = self.router_ns
        for n in (1, 2):
            ip(r, "link", "add", f"sw{n}", "type", "bridge")
            if self.ipv4:
                ip(r, "addr", "add", f"10.0.{n}.1/24", "dev", f"sw{n}")
            if self.ipv6:
                ip(r, "addr", "add", f"fd00:{n}::1/64", "dev", f"sw{n}", "nodad")
            ip(r, "link", "set", f"sw{n}", "up")
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=r)
        if self.ipv6:
            run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=r)
        hosts: list[tuple[str, str, IPv4Address, IPv6Address | None, int]] = [
            ("etcd", self.etcd_ns, IPv4Address(ETCD_IP), IPv6Address(ETCD_IP6), 1)
        ]
        hosts += [
            (f"c{i + 1}", c.ns, c.underlay_ip, c.underlay_ip6, c.subnet_index)
            for i, c in enumerate(self.cells)
        ]
        for tag, ns, addr, addr6, sub in hosts:
            # Created inside the namespaces: nothing ever appears in the root namespace.
            ip(r, "link", "add", f"p-{tag}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip(r, "link", "set", f"p-{tag}", "master", f"sw{sub}", "up")
            if self.ipv4:
                ip(ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            if self.ipv6:
                # nodad: a lab address is unique by construction, and usable at once.
                ip(ns, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad")
            ip(ns, "link", "set", "eth0", "up")
            if self.ipv4:
                ip(ns, "route", "add", "default", "via", f"10.0.{sub}.1")
            if self.ipv6:
                ip(ns, "-6", "route", "add", "default", "via", f"fd00:{sub}::1")
        if self.outside_ns is not None:
            # Knows no route to the overlay: only masqueraded traffic gets answers by default.
            out = self.outside_ns
            self.add_namespace(out)
            ip(r, "link", "add", "p-out", "type", "veth", "peer", "name", "eth0", "netns", out)
            ip(r, "link", "set", "p-out", "up")
            ip(out, "link", "set", "eth0", "up")
            if self.ipv4:
                ip(r, "addr", "add", f"{OUTSIDE_GW}/24", "dev", "p-out")
                ip(out, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
                ip(out, "route", "add", "default", "via", str(OUTSIDE_GW))
            if self.ipv6:
                ip(r, "addr", "add", f"{OUTSIDE_GW6}/64", "dev", "p-out", "nodad")
                ip(out, "addr", "add", f"{OUTSIDE_IP6}/64", "dev", "eth0", "nodad")
                ip(out, "-6", "route", "add", "default", "via", str(OUTSIDE_GW6))

    def start_etcd(self, fresh: bool = True) -> None:
        """etcd on 10.0.1.2:2379 (IPv6-only lab: [fd00:1::2]:2379) inside the etcd namespace
        (v2 and v3 APIs both served).

        *fresh* starts from an empty data directory; otherwise etcd restarts on its data.
        """
        data = self.workdir / "etcd-data"
        if fresh:
            shutil.rmtree(data, ignore_errors=True)
        self.spawn(
            "etcd",
            self.etcd_ns,
            [
                shutil.which("etcd") or "etcd",
                "--name",
                "lab",
                "--data-dir",
                str(data),
                "--listen-client-urls",
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "lab=http://127.0.0.1:2380",
                "--initial-cluster-state",
                "new",
                "--enable-v2=true",
                "--heartbeat-interval=10",
                "--election-timeout=100",
                "--logger=zap",
                "--log-outputs=stderr",
            ],
            self.workdir / "etcd.log",
        )
        self.wait(
            lambda: (
                run(
                    "curl", "-sf", f"{self.etcd_url}/health", ns=self.etcd_ns, check=False
                ).returncode
                == 0
            ),
            20,
            "etcd health",
        )

    def etcdctl(self, *args: str, api: str | None = None) -> str:
        """Run etcdctl against the lab's etcd with the lab's API (or *api*)."""
        env = {"ETCDCTL_API": "2" if (api or self.api) == "v2" else "3"}
        res = subprocess.run(
            ["ip", "netns", "exec", self.etcd_ns, "etcdctl", "--endpoints", self.etcd_url, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def put(self, key: str, value: str) -> None:
        """Write a key with the lab's API."""
        self.etcdctl("set" if self.api == "v2" else "put", key, value)

    def delete(self, key: str) -> None:
        """Delete a key with the lab's API."""
        self.etcdctl("rm" if self.api == "v2" else "del", key)

    def get(self, key: str) -> str:
        """Read a key's value with the lab's API."""
        if self.api == "v2":
            return self.etcdctl("get", key).rstrip("\n")
        return self.etcdctl("get", "--print-value-only", key).rstrip("\n")

    def bulk(
        self, ops: list[tuple[str, bytes, bytes, int]] | list[tuple[str, bytes]], threads: int = 16
    ) -> dict[str, object]:
        """Send many ``("put", key, value, ttl)`` / ``("del", key)`` operations (raw bytes; ttl
        0 for none) to etcd at once from a thread pool, in no particular order; return how many
        etcd accepted (``ok``) and its refusals by status (``refused``).  See
        :mod:`pyflannel.lab.bulk`."""
        lines = "".join(
            json.dumps([op[0], *(base64.b64encode(b).decode() for b in op[1:3]), *op[3:]]) + "\n"
            for op in ops
        )
        cmd = [sys.executable, "-m", "pyflannel.lab.bulk", self.api, self.etcd_url, str(threads)]
        res = subprocess.run(
            ["ip", "netns", "exec", self.etcd_ns, *cmd],
            input=lines,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"bulk write failed: {res.stderr.strip()[-2000:]}")
        tally = json.loads(res.stdout)
        assert isinstance(tally, dict)
        return tally

    def put_config(self, config: dict[str, object] | None = None) -> None:
        """Store the network config (by default the demo's, with IPv6 as the stack says)."""
        self.put("/coreos.com/network/config", json.dumps(config or config_for(self.stack)))

    # --- cells ----------------------------------------------------------------------------------

    def subnet_file(self, cell: Cell) -> Path:
        """Where *cell*'s daemon writes subnet.env."""
        return self.workdir / cell.name / "subnet.env"

    def start_daemon(self, cell: Cell, *extra: str) -> None:
        """Run the real pyflannel command inside the cell's namespace."""
        self.spawn(
            f"pyflannel-{cell.name}",
            cell.ns,
            [
                sys.executable,
                "-m",
                "pyflannel",
                f"--etcd-endpoints={self.etcd_url}",
                f"--etcd-api={self.api}",
                *([f"--public-ip={cell.underlay_ip}"] if self.ipv4 else []),
                *([f"--public-ipv6={cell.underlay_ip6}"] if self.ipv6 else []),
                f"--subnet-file={self.subnet_file(cell)}",
                f"--resync-interval={self.resync_interval}",
                "--log-format=json",
                *self.daemon_args.get(cell.name, ()),
                *extra,
            ],
            self.workdir / cell.name / "pyflannel.log",
        )

    def wait_subnet_env(self, cell: Cell, timeout: float = 20) -> dict[str, str]:
        """Wait for the cell's subnet.env and return its values."""
        path = self.subnet_file(cell)
        self.wait(path.exists, timeout, f"{path}")
        return read_env(path)

    def _host_sysctls(self, ns: str) -> None:
        """What a cell needs to route its containers: forwarding of each family (and for
        IPv4 no reverse-path filter)."""
        sysctls = []
        if self.ipv4:
            sysctls += [
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ]
        if self.ipv6:
            sysctls.append("net.ipv6.conf.all.forwarding=1")
        for sysctl in sysctls:
            run("sysctl", "-qw", sysctl, ns=ns)

    def attach_containers(self, cell: Cell, count: int = 2, start: int = 0) -> None:
        """br0 from FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET (MTU from FLANNEL_MTU) and *count*
        containers on veths, with an address of each family the network has."""
        env = read_env(self.subnet_file(cell))
        gw = env.get("FLANNEL_SUBNET")
        net = IPv4Network(gw, strict=False) if gw else None
        gw6 = env.get("FLANNEL_IPV6_SUBNET")
        net6 = IPv6Interface(gw6).network if gw6 else None
        mtu = env["FLANNEL_MTU"]
        ns = cell.ns
        ip(ns, "link", "add", "br0", "mtu", mtu, "type", "bridge")
        if gw:
            ip(ns, "addr", "add", gw, "dev", "br0")
        if gw6:
            ip(ns, "addr", "add", gw6, "dev", "br0", "nodad")
        ip(ns, "link", "set", "br0", "up")
        self._host_sysctls(ns)
        for k in range(count):
            idx = start + k
            letter = CONTAINER_NAMES[idx]
            con = Container(
                f"con_{letter}",
                f"{self.prefix}con_{letter}",
                f"veth{k + 1}0",
                net.network_address + 2 + k if net is not None else None,
                ip6=net6.network_address + 2 + k if net6 is not None else None,
            )
            self.add_namespace(con.ns)
            ip(
                ns,
                "link",
                "add",
                con.host_veth,
                "mtu",
                mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                con.ns,
            )
            ip(ns, "link", "set", con.host_veth, "master", "br0", "up")
            ip(con.ns, "link", "set", "eth0", "mtu", mtu)
            if net is not None:
                ip(con.ns, "addr", "add", f"{con.ip}/{net.prefixlen}", "dev", "eth0")
            if net6 is not None:
                ip(con.ns, "addr", "add", f"{con.ip6}/{net6.prefixlen}", "dev", "eth0", "nodad")
            ip(con.ns, "link", "set", "eth0", "up")
            if net is not None:
                ip(con.ns, "route", "add", "default", "via", str(net.network_address + 1))
            if net6 is not None:
                ip(con.ns, "-6", "route", "add", "default", "via", str(net6.network_address + 1))
            cell.containers.append(con)

    def cni_config(self, cell: Cell) -> dict[str, object]:
        """The network config the lab gives pyflannel-cni on *cell* (state under the workdir)."""
        return {
            "cniVersion": "1.0.0",
            "name": "pyflannel-lab",
            "type": "pyflannel-cni",
            "subnetFile": str(self.subnet_file(cell)),
            "dataDir": str(self.workdir / cell.name / "cni-state"),
            "delegate": {"bridge": "br0"},
            "ipam": {"dataDir": str(self.workdir / cell.name / "cni-ipam")},
        }

    def cni(
        self, cell: Cell, command: str, con: Container, prev_result: dict[str, object] | None = None
    ) -> dict[str, object]:
        """Run pyflannel-cni *command* (ADD, DEL, CHECK) for *con* inside *cell*; CHECK needs
        the ADD result as *prev_result*, as a runtime passes it."""
        conf = self.cni_config(cell)
        if prev_result is not None:
            conf["prevResult"] = prev_result
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": con.name,
            "CNI_NETNS": f"/var/run/netns/{con.ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_PATH,
        }
        res = subprocess.run(
            ["ip", "netns", "exec", cell.ns, sys.executable, "-m", "pyflannel.cni"],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"pyflannel-cni {command} {con.name}: {res.stdout}{res.stderr}")
        out = json.loads(res.stdout) if res.stdout.strip() else {}
        assert isinstance(out, dict)
        return out

    def attach_containers_cni(self, cell: Cell, count: int = 2, start: int = 0) -> None:
        """Like :meth:`attach_containers`, but through pyflannel-cni and the bridge plugin."""
        self._host_sysctls(cell.ns)
        for k in range(count):
            letter = CONTAINER_NAMES[start + k]
            con = Container(f"con_{letter}", f"{self.prefix}con_{letter}", "")
            self.add_namespace(con.ns)
            result = self.cni(cell, "ADD", con)
            ips = result.get("ips")
            assert isinstance(ips, list) and ips, result
            for entry in ips:
                addr = ip_address(str(entry["address"]).split("/")[0])
                if isinstance(addr, IPv6Address):
                    con.ip6 = addr
                else:
                    con.ip = addr
            con.cni_result = result
            cell.containers.append(con)

    def start_cells(self, cells: list[Cell], containers: int = 2, cni: bool = False) -> None:
        """Run pyflannel on *cells*; once each has its lease, attach *containers* containers
        (by hand, or through pyflannel-cni) with HTTP servers, and wait until they serve."""
        for cell in cells:
            self.start_daemon(cell)
        attach = self.attach_containers_cni if cni else self.attach_containers
        for i, cell in enumerate(cells):
            self.wait_subnet_env(cell)
            attach(cell, containers, start=containers * i)
            for con in cell.containers:
                self.start_http(con)
        for cell in cells:
            for con in cell.containers:
                self.wait_http(con)

    def start_http(self, con: Container) -> None:
        """``python3 -m http.server 8000`` inside the container, serving an empty directory."""
        root = self.workdir / "www" / con.name
        root.mkdir(parents=True, exist_ok=True)
        (root / "index.html").write_text(f"hello from {con.name}\n")
        # --bind ::: one socket for both families (Python's dual-stack server).
        self.spawn(
            f"http-{con.name}",
            con.ns,
            [sys.executable, "-m", "http.server", "8000", "--bind", "::"],
            self.workdir / "www" / f"{con.name}.log",
            cwd=root,
        )

    def start_whoami(self, ns: str, name: str) -> None:
        """A :mod:`pyflannel.lab.whoami` server on port 8001 in *ns*; returns once it listens."""
        self.spawn(
            f"whoami-{name}",
            ns,
            [sys.executable, "-m", "pyflannel.lab.whoami", str(WHOAMI_PORT)],
            self.workdir / "www" / f"whoami-{name}.log",
        )
        self.wait(
            lambda: f":{WHOAMI_PORT}" in run("ss", "-ltn", ns=ns, check=False).stdout,
            10,
            f"whoami server in {name}",
        )

    @staticmethod
    def whoami(src_ns: str, dst: IPv4Address | IPv6Address | str, timeout: float = 5) -> str:
        """The source address the whoami server at *dst* saw for a request from namespace
        *src_ns* ("" if it did not answer)."""
        url = f"http://{url_host(dst)}:{WHOAMI_PORT}/"
        return run("curl", "-s", "-m", str(timeout), url, ns=src_ns, check=False).stdout.strip()

    def wait_http(self, con: Container, timeout: float = 10) -> None:
        """Wait until the container's server listens."""
        self.wait(
            lambda: ":8000" in run("ss", "-ltn", ns=con.ns, check=False).stdout,
            timeout,
            f"http server in {con.name}",
        )

    @staticmethod
    def curl(src_ns: str, dst: IPv4Address | IPv6Address | str | None, timeout: float = 5) -> str:
        """The HTTP status of ``GET http://dst:8000/`` from namespace *src_ns* ("000" if none);
        an IPv6 *dst* goes in brackets."""
        res = run(
            "curl",
            "-s",
            "-m",
            str(timeout),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://{url_host(str(dst))}:8000/",
            ns=src_ns,
            check=False,
        )
        return res.stdout or "000"

    @staticmethod
    def wait(cond: object, timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll *cond* until it is true or *timeout* seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():  # type: ignore[operator]
                return
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")

    # --- state, so that later commands (check, status, down) find what `up` built ----------

    def save_state(self) -> None:
        """Record the lab's shape in ``state.json`` in its work directory."""
        state = {
            "prefix": self.prefix,
            "api": self.api,
            "stack": self.stack,
            "cells": len(self.cells),
            "containers": {
                c.name: [
                    [k.name, k.ns, k.host_veth, _text(k.ip), _text(k.ip6)] for k in c.containers
                ]
                for c in self.cells
            },
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, workdir: Path) -> Lab:
        """The lab recorded in *workdir* by :meth:`save_state`."""
        state = json.loads((workdir / "state.json").read_text())
        lab = cls(
            workdir,
            prefix=state["prefix"],
            cells=state["cells"],
            api=state["api"],
            stack=state.get("stack", "ipv4"),
        )
        for cell in lab.cells:
            for name, ns, veth, addr, *rest in state["containers"].get(cell.name, []):
                ip4 = IPv4Address(addr) if addr else None
                ip6 = IPv6Address(rest[0]) if rest and rest[0] else None
                cell.containers.append(Container(name, ns, veth, ip4, ip6=ip6))
        return lab

    # --- teardown -------------------------------------------------------------------------------

    def down(self) -> Removed:
        """Kill the lab's processes, delete its namespaces and its work directory's contents;
        safe to call at any point, also after a crash or a half-finished start.  Returns what
        was removed."""
        names = {pid: name for name, pid in self._pids().items()}
        for proc in self._procs.values():  # ours: reaped below, without a zombie's wait
            if proc.poll() is None:
                proc.kill()
        stopped = remove_prefixed(self.prefix)
        for proc in self._procs.values():
            proc.wait()
        self._procs.clear()
        files = []
        for entry in (*LAB_FILES, *(c.name for c in self.cells)):
            path = self.workdir / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
            else:
                continue
            files.append(entry)
        return Removed(
            processes=[
                names.get(pid, f"pid {pid} in {ns}") for pid, ns in sorted(stopped.pids.items())
            ],
            namespaces=stopped.namespaces,
            files=files,
        )


@dataclass
class Removed:
    """What :meth:`Lab.down` removed: process names, namespaces, work-directory entries."""

    processes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class _Stopped:
    pids: dict[int, str]  # pid -> the namespace it ran in
    namespaces: list[str]


def _text(addr: IPv4Address | IPv6Address | None) -> str:
    return str(addr) if addr is not None else ""


def prefixed_namespaces(prefix: str) -> list[str]:
    """The network namespaces whose name starts with *prefix*."""
    res = run("ip", "netns", "list", check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.split()]
    return [n for n in names if n.startswith(prefix)]


def alive(pid: int) -> bool:
    """True while *pid* runs: a zombie has exited (its parent, maybe init, reaps it later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _pids_in(namespaces: list[str]) -> dict[int, str]:
    """The processes whose network namespace is one of *namespaces* (what ``ip netns pids``
    finds, for all of them in one pass over /proc)."""
    ids = {}
    for name in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{name}")
            ids[st.st_dev, st.st_ino] = name
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # gone, or a zombie (its namespaces are released)
        if (st.st_dev, st.st_ino) in ids:
            found[int(entry)] = ids[st.st_dev, st.st_ino]
    return found


def remove_prefixed(prefix: str, wait: float = 5.0) -> _Stopped:
    """Kill what runs inside the namespaces named *prefix*…, then delete them.

    Only processes inside the lab's own namespaces are signalled, so this is safe after a
    crash, when the PID records may be gone, and a recorded PID reused by another process is
    never hit.  Every process is killed at once and counts as gone when it is a zombie:
    waiting for each in turn until its parent (init, for the orphans of an earlier ``up``)
    reaped it is what made ``down`` take seconds per process.
    """
    gone = prefixed_namespaces(prefix)
    pids = _pids_in(gone)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    for name in gone:
        run("ip", "netns", "del", name, check=False)
    return _Stopped(pids, gone)
