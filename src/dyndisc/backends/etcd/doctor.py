"""The etcd part of ``dyndisc doctor``: its version (old ones lose watch events), etcd times leases itself,
and the fixes for etcd's refusals."""

from __future__ import annotations

import re
from typing import Protocol

import anyio

from dyndisc.backends.diagnosis import Report, ServerClockDoctor, Status

#: The first etcd release without the watch bugs that lose a delete event at a compaction's revision
#: (etcd-io/etcd#18089, fixed in 3.5.16; #19179, after a restart, fixed in 3.5.18; 3.6.0 has both fixes).
FIXED_WATCH = (3, 5, 18)

FIXES: tuple[tuple[str, str], ...] = (
    (
        "refused the password",
        "set ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD to a user etcd knows; an admin can reset it with "
        "'etcdctl user passwd <user>'",
    ),
    ("requires authentication", "etcd has auth enabled: set ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD"),
    (
        "denied user",
        "grant the user's role readwrite on the key prefix: 'etcdctl role grant-permission <role> "
        "--prefix=true readwrite /services/' (and v1/ for DYN_KV_LAYOUT=dynamo-v1)",
    ),
    ("TLS handshake", "check ETCD_AUTH_CA (the CA of the server) and ETCD_AUTH_CLIENT_CERT / _KEY"),
)
#: When etcd does not answer.
REACH_FIX = (
    "start etcd or point ETCD_ENDPOINTS at it (check firewalls between this host and the server); to try "
    "dyndisc, 'dyndisc server etcd' starts one"
)


class Versioned(Protocol):
    """What the doctor asks of the store: the server's version."""

    async def server_version(self) -> str: ...


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``3.5.17`` (or ``v3.6.0-rc.1``) as ``(3, 5, 17)``; ``None`` if it is not a version."""
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


class EtcdDoctor(ServerClockDoctor):
    """etcd's checks: its version; leases are timed by the server; its errors' fixes."""

    def __init__(self, store: Versioned) -> None:
        super().__init__("etcd", FIXES, REACH_FIX)
        self.store = store

    async def check_server(self, report: Report, timeout: float) -> None:
        try:
            with anyio.fail_after(timeout):
                version = await self.store.server_version()
        except Exception as exc:
            report.add("server version", Status.WARN, f"could not read it: {exc}")
            return
        parsed = parse_version(version)
        if parsed is None or parsed >= FIXED_WATCH:
            report.add("server version", Status.OK, f"etcd {version}")
            return
        report.add(
            "server version",
            Status.WARN,
            f"etcd {version} can drop a watch's delete event at a compaction's revision "
            "(etcd-io/etcd#18089, #19179): a worker that left may stay listed until the next resync",
            "upgrade etcd to 3.5.18 or later (or 3.6)",
        )
