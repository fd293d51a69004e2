"""Property tests: whatever a host writes to etcd, every decoder ends in a value or its own error.

Each property feeds random input (text, bytes, mutated valid records, deep nesting, huge
strings and numbers, shapes like etcd's JSON) to one decoder and checks three things: nothing
but the module's own error type escapes, reasons and messages stay short, and each call is fast
(hypothesis' ``deadline``).  Under ``CI=true`` the examples are derandomized, so a CI run is
reproducible.  The plain tests at the end are the exact cases from the issue.
"""

from __future__ import annotations

import base64
import json
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import etcd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflannel.config import (
    MAX_ERROR_CHARS,
    NetworkConfig,
    parse_network_config,
    read_network_config,
)
from pyflannel.errors import Compacted, ConfigError, RegistryUnavailable
from pyflannel.ipnet import SubnetKey, go_prints_dotted, parse_subnet_key
from pyflannel.lease import (
    MAX_LEASE_CHARS,
    EventKind,
    Events,
    LeaseAttrs,
    LeaseDecodeError,
    LeaseEvent,
    Snapshot,
    decode_attrs,
)
from pyflannel.registry import MAX_REASON_CHARS, MAX_SHOWN_KEY_CHARS, decode_record
from pyflannel.registry.etcd2 import node_event, parse_listing, watch_batch
from pyflannel.registry.etcd3 import WatchEnd, parse_range, parse_watch_line

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=150,
    deadline=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=150, deadline=200, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = "ci" if os.environ.get("CI") == "true" else "dev"
settings.load_profile(PROFILE)

# The longest error text a test accepts: the modules' own bounds plus a little wording.
MAX_TEXT = 400
DIR = "/coreos.com/network/subnets"
GOOD = LeaseAttrs(IPv4Address("192.0.2.1"), "vxlan", "02:00:00:00:00:01", 1).encode()
GOOD_DUAL = LeaseAttrs(
    IPv4Address("192.0.2.1"),
    "vxlan",
    "02:00:00:00:00:01",
    1,
    IPv6Address("fd00::1"),
    "02:00:00:00:00:02",
    1,
).encode()
CONFIG = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":1}}'
CONFIG_DUAL = (
    '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48",'
    '"Backend":{"Type":"vxlan","VNI":1}}'
)

# --- strategies ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
lease_keys = st.sampled_from(
    [
        "PublicIP",
        "publicip",
        "PublicIPv6",
        "publicipv6",
        "BackendType",
        "BackendData",
        "BackendV6Data",
        "VNI",
        "VtepMAC",
        "x",
    ]
)


@st.composite
def mutated_leases(draw: st.DrawFn) -> str:
    """A valid lease with one field replaced by anything, or its text cut or spliced."""
    obj: dict[str, Any] = json.loads(draw(st.sampled_from([GOOD, GOOD_DUAL])))
    how = draw(st.sampled_from(["field", "backend", "v6", "cut", "splice"]))
    if how == "field":
        obj[draw(lease_keys)] = draw(json_values)
    elif how == "backend":
        obj["BackendData"][draw(lease_keys)] = draw(json_values)
    elif how == "v6":
        obj["PublicIPv6"] = draw(
            st.ip_addresses().map(str)
            | st.text(max_size=45)
            | st.from_regex(r"\A[0-9a-fA-F:.%]{0,45}\Z")
        )
    text = json.dumps(obj)
    if how == "cut":
        return text[: draw(st.integers(0, len(text)))]
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(max_size=20)) + text[at:]
    return text


def deep(depth: int, opener: str = "[") -> str:
    """*depth* nested arrays or objects, closed or not."""
    closer = {"[": "]", "{": "}"}[opener]
    inner = '{"a":' if opener == "{" else "["
    return inner * depth + "1" + closer * depth


hostile_text = (
    st.text()
    | st.binary().map(lambda b: b.decode("latin-1"))
    | json_values.map(json.dumps)
    | mutated_leases()
    | st.integers(1, 200_000).map(deep)
    | st.integers(1, 200_000).map(lambda n: "[" * n)
    | st.integers(1, 50_000).map(lambda n: deep(n, "{"))
    | st.integers(1, 2_000_000).map(lambda n: json.dumps("x" * n))
    | st.integers(100, 8000).map(lambda n: '{"PublicIP":' + "9" * n + "}")
    | st.integers(100, 5000).map(lambda n: '{"BackendData":{"VNI":1' + "0" * n + "}}")
)
hostile_values: st.SearchStrategy[str | bytes] = (
    hostile_text
    | hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=300)
    | st.just(b"\xff\xfe{" + GOOD.encode())
)


def short(text: str, limit: int = MAX_TEXT) -> bool:
    """True when *text* is bounded (a reason, a message, a key in an event)."""
    return len(text) <= limit


def check_event(ev: LeaseEvent | None) -> None:
    """An event from any converter: INVALID with a short reason and key, or a real lease."""
    if ev is None:
        return
    assert isinstance(ev, LeaseEvent)
    assert short(ev.reason, MAX_REASON_CHARS + 20)
    if ev.kind is EventKind.INVALID:
        assert short(ev.key, MAX_SHOWN_KEY_CHARS + 20)
    if ev.kind is EventKind.ADDED:
        assert ev.lease is not None


# --- lease values, keys, config -----------------------------------------------------------------


@given(hostile_values)
def test_decode_attrs_ends_in_attrs_or_its_error(value: str | bytes) -> None:
    """decode_attrs returns LeaseAttrs or raises LeaseDecodeError with a short reason."""
    try:
        attrs = decode_attrs(value)
    except LeaseDecodeError as exc:
        assert short(str(exc))
    else:
        assert isinstance(attrs, LeaseAttrs)
        assert attrs.vni is None or 0 <= attrs.vni < 1 << 24


def dual_key_text(v4: IPv4Address, len4: int, v6: IPv6Address, len6: int, how: int) -> str:
    """A dual-stack or IPv6-only key with the IPv6 part spelled in one of several ways, most of
    them not flanneld's (exploded, upper case, a zone, a dotted tail)."""
    v6_text = [v6.compressed, v6.exploded, v6.compressed.upper(), f"{v6}%eth0", str(v6)][how % 5]
    v4_text = "0.0.0.0-0" if how >= 5 else f"{v4}-{len4}"
    return f"{DIR}/{v4_text}&{v6_text}-{len6}"


subnet_key_texts = (
    st.text()
    | st.binary().map(lambda b: b.decode("latin-1"))
    | st.integers(0, 100_000).map(lambda n: DIR + "/" + "1" * n)
    | st.from_regex(r"\A[\d.]{7,15}-\d{1,3}(&[0-9a-fA-F:.%]{0,50}-\d{0,4})?\s?\Z")
    | st.builds(lambda a, b: f"{DIR}/{a}-{b}", st.ip_addresses(v=4), st.integers(-5, 99))
    | st.builds(
        dual_key_text,
        st.ip_addresses(v=4),
        st.integers(0, 33),
        st.ip_addresses(v=6),
        st.integers(0, 130),
        st.integers(0, 9),
    )
)


@given(subnet_key_texts)
def test_parse_subnet_key_is_a_key_or_none(key: str) -> None:
    """parse_subnet_key returns a SubnetKey or None, never raises, on any key; a key it takes is
    spelled exactly as flanneld spells those subnets (no second key for the same subnets)."""
    out = parse_subnet_key(key)
    assert out is None or isinstance(out, SubnetKey)
    if out is not None:
        assert key.rpartition("/")[2] == out.name
        assert out.ipv4 is not None or out.ipv6 is not None
        assert out.ipv6 is None or not go_prints_dotted(out.ipv6.network_address)


@st.composite
def subnet_keys(draw: st.DrawFn) -> SubnetKey:
    """Any key flanneld could write: IPv4 only, dual stack or IPv6 only."""
    len4, len6 = draw(st.integers(1, 32)), draw(st.integers(0, 127))
    v4 = IPv4Network((int(draw(st.ip_addresses(v=4))) >> (32 - len4) << (32 - len4), len4))
    bits = int(draw(st.ip_addresses(v=6) | st.just(IPv6Address("fc00::"))))
    v6 = IPv6Network((bits >> (128 - len6) << (128 - len6), len6))
    shape = draw(st.sampled_from(["v4", "dual", "v6"]))
    if shape != "v4" and go_prints_dotted(v6.network_address):
        shape = "v4"  # no key can name such a subnet
    return SubnetKey(v4 if shape != "v6" else None, v6 if shape != "v4" else None)


@given(subnet_keys())
def test_subnet_key_round_trip(key: SubnetKey) -> None:
    """Every key flanneld could write parses back to the same subnets, under any prefix."""
    assert parse_subnet_key(key.name) == key
    assert parse_subnet_key(f"{DIR}/{key.name}") == key


@given(st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.lists(st.text())))
def test_parse_subnet_key_refuses_non_text(key: Any) -> None:
    """A key that is not a str (as a broken caller might pass) is simply not a subnet."""
    assert parse_subnet_key(key) is None


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """A valid config with one field replaced by anything."""
    obj: dict[str, Any] = json.loads(CONFIG)
    field = draw(
        st.sampled_from(["Network", "SubnetLen", "SubnetMin", "EnableIPv6", "Backend", "VNI"])
    )
    target = obj["Backend"] if field == "VNI" else obj
    target[field] = draw(json_values | st.text(min_size=300, max_size=3000))
    return json.dumps(obj)


@st.composite
def mutated_dual_configs(draw: st.DrawFn) -> str:
    """A valid dual-stack config with one IPv6 (or family) field replaced by anything."""
    obj: dict[str, Any] = json.loads(CONFIG_DUAL)
    field = draw(
        st.sampled_from(
            [
                "IPv6Network",
                "IPv6SubnetLen",
                "IPv6SubnetMin",
                "IPv6SubnetMax",
                "EnableIPv4",
                "EnableIPv6",
            ]
        )
    )
    obj[field] = draw(
        json_values
        | st.ip_addresses(v=6).map(str)
        | st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(v=6), st.integers(0, 130))
        | st.integers(0, 130)
    )
    if draw(st.booleans()):
        obj["EnableIPv4"] = False
    return json.dumps(obj)


@given(hostile_values | mutated_dual_configs())
def test_read_network_config_ends_in_config_or_its_error(text: str | bytes) -> None:
    """read_network_config (IPv6 parsed too) returns a NetworkConfig with a family, or raises
    ConfigError with a short text; an IPv6 range it accepts names only key-able subnets."""
    try:
        cfg = read_network_config(text)
    except ConfigError as exc:
        assert short(str(exc), MAX_ERROR_CHARS + 20)
    else:
        assert isinstance(cfg, NetworkConfig)
        assert cfg.ipv4 is not None or cfg.ipv6 is not None
        if cfg.ipv6 is not None:
            r = cfg.ipv6
            assert r.subnet_min <= r.subnet_max and r.subnet_len <= 126
            assert not go_prints_dotted(r.subnet_min) and not go_prints_dotted(r.subnet_max)


@given(hostile_values | mutated_configs())
def test_parse_network_config_ends_in_config_or_its_error(text: str | bytes) -> None:
    """parse_network_config returns a NetworkConfig or raises ConfigError with a short text."""
    try:
        cfg = parse_network_config(text)
    except ConfigError as exc:
        assert short(str(exc), MAX_ERROR_CHARS + 20)
    else:
        assert isinstance(cfg, NetworkConfig)


@given(st.text(max_size=3000) | st.none(), hostile_values | st.none())
def test_decode_record_is_always_an_event(key: str, value: str | bytes | None) -> None:
    """decode_record turns any key and value into an ADDED or a short INVALID event."""
    ev = decode_record(key, value, None, 1)
    check_event(ev)
    assert ev.kind in (EventKind.ADDED, EventKind.INVALID)


# --- etcd v3 ------------------------------------------------------------------------------------


def b64(text: str | bytes) -> str:
    """Base64 as the gateway spells bytes fields."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


int64_fields = (
    st.integers(-(2**70), 2**70)
    | st.integers(0, 10**6).map(str)
    | json_scalars
    | st.just("12abc")
    | st.just("9" * 30)
)
b64_fields = (
    st.builds(b64, st.just(f"{DIR}/10.5.1.0-24"))
    | st.builds(b64, st.text(max_size=30))
    | st.builds(b64, hostile_values)
    | json_scalars
    | st.just("!!not base64!!")
)


@st.composite
def kvs(draw: st.DrawFn) -> Any:
    """A KeyValue as the gateway sends it, each field possibly missing or ill-typed."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    kv: dict[str, Any] = {}
    for name, strat in (
        ("key", b64_fields),
        ("value", b64_fields | st.builds(b64, st.just(GOOD))),
        ("lease", int64_fields),
        ("mod_revision", int64_fields),
        ("create_revision", int64_fields),
    ):
        if draw(st.booleans()):
            kv[name] = draw(strat)
    return kv


headers = st.fixed_dictionaries({"revision": int64_fields}) | json_values


def lookup(lease_id: int) -> float | None:
    """The injected expiration lookup: no server, every lease expires in a day."""
    assert isinstance(lease_id, int)
    return None if lease_id == 0 else 86400.0


@given(
    st.fixed_dictionaries({"header": headers}, optional={"kvs": st.lists(kvs(), max_size=5)})
    | json_values
)
def test_parse_range_snapshot_or_unavailable(res: Any) -> None:
    """A Range response is a Snapshot (bad kvs INVALID) or RegistryUnavailable, nothing else."""
    try:
        snap = parse_range(res, lookup)
    except RegistryUnavailable as exc:
        assert short(str(exc))
    else:
        assert isinstance(snap, Snapshot)
        for ev in snap.invalid:
            check_event(ev)


@st.composite
def watch_lines(draw: st.DrawFn) -> bytes:
    """A watch stream line shaped like etcd's (events, progress, cancel, error) or raw bytes."""
    kind = draw(st.sampled_from(["events", "progress", "cancel", "error", "raw", "json"]))
    result: dict[str, Any] = {"header": draw(headers)}
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "events":
        events = [
            {"type": draw(st.sampled_from(["PUT", "DELETE", None, 7])), "kv": draw(kvs())}
            for _ in range(draw(st.integers(0, 4)))
        ]
        result["events"] = draw(st.just(events) | json_values)
    elif kind == "cancel":
        result |= {"canceled": True, "compact_revision": draw(int64_fields)}
        result["cancel_reason"] = draw(json_values)
    elif kind == "error":
        return json.dumps({"error": draw(json_values)}).encode()
    else:
        result["created"] = draw(st.booleans())
    return json.dumps({"result": result}).encode()


@given(watch_lines(), st.integers(0, 2**40))
def test_parse_watch_line_outcomes(line: bytes, cursor: int) -> None:
    """A watch line is a batch, None, a WatchEnd, Compacted or RegistryUnavailable; a batch's
    cursor never goes back."""
    try:
        out = parse_watch_line(line, cursor, lookup)
    except Compacted as exc:
        assert exc.revision > 0
    except RegistryUnavailable as exc:
        assert short(str(exc))
    else:
        if isinstance(out, Events):
            assert out.revision >= cursor
            for ev in out.events:
                check_event(ev)
        elif isinstance(out, WatchEnd):
            assert short(out.text)
        else:
            assert out is None


def test_watch_cursor_moves_past_a_bad_record() -> None:
    """A PUT whose value is garbage is INVALID and the cursor still advances to its revision."""
    kv = {"key": b64(f"{DIR}/10.5.1.0-24"), "value": b64("[" * 200_000), "mod_revision": "42"}
    line = json.dumps({"result": {"header": {"revision": "42"}, "events": [{"kv": kv}]}})
    out = parse_watch_line(line.encode(), 41, lookup)
    assert isinstance(out, Events)
    assert out.revision == 42
    assert [ev.kind for ev in out.events] == [EventKind.INVALID]


# --- etcd v2 ------------------------------------------------------------------------------------

v2_keys = (
    st.builds(lambda n: f"{DIR}/{n}", st.sampled_from(["10.5.1.0-24", "10.5.1.0-24\n", "x"]))
    | st.just(f"{DIR}/a/10.5.1.0-24")
    | st.just("/elsewhere/10.5.1.0-24")
    | st.just(DIR)
    | st.just(DIR + "/")
    | json_scalars
)


@st.composite
def v2_nodes(draw: st.DrawFn) -> dict[str, Any]:
    """A node dict as the v2 API sends it, each field possibly missing or odd."""
    node: dict[str, Any] = {}
    for name, strat in (
        ("key", v2_keys),
        ("value", st.just(GOOD) | hostile_text | json_values),
        ("ttl", st.integers(-10, 10**400) | json_scalars),
        ("modifiedIndex", st.integers(-5, 2**70) | json_scalars),
        ("dir", st.booleans() | json_scalars),
    ):
        if draw(st.booleans()):
            node[name] = draw(strat)
    return node


@given(v2_nodes())
def test_v2_node_event_never_raises(node: dict[str, Any]) -> None:
    """A v2 node (raw or as python-etcd's result) is a record, INVALID, or skipped (a dir)."""
    check_event(node_event(node, DIR))
    check_event(node_event(etcd.EtcdResult(action="get", node=node), DIR))


@given(
    st.lists(v2_nodes() | json_values, max_size=5),
    st.integers(0, 2**40) | json_scalars,
)
def test_v2_parse_listing(children: list[Any], index: Any) -> None:
    """A one-level listing is a Snapshot or RegistryUnavailable (no index), never another error."""
    res = etcd.EtcdResult(action="get", node={"key": DIR, "dir": True, "nodes": children})
    res.etcd_index = index
    try:
        snap = parse_listing(res, DIR)
    except RegistryUnavailable as exc:
        assert short(str(exc))
    else:
        for ev in snap.invalid:
            check_event(ev)


@given(
    v2_nodes(),
    st.sampled_from(["set", "create", "update", "delete", "expire", "compareAndSwap", None]),
    st.integers(0, 2**40),
)
def test_v2_watch_batch(node: dict[str, Any], action: str | None, cursor: int) -> None:
    """A watch result is a batch whose cursor moves forward, or Compacted for the directory."""
    res = etcd.EtcdResult(action=action, node=node)
    try:
        batch = watch_batch(res, DIR, cursor)
    except Compacted:
        assert isinstance(node.get("key"), str)
        assert node["key"].rstrip("/") == DIR
    else:
        assert batch.revision > cursor
        for ev in batch.events:
            check_event(ev)


# --- the exact cases of the issue ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["[" * 200_000 + "]" * 200_000, "[" * 200_000])
def test_issue_deep_nesting_is_a_decode_error(value: str) -> None:
    """A 200 kB ``[[[…]]]`` value is a LeaseDecodeError, not a RecursionError."""
    with pytest.raises(LeaseDecodeError):
        decode_attrs(value)
    with pytest.raises(LeaseDecodeError):
        decode_attrs(value.encode())


def test_issue_deep_nesting_within_the_size_cap() -> None:
    """Nesting deeper than the limit but small enough to pass the size cap is refused too."""
    with pytest.raises(LeaseDecodeError, match="deeper"):
        decode_attrs("[" * 100 + "]" * 100)


def test_issue_deep_record_is_invalid_with_a_short_reason() -> None:
    """The issue's record decodes to an INVALID event whose reason is short."""
    ev = decode_record(f"{DIR}/10.5.1.0-24", "[" * 200_000, None, 7)
    assert ev.kind is EventKind.INVALID
    assert ev.subnet == SubnetKey(IPv4Network("10.5.1.0/24"))
    assert len(ev.reason) <= MAX_REASON_CHARS


def test_issue_huge_value_reason_does_not_echo_it() -> None:
    """A 500 kB string value gives a reason that quotes none of it."""
    value = json.dumps({"PublicIP": "x" * 500_000})
    with pytest.raises(LeaseDecodeError) as info:
        decode_attrs(value)
    assert len(str(info.value)) < 100
    assert "xxxxxxxxxx" not in str(info.value)
    ev = decode_record(f"{DIR}/10.5.1.0-24", value, None, 7)
    assert len(ev.reason) < 100


def test_long_bad_ip_within_the_cap_is_quoted_short() -> None:
    """A bad PublicIP under the size cap is quoted by a prefix of at most 48 characters."""
    value = json.dumps({"PublicIP": "y" * (MAX_LEASE_CHARS - 20)})
    with pytest.raises(LeaseDecodeError) as info:
        decode_attrs(value)
    assert "y" * 49 not in str(info.value)
    assert len(str(info.value)) < 120


def test_vni_above_24_bits_refused() -> None:
    """A VNI above 2^24-1 (and a huge one) is not a lease."""
    for vni in (1 << 24, 10**4000):
        with pytest.raises(LeaseDecodeError, match="VNI"):
            decode_attrs(json.dumps({"PublicIP": "192.0.2.1", "BackendData": {"VNI": vni}}))


def test_key_with_trailing_newline_is_not_a_subnet() -> None:
    """``10.5.1.0-24\\n`` does not alias the real key (its deletion must not remove a peer)."""
    assert parse_subnet_key(f"{DIR}/10.5.1.0-24\n") is None
    assert parse_subnet_key(f"{DIR}/10.5.1.0-24") == SubnetKey(IPv4Network("10.5.1.0/24"))
    dual = f"{DIR}/10.5.1.0-24&fc00:0:0:1::-64"
    assert parse_subnet_key(dual + "\n") is None
    assert parse_subnet_key(dual) == SubnetKey(
        IPv4Network("10.5.1.0/24"), IPv6Network("fc00:0:0:1::/64")
    )


def test_v2_nested_key_does_not_alias_a_subnet() -> None:
    """A delete of ``subnets/a/10.5.1.0-24`` removes nothing; a set of it is INVALID."""
    key = f"{DIR}/a/10.5.1.0-24"
    gone = watch_batch(
        etcd.EtcdResult(action="delete", node={"key": key, "modifiedIndex": 9}), DIR, 3
    )
    assert gone.events == () and gone.revision == 9
    put = watch_batch(
        etcd.EtcdResult(action="set", node={"key": key, "value": GOOD, "modifiedIndex": 10}), DIR, 9
    )
    assert [ev.kind for ev in put.events] == [EventKind.INVALID]


def test_deep_config_is_a_config_error() -> None:
    """A deeply nested network config is a ConfigError with a short text."""
    with pytest.raises(ConfigError) as info:
        parse_network_config('{"Network":' + "[" * 200_000)
    assert len(str(info.value)) <= MAX_ERROR_CHARS
