"""The workload and the faults of one chaos run, drawn from its seed: one seed, one plan.

A plan is a list of timed :class:`Step` s. Workers start (some late), each with a lease TTL of its own
drawn from the target's; they register endpoints (with a plain or ``DynamoTcp`` transport, ready or
draining), register them again with new metadata or readiness, register bursts of endpoints at once, and
in some seeds thousands in bulk; they unregister, put and delete metadata entries (bound to the lease or
not), register and withdraw model cards and event channels; some calls are cancelled mid-flight by their
caller; workers exit cleanly, are killed or paused past their TTL. Watchers of every kind start (some late)
and are paused; some seeds have one worker and one watcher only. The nemesis injects the faults its backend
has (in every seed one of those its target requires, if any) and heals each of them. The last fault heals
and the last operation happens by 80 % of the run; the rest is quiet, so that the checker can judge
convergence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: Watcher kinds: a backend watch, ``runtime.watch()``, a ``Client`` of one endpoint, the CLI's NDJSON watch.
WATCHER_KINDS = ("backend", "runtime", "client", "cli")
#: Endpoints the workload uses (a small pool, so that runtimes share endpoints).
ENDPOINTS = tuple(f"c{c}.e{e}" for c in range(2) for e in range(3))
#: Foreign writes the nemesis makes straight into the store.
FOREIGN_WRITES = ("garbage", "shape", "noncanonical", "overwrite")
#: What a worker does at a step, with its weight.
ACTIONS = {
    "register": 36,
    "unregister": 10,
    "put_entry": 8,
    "delete_entry": 3,
    "register_model": 4,
    "unregister_model": 2,
    "register_channel": 3,
    "unregister_channel": 2,
    "burst": 3,
    "exit": 5,
    "kill": 5,
    "pause": 6,
}
#: Metadata entry keys a worker writes (``<namespace>/<worker>/<key>`` of the workload's bucket).
ENTRY_KEYS = ("k0", "k1", "k2")


@dataclass(frozen=True)
class Step:
    """What ``actor`` does at ``at`` seconds: ``action`` with ``args``."""

    at: float
    actor: str
    action: str
    args: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Workload:
    """What a target lets the plan draw: its faults, watcher kinds, lease TTLs, layouts, bulk sizes."""

    faults: tuple[str, ...]
    #: Faults of which every seed draws one (its first fault): a target's own, which each seed must meet.
    every_seed: tuple[str, ...] = ()
    watcher_kinds: tuple[str, ...] = WATCHER_KINDS
    #: Lease TTLs a worker may have (seconds), the first ones likelier.
    ttls: tuple[float, ...] = (2.0,)
    layouts: tuple[str, ...] = ("dyndisc",)
    workers: tuple[int, int] = (3, 5)
    #: Endpoints of a bulk registration (a seed in ``bulk_chance`` has one), and of a burst.
    bulk: tuple[int, int] = (1000, 5000)
    bulk_chance: float = 0.03
    burst: tuple[int, int] = (5, 30)
    #: The chance of a seed with one worker and one watcher.
    lone_chance: float = 0.08
    #: Seconds after which a cancelled call is cancelled (its caller's ``move_on_after``).
    cancel_after: tuple[float, float] = (0.0, 0.03)


@dataclass
class Plan:
    """Every step of one run, in time order, and the actors it has."""

    seed: int
    duration: float
    ttl: float
    steps: list[Step]
    workers: list[str]
    watchers: dict[str, str]  # name -> kind
    #: The endpoint a ``client`` watcher follows.
    client_endpoints: dict[str, str]
    #: The key layout of the run's runtimes and watchers.
    layout: str = "dyndisc"
    #: Each worker's lease TTL.
    ttls: dict[str, float] = field(default_factory=dict)


def make_plan(seed: int, *, duration: float, workload: Workload) -> Plan:
    """The plan of ``seed``: a workload over ``duration`` seconds with what ``workload`` allows."""
    rng = random.Random(seed)
    layout = rng.choice(workload.layouts)
    base_ttl = _ttl(rng, workload.ttls)
    lone = rng.random() < workload.lone_chance
    drawer = _Drawer(rng, workload, layout)
    steps: list[Step] = []
    busy_until = 0.8 * duration
    watchers: dict[str, str] = {}
    clients: dict[str, str] = {}
    kinds = (rng.choice(workload.watcher_kinds),) if lone else workload.watcher_kinds
    for n, kind in enumerate(kinds):
        name = f"v{n}"
        watchers[name] = kind
        if kind == "client":
            clients[name] = rng.choice(ENDPOINTS)
        # Most watchers start at once; one in four starts late, during the workload.
        at = 0.0 if lone or rng.random() < 0.75 else round(rng.uniform(0.1, 0.6) * duration, 3)
        steps.append(Step(at, name, "watch", {"kind": kind}))
    n_workers = 1 if lone else rng.randint(*workload.workers)
    names = [f"w{n}" for n in range(n_workers)]
    ttls = {name: base_ttl if rng.random() < 0.7 else _ttl(rng, workload.ttls) for name in names}
    alive: dict[str, float] = {}  # worker -> when it may act again (not paused)
    for name in names:
        at = 0.0 if lone or rng.random() < 0.7 else round(rng.uniform(0.05, 0.5) * duration, 3)
        steps.append(Step(at, name, "start"))
        alive[name] = at
    bulk_at = rng.uniform(0.1, 0.5) * duration if rng.random() < workload.bulk_chance else None
    t = 0.1
    while True:
        t = round(t + rng.uniform(0.05, 0.5), 3)
        if t >= busy_until:
            break
        ready = sorted(w for w, since in alive.items() if since <= t)
        if lone and not ready:
            continue  # its one worker is paused or gone: a lone seed never gets another
        if not ready or (not lone and rng.random() < 0.06):
            name = f"w{len(names)}"
            names.append(name)
            ttls[name] = base_ttl if rng.random() < 0.7 else _ttl(rng, workload.ttls)
            alive[name] = t
            steps.append(Step(t, name, "start"))
            continue
        worker = rng.choice(ready)
        if bulk_at is not None and t >= bulk_at:
            bulk_at = None
            steps.append(Step(t, worker, "bulk", drawer.bulk(worker)))
            continue
        action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        if action in ("exit", "kill"):
            steps.append(Step(t, worker, action))
            del alive[worker]
        elif action == "pause":
            # Paused (a SIGSTOP) for up to twice its TTL: the server may end its lease meanwhile.
            end = min(round(t + ttls[worker] * rng.uniform(0.5, 2.0), 3), busy_until)
            steps += [Step(t, worker, "pause"), Step(end, worker, "resume")]
            alive[worker] = end
        else:
            steps.append(Step(t, worker, *drawer.call(worker, action)))
    steps += _faults(rng, workload, duration, base_ttl, list(alive) or names, list(watchers))
    steps.sort(key=lambda s: (s.at, s.actor, s.action))
    return Plan(seed, duration, base_ttl, steps, names, watchers, clients, layout, ttls)


def _ttl(rng: random.Random, ttls: tuple[float, ...]) -> float:
    # The first TTLs of the list are the likelier: long ones make long runs.
    return rng.choices(ttls, weights=[2**-n for n in range(len(ttls))])[0]


class _Drawer:
    """Draws the arguments of a worker's calls, and remembers what each worker registered."""

    def __init__(self, rng: random.Random, workload: Workload, layout: str) -> None:
        self.rng = rng
        self.workload = workload
        self.layout = layout
        self.registered: dict[str, set[str]] = {}
        self.entries: dict[str, set[str]] = {}
        self.models: dict[str, set[tuple[str, str | None]]] = {}
        self.channels: dict[str, set[tuple[str, int]]] = {}
        #: An endpoint whose registration the worker cancelled: its application cleans it up next.
        self.cleanup: dict[str, str] = {}
        self.bursts = 0

    def _cancel(self) -> dict[str, Any]:
        if self.rng.random() < 0.08:
            return {"cancel_after": round(self.rng.uniform(*self.workload.cancel_after), 4)}
        return {}

    def _transport(self, worker: str) -> Any:
        host = f"10.0.{int(worker[1:]) % 250}.1"
        port = self.rng.randint(9000, 9003)
        roll = self.rng.random()
        if roll < 0.35:
            return {"dynamo_tcp": [host, port]}
        if roll < 0.5 and self.layout == "dyndisc":  # the reference cannot call http: dynamo-v1 refuses it
            return f"http://{host}:{port}"
        return f"tcp://{host}:{port}"

    def registration(self, worker: str, endpoint: str) -> dict[str, Any]:
        return {
            "endpoint": endpoint,
            "transport": self._transport(worker),
            "metadata": {"v": self.rng.randint(0, 9)} if self.rng.random() < 0.7 else {},
            "readiness": "draining" if self.rng.random() < 0.15 else "ready",
        }

    def bulk(self, worker: str) -> dict[str, Any]:
        host = f"10.1.{int(worker[1:]) % 250}.1"
        return {
            "component": f"bulk{worker[1:]}",
            "count": self.rng.randint(*self.workload.bulk),
            "transport": {"dynamo_tcp": [host, 9100]},
            "metadata": {"bulk": True},
        }

    def call(self, worker: str, action: str) -> tuple[str, dict[str, Any]]:
        """The action ``worker`` does (another one when it has nothing to undo) and its arguments."""
        rng = self.rng
        registered = self.registered.setdefault(worker, set())
        if worker in self.cleanup:
            endpoint = self.cleanup.pop(worker)
            registered.discard(endpoint)
            return "unregister", {"endpoint": endpoint}
        if action == "unregister" and registered:
            endpoint = rng.choice(sorted(registered))
            registered.discard(endpoint)
            return action, {"endpoint": endpoint, **self._cancel()}
        if action == "burst":
            self.bursts += 1
            count = rng.randint(*self.workload.burst)
            endpoints = [f"burst{self.bursts}.e{n}" for n in range(count)]
            registered.update(endpoints)
            return action, {"registrations": [self.registration(worker, e) for e in endpoints]}
        if action in ("put_entry", "delete_entry"):
            entries = self.entries.setdefault(worker, set())
            if action == "delete_entry" and entries:
                key = rng.choice(sorted(entries))
                entries.discard(key)
                return action, {"key": key}
            key = rng.choice(ENTRY_KEYS)
            entries.add(key)
            value = {"n": rng.randint(0, 99), "by": worker}
            return "put_entry", {"key": key, "value": value, "bound": rng.random() < 0.7, **self._cancel()}
        if action in ("register_model", "unregister_model"):
            models = self.models.setdefault(worker, set())
            if action == "unregister_model" and models:
                endpoint, lora = rng.choice(sorted(models, key=str))
                models.discard((endpoint, lora))
                return action, {"endpoint": endpoint, "lora": lora}
            endpoint, lora = rng.choice(ENDPOINTS), rng.choice([None, None, "lora1"])
            models.add((endpoint, lora))
            return "register_model", {"endpoint": endpoint, "lora": lora, "model": f"m{rng.randint(0, 3)}"}
        if action in ("register_channel", "unregister_channel"):
            channels = self.channels.setdefault(worker, set())
            if action == "unregister_channel" and channels:
                endpoint, topic = rng.choice(sorted(channels))
                channels.discard((endpoint, topic))
                return action, {"endpoint": endpoint, "topic": topic}
            endpoint, topic = rng.choice(ENDPOINTS), rng.randrange(2)
            channels.add((endpoint, topic))
            return "register_channel", {"endpoint": endpoint, "topic": topic, "port": rng.randint(5000, 5999)}
        # register (and whatever had nothing to undo): a new endpoint, or an update of one (new metadata,
        # another readiness: a draining update)
        endpoint = rng.choice(ENDPOINTS)
        registered.add(endpoint)
        cancel = self._cancel()
        if cancel and rng.random() < 0.5:
            self.cleanup[worker] = endpoint
        return "register", {**self.registration(worker, endpoint), **cancel}


def _faults(
    rng: random.Random,
    workload: Workload,
    duration: float,
    ttl: float,
    workers: list[str],
    watchers: list[str],
) -> list[Step]:
    steps: list[Step] = []
    kinds = workload.faults
    if not kinds:
        return steps
    for n in range(rng.randint(2, 4)):
        # Drawn as ever when nothing is required: the seeds of the other targets keep their plans.
        kind = rng.choice(workload.every_seed if n == 0 and workload.every_seed else kinds)
        start = round(rng.uniform(0.1, 0.6) * duration, 3)
        length = round(ttl * rng.uniform(0.3, 2.5), 3)
        end = round(min(start + length, 0.78 * duration), 3)
        args: dict[str, Any] = {"kind": kind}
        if kind == "partition":
            args["target"] = rng.choice([*workers, *watchers, "everyone"])
        elif kind == "pause_watcher":
            args["target"] = rng.choice(watchers)
        elif kind == "foreign_write":
            args["write"] = rng.choice(FOREIGN_WRITES)
            args["endpoint"] = rng.choice(ENDPOINTS)
            steps.append(Step(start, "nemesis", "fault", args))
            continue  # instant
        elif kind in ("revoke", "compact", "break_watches"):
            steps.append(Step(start, "nemesis", "fault", args))
            continue  # instant
        steps.append(Step(start, "nemesis", "fault", args))
        steps.append(Step(end, "nemesis", "heal", args))
    return steps
