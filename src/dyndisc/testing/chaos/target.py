"""What a chaos target is: one backend under chaos, its server, how agents reach it, and its faults.

Every agent process reaches the server through a TCP proxy of its own where the backend has a network, so the
nemesis can cut off one worker, one watcher, or everyone (all proxies). A fresh direct connection reads the
truth, revokes leases "as another client" and writes foreign records. The targets themselves are in
:mod:`~dyndisc.testing.chaos.targets` and :mod:`~dyndisc.testing.chaos.kube_target`.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

from dyndisc.backends.base import DiscoveryBackend
from dyndisc.backends.kv import KeyValueStore, KvDiscovery
from dyndisc.testing.chaos.checker import Bounds
from dyndisc.testing.chaos.plan import Workload
from dyndisc.testing.chaos.raw import RawLayout, RawTruth, parse_items
from dyndisc.testing.chaos.raw_readers import RawItems
from dyndisc.testing.servers import TcpProxy

log = logging.getLogger("dyndisc.chaos")

#: Foreign writes into a key-value store (see :meth:`Target.foreign_write`).
_GARBAGE = b"\xff\x00garbage"

#: The faults of every backend that has a network and a server to kill.
SERVER_FAULTS = ("server_kill", "partition", "revoke", "foreign_write", "pause_watcher")


class Target:
    """One backend under chaos. Subclasses start the server and say how agents reach it."""

    name = "?"
    #: The backend name agents create (``DYN_DISCOVERY_BACKEND``).
    backend = "?"
    faults: tuple[str, ...] = ()
    bounds = Bounds(converge=5.0, gone=3.0, expiry=2.0, renewal_slack=0.5, expiry_needs_cut=False)
    ttl = 2.0
    #: Lease TTLs a worker may draw (whole seconds: etcd and NATS round a TTL up to one), the first likelier.
    ttls: tuple[float, ...] = (2.0, 3.0)
    #: The key layouts the backend holds (a seed draws one).
    layouts: tuple[str, ...] = ("dyndisc",)
    #: Endpoints of a bulk registration: fewer than the simulation's (real servers, real time).
    bulk = (100, 400)
    #: Worker runtimes per agent process (a kill or a SIGSTOP takes all of them).
    per_process = 2
    #: Whether an agent's start waits for the server (a pod to create first): it then runs in the
    #: background, so that a start during an outage holds up no other step (the heal among them).
    start_in_background = False
    #: Whether every worker's agent process is started before the plan's clock (see ``RealRun.prewarm``).
    prewarm = False

    @property
    def workload(self) -> Workload:
        """What a seed's plan may draw on this target."""
        return Workload(
            faults=self.faults, ttls=self.ttls, layouts=self.layouts, bulk=self.bulk, bulk_chance=0.15
        )

    def __init__(self) -> None:
        self.proxies: dict[str, TcpProxy] = {}
        self.stores: list[KeyValueStore] = []
        self.backends: list[DiscoveryBackend] = []
        self._nemesis_store: KeyValueStore | None = None

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

    def discovery(self, namespace: str, layout: str = "dyndisc") -> DiscoveryBackend:
        """A dyndisc backend of its own straight on the server: what dyndisc's ``list()`` and a watch started
        at the quiet point say (the truth itself is read raw, :meth:`read_truth`)."""
        store = self.direct()
        return KvDiscovery(store, owns_store=False, layout=layout)

    async def read_raw(self, prefixes: list[str]) -> RawItems:
        """The live keys under ``prefixes`` and the live leases, read with a raw client of the run's own."""
        raise NotImplementedError

    async def read_truth(self, namespace: str, layout: RawLayout, prefixes: list[str]) -> RawTruth:
        """What the server holds under ``prefixes`` of ``namespace``, as records (:mod:`~.raw`)."""
        items, leases = await self.read_raw(prefixes)
        found = parse_items(layout, namespace, items)
        found.leases = leases
        return found

    async def aclose_stores(self) -> None:
        """Close every connection the nemesis and the truth reader opened for a seed."""
        for backend in self.backends:
            await backend.aclose()
        self.backends.clear()
        for store in self.stores:
            await store.aclose()
        self.stores.clear()
        self._nemesis_store = None

    # -- a seed's agents ----------------------------------------------------------------------------------
    async def prepare(self, namespace: str) -> None:
        """Before a seed's first step (Kubernetes: its namespace and discovery Service)."""

    async def environment(self, agent: str, namespace: str) -> dict[str, str]:
        """The environment of a new agent process (Kubernetes: its pod is made first)."""
        return agent_env(self, agent)

    async def worker_env(self, agent: str, namespace: str) -> dict[str, str]:
        """Variables a worker of ``agent`` needs set before it starts (Kubernetes: its pod's identity)."""
        return {}

    async def lease_held(self, agent: str, namespace: str) -> None:
        """A runtime of ``agent`` reports its lease held."""

    async def agent_killed(self, agent: str, namespace: str) -> None:
        """``agent`` was SIGKILLed."""

    async def agent_exited(self, agent: str, namespace: str) -> None:
        """Every worker of ``agent`` left its runtime cleanly (a real process would end now)."""

    async def agent_paused(self, agent: str, namespace: str, paused: bool) -> None:
        """``agent`` was SIGSTOPped (or SIGCONTed)."""

    # -- as another client --------------------------------------------------------------------------------
    def _store(self) -> KeyValueStore:
        if self._nemesis_store is None:
            self._nemesis_store = self.direct()
        return self._nemesis_store

    async def revoke(self, namespace: str, lease: int) -> None:
        """Revoke ``lease`` as another client of the server would."""
        await self._store().revoke(lease)

    async def foreign_write(
        self, namespace: str, write: str, endpoint: str, rng: random.Random, layout: RawLayout
    ) -> tuple[str, str | None]:
        """Write a foreign record as someone else's process would: ``garbage`` (unreadable), ``shape`` (not a
        record), ``noncanonical`` (a live record under a key no runtime uses), ``overwrite`` (garbage over a
        live record). Returns the key written and the instance (``ns.comp.ep/<id>``) it damaged, if any."""
        store = self._store()
        prefix = layout.endpoint_prefix(f"{namespace}.{endpoint}")
        live = await store.get_prefix(prefix)
        key, value, damaged = f"{prefix}{rng.getrandbits(40):x}", _GARBAGE, None
        if write == "shape":
            value = b'{"unexpected": [1, 2, 3]}'
        elif write in ("noncanonical", "overwrite") and live:
            victim = rng.choice(sorted(live))
            head, _, ident = victim.rpartition("/")
            if write == "noncanonical":
                key, value = f"{head}/0{ident.upper()}", live[victim]
            else:
                key, damaged = victim, f"{namespace}.{endpoint}/{ident}"
        await store.put(key, value, 0)
        return key, damaged

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


def agent_env(target: Target, agent: str) -> dict[str, str]:
    """The whole environment of an agent process: ours, without the backend variables of the parent."""
    mine = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ETCD_", "NATS_", "DYN_", "POD_", "KUBECONFIG", "KUBERNETES_", "CONTAINER_NAME"))
    }
    return {**mine, **target.env(agent), "PYTHONHASHSEED": "0"}
