"""The etcd part of ``dyndisc doctor``: etcd times leases itself, and the fixes for etcd's refusals."""

from __future__ import annotations

from dyndisc._diagnosis import ServerClockDoctor

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
    (
        "did not answer",
        "start etcd or point ETCD_ENDPOINTS at it; check firewalls between this host and the server",
    ),
)


class EtcdDoctor(ServerClockDoctor):
    """etcd's checks: leases are timed by the server; its errors' fixes."""

    def __init__(self) -> None:
        super().__init__("etcd", FIXES)
