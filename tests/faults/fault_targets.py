"""Backends under fault for the fault suite: one :class:`Target` per backend, on a real server or a root.

A target hands out stores and backends (directly or through its TCP proxy), fresh backends for the
invariant's truth, worker runtimes (stopped at teardown) and the environment a subprocess worker needs.
The ``make_target`` fixture (``conftest.py``) makes them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dyndisc import DiscoveryBackend, DistributedRuntime, KvDiscovery, MemoryStore
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.file import FileStore
from dyndisc.backends.kv import KeyValueStore
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing import CrashableBackend, RuntimeHost
from dyndisc.testing.servers import EtcdCluster, EtcdServer, NatsServer, TcpProxy

#: The backends with a store another process can share (the SIGKILL, partition and revoke scenarios).
SHARED_KINDS = ("etcd", "nats", "file")
NATS_BUCKET = "dyndisc_faults"


class Target:
    """A backend under fault: its server (if any), a proxy in front of it, and everything made from it."""

    #: Lease TTL the scenarios use unless they state another, in seconds.
    ttl = 2.0

    def __init__(
        self,
        kind: str,
        server: EtcdServer | NatsServer | EtcdCluster | None,
        root: Path | None,
        store_settings: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        #: Settings every store of this target gets (credentials, TLS material).
        self.store_settings = store_settings or {}
        self.server = server
        self.root = root
        self._proxy: TcpProxy | None = None
        self._memory = MemoryStore() if kind == "memory" else None
        self.stores: list[KeyValueStore] = []
        self.hosts: list[RuntimeHost] = []
        #: Seconds beyond the TTL within which a dead lease's instances must be reported gone: etcd checks
        #: expiry every 500 ms then revokes through raft, NATS writes its marker on time, the file backend
        #: checks mtimes; the rest is watch delivery on a loaded 2-core machine.
        self.bound = {"etcd": 2.0, "nats": 2.0, "file": 2.0, "memory": 1.0}[kind]
        self._raw: KeyValueStore | None = None

    @property
    def raw(self) -> KeyValueStore:
        """A store of its own, for writes and revokes "by someone else"."""
        if self._raw is None:
            self._raw = self.store()
        return self._raw

    # -- connections -----------------------------------------------------------------------------------
    @property
    def proxy(self) -> TcpProxy:
        """A TCP proxy in front of the server (made on first use, stopped at teardown)."""
        if self._proxy is None:
            assert isinstance(self.server, EtcdServer | NatsServer), f"{self.kind} has no server to proxy"
            port = self.server.client_port if isinstance(self.server, EtcdServer) else self.server.port
            self._proxy = TcpProxy(self.server.host, port).start()
        return self._proxy

    def url(self, via_proxy: bool = False) -> str:
        if isinstance(self.server, EtcdCluster):
            assert not via_proxy, "a cluster is reached directly: its members are the faults"
            return self.server.endpoints
        if isinstance(self.server, EtcdServer):
            return self.proxy.url if via_proxy else self.server.client_url
        assert isinstance(self.server, NatsServer)
        return self.proxy.url_for("nats") if via_proxy else self.server.url

    def store(self, via_proxy: bool = False, **overrides: Any) -> KeyValueStore:
        """A new store (its own connection), closed at teardown."""
        store: KeyValueStore
        if self.kind == "memory":
            assert self._memory is not None
            return self._memory
        if self.kind == "file":
            assert self.root is not None
            store = FileStore(self.root)
        elif self.kind == "etcd":
            values: dict[str, Any] = {
                "endpoints": self.url(via_proxy),
                "startup_connect_timeout_seconds": 60.0,
                "request_timeout_seconds": 3.0,
                **self.store_settings,
                **overrides,
            }
            store = EtcdStore(EtcdSettings.load(**values))
        else:
            values = {
                "server": self.url(via_proxy),
                "kv_bucket": NATS_BUCKET,
                "timeout": 3.0,
                "startup_connect_timeout": 60.0,
                **self.store_settings,
                **overrides,
            }
            store = NatsStore(NatsSettings.load(**values))
        self.stores.append(store)
        return store

    def backend(self, via_proxy: bool = False, **overrides: Any) -> DiscoveryBackend:
        """A new backend on its own store (closed at teardown)."""
        return KvDiscovery(self.store(via_proxy, **overrides), owns_store=False)

    def fresh(self) -> DiscoveryBackend:
        """A new backend for reading the truth; it closes its own store (use it with ``async with``)."""
        if self.kind == "memory":
            return KvDiscovery(self.store(), owns_store=False)
        store = self.store()
        self.stores.remove(store)
        return KvDiscovery(store)

    async def start(self, backend: DiscoveryBackend | None = None, **kwargs: Any) -> RuntimeHost:
        """A worker runtime (TTL :attr:`ttl` unless given), stopped at teardown unless it ended."""
        kwargs.setdefault("lease_ttl", self.ttl)
        crashable = CrashableBackend(backend or self.backend())
        host = await RuntimeHost.start(DistributedRuntime(crashable, **kwargs))
        self.hosts.append(host)
        return host

    def env(self, ttl: float | None = None) -> dict[str, str]:
        """The environment of a subprocess worker on this target (``DistributedRuntime.from_env()``)."""
        env = {**os.environ, "DYN_DISCOVERY_BACKEND": self.kind, "DYN_LEASE_TTL": str(ttl or self.ttl)}
        if self.kind == "file":
            env["DYN_FILE_KV"] = str(self.root)
        elif self.kind == "etcd":
            env["ETCD_ENDPOINTS"] = self.url()
        elif self.kind == "nats":
            env.update(NATS_SERVER=self.url(), NATS_KV_BUCKET=NATS_BUCKET)
        return env

    async def close(self) -> None:
        for host in reversed(self.hosts):
            if not host.done:
                with contextlib.suppress(Exception):  # a runtime ended by its policy re-raises here
                    await host.stop()
        for store in self.stores:
            await store.aclose()
        if self._proxy is not None:
            self._proxy.stop()


MakeTarget = Callable[..., Target]
