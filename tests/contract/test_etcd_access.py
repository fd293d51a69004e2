"""Reaching etcd: TLS, v3 authentication, endpoint failover, the factory, and v3 wire details.

All against real etcd processes on loopback.  The rule under test: a TLS or credentials problem
is RegistryRefused at once, with one message naming the endpoint (the daemon exits on it); an
unreachable endpoint is skipped for the next one, and only all of them down is
RegistryUnavailable (the daemon retries).
"""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
import requests

from pyflannel.errors import AlreadyExists, RegistryRefused, RegistryUnavailable
from pyflannel.ipnet import SubnetKey
from pyflannel.lease import EventKind, LeaseAttrs
from pyflannel.registry import EtcdOptions, Registry, open_registry
from pyflannel.registry.etcd2 import EtcdV2Registry
from pyflannel.registry.etcd3 import EtcdV3Registry
from pyflannel.testing import watch_until

PREFIX = "/coreos.com/network"
S1, S2 = SubnetKey(IPv4Network("10.5.1.0/24")), SubnetKey(IPv4Network("10.5.2.0/24"))
A1 = LeaseAttrs(IPv4Address("192.0.2.1"), "vxlan", "aa:bb:cc:00:00:01", 1)
A2 = LeaseAttrs(IPv4Address("192.0.2.2"), "vxlan", "aa:bb:cc:00:00:02", 1)
APIS = ["v2", "v3"]


def exercise(reg: Registry) -> None:
    """Unary calls and a watch both work: what a daemon does first."""
    start = reg.list_subnets().revision
    reg.create_subnet(S1, A1, 60)
    assert reg.get_subnet(S1) is not None
    events, _ = watch_until(reg, start, lambda evs: len(evs) >= 1)
    assert [(e.kind, e.subnet) for e in events] == [(EventKind.ADDED, S1)]


def v3_post(server: Any, path: str, body: dict[str, Any], token: str = "") -> Any:
    """A raw v3 gateway call, outside the registry under test."""
    headers = {"Authorization": token} if token else {}
    r = requests.post(
        f"{server.url}/v3{path}", json=body, headers=headers, timeout=5, **server.requests_kwargs()
    )
    r.raise_for_status()
    return r.json()


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_tls_with_client_certificate_works(api: str, tls_etcd: Any, tls_files: Any) -> None:
    """The right CA and client certificate: unary calls and the watch both go over TLS, and an
    etcd restart is an outage (retry), not a TLS refusal (exit)."""
    opts = EtcdOptions(
        endpoints=(tls_etcd.url,),
        cafile=tls_files.ca,
        certfile=tls_files.client_cert,
        keyfile=tls_files.client_key,
    )
    reg = open_registry(api, opts)
    try:
        exercise(reg)
        tls_etcd.stop()
        with pytest.raises(RegistryUnavailable):
            reg.list_subnets()
        tls_etcd.start()
        assert [lease.key for lease in reg.list_subnets().leases] == [S1]
    finally:
        reg.close()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("client_cert", [False, True], ids=["no-client-cert", "untrusted-server"])
def test_tls_failure_is_refused_at_once_naming_the_endpoint(
    api: str, client_cert: bool, tls_etcd: Any, tls_files: Any
) -> None:
    """No client certificate, or a server certificate we cannot verify: RegistryRefused with one
    clear line naming the endpoint, for unary calls and for the watch; never "unavailable"."""
    if client_cert:  # a client cert, but no CA: the server's certificate is not trusted
        opts = EtcdOptions(
            endpoints=(tls_etcd.url,), certfile=tls_files.client_cert, keyfile=tls_files.client_key
        )
    else:
        opts = EtcdOptions(endpoints=(tls_etcd.url,), cafile=tls_files.ca)
    reg = open_registry(api, opts)
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistryRefused) as info:
            reg.get_network_config()
        msg = str(info.value)
        assert tls_etcd.url in msg
        assert "TLS" in msg
        assert "--etcd-cafile" in msg
        assert ("CERTIFICATE_VERIFY_FAILED" if client_cert else "BAD_CERTIFICATE") in msg
        assert "\n" not in msg
        with pytest.raises(RegistryRefused, match="TLS"):
            next(iter(reg.watch_subnets(0, threading.Event())))
        assert time.monotonic() - t0 < 3, "a TLS refusal must not be retried"
    finally:
        reg.close()


# --- v3 authentication -------------------------------------------------------------------------


def wait_tokens_expired(server: Any, already: int) -> int:
    """Wait until etcd has logged more than *already* expired tokens; return the new count."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        count = server.log_path.read_text().count("deleted a simple token")
        if count > already:
            return count
        time.sleep(0.1)
    raise AssertionError("etcd never expired the token")


def test_v3_auth_right_password_works_and_expired_tokens_are_renewed(auth_etcd: Any) -> None:
    """A least-privilege user works for every call; expired tokens are renewed silently, for
    unary calls and for (re-)opening the watch."""
    reg = EtcdV3Registry(
        EtcdOptions(endpoints=(auth_etcd.url,), username="flannel", password="flannelpw"),
        watch_poll=0.5,
    )
    try:
        token = v3_post(auth_etcd, "/auth/authenticate", {"name": "root", "password": "rootpw"})[
            "token"
        ]
        v3_post(
            auth_etcd,
            "/kv/put",
            {"key": "L2NvcmVvcy5jb20vbmV0d29yay9jb25maWc=", "value": "e30="},
            token,
        )  # <prefix>/config = {}
        assert reg.get_network_config() == "{}"
        exercise(reg)
        with pytest.raises(AlreadyExists):
            reg.create_subnet(S1, A2, 60)
        start = reg.list_subnets().revision
        expired = wait_tokens_expired(auth_etcd, 0)
        reg.update_subnet(S1, A1, 0)  # a unary call on an expired token
        wait_tokens_expired(auth_etcd, expired)
        reg.delete_subnet(S1)  # ... and again, so the watch below opens on an expired token
        wait_tokens_expired(auth_etcd, expired + 1)
        events, _ = watch_until(reg, start, lambda evs: len(evs) >= 2)
        assert [e.kind for e in events] == [EventKind.ADDED, EventKind.REMOVED]
    finally:
        reg.close()


@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [
        ("flannel", "wrong", "refused the credentials of user 'flannel'"),
        ("ghost", "x", "refused the credentials of user 'ghost'"),
        ("", "", "requires authentication"),
        ("nobody", "nobodypw", "denied user 'nobody' access"),
    ],
    ids=["wrong-password", "unknown-user", "no-credentials", "no-permission"],
)
def test_v3_auth_failure_is_refused_naming_the_endpoint(
    auth_etcd: Any, username: str, password: str, expected: str
) -> None:
    """Bad, missing or powerless credentials: RegistryRefused, for unary calls and the watch."""
    reg = EtcdV3Registry(
        EtcdOptions(endpoints=(auth_etcd.url,), username=username, password=password)
    )
    try:
        with pytest.raises(RegistryRefused) as info:
            reg.list_subnets()
        assert expected in str(info.value)
        assert auth_etcd.url in str(info.value)
        with pytest.raises(RegistryRefused, match=expected):
            next(iter(reg.watch_subnets(0, threading.Event())))
    finally:
        reg.close()


def test_v3_credentials_are_optional_when_auth_is_off(etcd: Any) -> None:
    """Like etcd's Go client: a username for a server without auth is not an error."""
    reg = EtcdV3Registry(EtcdOptions(endpoints=(etcd.url,), username="flannel", password="x"))
    try:
        exercise(reg)
    finally:
        reg.close()


# --- several endpoints -------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
def test_a_dead_first_endpoint_is_skipped(api: str, etcd: Any, dead_endpoint: str) -> None:
    """With the first endpoint down, calls and the watch use the next one, and stay there."""
    reg = open_registry(api, EtcdOptions(endpoints=(dead_endpoint, etcd.url)))
    try:
        exercise(reg)
        assert reg.endpoint == etcd.url
    finally:
        reg.close()


@pytest.mark.parametrize("api", APIS)
def test_all_endpoints_down_is_unavailable_naming_each(api: str, dead_endpoint: str) -> None:
    """Nothing answers: RegistryUnavailable (the daemon retries), listing what was tried."""
    other = dead_endpoint.rsplit(":", 1)[0] + ":1"
    reg = open_registry(api, EtcdOptions(endpoints=(dead_endpoint, other)))
    try:
        for call in (reg.list_subnets, lambda: next(iter(reg.watch_subnets(0, threading.Event())))):
            with pytest.raises(RegistryUnavailable) as info:
                call()
            assert dead_endpoint in str(info.value)
            assert other in str(info.value)
    finally:
        reg.close()


def test_open_registry_picks_the_api() -> None:
    """The factory maps --etcd-api to a class; anything else is an error."""
    opts = EtcdOptions(endpoints=("http://127.0.0.1:2379",))
    assert isinstance(open_registry("v2", opts), EtcdV2Registry)
    assert isinstance(open_registry("v3", opts), EtcdV3Registry)
    with pytest.raises(ValueError, match="v4"):
        open_registry("v4", opts)


# --- v3 wire details ---------------------------------------------------------------------------


def test_v3_lost_create_races_revoke_their_leases(etcd: Any) -> None:
    """Each create grants a lease; the losers of the transaction revoke theirs (flanneld does)."""
    reg = EtcdV3Registry(EtcdOptions(endpoints=(etcd.url,)))
    try:
        n = 6
        barrier = threading.Barrier(n)
        lost: list[bool] = []

        def race(i: int) -> None:
            barrier.wait()
            try:
                reg.create_subnet(S1, A1, 60)
            except AlreadyExists:
                lost.append(True)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(lost) == n - 1
        leases = v3_post(etcd, "/lease/leases", {}).get("leases", [])
        assert len(leases) == 1
    finally:
        reg.close()


def test_v3_update_grants_a_new_lease_and_ttl_0_detaches(etcd: Any) -> None:
    """Renewal = a new lease + put (the old lease is left to expire); ttl 0 = no lease at all."""
    reg = EtcdV3Registry(EtcdOptions(endpoints=(etcd.url,)))
    key = "L2NvcmVvcy5jb20vbmV0d29yay9zdWJuZXRzLzEwLjUuMS4wLTI0"  # <prefix>/subnets/10.5.1.0-24

    def lease_of_key() -> int:
        kvs = v3_post(etcd, "/kv/range", {"key": key}).get("kvs", [])
        return int(kvs[0].get("lease", 0))

    try:
        reg.create_subnet(S1, A1, 60)
        first = lease_of_key()
        reg.update_subnet(S1, A1, 60)
        second = lease_of_key()
        assert 0 != first != second != 0
        reg.update_subnet(S1, A1, 0)
        assert lease_of_key() == 0
        assert reg.get_subnet(S1) is not None
    finally:
        reg.close()
