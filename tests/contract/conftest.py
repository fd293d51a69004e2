"""Fixtures shared by the etcd access tests: a TLS etcd and an etcd with v3 auth on."""

from __future__ import annotations

from typing import Any

import pytest

PREFIX = "/coreos.com/network"


@pytest.fixture
def tls_etcd(etcd_factory: Any, tls_files: Any) -> Any:
    """An etcd serving https on its client port and requiring a client certificate."""
    return etcd_factory(tls=tls_files)


@pytest.fixture
def auth_etcd(etcd_factory: Any) -> Any:
    """etcd with v3 auth on: root/rootpw, and flannel/flannelpw allowed only <prefix>/.

    Tokens expire after 1 s unused (etcd's default is 300 s), so token renewal is tested too.
    """
    server = etcd_factory(extra_args=("--auth-token-ttl=1", "--bcrypt-cost=4"))
    server.etcdctl("user", "add", "root", "--new-user-password=rootpw", "--interactive=false")
    server.etcdctl("user", "add", "flannel", "--new-user-password=flannelpw", "--interactive=false")
    server.etcdctl("user", "add", "nobody", "--new-user-password=nobodypw", "--interactive=false")
    server.etcdctl("role", "add", "flannel")
    server.etcdctl(
        "role", "grant-permission", "flannel", "--prefix=true", "readwrite", f"{PREFIX}/"
    )
    server.etcdctl("user", "grant-role", "flannel", "flannel")
    server.etcdctl("auth", "enable")
    return server
