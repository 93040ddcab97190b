"""Deterministic simulation on the memory backend: a virtual clock and seeded scheduling, one seed one run.

Every actor of a run lives in one event loop on virtual time (:mod:`~.virtual_time`). Lease ids, jitter,
the latency of every store call and the plan come from the seed, so a seed replays the same history (the
digest says so). Each actor reaches the shared store through a :class:`~dyndisc.testing.FaultyStore` of its
own, so the nemesis can cut off one worker, one watcher, or everyone; each store call waits a seeded virtual
latency before it reaches the store and before its answer comes back (none in some seeds, tens of
milliseconds in others), so a call its caller cancels may be cancelled before it lands or after.

The truth is read from the store raw (its keys, values and live leases), never through dyndisc. The store is
made by :func:`new_store` alone: any store with ``get_prefix`` and ``lease_ids`` serves.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from typing import Any

import anyio

from dyndisc._errors import BackendUnavailableError
from dyndisc._events import DiscoveryEvent
from dyndisc._models import InstanceQuery
from dyndisc._retry import seed_jitter
from dyndisc.backends.kv import KvDiscovery
from dyndisc.backends.memory import MemoryStore
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.chaos import readings
from dyndisc.testing.chaos.actors import Worker, watch_backend, watch_client, watch_runtime
from dyndisc.testing.chaos.checker import Bounds, quiet_point
from dyndisc.testing.chaos.history import (
    Fault,
    History,
    LeaseReport,
    Seen,
)
from dyndisc.testing.chaos.plan import Plan, Step, Workload
from dyndisc.testing.chaos.plants import PLANTABLE, planted
from dyndisc.testing.chaos.raw import RAW_LAYOUTS, RawTruth, parse_items
from dyndisc.testing.chaos.virtual_time import VirtualLoop
from dyndisc.testing.faults import STORE_CALLS, FaultyStore
from dyndisc.testing.hosting import RuntimeHost

#: Faults the simulation injects (a worker's kill and pause are in the workload).
FAULTS = ("partition", "break_watches", "revoke", "foreign_write", "pause_watcher")
#: Watcher kinds in the simulation (the CLI needs a process).
WATCHERS = ("backend", "runtime", "client")
#: What the simulation's workload draws from.
WORKLOAD = Workload(
    faults=FAULTS,
    watcher_kinds=WATCHERS,
    ttls=(2.0, 1.0, 5.0, 3.0, 10.0, 30.0),
    layouts=("dyndisc", "dynamo-v1"),
    # A bulk registration costs a second or two of a run: in one seed of a hundred, 2,000 seeds take
    # under three minutes.
    bulk_chance=0.01,
)
BOUNDS = Bounds(converge=1.0, gone=1.0, expiry=0.5)
NAMESPACE = "chaos"
#: Largest virtual latency of a store call, by the seed's profile (seconds).
LATENCY_PROFILES = (0.0, 0.0, 0.005, 0.04)

__all__ = ["BOUNDS", "FAULTS", "PLANTABLE", "WATCHERS", "WORKLOAD", "new_store", "simulate"]


#: Keys per part of a watch's listing, by the seed (``None``: whole): small parts make a snapshot of a few
#: dozen instances arrive in many, with the store changing between them.
LIST_PAGE_SIZES = (None, None, 1, 4, 16)


def new_store(seed: int) -> MemoryStore:
    """The store of one simulated run: leases on the virtual clock, lease ids and listing parts from the
    seed."""
    page_size = random.Random(seed ^ 0x9A6E).choice(LIST_PAGE_SIZES)
    return MemoryStore(clock=anyio.current_time, rng=random.Random(seed), list_page_size=page_size)


#: Calls whose answer takes a virtual latency to come back too: those where "applied, but the caller not
#: told yet" matters (a caller that gives up meanwhile leaves a write behind, or a lease revoked).
ANSWERED_LATE = frozenset({"create", "put", "delete", "revoke"})


class _SimStore(FaultyStore):
    """An actor's :class:`FaultyStore`, whose writes' answers also take a virtual latency to come back (the
    call applied, the caller not told yet)."""

    reply_latency: Callable[[str], float] | None = None

    async def _leave(self, call: str) -> None:
        await super()._leave(call)
        if (
            call in ANSWERED_LATE
            and self.reply_latency is not None
            and (delay := self.reply_latency(call)) > 0
        ):
            await anyio.sleep(delay)


def _latency(seed: int, actor: str) -> Callable[[str], float] | None:
    """The seeded latency of ``actor``'s store calls: a base per call name from the seed, jittered per call
    (``None``: no latency, in a seed whose profile has none)."""
    seeded = random.Random(seed ^ 0x1A7E)
    ceiling = seeded.choice(LATENCY_PROFILES)
    if not ceiling:
        return None
    base = {call: seeded.uniform(0.0, ceiling) for call in sorted(STORE_CALLS)}
    jitter = random.Random(seed * 7919 + zlib.crc32(actor.encode()))
    return lambda call: base[call] * jitter.uniform(0.5, 1.5)


class _SimRecorder:
    def __init__(self, simulation: _Simulation) -> None:
        self.simulation = simulation
        self.history = simulation.history

    def now(self) -> float:
        return round(anyio.current_time(), 6)

    def op_start(self, actor: str, action: str, args: dict[str, Any]) -> int:
        self.history.operation(actor, action, args, self.now())
        return len(self.history.operations) - 1

    def op_end(self, op: int, *, result: Any = None, error: BaseException | None = None) -> None:
        self.history.done(self.history.operations[op], self.now(), result=result, error=error)

    def seen(self, watcher: str, event: DiscoveryEvent) -> None:
        self.history.seen.append(Seen.of(watcher, self.now(), event))

    def lease(self, runtime: str, instance_id: int | None, state: str) -> None:
        self.history.leases.append(LeaseReport(runtime, self.now(), instance_id, state))

    def renewed(self, runtime: str, lease: int) -> None:
        self.history.renewed(runtime, lease, self.now())

    async def returned(self, actor: str, action: str, args: dict[str, Any]) -> None:
        await self.simulation.probe(actor, action, args)


class _Simulation:
    def __init__(self, plan: Plan, plants: frozenset[str]) -> None:
        self.plan = plan
        self.plants = plants
        self.rng = random.Random(plan.seed ^ 0x5EED)
        self.memory = new_store(plan.seed)
        self.layout = RAW_LAYOUTS[plan.layout]
        self.history = History("memory", plan.seed, plan.ttl, plan.duration, layout=plan.layout)
        self.recorder = _SimRecorder(self)
        self.query = InstanceQuery(NAMESPACE)
        self.stores: dict[str, FaultyStore] = {}
        self.workers: dict[str, Worker] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.paused: dict[str, anyio.Event] = {}
        self.pauses: dict[str, int] = {}
        #: The partitions of everyone in force (their reasons).
        self.cut_everyone: list[str] = []

    def store(self, actor: str) -> FaultyStore:
        store = self.stores[actor] = _SimStore(self.memory)
        store.latency = store.reply_latency = _latency(self.plan.seed, actor)
        store.lose_deletes = "lost-delete" in self.plants and actor.startswith("v")
        store.lose_writes = "lost-write" in self.plants and actor.startswith("w") and int(actor[1:]) % 2 == 1
        for reason in self.cut_everyone:  # an actor born during a partition of everyone is cut off too
            store.take_down(reason)
        return store

    def backend(self, actor: str, store: Any = None) -> KvDiscovery:
        return KvDiscovery(store or self.store(actor), owns_store=False, layout=self.plan.layout)

    async def run(self) -> History:
        async with anyio.create_task_group() as tg:
            for step in self.plan.steps:
                await anyio.sleep(max(step.at - anyio.current_time(), 0.0))
                await self.execute(tg, step)
            await anyio.sleep(max(self.plan.duration - anyio.current_time(), 0.0))
            # Judge once the run is quiet, the convergence bound and a margin after it (a replacement
            # after a revoke, and what it writes, may move the quiet point on: wait again then), but no
            # later than a run that never goes quiet should be judged (the checker will say why).
            latest = self.plan.duration + 3 * max(self.plan.ttls.values(), default=self.plan.ttl) + 5.0
            # (a run past ``latest`` already, its last fault late and long, is judged at once)
            while (settled := quiet_point(self.history) + BOUNDS.converge + 0.5) > anyio.current_time():
                if anyio.current_time() >= latest:
                    break
                await anyio.sleep(max(min(settled, latest) - anyio.current_time(), 0.0))
            await self.read_truth()
            tg.cancel_scope.cancel()
        return self.history

    # -- the truth, raw -------------------------------------------------------------------------------------
    async def read_raw(self, prefixes: list[str]) -> RawTruth:
        items: dict[str, bytes] = {}
        for prefix in prefixes:
            items.update(await self.memory.get_prefix(prefix))
        found = parse_items(self.layout, NAMESPACE, items)
        found.leases = set(self.memory.lease_ids)
        return found

    async def read_truth(self) -> None:
        dyndisc = KvDiscovery(self.memory, owns_store=False, layout=self.plan.layout)
        at = self.recorder.now()
        await readings.read_quiet_point(
            self.history, self.read_raw, self.layout, NAMESPACE, dyndisc, at, BOUNDS.converge
        )

    async def probe(self, actor: str, action: str, args: dict[str, Any]) -> None:
        """What the raw store holds of ``actor`` now that its ``action`` returned."""
        await readings.probe(
            self.history, self.read_raw, self.layout, NAMESPACE, (actor, action, args), self.recorder.now()
        )

    async def execute(self, tg: Any, step: Step) -> None:
        if step.actor == "nemesis":
            await self.nemesis(step)
        elif step.actor.startswith("v"):
            await self.watcher(tg, step)
        else:
            await self.worker(tg, step)

    # -- workers --------------------------------------------------------------------------------------------
    async def worker(self, tg: Any, step: Step) -> None:
        name, action, now = step.actor, step.action, self.recorder.now()
        if action == "start":
            worker = Worker(name, self.backend(name), self.recorder, self.plan.ttls[name], NAMESPACE)
            self.workers[name] = worker
            scope = anyio.CancelScope()
            self.scopes[name] = scope
            tg.start_soon(self._host, scope, worker)
            return
        running = self.workers.get(name)
        if running is None or running.finished:
            return
        if action == "kill":
            running.kill()
            self.scopes[name].cancel()
            self.history.faults.append(Fault("kill", name, now, now))
        elif action == "pause":
            running.pause()
            self.history.faults.append(Fault("pause", name, now))
        elif action == "resume":
            running.resume()
            self._heal("pause", name, now)
        else:
            running.give(action, step.args)

    @staticmethod
    async def _host(scope: anyio.CancelScope, worker: Worker) -> None:
        with scope:
            await worker.run()

    # -- watchers -------------------------------------------------------------------------------------------
    async def watcher(self, tg: Any, step: Step) -> None:
        name, kind = step.actor, self.plan.watchers[step.actor]
        self.paused.setdefault(name, _set_event())
        if kind == "client":
            self.history.scopes[name] = f"{NAMESPACE}.{self.plan.client_endpoints[name]}"
        tg.start_soon(self._watch, name, kind)

    async def _watch(self, name: str, kind: str) -> None:
        """Run one watcher; one that cannot start (its store is cut off) tries again, as a supervisor would
        restart a frontend."""

        async def paused() -> None:
            await self.paused[name].wait()

        backend = self.backend(name)
        while True:
            try:
                if kind == "backend":
                    await watch_backend(name, backend, self.query, self.recorder, paused)
                else:
                    host = await RuntimeHost.start(DistributedRuntime(backend, lease_ttl=self.plan.ttl))
                    if kind == "runtime":
                        await watch_runtime(name, host.runtime, self.query, self.recorder, paused)
                    else:
                        endpoint = self.history.scopes[name]
                        await watch_client(name, host.runtime, endpoint, self.recorder, paused)
                # A watch only ends when the run cancels it: one that returns has stopped on its own.
                self.history.died[name] = self.recorder.now()
                return
            except BackendUnavailableError:
                await anyio.sleep(0.5)

    # -- the nemesis ----------------------------------------------------------------------------------------
    async def nemesis(self, step: Step) -> None:
        kind = step.args["kind"]
        now = self.recorder.now()
        if kind == "partition":
            target = step.args["target"]
            stores = [s for a, s in self.stores.items() if target in ("everyone", a)]
            reason = f"partitioned ({target})"
            if target == "everyone":
                if step.action == "fault":
                    self.cut_everyone.append(reason)
                elif reason in self.cut_everyone:
                    self.cut_everyone.remove(reason)
            for store in stores:
                if step.action == "fault":
                    store.take_down(reason)
                else:
                    store.bring_back(reason)
            self._fault(kind, target, step, now)
        elif kind == "pause_watcher":
            target = step.args["target"]
            # Pauses nest: the watcher goes on when the last one ends.
            count = self.pauses.get(target, 0) + (1 if step.action == "fault" else -1)
            self.pauses[target] = max(count, 0)
            if step.action == "fault" and count == 1:
                self.paused[target] = anyio.Event()
            elif count <= 0:
                self.paused.setdefault(target, anyio.Event()).set()
            self._fault(kind, target, step, now)
        elif kind == "break_watches":
            for store in self.stores.values():
                store.break_watches()
            self.history.faults.append(Fault(kind, "everyone", now, now))
        elif kind == "revoke":
            live = sorted(w for w, worker in self.workers.items() if not worker.finished and worker.host)
            if live:
                worker = self.workers[self.rng.choice(live)]
                assert worker.host is not None
                lease = worker.host.runtime.instance_id
                await self.memory.revoke(lease)
                self.history.faults.append(Fault(kind, worker.name, now, now, {"lease": lease}))
        elif kind == "foreign_write":
            await self.foreign_write(step.args["write"], step.args["endpoint"], now)

    def _fault(self, kind: str, target: str, step: Step, now: float) -> None:
        if step.action == "fault":
            self.history.faults.append(Fault(kind, target, now))
        else:
            self._heal(kind, target, now)

    def _heal(self, kind: str, target: str, now: float) -> None:
        for fault in reversed(self.history.faults):
            if fault.kind == kind and fault.target == target and fault.end is None:
                fault.end = now
                return

    async def foreign_write(self, write: str, endpoint: str, now: float) -> None:
        """Write into the store as someone else's process would (:meth:`~.target.Target.foreign_write`)."""
        base = self.layout.endpoint_prefix(f"{NAMESPACE}.{endpoint}")
        live = await self.memory.get_prefix(base)  # the nemesis reads the raw store
        key, value, detail = f"{base}{self.rng.getrandbits(40):x}", b"\xff\x00garbage", {"write": write}
        if write == "shape":
            value = json.dumps({"unexpected": [1, 2, 3]}).encode()
        elif write in ("noncanonical", "overwrite") and live:
            victim = self.rng.choice(sorted(live))
            head, _, ident = victim.rpartition("/")
            if write == "noncanonical":
                spelled = ident.upper() if self.rng.random() < 0.5 else ident
                key, value = f"{head}/{self.rng.choice(['0', '0x', ''])}{spelled}", live[victim]
                if key == victim:
                    key = f"{head}/0{ident}"
            else:
                key = victim
                detail["damaged"] = f"{NAMESPACE}.{endpoint}/{ident}"
                self.history.damaged.append(detail["damaged"])
        await self.memory.put(key, value, 0)
        self.history.faults.append(Fault("foreign_write", key, now, now, detail))


def _set_event() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


def simulate(plan: Plan, plants: frozenset[str] = frozenset()) -> History:
    """Run ``plan`` on the memory backend on virtual time and return its history, with the known bugs
    ``plants`` planted in the code under test (:mod:`~.plants`)."""
    if unknown := plants - set(PLANTABLE):
        raise ValueError(f"no such planted bug: {', '.join(sorted(unknown))}; known: {', '.join(PLANTABLE)}")
    seed_jitter(plan.seed)
    simulation = _Simulation(plan, plants)
    try:
        with planted(plants):
            history: History = anyio.run(simulation.run, backend_options={"loop_factory": VirtualLoop})
    finally:
        seed_jitter(None)
    return history
