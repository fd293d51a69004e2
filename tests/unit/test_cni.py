"""pyflannel-cni without root: config parsing, the delegate's config, errors, VERSION, and the
ADD/DEL/CHECK state handling against a stand-in ``bridge`` plugin (a real executable that
records what it was given)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any

import pytest

import pyflannel
from pyflannel import cni
from pyflannel.cni import CniError, NetConf, SubnetEnv

SUBNET_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\n"
    "FLANNEL_SUBNET=10.244.3.1/24\n"
    "FLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=false\n"
)
PACKAGE_ROOT = str(Path(pyflannel.__file__).resolve().parent.parent)


def _conf(**extra: Any) -> bytes:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "pfnet", "type": "pyflannel-cni"}
    conf.update(extra)
    return json.dumps(conf).encode()


def _code(data: bytes) -> int:
    with pytest.raises(CniError) as info:
        cni.parse_netconf(data)
    return info.value.code


# --- parse_netconf ------------------------------------------------------------------------------


def test_defaults() -> None:
    """A minimal config gets flannel's subnet file and our data dir, and no overrides."""
    conf = cni.parse_netconf(_conf())
    assert conf == NetConf(
        cni_version="1.0.0",
        name="pfnet",
        subnet_file=Path("/run/flannel/subnet.env"),
        data_dir=Path("/var/lib/cni/pyflannel"),
        delegate={},
        ipam={},
    )


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_supported_versions(version: str) -> None:
    """The three versions the runtimes in use send are accepted."""
    assert cni.parse_netconf(_conf(cniVersion=version)).cni_version == version


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", cni.ERR_DECODE),
        (b"\xff\xfe", cni.ERR_DECODE),
        (b"[1, 2]", cni.ERR_DECODE),
        (_conf(cniVersion="0.2.0"), cni.ERR_INCOMPATIBLE_VERSION),
        (_conf(cniVersion="1.1.0"), cni.ERR_INCOMPATIBLE_VERSION),
        (json.dumps({"name": "pfnet"}).encode(), cni.ERR_INCOMPATIBLE_VERSION),
        (json.dumps({"cniVersion": "1.0.0"}).encode(), cni.ERR_INVALID_CONFIG),
        (_conf(name="../etc"), cni.ERR_INVALID_CONFIG),
        (_conf(type=5), cni.ERR_INVALID_CONFIG),
        (_conf(dataDir="relative/dir"), cni.ERR_INVALID_CONFIG),
        (_conf(subnetFile=""), cni.ERR_INVALID_CONFIG),
        (_conf(delegate=["bridge"]), cni.ERR_INVALID_CONFIG),
        (_conf(delegate={"type": "../../bin/sh"}), cni.ERR_INVALID_CONFIG),
        (_conf(delegate={"name": "other"}), cni.ERR_UNSUPPORTED_FIELD),
        (_conf(delegate={"ipam": {"type": "dhcp"}}), cni.ERR_UNSUPPORTED_FIELD),
        (_conf(ipam={"ranges": [[{"subnet": "10.0.0.0/24"}]]}), cni.ERR_UNSUPPORTED_FIELD),
        (_conf(ipam={"subnet": "10.0.0.0/24"}), cni.ERR_UNSUPPORTED_FIELD),
        (_conf(ipam={"routes": [{"gw": "10.0.0.1"}]}), cni.ERR_INVALID_CONFIG),
        (_conf(ipam={"routes": "10.0.0.0/8"}), cni.ERR_INVALID_CONFIG),
        (_conf(runtimeConfig=[]), cni.ERR_INVALID_CONFIG),
    ],
    ids=lambda v: v.decode(errors="replace")[:60] if isinstance(v, bytes) else str(v),
)
def test_bad_configs(data: bytes, code: int) -> None:
    """Each invalid config is refused with the spec's error code for its kind of fault."""
    assert _code(data) == code


def test_overrides_are_kept() -> None:
    """delegate, ipam, runtimeConfig and prevResult are carried as given."""
    conf = cni.parse_netconf(
        _conf(
            subnetFile="/tmp/s.env",
            dataDir="/tmp/d",
            delegate={"bridge": "br9"},
            ipam={"dataDir": "/tmp/ipam"},
            runtimeConfig={"portMappings": []},
            prevResult={"cniVersion": "1.0.0"},
        )
    )
    assert conf.subnet_file == Path("/tmp/s.env")
    assert conf.data_dir == Path("/tmp/d")
    assert conf.delegate == {"bridge": "br9"}
    assert conf.ipam == {"dataDir": "/tmp/ipam"}
    assert conf.runtime_config == {"portMappings": []}
    assert conf.prev_result == {"cniVersion": "1.0.0"}


# --- subnet.env ---------------------------------------------------------------------------------


def test_subnet_env_as_flanneld_writes_it() -> None:
    """The four lines pyflannel and flanneld write."""
    env = cni.parse_subnet_env(SUBNET_ENV)
    assert env == SubnetEnv(
        networks=(IPv4Network("10.244.0.0/16"),),
        subnet=IPv4Interface("10.244.3.1/24"),
        mtu=1450,
        ipmasq=False,
    )


def test_subnet_env_tolerates_extras() -> None:
    """Comments, blank lines, CRLF, IPv6 lines and several networks are fine; IPMASQ=true."""
    text = (
        "# written by hand\r\n\r\n"
        "FLANNEL_NETWORK=10.244.0.0/16,10.250.0.0/16\r\n"
        "FLANNEL_SUBNET=10.250.7.1/24\r\n"
        "FLANNEL_IPV6_NETWORK=fd00::/56\r\n"
        "FLANNEL_MTU=8950\r\n"
        "FLANNEL_IPMASQ=true\r\n"
    )
    env = cni.parse_subnet_env(text)
    assert env.networks == (IPv4Network("10.244.0.0/16"), IPv4Network("10.250.0.0/16"))
    assert env.subnet == IPv4Interface("10.250.7.1/24")
    assert (env.mtu, env.ipmasq) == (8950, True)


@pytest.mark.parametrize("value", ["TRUE", "1", "yes", ""])
def test_ipmasq_is_true_only_for_true(value: str) -> None:
    """As in flannel's plugin (Go: parts[1] == "true"), anything else is false."""
    text = SUBNET_ENV.replace("FLANNEL_IPMASQ=false", f"FLANNEL_IPMASQ={value}")
    assert cni.parse_subnet_env(text).ipmasq is False


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("FLANNEL_NETWORK=10.244.0.0/16\n", "FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"),
        (SUBNET_ENV.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=big"), "FLANNEL_MTU"),
        (SUBNET_ENV.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=20"), "FLANNEL_MTU"),
        (SUBNET_ENV.replace("10.244.3.1/24", "10.99.3.1/24"), "outside"),
        (SUBNET_ENV.replace("10.244.3.1/24", "10.244.3.1/33"), "invalid address"),
        (SUBNET_ENV.replace("10.244.0.0/16", ""), "FLANNEL_NETWORK is empty"),
    ],
)
def test_subnet_env_errors(text: str, fragment: str) -> None:
    """A subnet.env that is not flanneld's is a plugin error (100) that says what is wrong."""
    with pytest.raises(CniError) as info:
        cni.parse_subnet_env(text, "/run/flannel/subnet.env")
    assert info.value.code == cni.ERR_SUBNET_FILE
    assert fragment in str(info.value)


def test_missing_subnet_file_is_try_again_later(tmp_path: Path) -> None:
    """No file yet means the daemon has no lease yet: code 11, so the runtime retries."""
    with pytest.raises(CniError) as info:
        cni.read_subnet_env(tmp_path / "subnet.env")
    assert info.value.code == cni.ERR_TRY_AGAIN_LATER


def test_unreadable_subnet_file_is_io_error(tmp_path: Path) -> None:
    """A path that cannot be read (here a directory) is an I/O error (5)."""
    with pytest.raises(CniError) as info:
        cni.read_subnet_env(tmp_path)
    assert info.value.code == cni.ERR_IO


# --- delegate_config ----------------------------------------------------------------------------

ENV = cni.parse_subnet_env(SUBNET_ENV)


def test_default_delegate_config() -> None:
    """The whole rendered config for the common case, key by key."""
    conf = cni.parse_netconf(_conf())
    assert cni.delegate_config(conf, ENV) == {
        "cniVersion": "1.0.0",
        "name": "pfnet",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipMasq": True,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "dataDir": "/var/lib/cni/networks",
            "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]],
            "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.3.1"}],
        },
    }


def test_ipmasq_is_negated() -> None:
    """flanneld masquerading (FLANNEL_IPMASQ=true) means the bridge must not."""
    env = cni.parse_subnet_env(SUBNET_ENV.replace("IPMASQ=false", "IPMASQ=true"))
    assert cni.delegate_config(cni.parse_netconf(_conf()), env)["ipMasq"] is False


def test_delegate_overrides_win() -> None:
    """Keys in "delegate" replace the defaults and extra keys pass through."""
    conf = cni.parse_netconf(
        _conf(
            cniVersion="0.4.0",
            delegate={
                "bridge": "br-pf",
                "isGateway": False,
                "ipMasq": False,
                "mtu": 1400,
                "hairpinMode": True,
            },
        )
    )
    out = cni.delegate_config(conf, ENV)
    assert out["cniVersion"] == "0.4.0"
    assert (out["bridge"], out["isGateway"], out["ipMasq"], out["mtu"]) == (
        "br-pf",
        False,
        False,
        1400,
    )
    assert out["hairpinMode"] is True


def test_other_delegate_type_gets_no_bridge_keys() -> None:
    """bridge and isGateway are defaults of the bridge plugin only."""
    out = cni.delegate_config(cni.parse_netconf(_conf(delegate={"type": "ptp"})), ENV)
    assert out["type"] == "ptp"
    assert "bridge" not in out
    assert "isGateway" not in out
    assert out["ipMasq"] is True


def test_ipam_additions() -> None:
    """Our ipam object adds keys and routes; the flannel network route is appended once."""
    conf = cni.parse_netconf(
        _conf(
            ipam={
                "dataDir": "/tmp/ipam",
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.244.0.0/16"}],
            }
        )
    )
    ipam = cni.delegate_config(conf, ENV)["ipam"]
    assert ipam["dataDir"] == "/tmp/ipam"
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "10.244.0.0/16"}]


def test_non_host_local_ipam_gets_no_data_dir() -> None:
    """dataDir is host-local's key; another IPAM plugin is not given it."""
    conf = cni.parse_netconf(_conf(ipam={"type": "whereabouts"}))
    assert "dataDir" not in cni.delegate_config(conf, ENV)["ipam"]


def test_gateway_left_to_host_local_for_a_network_address() -> None:
    """A FLANNEL_SUBNET naming the network address gets no explicit gateway."""
    env = cni.parse_subnet_env(SUBNET_ENV.replace("10.244.3.1/24", "10.244.3.0/24"))
    ipam = cni.delegate_config(cni.parse_netconf(_conf()), env)["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.3.0/24"}]]
    assert ipam["routes"] == [{"dst": "10.244.0.0/16"}]


def test_runtime_config_is_passed_on() -> None:
    """Capabilities the runtime passes (runtimeConfig) reach the delegate."""
    conf = cni.parse_netconf(_conf(runtimeConfig={"bandwidth": {"ingressRate": 1}}))
    assert cni.delegate_config(conf, ENV)["runtimeConfig"] == {"bandwidth": {"ingressRate": 1}}


def test_rendering_does_not_alias_the_config() -> None:
    """Rendering twice gives equal, independent objects."""
    conf = cni.parse_netconf(_conf(delegate={"args": {"a": [1]}}, ipam={"routes": []}))
    first = cni.delegate_config(conf, ENV)
    first["args"]["a"].append(2)
    first["ipam"]["routes"].append({"dst": "x"})
    assert cni.delegate_config(conf, ENV)["args"] == {"a": [1]}
    assert conf.ipam == {"routes": []}


# --- environment, VERSION, error objects ---------------------------------------------------------

FULL_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee",
    "CNI_NETNS": "/var/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}


def test_parse_args() -> None:
    """CNI_PATH is split; the values are kept."""
    args = cni.parse_args(FULL_ENV)
    assert args == cni.CniArgs(
        "ADD", "c0ffee", "/var/run/netns/x", "eth0", ("/opt/cni/bin", "/usr/lib/cni")
    )


def test_del_needs_no_netns() -> None:
    """A DEL may come after the netns is gone."""
    env = {**FULL_ENV, "CNI_COMMAND": "DEL"}
    del env["CNI_NETNS"]
    assert cni.parse_args(env).netns == ""


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"CNI_COMMAND": "GC"}, "unknown CNI_COMMAND"),
        ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
        ({"CNI_NETNS": "", "CNI_PATH": ""}, "CNI_NETNS, CNI_PATH"),
        ({"CNI_CONTAINERID": "../../etc/passwd"}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": ".hidden"}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "abc\n"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "a-very-long-ifname"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
    ],
)
def test_bad_environment(change: Mapping[str, str], fragment: str) -> None:
    """Missing or unsafe CNI_* values are error 4 and name the variable."""
    with pytest.raises(CniError) as info:
        cni.parse_args({**FULL_ENV, **change})
    assert info.value.code == cni.ERR_INVALID_ENV
    assert fragment in str(info.value)


def test_version_info() -> None:
    """VERSION lists the accepted config versions, in the spec's format."""
    assert cni.version_info() == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"],
    }


def test_error_object() -> None:
    """The spec's error object; "details" only when there are some."""
    err = CniError(7, "bad", "worse")
    assert err.to_json() == {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "worse"}
    err.cni_version = "0.4.0"
    assert CniError(11, "later").to_json() == {"cniVersion": "1.0.0", "code": 11, "msg": "later"}
    assert err.to_json()["cniVersion"] == "0.4.0"


# --- the real process, with a stand-in delegate ---------------------------------------------------

FAKE_PLUGIN = textwrap.dedent('''\
    #!{python}
    """Stand-in CNI plugin: logs each call, then behaves as $FAKE_MODE says."""
    import json, os, sys
    data = sys.stdin.buffer.read()
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({{"command": os.environ["CNI_COMMAND"],
                              "containerid": os.environ.get("CNI_CONTAINERID"),
                              "config": data.decode()}}) + "\\n")
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode == "error":
        print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "busy",
                          "details": "try later"}}))
        sys.exit(1)
    if mode == "garbage":
        print("panic: runtime error")
        sys.exit(2)
    if mode == "notjson":
        print("ok")
        sys.exit(0)
    if os.environ["CNI_COMMAND"] == "ADD":
        conf = json.loads(data)
        print(json.dumps({{"cniVersion": conf["cniVersion"],
                          "ips": [{{"address": "10.244.3.2/24"}}]}}))
''')


@dataclass
class Plugin:
    """Runs ``python -m pyflannel.cni`` with a stand-in ``bridge`` on CNI_PATH."""

    tmp: Path
    bin_dir: Path
    log: Path
    data_dir: Path
    subnet_file: Path

    def config(self, **extra: Any) -> bytes:
        """Our config pointing at this test's subnet.env and data dir."""
        fields: dict[str, Any] = {
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir),
        }
        fields.update(extra)
        return _conf(**fields)

    def run(
        self,
        command: str,
        stdin: bytes | None = None,
        *,
        container: str = "c1",
        mode: str = "ok",
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """One invocation; returns the finished process (stdout and stderr as bytes)."""
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": PACKAGE_ROOT,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": "/var/run/netns/none",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{self.tmp / 'empty'}:{self.bin_dir}",
            "FAKE_LOG": str(self.log),
            "FAKE_MODE": mode,
        }
        full.update(env or {})
        full = {k: v for k, v in full.items() if v}
        return subprocess.run(
            [sys.executable, "-m", "pyflannel.cni"],
            input=self.config() if stdin is None else stdin,
            capture_output=True,
            env=full,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[dict[str, Any]]:
        """What the stand-in delegate was given, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def plugin(tmp_path: Path) -> Plugin:
    """A stand-in bridge plugin, a subnet.env and an empty data dir, all in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bridge"
    fake.write_text(FAKE_PLUGIN.format(python=sys.executable))
    fake.chmod(0o755)
    subnet_file = tmp_path / "subnet.env"
    subnet_file.write_text(SUBNET_ENV)
    return Plugin(tmp_path, bin_dir, tmp_path / "calls.log", tmp_path / "state", subnet_file)


def _error(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The one error object on stdout, after checking the exit status and no traceback."""
    assert proc.returncode != 0
    assert b"Traceback" not in proc.stderr
    obj = json.loads(proc.stdout)
    assert isinstance(obj, dict)
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}
    return obj


def test_version_command(plugin: Plugin) -> None:
    """VERSION prints the supported versions and exits 0 without reading stdin."""
    proc = plugin.run("VERSION", b"")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == cni.version_info()


def test_without_command_prints_about(plugin: Plugin) -> None:
    """Run by hand (no CNI_COMMAND): a description on stderr, nothing on stdout, exit 0."""
    proc = plugin.run("", b"")
    assert (proc.returncode, proc.stdout) == (0, b"")
    assert b"pyflannel-cni" in proc.stderr


def test_add_saves_state_and_prints_result(plugin: Plugin) -> None:
    """ADD hands the rendered config to the delegate, stores those exact bytes (0600), and
    prints the delegate's result."""
    proc = plugin.run("ADD")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "ips": [{"address": "10.244.3.2/24"}]}
    [call] = plugin.calls()
    assert call["command"] == "ADD"
    state = plugin.data_dir / "c1"
    assert state.read_text() == call["config"]
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(plugin.data_dir.stat().st_mode) == 0o700
    assert json.loads(call["config"])["ipam"]["ranges"] == [
        [{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]
    ]


def test_del_uses_stored_config_even_without_subnet_env(plugin: Plugin) -> None:
    """DEL replays ADD's config after subnet.env is gone, then forgets the container."""
    assert plugin.run("ADD").returncode == 0
    plugin.subnet_file.unlink()
    proc = plugin.run("DEL", plugin.config(subnetFile="/nonexistent"))
    assert (proc.returncode, proc.stdout) == (0, b"")
    add, delete = plugin.calls()
    assert delete["command"] == "DEL"
    assert delete["config"] == add["config"]
    assert not (plugin.data_dir / "c1").exists()


def test_del_is_idempotent(plugin: Plugin) -> None:
    """DEL of an unknown container, or twice, succeeds without calling the delegate."""
    assert plugin.run("DEL", container="never-added").returncode == 0
    assert plugin.run("ADD").returncode == 0
    assert plugin.run("DEL").returncode == 0
    assert plugin.run("DEL").returncode == 0
    assert [c["command"] for c in plugin.calls()] == ["ADD", "DEL"]


def test_del_of_unreadable_state_removes_it(plugin: Plugin) -> None:
    """A torn state file cannot be replayed: it is dropped and DEL succeeds."""
    plugin.data_dir.mkdir(mode=0o700)
    (plugin.data_dir / "c1").write_text("{trunc")
    proc = plugin.run("DEL")
    assert proc.returncode == 0
    assert b"unreadable" in proc.stderr
    assert not (plugin.data_dir / "c1").exists()
    assert plugin.calls() == []


def test_failed_add_keeps_state_for_the_del(plugin: Plugin) -> None:
    """The delegate's error object comes back with its code; the state stays for the DEL the
    runtime sends next, which then cleans up."""
    err = _error(plugin.run("ADD", mode="error"))
    assert (err["code"], err["details"]) == (11, "try later")
    assert "busy" in err["msg"]
    assert (plugin.data_dir / "c1").exists()
    assert plugin.run("DEL").returncode == 0
    assert [c["command"] for c in plugin.calls()] == ["ADD", "DEL"]


def test_failed_del_keeps_state(plugin: Plugin) -> None:
    """A DEL the delegate refused can be retried: the state is kept."""
    assert plugin.run("ADD").returncode == 0
    assert _error(plugin.run("DEL", mode="error"))["code"] == 11
    assert (plugin.data_dir / "c1").exists()


def test_delegate_without_error_object(plugin: Plugin) -> None:
    """A delegate that fails with plain text is error 101, its output in the details."""
    err = _error(plugin.run("ADD", mode="garbage"))
    assert err["code"] == cni.ERR_DELEGATE
    assert "panic" in err["details"]


def test_delegate_with_no_result(plugin: Plugin) -> None:
    """An ADD that "succeeds" without a result object is not passed off as a success."""
    assert _error(plugin.run("ADD", mode="notjson"))["code"] == cni.ERR_DELEGATE


def test_delegate_not_on_cni_path(plugin: Plugin) -> None:
    """A delegate type that CNI_PATH does not have is error 101 naming it."""
    err = _error(plugin.run("ADD", plugin.config(delegate={"type": "macvlan"})))
    assert err["code"] == cni.ERR_DELEGATE
    assert "macvlan" in err["msg"]


def test_check_replays_state_with_prev_result(plugin: Plugin) -> None:
    """CHECK sends the stored config plus the runtime's prevResult to the delegate."""
    assert plugin.run("ADD").returncode == 0
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.244.3.2/24"}]}
    assert plugin.run("CHECK", plugin.config(prevResult=prev)).returncode == 0
    check = json.loads(plugin.calls()[-1]["config"])
    assert check["prevResult"] == prev
    assert check["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]


def test_check_unknown_container(plugin: Plugin) -> None:
    """CHECK without state is "unknown container" (3), matching DEL's nothing-to-undo."""
    assert _error(plugin.run("CHECK"))["code"] == cni.ERR_UNKNOWN_CONTAINER


def test_check_needs_040(plugin: Plugin) -> None:
    """CHECK does not exist in 0.3.1; the error answers in the config's version."""
    err = _error(plugin.run("CHECK", plugin.config(cniVersion="0.3.1")))
    assert (err["code"], err["cniVersion"]) == (cni.ERR_INCOMPATIBLE_VERSION, "0.3.1")


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        (b"{bad json", cni.ERR_DECODE),
        (_conf(cniVersion="0.2.0"), cni.ERR_INCOMPATIBLE_VERSION),
        (_conf(subnetFile="/nonexistent/subnet.env"), cni.ERR_TRY_AGAIN_LATER),
    ],
    ids=["bad-json", "unsupported-version", "missing-subnet-file"],
)
def test_bad_input_gives_error_object(plugin: Plugin, stdin: bytes, code: int) -> None:
    """Bad input: one CNI error object on stdout, exit 1, no traceback, no delegate call."""
    err = _error(plugin.run("ADD", stdin))
    assert err["code"] == code
    assert plugin.calls() == []


def test_missing_environment_gives_error_object(plugin: Plugin) -> None:
    """A missing CNI_* variable is error 4, also from the real process."""
    err = _error(plugin.run("ADD", env={"CNI_NETNS": ""}))
    assert err["code"] == cni.ERR_INVALID_ENV


def test_unwritable_data_dir_is_io_error(plugin: Plugin) -> None:
    """A data dir that cannot be created is error 5, before the delegate runs."""
    blocker = plugin.tmp / "file"
    blocker.write_text("")
    err = _error(plugin.run("ADD", plugin.config(dataDir=str(blocker / "state"))))
    assert err["code"] == cni.ERR_IO
    assert plugin.calls() == []


# --- IPv6: dual-stack and IPv6-only subnet.env ------------------------------------------------

DUAL_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\n"
    "FLANNEL_SUBNET=10.244.3.1/24\n"
    "FLANNEL_IPV6_NETWORK=fd00:16::/48\n"
    "FLANNEL_IPV6_SUBNET=fd00:16:0:5::1/64\n"
    "FLANNEL_MTU=1430\n"
    "FLANNEL_IPMASQ=false\n"
)
ONLY6_ENV = (
    "FLANNEL_IPV6_NETWORK=fd00:16::/48\n"
    "FLANNEL_IPV6_SUBNET=fd00:16:0:5::1/64\n"
    "FLANNEL_MTU=1430\n"
    "FLANNEL_IPMASQ=true\n"
)


def test_dual_stack_subnet_env_gives_two_ranges() -> None:
    """host-local gets a range set per family (IPv4 first, as flannel's plugin orders them)
    and a route to each Network via that family's gateway: the container gets both."""
    env = cni.parse_subnet_env(DUAL_ENV)
    assert env.ipv6_subnet == IPv6Interface("fd00:16:0:5::1/64")
    assert env.ipv6_networks == (IPv6Network("fd00:16::/48"),)
    ipam = cni.delegate_config(cni.parse_netconf(_conf()), env)["ipam"]
    assert ipam["ranges"] == [
        [{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}],
        [{"subnet": "fd00:16:0:5::/64", "gateway": "fd00:16:0:5::1"}],
    ]
    assert ipam["routes"] == [
        {"dst": "10.244.0.0/16", "gw": "10.244.3.1"},
        {"dst": "fd00:16::/48", "gw": "fd00:16:0:5::1"},
    ]


def test_ipv6_only_subnet_env() -> None:
    """Without IPv4 lines (an IPv6-only network) only the IPv6 range and route."""
    env = cni.parse_subnet_env(ONLY6_ENV)
    assert (env.networks, env.subnet, env.mtu, env.ipmasq) == ((), None, 1430, True)
    out = cni.delegate_config(cni.parse_netconf(_conf()), env)
    assert out["ipMasq"] is False
    assert out["ipam"]["ranges"] == [[{"subnet": "fd00:16:0:5::/64", "gateway": "fd00:16:0:5::1"}]]
    assert out["ipam"]["routes"] == [{"dst": "fd00:16::/48", "gw": "fd00:16:0:5::1"}]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (ONLY6_ENV.replace("FLANNEL_IPV6_NETWORK=fd00:16::/48\n", ""), "FLANNEL_IPV6_NETWORK"),
        (ONLY6_ENV.replace("fd00:16:0:5::1/64", "fd00:99::1/64"), "outside FLANNEL_IPV6"),
        (ONLY6_ENV.replace("fd00:16:0:5::1/64", "fd00:16:0:5::1/129"), "invalid address"),
        ("FLANNEL_SUBNET=10.244.3.1/24\n" + ONLY6_ENV, "FLANNEL_NETWORK"),
    ],
)
def test_ipv6_subnet_env_errors(text: str, fragment: str) -> None:
    """A half-written IPv6 pair, an IPv6 subnet outside its network, or an IPv4 subnet
    without its network: a plugin error naming it."""
    with pytest.raises(CniError) as info:
        cni.parse_subnet_env(text)
    assert info.value.code == cni.ERR_SUBNET_FILE and fragment in str(info.value)
