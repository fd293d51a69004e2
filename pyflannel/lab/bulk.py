"""Write many records to the lab's etcd fast, raw bytes included (fuzz tests, soak bench).

Run inside the etcd namespace by :meth:`pyflannel.lab.topo.Lab.bulk`: ``python -m
pyflannel.lab.bulk API URL THREADS`` reads one JSON operation a line on stdin,
``["put", key_b64, value_b64, ttl]`` or ``["del", key_b64]`` (keys and values are base64, so any
bytes can be written; ``ttl`` 0 means none), sends them from a thread pool straight to etcd's
HTTP API (v2 keys API or the v3 JSON gateway), and prints one JSON line: how many etcd
accepted, and the refusals by status.  Operations of one run go out in no particular order.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import requests

_local = threading.local()


def _session() -> requests.Session:
    s: requests.Session | None = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
    return s


def _send(api: str, url: str, op: list[Any], leases: dict[int, str]) -> str:
    kind, key = op[0], base64.b64decode(op[1])
    s = _session()
    if api == "v2":
        path = f"{url}/v2/keys{quote(key, safe='/')}"
        if kind == "del":
            r = s.delete(path, params={"recursive": "true"}, timeout=10)
        else:
            data: dict[str, Any] = {"value": base64.b64decode(op[2])}
            if op[3]:
                data["ttl"] = op[3]
            r = s.put(path, data=data, timeout=10)
    elif kind == "del":
        r = s.post(f"{url}/v3/kv/deleterange", json={"key": op[1]}, timeout=10)
    else:
        body = {"key": op[1], "value": op[2]}
        if op[3]:
            body["lease"] = leases[op[3]]
        r = s.post(f"{url}/v3/kv/put", json=body, timeout=10)
    return "ok" if r.ok else str(r.status_code)


def main(argv: list[str]) -> int:
    """Apply the operations on stdin; print the tally."""
    api, url, threads = argv[0], argv[1], int(argv[2])
    ops = [json.loads(line) for line in sys.stdin if line.strip()]
    leases: dict[int, str] = {}
    if api == "v3":  # one etcd lease per TTL, granted once
        for ttl in {op[3] for op in ops if op[0] == "put" and op[3]}:
            r = requests.post(f"{url}/v3/lease/grant", json={"TTL": ttl}, timeout=10)
            leases[ttl] = r.json()["ID"]
    tally: Counter[str] = Counter()

    def send(op: list[Any]) -> str:
        try:
            return _send(api, url, op, leases)
        except requests.RequestException as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(threads) as pool:
        for outcome in pool.map(send, ops):
            tally[outcome] += 1
    print(json.dumps({"ok": tally.pop("ok", 0), "refused": dict(tally)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
