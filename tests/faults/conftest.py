"""Fixtures for the fault suite: ``make_target`` gives a :class:`~fault_targets.Target` per backend, on the
session's server or a private one (to kill, restart, start late, or secure), closed at teardown.

Shared code lives in ``faultkit.py`` and ``fault_targets.py``, never here: every ``conftest`` module is
imported as ``conftest``, so tests cannot import from this one reliably.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fault_targets import MakeTarget, Target
from faultkit import unique_namespace

from dyndisc.testing.server_fixtures import server_unavailable
from dyndisc.testing.servers import EtcdCluster, EtcdServer, NatsServer, ServerUnavailable


@pytest.fixture
async def make_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeTarget]:
    """``make_target(kind, private_server=False, start=True, store_settings=None, **server_options)``.

    ``kind`` is ``etcd``, ``nats``, ``file`` or ``memory``. ``cluster`` gives an etcd test a 3-member cluster
    of its own (``target.server`` is the :class:`EtcdCluster`). ``private_server`` gives the test a server of
    its own (to kill, restart, start late with ``start=False``, or secure with ``server_options`` such as
    ``tls=True``); otherwise the session's server is shared and tests keep apart by namespace.
    """
    targets: list[Target] = []
    private: list[EtcdServer | NatsServer] = []
    clusters: list[EtcdCluster] = []

    def make(
        kind: str,
        *,
        private_server: bool = False,
        cluster: bool = False,
        start: bool = True,
        store_settings: dict[str, Any] | None = None,
        **server_options: Any,
    ) -> Target:
        server: EtcdServer | NatsServer | EtcdCluster | None = None
        if cluster:
            assert kind == "etcd", "only etcd has a cluster here"
            try:
                server = EtcdCluster(3, **server_options)
                clusters.append(server)
                if start:
                    server.start()
            except ServerUnavailable as exc:
                server_unavailable(f"etcd cluster: {exc}")
        elif kind in ("etcd", "nats"):
            if private_server:
                try:
                    server = EtcdServer(**server_options) if kind == "etcd" else NatsServer(**server_options)
                    private.append(server)
                    if start:
                        server.start()
                except ServerUnavailable as exc:
                    server_unavailable(f"{kind}: {exc}")
            else:
                server = request.getfixturevalue(
                    "dyndisc_etcd_server" if kind == "etcd" else "dyndisc_nats_server"
                )
        root = tmp_path / unique_namespace("kv") if kind == "file" else None
        target = Target(kind, server, root, store_settings)
        targets.append(target)
        return target

    try:
        yield make
    finally:
        for target in reversed(targets):
            await target.close()
        for server in private:
            server.close()
        for each in clusters:
            each.close()
