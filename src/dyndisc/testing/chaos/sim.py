"""Deterministic simulation on the memory backend: a virtual clock and seeded scheduling, one seed one run.

Every actor of a run lives in one event loop whose clock is virtual: when nothing is ready to run, the loop
jumps to the next timer instead of sleeping, so a 20-second run takes milliseconds. Lease ids, jitter and the
plan come from the seed, and the loop runs callbacks in the order they were scheduled, so a seed replays the
same history (the digest says so). Each actor reaches the shared :class:`~dyndisc.MemoryStore` through a
:class:`~dyndisc.testing.FaultyStore` of its own, so the nemesis can cut off one worker, one watcher, or
everyone.
"""

from __future__ import annotations

import asyncio
import json
import random
import selectors
from collections.abc import Mapping
from typing import Any

import anyio

from dyndisc._errors import BackendUnavailableError
from dyndisc._events import DiscoveryEvent, Resync
from dyndisc._models import InstanceQuery
from dyndisc._retry import seed_jitter
from dyndisc.backends.kv import KvDiscovery
from dyndisc.backends.memory import MemoryStore
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.chaos.actors import Worker, watch_backend, watch_client, watch_runtime
from dyndisc.testing.chaos.checker import Bounds, quiet_point
from dyndisc.testing.chaos.history import Fault, History, LeaseReport, Seen, record_of
from dyndisc.testing.chaos.plan import Plan, Step
from dyndisc.testing.faults import FaultyStore
from dyndisc.testing.hosting import RuntimeHost

#: Faults the simulation injects (a worker's kill and pause are in the workload).
FAULTS = ("partition", "break_watches", "revoke", "foreign_write", "pause_watcher")
#: Watcher kinds in the simulation (the CLI needs a process).
WATCHERS = ("backend", "runtime", "client")
#: The known bugs :func:`simulate` can plant.
PLANTABLE = ("lost-delete", "lost-write", "never-revokes", "dropped-removed", "no-resync")
BOUNDS = Bounds(converge=1.0, gone=1.0, expiry=0.5)
NAMESPACE = "chaos"
ROOT = "/services"


class _VirtualSelector(selectors.BaseSelector):
    """A selector that never waits: it moves the loop's virtual clock to the next timer instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("the simulation is stuck: every task waits and no timer is due")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time (for code that does no real I/O)."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)


class _SimRecorder:
    def __init__(self, history: History) -> None:
        self.history = history

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


class _Simulation:
    def __init__(self, plan: Plan, planted: frozenset[str]) -> None:
        self.plan = plan
        self.planted = planted
        self.rng = random.Random(plan.seed ^ 0x5EED)
        self.memory = MemoryStore(clock=anyio.current_time, rng=random.Random(plan.seed))
        self.history = History("memory", plan.seed, plan.ttl, plan.duration)
        self.recorder = _SimRecorder(self.history)
        self.query = InstanceQuery(NAMESPACE)
        self.stores: dict[str, FaultyStore] = {}
        self.workers: dict[str, Worker] = {}
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.paused: dict[str, anyio.Event] = {}
        self.watch_hosts: list[RuntimeHost] = []
        self.pauses: dict[str, int] = {}
        #: The partitions of everyone in force (their reasons).
        self.cut_everyone: list[str] = []

    def store(self, actor: str) -> FaultyStore:
        store = self.stores[actor] = FaultyStore(self.memory)
        store.lose_deletes = "lost-delete" in self.planted and actor.startswith("v")
        store.lose_writes = "lost-write" in self.planted and actor.startswith("w") and int(actor[1:]) % 2 == 1
        for reason in self.cut_everyone:  # an actor born during a partition of everyone is cut off too
            store.take_down(reason)
        return store

    def backend(self, actor: str) -> KvDiscovery:
        return KvDiscovery(self.store(actor), root=ROOT, owns_store=False)

    async def run(self) -> History:
        async with anyio.create_task_group() as tg:
            for step in self.plan.steps:
                await anyio.sleep(max(step.at - anyio.current_time(), 0.0))
                await self.execute(tg, step)
            await anyio.sleep(max(self.plan.duration - anyio.current_time(), 0.0))
            settled = quiet_point(self.history) + BOUNDS.converge + 0.5
            await anyio.sleep(max(settled - anyio.current_time(), 0.0))
            await self.read_truth()
            tg.cancel_scope.cancel()
        return self.history

    async def read_truth(self) -> None:
        reader = KvDiscovery(self.memory, root=ROOT, owns_store=False)
        self.history.truth_at = self.recorder.now()
        self.history.truth = sorted(record_of(i) for i in await reader.list(self.query))
        async with reader.watch(self.query) as events:
            first = await anext(events)
        assert isinstance(first, Resync)
        self.history.late_watch = sorted(record_of(i) for i in first.instances)

    async def execute(self, tg: Any, step: Step) -> None:
        if step.actor == "nemesis":
            await self.nemesis(step)
        elif step.actor.startswith("v"):
            await self.watcher(tg, step)
        else:
            await self.worker(tg, step)

    # -- workers --------------------------------------------------------------------------------------------
    async def worker(self, tg: Any, step: Step) -> None:
        name, action = step.actor, step.action
        if action == "start":
            worker = Worker(name, self.backend(name), self.recorder, self.plan.ttl, NAMESPACE)
            if "never-revokes" in self.planted:
                worker.backend.revoke_lease = _no_revoke  # type: ignore[method-assign]
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
        elif action == "pause":
            running.pause()
        elif action == "resume":
            running.resume()
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
                    return
                host = await RuntimeHost.start(DistributedRuntime(backend, lease_ttl=self.plan.ttl))
                self.watch_hosts.append(host)
                if kind == "runtime":
                    await watch_runtime(name, host.runtime, self.query, self.recorder, paused)
                else:
                    endpoint = self.history.scopes[name]
                    await watch_client(name, host.runtime, endpoint, self.recorder, paused)
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
            return
        for fault in reversed(self.history.faults):
            if fault.kind == kind and fault.target == target and fault.end is None:
                fault.end = now
                return

    async def foreign_write(self, write: str, endpoint: str, now: float) -> None:
        base = f"{ROOT}/{NAMESPACE}/{endpoint.replace('.', '/')}"
        live = {k: v for k, v in self.memory._items(base + "/").items()}  # the nemesis reads the raw store
        key, value = f"{base}/{self.rng.getrandbits(40):x}", b"\xff\x00garbage"
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
                self.history.damaged.append(f"{NAMESPACE}.{endpoint}/{ident}")
        await self.memory.put(key, value, 0)
        self.history.faults.append(Fault("foreign_write", key, now, now, {"write": write}))


async def _no_revoke(lease: Any) -> None:
    """A planted bug: a runtime whose clean exit does not revoke its lease."""


def _set_event() -> anyio.Event:
    event = anyio.Event()
    event.set()
    return event


def simulate(plan: Plan, planted: frozenset[str] = frozenset()) -> History:
    """Run ``plan`` on the memory backend on virtual time and return its history.

    ``planted`` plants known bugs, to show the checker catches each: ``lost-delete`` (watchers' stores
    drop deletes), ``lost-write`` (the store acknowledges odd workers' writes and drops them),
    ``never-revokes`` (a clean exit leaves the lease), ``dropped-removed`` (a watcher ignores ``Removed``),
    ``no-resync`` (a watch does not begin with its snapshot).
    """
    if unknown := planted - set(PLANTABLE):
        raise ValueError(f"no such planted bug: {', '.join(sorted(unknown))}; known: {', '.join(PLANTABLE)}")
    seed_jitter(plan.seed)
    simulation = _Simulation(plan, planted)
    history: History = anyio.run(simulation.run, backend_options={"loop_factory": VirtualLoop})
    if "dropped-removed" in planted:
        history.seen = [s for s in history.seen if not (s.kind == "removed" and s.watcher == "v0")]
    if "no-resync" in planted:
        first = next((s for s in history.seen if s.watcher == "v0" and s.kind == "resync"), None)
        history.seen = [s for s in history.seen if s is not first]
    seed_jitter(None)
    return history
