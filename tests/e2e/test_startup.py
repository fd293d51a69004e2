"""Start-up against a real etcd as a user meets it: a config that is missing, broken or
unsupported, etcd that is not there yet, no free subnet; clear logs, sane exit codes, no
tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pyflannel.lab.topo import Cell, Lab

from .conftest import _require, spawn_pyflannel

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def lab1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """etcd and one cell; no daemon, no config."""
    _require()
    lab = Lab(tmp_path_factory.mktemp("lab-start"), prefix=f"pfs{os.getpid() % 10000}-", cells=1)
    try:
        lab.build_underlay()
        lab.start_etcd()
        yield lab
    finally:
        lab.down()


_runs = iter(range(1000))


def start(
    lab: Lab,
    prefix: str,
    *extra: str,
    subnet_file: Path | None = None,
    wrapper: Sequence[str] = (),
) -> tuple[Cell, str]:
    """Start a daemon on cell-1 with its own etcd prefix and subnet file (or *subnet_file*),
    behind the *wrapper* command if any; return its log name."""
    cell = lab.cells[0]
    name = f"run{next(_runs)}"
    spawn_pyflannel(lab, cell, name, prefix, *extra, subnet_file=subnet_file, wrapper=wrapper)
    return cell, name


def log_of(lab: Lab, name: str) -> list[dict[str, object]]:
    """Parsed log lines of run *name*."""
    path = lab.workdir / name / "pyflannel.log"
    text = path.read_text() if path.exists() else ""
    assert "Traceback" not in text, text
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": "non-json", "line": line})
    return out


def events(lab: Lab, name: str, event: str) -> list[dict[str, object]]:
    """Log lines of run *name* with that event name."""
    return [e for e in log_of(lab, name) if e.get("event") == event]


def exit_code(lab: Lab, name: str, timeout: float = 15) -> int | None:
    """Wait for run *name* to exit by itself; its exit code (None if it did not)."""
    return lab.wait_exit(name, timeout)


def test_missing_config_is_waited_for_and_logged_once(lab1: Lab) -> None:
    """Without a config the daemon waits, says so once (not once per retry), and starts as soon
    as the config appears."""
    _, name = start(lab1, "/t1")
    Lab.wait(lambda: events(lab1, name, "network_config_waiting"), 10, "waiting log")
    time.sleep(3)  # several retries
    waiting = events(lab1, name, "network_config_waiting")
    assert len(waiting) == 1
    assert "/t1/config not found in the etcd v2 keyspace" in str(waiting[0]["problem"])
    lab1.put("/t1/config", '{"Network":"10.50.0.0/16","Backend":{"Type":"vxlan"}}')
    Lab.wait((lab1.workdir / name / "subnet.env").exists, 15, "subnet.env")
    assert events(lab1, name, "network_config_recovered")
    assert lab1.kill(name, signal.SIGTERM) == 0


def test_invalid_config_each_problem_logged_once(lab1: Lab) -> None:
    """A broken config is reported once per distinct problem, with flanneld's text, and the
    daemon proceeds when it is fixed."""
    lab1.put("/t2/config", "{not json")
    _, name = start(lab1, "/t2")
    Lab.wait(lambda: events(lab1, name, "network_config_waiting"), 10, "first problem")
    lab1.put("/t2/config", '{"Network":"10.51.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}')
    Lab.wait(lambda: len(events(lab1, name, "network_config_waiting")) == 2, 15, "second problem")
    time.sleep(2)
    problems = [str(e["problem"]) for e in events(lab1, name, "network_config_waiting")]
    assert len(problems) == 2
    assert "not valid JSON" in problems[0] and "SubnetLen must be less than /31" in problems[1]
    lab1.put("/t2/config", '{"Network":"10.51.0.0/16","Backend":{"Type":"vxlan"}}')
    Lab.wait((lab1.workdir / name / "subnet.env").exists, 15, "subnet.env")
    assert lab1.kill(name, signal.SIGTERM) == 0


def test_unsupported_backend_exits_1_with_a_clear_error(lab1: Lab) -> None:
    """A config without Backend (flanneld's udp) or with another type is a clear error, exit 1."""
    lab1.put("/t3/config", '{"Network":"10.52.0.0/16"}')
    _, name = start(lab1, "/t3")
    assert exit_code(lab1, name) == 1
    fatal = events(lab1, name, "fatal")
    assert fatal and 'backend type "udp" is not supported' in str(fatal[0]["error"])


def test_out_of_subnets_exits_1(lab1: Lab) -> None:
    """When every subnet is leased the daemon says `out of subnets` and exits 1."""
    lab1.put(
        "/t4/config",
        json.dumps(
            {
                "Network": "10.53.0.0/16",
                "SubnetMin": "10.53.5.0",
                "SubnetMax": "10.53.5.0",
                "Backend": {"Type": "vxlan"},
            }
        ),
    )
    lab1.put(
        "/t4/subnets/10.53.5.0-24",
        '{"PublicIP":"10.0.2.99","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:63:01"}}',
    )
    _, name = start(lab1, "/t4")
    assert exit_code(lab1, name) == 1
    assert "out of subnets" in str(events(lab1, name, "fatal")[0]["error"])


def test_etcd_down_at_start_is_waited_for(lab1: Lab) -> None:
    """With etcd not running the daemon waits with backoff, and starts once etcd is back; an
    unreachable first endpoint is skipped for the next one."""
    lab1.put("/t5/config", '{"Network":"10.54.0.0/16","Backend":{"Type":"vxlan"}}')
    lab1.kill("etcd", signal.SIGTERM)
    try:
        cell = lab1.cells[0]
        _, name = start(lab1, "/t5", "--etcd-endpoints=http://10.0.1.2:1,http://10.0.1.2:2379")
        Lab.wait(lambda: events(lab1, name, "network_config_waiting"), 10, "waiting")
        time.sleep(2)
        assert len(events(lab1, name, "network_config_waiting")) == 1
        assert not (lab1.workdir / name / "subnet.env").exists()
    finally:
        lab1.start_etcd(fresh=False)
    Lab.wait((lab1.workdir / name / "subnet.env").exists, 20, "subnet.env after etcd is back")
    assert cell.ns
    assert lab1.kill(name, signal.SIGTERM) == 0


def test_sigterm_while_waiting_exits_0(lab1: Lab) -> None:
    """SIGTERM during start-up (no config yet) ends the daemon with exit code 0."""
    _, name = start(lab1, "/t6")
    Lab.wait(lambda: events(lab1, name, "network_config_waiting"), 10, "waiting")
    assert lab1.kill(name, signal.SIGTERM) == 0
    assert Path(lab1.workdir / name / "subnet.env").exists() is False


def test_ready_is_notified_after_subnet_env_and_peers(lab1: Lab, tmp_path: Path) -> None:
    """With NOTIFY_SOCKET set, READY=1 arrives only once subnet.env exists and the peers that
    were already leased are programmed."""
    import socket

    lab1.put("/t7/config", '{"Network":"10.57.0.0/16","Backend":{"Type":"vxlan"}}')
    lab1.put(
        "/t7/subnets/10.57.200.0-24",
        '{"PublicIP":"10.0.2.57","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:39:01"}}',
    )
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(20)
        cell = lab1.cells[0]
        name = "notify"
        spawn_pyflannel(lab1, cell, name, "/t7", env={"NOTIFY_SOCKET": str(sock_path)})
        msg = sock.recv(4096).decode()
        while "READY=1" not in msg.split("\n"):  # STATUS= lines say what start-up does
            assert msg.startswith("STATUS="), msg
            msg = sock.recv(4096).decode()
        env_exists = (lab1.workdir / name / "subnet.env").exists()
        routes = subprocess.run(
            ["ip", "-n", cell.ns, "route", "show", "10.57.200.0/24"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "READY=1" in msg.split("\n")
        assert env_exists
        assert "via 10.57.200.0 dev flannel.1 onlink" in routes
        assert lab1.kill(name, signal.SIGTERM) == 0
        msg = sock.recv(4096).decode()
        while "STOPPING=1" not in msg.split("\n"):
            assert not msg.startswith("READY=1"), msg
            msg = sock.recv(4096).decode()


@pytest.mark.parametrize(("api", "other"), [("v2", "v3"), ("v3", "v2")])
def test_config_in_the_other_keyspace_is_named(lab1: Lab, api: str, other: str) -> None:
    """A config written only through the other etcd API is reported as such, with the flag to
    use, instead of a bare "not found"."""
    prefix = f"/t8{api}"
    lab1.etcdctl(
        "set" if other == "v2" else "put",
        f"{prefix}/config",
        '{"Network":"10.58.0.0/16","Backend":{"Type":"vxlan"}}',
        api=other,
    )
    _, name = start(lab1, prefix, f"--etcd-api={api}")
    Lab.wait(lambda: events(lab1, name, "network_config_waiting"), 10, "waiting")
    problem = str(events(lab1, name, "network_config_waiting")[0]["problem"])
    assert f"not found in the etcd {api} keyspace" in problem
    assert f"exists in the etcd {other} keyspace: run with --etcd-api={other}" in problem
    assert lab1.kill(name, signal.SIGTERM) == 0


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_reservation_is_claimed_and_stays_permanent(lab1: Lab, api: str) -> None:
    """A lease without TTL naming our public IP (a reservation) is the one we take, and it stays
    without TTL (flanneld v3 silently attaches a 24 h lease to it)."""
    prefix = f"/t9{api}"
    put = "set" if api == "v2" else "put"
    lab1.etcdctl(
        put, f"{prefix}/config", '{"Network":"10.59.0.0/16","Backend":{"Type":"vxlan"}}', api=api
    )
    key = f"{prefix}/subnets/10.59.42.0-24"
    lab1.etcdctl(put, key, '{"PublicIP":"10.0.1.3","BackendType":"vxlan"}', api=api)
    _, name = start(lab1, prefix, f"--etcd-api={api}")
    Lab.wait((lab1.workdir / name / "subnet.env").exists, 15, "subnet.env")
    assert "FLANNEL_SUBNET=10.59.42.1/24" in (lab1.workdir / name / "subnet.env").read_text()
    acquired = events(lab1, name, "lease_acquired")[0]
    assert acquired["reservation"] is True
    if api == "v2":
        assert "TTL: 0\n" in lab1.etcdctl("-o", "extended", "get", key, api="v2")
    else:
        kv = json.loads(lab1.etcdctl("get", key, "-w", "json", api="v3"))["kvs"][0]
        assert "lease" not in kv
        assert json.loads(lab1.etcdctl("get", key, "--print-value-only", api="v3"))["BackendData"][
            "VtepMAC"
        ]
    assert lab1.kill(name, signal.SIGTERM) == 0


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_lease_is_renewed_before_it_expires(lab1: Lab, api: str) -> None:
    """The lease is rewritten at expiry minus the margin with a fresh TTL (a 64 s lease and a
    1 min margin: renewed about 4 s after it was taken), and stays ours."""
    prefix = f"/t10{api}"
    put = "set" if api == "v2" else "put"
    lab1.etcdctl(
        put, f"{prefix}/config", '{"Network":"10.60.0.0/16","Backend":{"Type":"vxlan"}}', api=api
    )
    _, name = start(
        lab1, prefix, f"--etcd-api={api}", "--subnet-lease-ttl=64", "--subnet-lease-renew-margin=1"
    )
    Lab.wait(lambda: events(lab1, name, "lease_renewed"), 20, "a renewal")
    subnet = str(events(lab1, name, "lease_acquired")[0]["subnet"])
    key = f"{prefix}/subnets/{subnet.replace('/', '-')}"
    if api == "v2":
        out = lab1.etcdctl("-o", "extended", "get", key, api="v2")
        ttl = int(next(ln for ln in out.splitlines() if ln.startswith("TTL:")).split()[1])
    else:
        kv = json.loads(lab1.etcdctl("get", key, "-w", "json", api="v3"))["kvs"][0]
        out = lab1.etcdctl("lease", "timetolive", format(int(kv["lease"]), "x"), api="v3")
        ttl = int(out.split("remaining(")[1].split("s")[0])
    assert 58 <= ttl <= 64
    assert json.loads(lab1.etcdctl("get", key, api=api).splitlines()[-1])["PublicIP"] == "10.0.1.3"
    assert lab1.kill(name, signal.SIGTERM) == 0


def one_error(lab: Lab, name: str) -> str:
    """The one error-level line of run *name* (no traceback: :func:`log_of` checks), as text."""
    errors = [e for e in log_of(lab, name) if e.get("level") in ("error", "critical")]
    assert len(errors) == 1, errors
    return json.dumps(errors[0])


@pytest.mark.parametrize(
    ("network", "overlaps"),
    [("10.0.0.0/16", ("10.0.1.3",)), ("10.0.1.128/25", ("10.0.1.0/24", "10.0.1.3/24"))],
    ids=["holds-the-address", "inside-the-connected-route"],
)
def test_network_overlapping_the_underlay_exits_1(
    lab1: Lab, network: str, overlaps: tuple[str, ...]
) -> None:
    """A Network that holds the host's underlay address (10.0.1.3 on eth0), or lies inside its
    connected route 10.0.1.0/24, is refused at start: exit 1 and one line naming the Network
    and what it overlaps (the route, or the address with its prefix); no subnet.env, no lease."""
    prefix = f"/t11{network.split('/')[1]}"
    net = IPv4Network(network)
    sub_len = net.prefixlen + 4
    subnets = list(net.subnets(new_prefix=sub_len))
    lab1.put(
        f"{prefix}/config",
        json.dumps(
            {
                "Network": network,
                "SubnetLen": sub_len,
                # Away from the cells' own addresses, should the daemon take a lease anyway.
                "SubnetMin": str(subnets[-2].network_address),
                "SubnetMax": str(subnets[-2].network_address),
                "Backend": {"Type": "vxlan"},
            }
        ),
    )
    cell, name = start(lab1, prefix)
    try:
        assert exit_code(lab1, name, timeout=10) == 1
    finally:
        lab1.kill(name, signal.SIGKILL)
        # A daemon that went on regardless put its lease address on flannel.1: drop the device.
        subprocess.run(["ip", "-n", cell.ns, "link", "del", "flannel.1"], check=False)
    line = one_error(lab1, name)
    assert network in line and any(o in line for o in overlaps), line
    assert not (lab1.workdir / name / "subnet.env").exists()
    assert "subnets/" not in lab1.etcdctl("ls", "--recursive", prefix)


def unwritable_case(lab: Lab, how: str) -> tuple[Path, list[str], str]:
    """A subnet.env path that cannot be written, the command to run the daemon behind, and the
    reason (strerror) it must name."""
    base = lab.workdir / f"unwritable-{how}"
    if how == "under-a-file":
        base.write_text("a regular file\n")
        return base / "subnet.env", [], "Not a directory"
    # A read-only bind mount in a mount namespace of the daemon's own: gone when it exits.
    base.mkdir()
    wrapper = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
    wrapper += [f'mount --bind -o ro {base} {base} && exec "$@"', "sh"]
    return base / "run" / "subnet.env", wrapper, "Read-only file system"


@pytest.mark.parametrize("how", ["under-a-file", "read-only"])
def test_unwritable_subnet_env_exits_1_naming_the_path(lab1: Lab, how: str) -> None:
    """A subnet.env path that cannot be written (a regular file where a directory should be; a
    read-only file system) is one line naming the path and the reason, and exit 1; no traceback."""
    lab1.put("/t12/config", '{"Network":"10.62.0.0/16","Backend":{"Type":"vxlan"}}')
    path, wrapper, reason = unwritable_case(lab1, how)
    _, name = start(lab1, "/t12", subnet_file=path, wrapper=wrapper)
    try:
        assert exit_code(lab1, name) == 1
    finally:
        lab1.kill(name, signal.SIGKILL)
    line = one_error(lab1, name)
    assert str(path) in line or str(path.parent) in line, line
    assert reason.lower() in line.lower(), line


def test_periodic_reread_in_steps_keeps_serving(lab1: Lab) -> None:
    """Every 10th resync re-reads the kernel in steps on the main loop.  With 200 peers and a
    resync every 0.05 s: re-reads complete (the new mirror counts every entry), leases written
    meanwhile are programmed, and a route deleted by hand comes back."""
    prefix = "/t10"
    # Our own lease above the peers' subnets (10.60.1-220.0), which the test writes blindly.
    config = {"Network": "10.60.0.0/16", "SubnetMin": "10.60.230.0", "Backend": {"Type": "vxlan"}}
    lab1.put(f"{prefix}/config", json.dumps(config))

    def lease(i: int) -> tuple[str, bytes, bytes, int]:
        value = {
            "PublicIP": f"10.0.9.{i}",
            "PublicIPv6": None,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": f"02:00:00:00:3c:{i:02x}"},
        }
        key = f"{prefix}/subnets/10.60.{i}.0-24".encode()
        return ("put", key, json.dumps(value, separators=(",", ":")).encode(), 0)

    assert lab1.bulk([lease(i) for i in range(1, 201)])["ok"] == 200
    cell, name = start(lab1, prefix, "--resync-interval=0.05", "--log-level=debug")

    def rereads() -> list[dict[str, object]]:
        return events(lab1, name, "kernel_reread")

    Lab.wait(lambda: len(rereads()) >= 2, 20, "two re-reads")
    assert rereads()[0]["routes"] == rereads()[0]["neighs"] == rereads()[0]["fdb"] == 200
    assert lab1.bulk([lease(i) for i in range(201, 221)])["ok"] == 20  # during re-reads

    def routes() -> str:
        out = subprocess.run(
            ["ip", "-n", cell.ns, "route", "show", "dev", "flannel.1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out

    Lab.wait(lambda: "10.60.220.0/24" in routes(), 10, "leases written meanwhile")
    seen = len(rereads())
    Lab.wait(lambda: len(rereads()) > seen + 1, 20, "more re-reads")
    assert rereads()[-1]["routes"] == 220
    subprocess.run(["ip", "-n", cell.ns, "route", "del", "10.60.7.0/24"], check=True)
    Lab.wait(lambda: "10.60.7.0/24 via 10.60.7.0" in routes(), 10, "route back")
    assert lab1.kill(name, signal.SIGTERM) == 0
