"""``pyflannel-cni``: a CNI plugin that turns ``subnet.env`` into a ``bridge`` network.

This is the role of flannel's own CNI plugin (flannel-io/cni-plugin), written to the CNI 1.0.0
spec (network configs with ``cniVersion`` 0.3.1 and 0.4.0 are accepted too).  The plugin
owns no data path: on ADD it reads ``subnet.env`` (flannel-behaviour.md §5), renders a config
for a *delegate* plugin (the standard ``bridge`` with ``host-local`` IPAM unless overridden) and
runs that plugin, found on ``$CNI_PATH``, with the same environment.  The rendered config is::

    {"cniVersion": <ours>, "name": <ours>, "type": "bridge", "bridge": "cni0",
     "isGateway": true, "ipMasq": !FLANNEL_IPMASQ, "mtu": FLANNEL_MTU,
     "ipam": {"type": "host-local", "dataDir": "/var/lib/cni/networks",
              "ranges": [[{"subnet": <FLANNEL_SUBNET's network>, "gateway": <its address>}]],
              "routes": [<ipam.routes of ours>..., {"dst": FLANNEL_NETWORK, "gw": <gateway>}]}}

With IPv6 (``FLANNEL_IPV6_SUBNET`` and ``FLANNEL_IPV6_NETWORK`` in ``subnet.env``: a dual-stack
or IPv6-only network) ``ranges`` gets a second range set, ``[{"subnet": <FLANNEL_IPV6_SUBNET's
network>, "gateway": <its address>}]``, and ``routes`` the IPv6 networks via that gateway, as
flannel's plugin does (it names no gateways): the container gets an address of each family.
An IPv6-only ``subnet.env`` has no IPv4 lines, and then no IPv4 range.

Keys in our ``delegate`` object override the defaults (flannel's rule: ``name`` and ``ipam``
are ours to set, so the delegate may not carry them); our ``ipam`` object may add keys for the
IPAM plugin (``type``, ``dataDir``, extra ``routes``) but not the ranges, which come from
``subnet.env``.  ``ipMasq`` is the *negation* of FLANNEL_IPMASQ: when flanneld masquerades
(``--ip-masq``) the bridge must not do it a second time, and when it does not, the bridge is the
only thing that can.

Why a state file per container: ``subnet.env`` describes the node *now*; a DEL may arrive after
flanneld was stopped, restarted with another subnet, or the file was removed.  DEL (and CHECK)
must use exactly what ADD used, so ADD writes the rendered config to
``<dataDir>/<CNI_CONTAINERID>`` *before* running the delegate (the runtime answers a failed ADD
with a DEL, which needs the config to release a half-made veth or IP), and DEL removes it only
after the delegate succeeded.  The file holds the delegate's config verbatim, in the layout
flannel's plugin uses under ``/var/lib/cni/flannel``.  DEL without a state file has nothing to
undo and succeeds (spec: DEL is idempotent).

Errors are CNI error objects on stdout with a non-zero exit, never a traceback; a delegate's
own error object is passed on with its code.  Codes follow the spec's table (1 incompatible
version, 2 unsupported field, 3 unknown container, 4 bad environment, 5 I/O, 6 undecodable
input, 7 invalid config, 11 try again later: ``subnet.env`` does not exist yet); 100 and up are
ours (see ``ERR_*`` below).

Like :mod:`pyflannel.cli`, this is an entry point: it reads ``os.environ`` (the CNI protocol
passes its arguments there) only in :func:`main` and hands a mapping to everything else.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any, TypeVar

from pyflannel import __version__
from pyflannel.subnetenv import atomic_write, env_pairs

__all__ = [
    "SUPPORTED_VERSIONS",
    "CniArgs",
    "CniError",
    "NetConf",
    "SubnetEnv",
    "delegate_config",
    "main",
    "parse_args",
    "parse_netconf",
    "parse_subnet_env",
    "read_subnet_env",
    "run",
    "version_info",
]

#: The spec version this plugin implements; VERSION answers in it.
SPEC_VERSION = "1.0.0"
#: Config versions accepted.  The result is the delegate's, in the config's version, so any
#: version the delegate speaks would do (bridge speaks 0.1.0 to 1.0.0); CHECK needs 0.4.0.
SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0")
_CHECK_SINCE = (0, 4, 0)

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/pyflannel"
#: host-local's own default, written out so the stored config says where the leases are.  Kept
#: equal to what flannel's plugin gets, so a node switching plugins keeps its IP reservations.
DEFAULT_IPAM_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_BRIDGE = "cni0"
DEFAULT_DELEGATE = "bridge"
DEFAULT_IPAM = "host-local"

# Error codes, CNI spec 1.0.0 "Error" section.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
# Plugin-specific codes (the spec reserves 100 and up for plugins).
ERR_SUBNET_FILE = 100  # subnet.env exists but is not what flanneld writes
ERR_DELEGATE = 101  # the delegate plugin is missing, failed without an error object, or lied
ERR_INTERNAL = 999  # a bug; libcni's ErrInternal uses the same number

JSONObject = dict[str, Any]
_N = TypeVar("_N", IPv4Network, IPv6Network)
_I = TypeVar("_I", IPv4Interface, IPv6Interface)

# Names that end up as file names or argv[0]: libcni's container-ID rule, also used for
# network names and plugin types, so none of them can climb out of a directory.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")  # used with fullmatch: no "\n" slips by
_IFNAMSIZ = 16


class CniError(Exception):
    """A failure reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details
        #: The version of the config being served, once known; errors are answered in it.
        self.cni_version: str | None = None

    def to_json(self) -> JSONObject:
        """The error object the spec defines."""
        obj: JSONObject = {
            "cniVersion": self.cni_version or SPEC_VERSION,
            "code": self.code,
            "msg": self.msg,
        }
        if self.details:
            obj["details"] = self.details
        return obj


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CniArgs:
    """The ``CNI_*`` environment variables of one invocation, validated."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetConf:
    """Our network config (stdin), validated."""

    cni_version: str
    name: str
    subnet_file: Path
    data_dir: Path
    delegate: JSONObject
    ipam: JSONObject
    runtime_config: JSONObject | None = None
    prev_result: JSONObject | None = None


@dataclass(frozen=True)
class SubnetEnv:
    """What flanneld wrote to ``subnet.env``; each family's half is empty (``()``, None) when
    the network does not have that family."""

    networks: tuple[IPv4Network, ...]
    subnet: IPv4Interface | None  # FLANNEL_SUBNET: the bridge's address, the node's prefix
    mtu: int
    ipmasq: bool
    ipv6_networks: tuple[IPv6Network, ...] = ()
    ipv6_subnet: IPv6Interface | None = None  # FLANNEL_IPV6_SUBNET


_REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    # The netns may already be gone when a container is deleted.
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "VERSION": (),
}


def parse_args(environ: Mapping[str, str]) -> CniArgs:
    """Read and validate the ``CNI_*`` variables; raises :class:`CniError` (code 4)."""
    command = environ.get("CNI_COMMAND", "")
    if command not in _REQUIRED_ENV:
        raise CniError(
            ERR_INVALID_ENV,
            f"unknown CNI_COMMAND {command!r}",
            f"expected one of {', '.join(_REQUIRED_ENV)}",
        )
    missing = [v for v in _REQUIRED_ENV[command] if not environ.get(v)]
    if missing:
        raise CniError(
            ERR_INVALID_ENV,
            f"required environment variables missing: {', '.join(missing)}",
            f"CNI_COMMAND={command}",
        )
    if command == "VERSION":
        return CniArgs(command)
    container_id = environ["CNI_CONTAINERID"]
    if not _NAME_RE.fullmatch(container_id):
        # It becomes a file name under dataDir: no "/", no "..", nothing hidden.
        raise CniError(
            ERR_INVALID_ENV,
            "invalid characters in CNI_CONTAINERID",
            f"{container_id!r} must match {_NAME_RE.pattern}",
        )
    ifname = environ["CNI_IFNAME"]
    if (
        len(ifname) >= _IFNAMSIZ
        or ifname in (".", "..")
        or any(c in ifname for c in "/:")
        or any(c.isspace() for c in ifname)
    ):
        raise CniError(ERR_INVALID_ENV, "invalid CNI_IFNAME", repr(ifname))
    path = tuple(p for p in environ["CNI_PATH"].split(os.pathsep) if p)
    return CniArgs(command, container_id, environ.get("CNI_NETNS", ""), ifname, path)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def _object(conf: JSONObject, key: str) -> JSONObject | None:
    value = conf.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CniError(
            ERR_INVALID_CONFIG, f"{key!r} must be an object", f"got {type(value).__name__}"
        )
    return dict(value)


def _string(conf: JSONObject, key: str, default: str) -> str:
    value = conf.get(key, default)
    if not isinstance(value, str) or not value:
        raise CniError(ERR_INVALID_CONFIG, f"{key!r} must be a non-empty string", repr(value))
    return value


def parse_netconf(data: bytes) -> NetConf:
    """Parse and validate our network config; raises :class:`CniError`."""
    try:
        conf = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(ERR_DECODE, "failed to decode network config", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniError(
            ERR_DECODE, "network config must be a JSON object", f"got {type(conf).__name__}"
        )
    version = conf.get("cniVersion")
    if not isinstance(version, str):
        # libcni reads a missing version as 0.1.0, which we do not speak either.
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "missing or non-string cniVersion",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"unsupported cniVersion {version!r}",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = conf.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        # host-local keeps its leases in <dataDir>/<name>: same rule as a container ID.
        raise CniError(
            ERR_INVALID_CONFIG,
            "missing or invalid network name",
            f"{name!r} must match {_NAME_RE.pattern}",
        )
    if "type" in conf and not isinstance(conf["type"], str):
        raise CniError(ERR_INVALID_CONFIG, "'type' must be a string", repr(conf["type"]))
    subnet_file = _string(conf, "subnetFile", DEFAULT_SUBNET_FILE)
    data_dir = _string(conf, "dataDir", DEFAULT_DATA_DIR)
    if not os.path.isabs(data_dir):
        # A relative path would land wherever the runtime's working directory happens to be.
        raise CniError(ERR_INVALID_CONFIG, "'dataDir' must be an absolute path", data_dir)
    delegate = _object(conf, "delegate") or {}
    for key in ("name", "ipam"):
        if key in delegate:
            raise CniError(
                ERR_UNSUPPORTED_FIELD,
                f"'delegate' must not have {key!r}",
                f"pyflannel-cni sets the delegate's {key} itself",
            )
    if "type" in delegate:
        dtype = delegate["type"]
        if not isinstance(dtype, str) or not _NAME_RE.fullmatch(dtype):
            raise CniError(ERR_INVALID_CONFIG, "'delegate.type' must be a plugin name", repr(dtype))
    ipam = _object(conf, "ipam") or {}
    for key in ("ranges", "subnet", "rangeStart", "rangeEnd", "gateway"):
        if key in ipam:
            # Silently overwriting them (as flannel does) would hide a misconfiguration.
            raise CniError(
                ERR_UNSUPPORTED_FIELD,
                f"'ipam' must not have {key!r}",
                "the address range comes from subnet.env",
            )
    if "type" in ipam and not isinstance(ipam["type"], str):
        raise CniError(ERR_INVALID_CONFIG, "'ipam.type' must be a string", repr(ipam["type"]))
    routes = ipam.get("routes", [])
    if not isinstance(routes, list) or not all(
        isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes
    ):
        raise CniError(
            ERR_INVALID_CONFIG, "'ipam.routes' must be a list of {\"dst\": ...}", repr(routes)
        )
    return NetConf(
        cni_version=version,
        name=name,
        subnet_file=Path(subnet_file),
        data_dir=Path(data_dir),
        delegate=delegate,
        ipam=ipam,
        runtime_config=_object(conf, "runtimeConfig"),
        prev_result=_object(conf, "prevResult"),
    )


def parse_subnet_env(text: str, source: str = "subnet.env") -> SubnetEnv:
    """Parse ``subnet.env`` as flannel's plugin does; raises :class:`CniError` (code 100).

    Unknown keys are ignored.  ``FLANNEL_NETWORK`` (and ``FLANNEL_IPV6_NETWORK``) may list
    several networks, comma-separated.  The IPv6 pair counts when ``FLANNEL_IPV6_SUBNET`` is
    there (a network alone is not a lease); the IPv4 pair is needed unless it is, as in an
    IPv6-only network's file.  ``FLANNEL_IPMASQ`` is true only when it reads ``true``, as in Go.
    """
    values = dict(env_pairs(text))
    v6 = "FLANNEL_IPV6_SUBNET" in values
    v4 = not v6 or "FLANNEL_NETWORK" in values or "FLANNEL_SUBNET" in values
    wanted = ["FLANNEL_NETWORK", "FLANNEL_SUBNET"] if v4 else []
    wanted += ["FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"] if v6 else []
    missing = [k for k in (*wanted, "FLANNEL_MTU", "FLANNEL_IPMASQ") if k not in values]
    if missing:
        raise CniError(ERR_SUBNET_FILE, f"{source} is missing {', '.join(missing)}")
    networks, subnet = (
        _family(values, source, "FLANNEL_NETWORK", "FLANNEL_SUBNET", IPv4Network, IPv4Interface)
        if v4
        else ((), None)
    )
    networks6, subnet6 = (
        _family(
            values,
            source,
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            IPv6Network,
            IPv6Interface,
        )
        if v6
        else ((), None)
    )
    mtu_text = values["FLANNEL_MTU"]
    if not mtu_text.isdigit() or not 68 <= int(mtu_text) <= 65535:
        raise CniError(ERR_SUBNET_FILE, f"{source}: invalid FLANNEL_MTU", repr(mtu_text))
    return SubnetEnv(
        networks, subnet, int(mtu_text), values["FLANNEL_IPMASQ"] == "true", networks6, subnet6
    )


def _family(
    values: dict[str, str],
    source: str,
    network_key: str,
    subnet_key: str,
    network: type[_N],
    interface: type[_I],
) -> tuple[tuple[_N, ...], _I]:
    """One family's networks and subnet, checked: parsed, not empty, the subnet inside."""
    try:
        networks = tuple(
            network(n.strip(), strict=False) for n in values[network_key].split(",") if n.strip()
        )
        subnet = interface(values[subnet_key])
    except ValueError as exc:
        raise CniError(ERR_SUBNET_FILE, f"{source}: invalid address", str(exc)) from None
    if not networks:
        raise CniError(ERR_SUBNET_FILE, f"{source}: {network_key} is empty")
    if not any(subnet.network.subnet_of(n) for n in networks):  # type: ignore[arg-type]
        raise CniError(
            ERR_SUBNET_FILE,
            f"{source}: {subnet_key} is outside {network_key}",
            f"{subnet} not in {values[network_key]}",
        )
    return networks, subnet


def read_subnet_env(path: Path) -> SubnetEnv:
    """Read *path*; a missing file is "try again later" (flanneld has no lease yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"{path} does not exist",
            "pyflannel (or flanneld) writes it once it holds a subnet lease; "
            "is the daemon running?",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CniError(ERR_IO, f"cannot read {path}", str(exc)) from None
    return parse_subnet_env(text, str(path))


# --- the delegate's config ---------------------------------------------------------------------


def _gateway(subnet: IPv4Interface | IPv6Interface) -> IPv4Address | IPv6Address | None:
    # FLANNEL_SUBNET names the bridge's address (network + 1).  If it names the network or
    # broadcast address instead, leave the choice to host-local (it picks network + 1).
    net = subnet.network
    reserved = (net.network_address, net.broadcast_address)
    if net.prefixlen < net.max_prefixlen - 1 and subnet.ip in reserved:
        return None
    return subnet.ip


def delegate_config(conf: NetConf, env: SubnetEnv) -> JSONObject:
    """Render the delegate plugin's config from *conf* and *env* (pure)."""
    overrides: JSONObject = json.loads(json.dumps(conf.delegate))  # a deep copy
    out: JSONObject = {
        "cniVersion": conf.cni_version,
        "name": conf.name,
        "type": overrides.pop("type", DEFAULT_DELEGATE),
    }
    if out["type"] == "bridge":
        out["bridge"] = DEFAULT_BRIDGE
        out["isGateway"] = True
    # If flanneld is not masquerading, the bridge must (flannel's plugin does the same).
    out["ipMasq"] = not env.ipmasq
    out["mtu"] = env.mtu
    out.update(overrides)

    ipam: JSONObject = json.loads(json.dumps(conf.ipam))
    ipam.setdefault("type", DEFAULT_IPAM)
    if ipam["type"] == "host-local":
        ipam.setdefault("dataDir", DEFAULT_IPAM_DATA_DIR)
    ranges: list[list[JSONObject]] = []
    routes: list[JSONObject] = list(ipam.get("routes", []))
    families: list[tuple[IPv4Interface | IPv6Interface | None, tuple[object, ...]]] = [
        (env.subnet, env.networks),
        (env.ipv6_subnet, env.ipv6_networks),
    ]
    for subnet, networks in families:
        if subnet is None:
            continue
        subnet_range: JSONObject = {"subnet": str(subnet.network)}
        gateway = _gateway(subnet)
        if gateway is not None:
            subnet_range["gateway"] = str(gateway)
        ranges.append([subnet_range])
        for net in networks:
            if not any(r.get("dst") == str(net) for r in routes):
                route: JSONObject = {"dst": str(net)}
                if gateway is not None:
                    # The route goes via the gateway either way; naming it keeps CHECK working
                    # with plugins before v1.3.0, whose route check wrongly demands "no
                    # gateway" when the result's route has none (containernetworking/plugins
                    # #886; Debian 12 ships 1.1.1).
                    route["gw"] = str(gateway)
                routes.append(route)
    ipam["ranges"] = ranges
    ipam["routes"] = routes
    out["ipam"] = ipam
    if conf.runtime_config is not None:
        out["runtimeConfig"] = conf.runtime_config
    return out


def version_info() -> JSONObject:
    """The VERSION answer."""
    return {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- per-container state ------------------------------------------------------------------------


def _state_path(conf: NetConf, args: CniArgs) -> Path:
    return conf.data_dir / args.container_id


def _save_state(path: Path, data: bytes) -> None:
    # Atomic: a crash mid-write must not leave DEL a torn config.
    try:
        atomic_write(path, data, mode=0o600, dir_mode=0o700)
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot save the delegate config to {path}", str(exc)) from None


def _load_state(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot read the delegate config {path}", str(exc)) from None


# --- running the delegate ----------------------------------------------------------------------


def _find_plugin(plugin: str, path: Sequence[str]) -> Path:
    for directory in path:
        candidate = Path(directory) / plugin
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        ERR_DELEGATE, f"failed to find plugin {plugin!r} in CNI_PATH", os.pathsep.join(path)
    )


def _invoke(
    plugin: str, command: str, config: bytes, args: CniArgs, environ: Mapping[str, str]
) -> bytes:
    """Run *plugin* with *command*; return its stdout, or raise its error as ours."""
    exe = _find_plugin(plugin, args.path)
    env = dict(environ)
    env["CNI_COMMAND"] = command
    try:
        # stderr is inherited: the delegate's diagnostics reach the runtime's log unchanged.
        proc = subprocess.run(
            [str(exe)], input=config, stdout=subprocess.PIPE, env=env, check=False
        )
    except OSError as exc:
        raise CniError(ERR_DELEGATE, f"cannot run {exe}", str(exc)) from None
    if proc.returncode == 0:
        return proc.stdout
    text = proc.stdout.decode("utf-8", "replace").strip()
    try:
        err = json.loads(text)
    except ValueError:
        err = None
    if (
        isinstance(err, dict)
        and isinstance(err.get("code"), int)
        and isinstance(err.get("msg"), str)
    ):
        details = str(err.get("details") or "")
        raise CniError(err["code"], f"{plugin} {command}: {err['msg']}", details)
    raise CniError(
        ERR_DELEGATE, f"{plugin} {command} failed with exit status {proc.returncode}", text
    )


# --- commands ----------------------------------------------------------------------------------


def _cmd_add(args: CniArgs, conf: NetConf, environ: Mapping[str, str]) -> str:
    env = read_subnet_env(conf.subnet_file)
    rendered = delegate_config(conf, env)
    data = json.dumps(rendered).encode("utf-8")
    # Saved before the delegate runs: the runtime follows a failed ADD with a DEL, and that DEL
    # needs this config to release whatever the delegate managed to set up.
    _save_state(_state_path(conf, args), data)
    out = _invoke(rendered["type"], "ADD", data, args, environ)
    try:
        result = json.loads(out)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise CniError(
            ERR_DELEGATE,
            f"{rendered['type']} ADD returned no result object",
            out.decode("utf-8", "replace")[:500],
        )
    return out.decode("utf-8", "replace")


def _stored_config(data: bytes) -> JSONObject | None:
    try:
        stored = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    # The type picks the program to run: hold the file to the rule the config was held to.
    if not isinstance(stored, dict) or not isinstance(stored.get("type"), str):
        return None
    if not _NAME_RE.fullmatch(stored["type"]):
        return None
    return stored


def _cmd_del(args: CniArgs, conf: NetConf, environ: Mapping[str, str]) -> str:
    path = _state_path(conf, args)
    data = _load_state(path)
    if data is None:
        return ""  # never added, or already deleted: nothing to undo
    stored = _stored_config(data)
    if stored is None:
        # Nothing can be undone without the config; failing would only make the runtime retry
        # forever.  The veth goes with the netns, the IP stays reserved until cleaned by hand.
        print(f"pyflannel-cni: unreadable delegate config {path}; removed it", file=sys.stderr)
        path.unlink(missing_ok=True)
        return ""
    _invoke(stored["type"], "DEL", data, args, environ)
    path.unlink(missing_ok=True)
    return ""


def _cmd_check(args: CniArgs, conf: NetConf, environ: Mapping[str, str]) -> str:
    if _version_tuple(conf.cni_version) < _CHECK_SINCE:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"CHECK is not defined for cniVersion {conf.cni_version}",
            "CHECK needs cniVersion 0.4.0 or later",
        )
    path = _state_path(conf, args)
    data = _load_state(path)
    stored = _stored_config(data) if data is not None else None
    if stored is None:
        # Consistent with DEL: without state there is nothing of ours to check or to clean up.
        raise CniError(
            ERR_UNKNOWN_CONTAINER,
            f"no network of ours for container {args.container_id}",
            f"no valid state in {path}",
        )
    # The runtime's prevResult is in the version of today's config, so the check speaks it.
    stored["cniVersion"] = conf.cni_version
    if conf.prev_result is not None:
        stored["prevResult"] = conf.prev_result
    _invoke(stored["type"], "CHECK", json.dumps(stored).encode("utf-8"), args, environ)
    return ""


_COMMANDS = {"ADD": _cmd_add, "DEL": _cmd_del, "CHECK": _cmd_check}


def run(args: CniArgs, stdin: bytes, environ: Mapping[str, str]) -> str:
    """Carry out one invocation; returns what goes to stdout, raises :class:`CniError`."""
    if args.command == "VERSION":
        return json.dumps(version_info()) + "\n"
    conf = parse_netconf(stdin)
    try:
        return _COMMANDS[args.command](args, conf, environ)
    except CniError as exc:
        exc.cni_version = exc.cni_version or conf.cni_version
        raise


def _about() -> str:
    return (
        f"CNI pyflannel-cni plugin {__version__}\n"
        f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n"
    )


def main() -> int:
    """Entry point of ``pyflannel-cni`` (and ``python -m pyflannel.cni``)."""
    environ = os.environ
    if not environ.get("CNI_COMMAND"):
        # Run by hand: say what this is, as the reference plugins do (stdout is for runtimes).
        sys.stderr.write(_about())
        return 0
    try:
        args = parse_args(environ)
        # VERSION may come with a config on stdin; it is not needed, and not reading it means a
        # VERSION run from a terminal cannot hang.
        stdin = b"" if args.command == "VERSION" else sys.stdin.buffer.read()
        out = run(args, stdin, environ)
    except CniError as exc:
        sys.stdout.write(json.dumps(exc.to_json()) + "\n")
        return 1
    except Exception as exc:  # the protocol wants an error object, never a traceback
        err = CniError(
            ERR_INTERNAL, "internal error in pyflannel-cni", f"{type(exc).__name__}: {exc}"
        )
        sys.stdout.write(json.dumps(err.to_json()) + "\n")
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
