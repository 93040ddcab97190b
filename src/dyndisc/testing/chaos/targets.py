"""The real key-value backends a chaos run can use (etcd, a 3-member etcd cluster, NATS, files), and the
registry of every target by name (Kubernetes is in :mod:`~dyndisc.testing.chaos.kube_target`, a 3-server NATS
cluster in :mod:`~dyndisc.testing.chaos.nats_cluster_target`)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import anyio

from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.backends.etcd.access import EtcdAccess
from dyndisc.backends.file import FileStore
from dyndisc.backends.kv import KeyValueStore
from dyndisc.backends.kv.scopes import Role, Scope
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.chaos.kube_target import KubernetesTarget
from dyndisc.testing.chaos.nats_cluster_target import NatsClusterTarget
from dyndisc.testing.chaos.raw_readers import RawItems, read_etcd, read_files, read_nats
from dyndisc.testing.chaos.target import SERVER_FAULTS, Target
from dyndisc.testing.servers import EtcdCluster, EtcdServer, NatsServer


class _Etcd(Target):
    """What the etcd targets share: how agents and the nemesis reach the server(s)."""

    backend = "etcd"
    layouts = ("dyndisc", "dynamo-v1")

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

    async def read_raw(self, prefixes: list[str]) -> RawItems:
        return await read_etcd(self.endpoints(None), prefixes)


class EtcdTarget(_Etcd):
    name = "etcd"
    faults = (*SERVER_FAULTS, "compact")

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


class EtcdScopedTarget(EtcdTarget):
    """etcd with auth on and every agent on least-privilege credentials (``dyndisc access etcd``): a seed's
    workers as workers of its namespace, its watchers (runtimes, clients, the CLI's watch) as a frontend.
    The nemesis and the truth reader are root."""

    name = "etcd-scoped"
    password = "chaos-agent-pw"

    def start(self) -> None:
        self.server = EtcdServer(auth=True, election_ms=(100, 1000)).start()

    def direct(self) -> KeyValueStore:
        settings = EtcdSettings.load(
            endpoints=self.endpoints(None),
            startup_connect_timeout_seconds=60,
            auth_username=self.server.username,
            auth_password=self.server.password,
        )
        store = EtcdStore(settings)
        self.stores.append(store)
        return store

    async def read_raw(self, prefixes: list[str]) -> RawItems:
        assert self.server.username is not None
        assert self.server.password is not None
        credentials = (self.server.username, self.server.password)
        return await read_etcd(self.endpoints(None), prefixes, credentials)

    async def prepare(self, namespace: str) -> None:
        store = self.direct()
        assert isinstance(store, EtcdStore)
        access = EtcdAccess(store.connection)
        await access.apply(Scope(Role.WORKER, namespace), f"worker-{namespace}", password=self.password)
        await access.apply(Scope(Role.FRONTEND), "frontend", password=self.password)

    async def environment(self, agent: str, namespace: str) -> dict[str, str]:
        env = await super().environment(agent, namespace)
        # Watchers' agents are named v<n>, the workers' processes p<n>.
        user = "frontend" if agent.startswith("v") else f"worker-{namespace}"
        return {**env, "ETCD_AUTH_USERNAME": user, "ETCD_AUTH_PASSWORD": self.password}


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
    faults = SERVER_FAULTS

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

    async def read_raw(self, prefixes: list[str]) -> RawItems:
        return await read_nats(self.server.url, self.bucket, prefixes)

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

    async def read_raw(self, prefixes: list[str]) -> RawItems:
        return await read_files(self.root, prefixes)


TARGETS: dict[str, type[Target]] = {
    t.name: t
    for t in (
        EtcdTarget,
        EtcdScopedTarget,
        EtcdClusterTarget,
        NatsTarget,
        NatsClusterTarget,
        FileTarget,
        KubernetesTarget,
    )
}
