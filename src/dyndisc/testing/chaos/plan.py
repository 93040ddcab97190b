"""The workload and the faults of one chaos run, drawn from its seed: one seed, one plan.

A plan is a list of timed :class:`Step` s. Workers start (some late), register endpoints, register them
again with new metadata, unregister, exit cleanly, are killed or paused past their TTL; watchers of every kind
start (some late) and are paused; the nemesis injects the faults its backend has and heals each of them. The
last fault heals and the last operation happens by 80 % of the run; the rest is quiet, so that the checker
can judge convergence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: Watcher kinds: a backend watch, ``runtime.watch()``, a ``Client`` of one endpoint, the CLI's NDJSON watch.
WATCHER_KINDS = ("backend", "runtime", "client", "cli")
#: Endpoints the workload uses (a small pool, so that runtimes share endpoints).
ENDPOINTS = tuple(f"c{c}.e{e}" for c in range(2) for e in range(2))
#: Foreign writes the nemesis makes straight into the store.
FOREIGN_WRITES = ("garbage", "shape", "noncanonical", "overwrite")


@dataclass(frozen=True)
class Step:
    """What ``actor`` does at ``at`` seconds: ``action`` with ``args``."""

    at: float
    actor: str
    action: str
    args: dict[str, Any] = field(default_factory=dict, hash=False)


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


def make_plan(
    seed: int,
    *,
    duration: float,
    ttl: float,
    faults: tuple[str, ...],
    watcher_kinds: tuple[str, ...] = WATCHER_KINDS,
    workers: tuple[int, int] = (3, 5),
) -> Plan:
    """The plan of ``seed``: a workload over ``duration`` seconds and faults drawn from ``faults``."""
    rng = random.Random(seed)
    steps: list[Step] = []
    busy_until = 0.8 * duration
    n_workers = rng.randint(*workers)
    names = [f"w{n}" for n in range(n_workers)]
    watchers: dict[str, str] = {}
    clients: dict[str, str] = {}
    for n, kind in enumerate(watcher_kinds):
        name = f"v{n}"
        watchers[name] = kind
        if kind == "client":
            clients[name] = rng.choice(ENDPOINTS)
        # Most watchers start at once; one in four starts late, during the workload.
        at = 0.0 if rng.random() < 0.75 else round(rng.uniform(0.1, 0.6) * duration, 3)
        steps.append(Step(at, name, "watch", {"kind": kind}))
    alive: dict[str, float] = {}  # worker -> when it may act again (not paused)
    for name in names:
        at = 0.0 if rng.random() < 0.7 else round(rng.uniform(0.05, 0.5) * duration, 3)
        steps.append(Step(at, name, "start"))
        alive[name] = at
    registered: dict[str, set[str]] = {name: set() for name in names}
    spawned = n_workers
    t = 0.1
    while t < busy_until:
        t = round(t + rng.uniform(0.05, 0.5), 3)
        if t >= busy_until:
            break
        ready = [w for w, since in alive.items() if since <= t]
        roll = rng.random()
        if roll < 0.08 or not ready:
            name = f"w{spawned}"
            spawned += 1
            names.append(name)
            registered[name] = set()
            alive[name] = t
            steps.append(Step(t, name, "start"))
            continue
        worker = rng.choice(sorted(ready))
        if roll < 0.6 or not registered[worker]:
            endpoint = rng.choice(ENDPOINTS)
            metadata = {"v": rng.randint(0, 9)} if rng.random() < 0.7 else {}
            transport = f"tcp://10.0.{int(worker[1:]) % 250}.1:{rng.randint(9000, 9003)}"
            steps.append(
                Step(
                    t,
                    worker,
                    "register",
                    {"endpoint": endpoint, "transport": transport, "metadata": metadata},
                )
            )
            registered[worker].add(endpoint)
        elif roll < 0.75:
            endpoint = rng.choice(sorted(registered[worker]))
            steps.append(Step(t, worker, "unregister", {"endpoint": endpoint}))
            registered[worker].discard(endpoint)
        elif roll < 0.82:
            steps.append(Step(t, worker, "exit"))
            del alive[worker]
        elif roll < 0.9:
            steps.append(Step(t, worker, "kill"))
            del alive[worker]
        else:
            # Paused past its TTL (a SIGSTOP): the server may end its lease meanwhile.
            length = round(ttl * rng.uniform(0.5, 2.0), 3)
            end = min(t + length, busy_until)
            steps.append(Step(t, worker, "pause"))
            steps.append(Step(end, worker, "resume"))
            alive[worker] = end
    steps += _faults(rng, faults, duration, ttl, list(alive) or names, list(watchers))
    steps.sort(key=lambda s: (s.at, s.actor, s.action))
    return Plan(seed, duration, ttl, steps, names, watchers, clients)


def _faults(
    rng: random.Random,
    kinds: tuple[str, ...],
    duration: float,
    ttl: float,
    workers: list[str],
    watchers: list[str],
) -> list[Step]:
    steps: list[Step] = []
    if not kinds:
        return steps
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(kinds)
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
