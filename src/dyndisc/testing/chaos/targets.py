"""The real backends a chaos run can use: their servers, how agents reach them, and the faults they have.

Every agent process reaches the server through a TCP proxy of its own where the backend has a network, so the
nemesis can cut off one worker, one watcher, or everyone (all proxies). A fresh direct connection reads the
truth, revokes leases "as another client" and writes foreign records.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import anyio

from dyndisc.backends.base import DiscoveryBackend
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.file import FileStore
from dyndisc.backends.kv import KeyValueStore, KvDiscovery
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.chaos.checker import Bounds
from dyndisc.testing.servers import EtcdCluster, EtcdServer, NatsServer, TcpProxy

#: The faults of every backend that has a network and a server to kill.
_SERVER_FAULTS = ("server_kill", "partition", "revoke", "foreign_write", "pause_watcher")


class Target:
    """One backend under chaos. Subclasses start the server and say how agents reach it."""

    name = "?"
    #: The backend name agents create (``DYN_DISCOVERY_BACKEND``).
    backend = "?"
    faults: tuple[str, ...] = ()
    bounds = Bounds(converge=5.0, gone=3.0, expiry=2.0)
    ttl = 2.0

    def __init__(self) -> None:
        self.proxies: dict[str, TcpProxy] = {}
        self.stores: list[KeyValueStore] = []

    def start(self) -> None:
        """Start the server(s)."""

    def close(self) -> None:
        """Stop everything."""
        for proxy in self.proxies.values():
            proxy.stop()

    def env(self, agent: str) -> dict[str, str]:
        """The environment of one agent process."""
        return {"DYN_DISCOVERY_BACKEND": self.backend, "DYN_LEASE_TTL": str(self.ttl)}

    def direct(self) -> KeyValueStore:
        """A store of its own straight on the server (closed by :meth:`aclose_stores`)."""
        raise NotImplementedError

    def discovery(self) -> DiscoveryBackend:
        store = self.direct()
        return KvDiscovery(store, owns_store=False)

    async def aclose_stores(self) -> None:
        for store in self.stores:
            await store.aclose()
        self.stores.clear()

    def proxy(self, agent: str, host: str, port: int) -> TcpProxy:
        found = self.proxies.get(agent)
        if found is None:
            found = self.proxies[agent] = TcpProxy(host, port).start()
        return found

    # -- faults -------------------------------------------------------------------------------------------
    async def fault(self, kind: str, args: dict[str, Any], heal: bool) -> dict[str, Any]:
        """Inject (or heal) a fault of the server; returns details for the history."""
        if kind == "partition":
            target = args["target"]
            for agent, proxy in self.proxies.items():
                if target in ("everyone", agent):
                    proxy.restore() if heal else proxy.cut()
            return {}
        raise ValueError(f"{self.name} has no fault {kind!r}")


class _Etcd(Target):
    """What the etcd targets share: how agents and the nemesis reach the server(s)."""

    backend = "etcd"

    def endpoints(self, agent: str | None) -> str:
        """``ETCD_ENDPOINTS`` for ``agent`` (``None``: the nemesis, straight to the server)."""
        raise NotImplementedError

    def env(self, agent: str) -> dict[str, str]:
        return {
            **super().env(agent),
            "ETCD_ENDPOINTS": self.endpoints(agent),
            "ETCD_REQUEST_TIMEOUT_SECONDS": "3",
            "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS": "60",
        }

    def direct(self) -> KeyValueStore:
        settings = EtcdSettings.load(endpoints=self.endpoints(None), startup_connect_timeout_seconds=60)
        store = EtcdStore(settings)
        self.stores.append(store)
        return store


class EtcdTarget(_Etcd):
    name = "etcd"
    faults = (*_SERVER_FAULTS, "compact")

    def start(self) -> None:
        self.server = EtcdServer(election_ms=(100, 1000)).start()

    def close(self) -> None:
        super().close()
        self.server.close()

    def endpoints(self, agent: str | None) -> str:
        if agent is None:
            return self.server.client_url
        return self.proxy(agent, self.server.host, self.server.client_port).url

    async def fault(self, kind: str, args: dict[str, Any], heal: bool) -> dict[str, Any]:
        if kind == "server_kill":
            await anyio.to_thread.run_sync(self.server.start if heal else self.server.kill)
            return {}
        if kind == "compact":
            revision = await anyio.to_thread.run_sync(self.server.compact)
            return {"revision": revision}
        return await super().fault(kind, args, heal)


class EtcdClusterTarget(_Etcd):
    name = "etcd-cluster"
    faults = ("leader_kill", "quorum_loss", "revoke", "foreign_write", "pause_watcher")

    def start(self) -> None:
        self.cluster = EtcdCluster(3).start()
        self.killed: list[EtcdServer] = []

    def close(self) -> None:
        super().close()
        self.cluster.close()

    def endpoints(self, agent: str | None) -> str:
        return self.cluster.endpoints  # every member: the faults are the members' own

    async def fault(self, kind: str, args: dict[str, Any], heal: bool) -> dict[str, Any]:
        if heal:
            victims, self.killed = self.killed, []
            await anyio.to_thread.run_sync(self.cluster.restart, victims)
            return {"restarted": [m.name for m in victims]}
        if kind == "leader_kill":
            if self.killed:  # a fault already holds members down: this one adds nothing
                return {"skipped": True}
            self.killed = [await anyio.to_thread.run_sync(self.cluster.kill_leader)]
        elif kind == "quorum_loss":
            # Leave at most a minority running: kill all but len(members) // 2 of the running ones.
            running = [m for m in self.cluster.members if m.running]
            victims = running[: max(len(running) - len(self.cluster.members) // 2, 0)]
            for member in victims:
                await anyio.to_thread.run_sync(member.kill)
            self.killed += victims
        else:
            return await super().fault(kind, args, heal)
        return {"killed": [m.name for m in self.killed]}


class NatsTarget(Target):
    name = backend = "nats"
    faults = _SERVER_FAULTS

    def start(self) -> None:
        self.server = NatsServer().start()
        self.bucket = f"chaos_{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        super().close()
        self.server.close()

    def env(self, agent: str) -> dict[str, str]:
        proxy = self.proxy(agent, self.server.host, self.server.port)
        return {
            **super().env(agent),
            "NATS_SERVER": proxy.url_for("nats"),
            "NATS_KV_BUCKET": self.bucket,
            "NATS_TIMEOUT": "3",
            "NATS_STARTUP_CONNECT_TIMEOUT": "60",
        }

    def direct(self) -> KeyValueStore:
        settings = NatsSettings.load(
            server=self.server.url, kv_bucket=self.bucket, timeout=3, startup_connect_timeout=60
        )
        store = NatsStore(settings)
        self.stores.append(store)
        return store

    async def fault(self, kind: str, args: dict[str, Any], heal: bool) -> dict[str, Any]:
        if kind == "server_kill":
            await anyio.to_thread.run_sync(self.server.start if heal else self.server.kill)
            return {}
        return await super().fault(kind, args, heal)


class FileTarget(Target):
    name = backend = "file"
    faults = ("revoke", "foreign_write", "pause_watcher")

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dyndisc-chaos-"))

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self, agent: str) -> dict[str, str]:
        return {**super().env(agent), "DYN_FILE_KV": str(self.root), "DYN_FILE_RESCAN_INTERVAL": "1"}

    def direct(self) -> KeyValueStore:
        store = FileStore(self.root)
        self.stores.append(store)
        return store


TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (EtcdTarget, EtcdClusterTarget, NatsTarget, FileTarget)
}


def agent_env(target: Target, agent: str) -> dict[str, str]:
    """The whole environment of an agent process: ours, without the backend variables of the parent."""
    mine = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "NATS_", "DYN_"))}
    return {**mine, **target.env(agent), "PYTHONHASHSEED": "0"}
