"""The ``nats-cluster`` chaos target: the NATS backend on three nats-servers, its bucket on all three.

Registered in :data:`~dyndisc.testing.chaos.targets.TARGETS`: ``python -m dyndisc.testing.chaos --backend
nats-cluster`` runs it.

Agents are given the three servers (``NATS_SERVER``) and a bucket with a copy on each
(``NATS_KV_REPLICAS=3``); they reach the servers directly, so the faults are the servers' own, made by the
cluster object (:class:`~dyndisc.testing.servers.NatsCluster`), one server at a time so that a majority
always stands:

* ``member_kill``: SIGKILL a server (in turn, each of the three), restarted on its data at the heal;
* ``leader_kill``: SIGKILL the bucket's stream leader (writes wait for the election, 4-9 s), restarted;
* ``member_partition``: cut a server's routes to the others (its clients keep their connections and must
  leave it on their own), healed.

Every seed draws one of these three (its first fault), so that every seed has a server killed or cut off.
Every fault targets ``server``, which the checker reads as "clients may be cut off meanwhile". The bounds
allow a leader's election (4-9 s) and a client leaving a cut-off server (up to 20 s when it is the old meta
leader) on top of the single server's. The truth is read raw by a client of the run's own given the three
servers (at the quiet point every server is back).
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from dataclasses import replace
from typing import Any

import anyio

from dyndisc.backends.kv import KeyValueStore
from dyndisc.backends.nats import NatsSettings, NatsStore
from dyndisc.testing.chaos.checker import Bounds
from dyndisc.testing.chaos.plan import Workload
from dyndisc.testing.chaos.raw_readers import RawItems, read_nats
from dyndisc.testing.chaos.target import Target
from dyndisc.testing.servers import NatsCluster, NatsClusterServer, ServerUnavailable

__all__ = ["MEMBER_FAULTS", "NatsClusterTarget"]

#: The faults of one of the three servers (every seed draws one).
MEMBER_FAULTS = ("member_kill", "leader_kill", "member_partition")


class NatsClusterTarget(Target):
    """Three nats-servers in one cluster, the bucket replicated on each; faults of one server at a time."""

    name = "nats-cluster"
    backend = "nats"
    faults = (*MEMBER_FAULTS, "revoke", "foreign_write", "pause_watcher")
    # A real machine's slack, as the other real targets have (see Target.bounds).
    bounds = Bounds(converge=25.0, gone=20.0, expiry=2.0, renewal_slack=0.5, expiry_needs_cut=False)
    # Longer than a stream leader's election, so that an election alone ends no lease.
    ttl = 10.0
    ttls = (10.0,)

    @property
    def workload(self) -> Workload:
        return replace(super().workload, every_seed=MEMBER_FAULTS)

    def start(self) -> None:
        self.cluster = NatsCluster(3).start()
        self.bucket = f"chaos_{uuid.uuid4().hex[:8]}"
        #: The server a fault holds down or cut off now (one at a time: a majority always stands).
        self.faulted: NatsClusterServer | None = None
        self._holder: dict[str, Any] | None = None
        self._turn = 0

    def close(self) -> None:
        super().close()
        self.cluster.close()

    def env(self, agent: str) -> dict[str, str]:
        return {
            **super().env(agent),
            "NATS_SERVER": self.cluster.servers_setting,
            "NATS_KV_BUCKET": self.bucket,
            "NATS_KV_REPLICAS": "3",
            "NATS_TIMEOUT": "3",
            "NATS_STARTUP_CONNECT_TIMEOUT": "60",
        }

    def direct(self) -> KeyValueStore:
        settings = NatsSettings.load(
            server=self.cluster.servers_setting,
            kv_bucket=self.bucket,
            kv_replicas=3,
            timeout=3,
            startup_connect_timeout=60,
        )
        store = NatsStore(settings)
        self.stores.append(store)
        return store

    async def read_raw(self, prefixes: list[str]) -> RawItems:
        return await read_nats(self.cluster.urls, self.bucket, prefixes)

    def _next_server(self) -> NatsClusterServer:
        server = self.cluster.servers[self._turn % len(self.cluster.servers)]
        self._turn += 1
        return server

    async def fault(self, kind: str, args: dict[str, Any], heal: bool) -> dict[str, Any]:
        if kind not in MEMBER_FAULTS:
            return await super().fault(kind, args, heal)
        cluster = self.cluster
        if heal:
            if args is not self._holder:
                # The heal of a fault that was skipped: the other one holds on. Nothing to add to the history:
                # it records a heal on the latest open fault of the kind, maybe the one that holds.
                return {}
            faulted, self.faulted, self._holder = self.faulted, None, None
            if faulted is None:
                return {}
            await anyio.to_thread.run_sync(cluster.heal)
            await anyio.to_thread.run_sync(cluster.restart, [faulted])
            return {"healed": faulted.name}
        if self.faulted is not None:
            return {"skipped": True}  # another fault holds a server: two would leave no majority
        victim = self._next_server()
        if kind == "leader_kill":
            # No bucket yet (no agent started), or no leader now: the server in turn, then.
            with suppress(ServerUnavailable):
                victim = await anyio.to_thread.run_sync(
                    lambda: cluster.stream_leader(f"KV_{self.bucket}", 5.0)
                )
        self.faulted = victim
        # The plan's fault and its heal share their arguments: only this fault's heal ends it.
        self._holder = args
        if kind == "member_partition":
            await anyio.to_thread.run_sync(cluster.partition, victim)
        else:
            await anyio.to_thread.run_sync(victim.kill)
        return {"server": victim.name}
