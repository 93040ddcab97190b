"""The fault suite's shared pieces: watchers that keep an instance set, and THE invariant check.

Every scenario ends in :func:`assert_converged`: after the fault heals, every watcher's instance set equals
the set of live registrations (what a fresh backend's ``list()`` reads, and what the runtimes say they
registered), within a stated bound, with no instance lost and no phantom left.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskStatus

from dyndisc import (
    Added,
    DiscoveryBackend,
    DistributedRuntime,
    EndpointId,
    Instance,
    InstanceQuery,
    Removed,
    Resync,
)

Key = tuple[EndpointId, int]
Fresh = Callable[[], DiscoveryBackend]

#: Seconds within which a change must reach a connected watcher (generous: 2 shared cores, other tests).
PROMPT = 10.0


def key_of(instance: Instance) -> Key:
    """``instance.key``, computed afresh: ``Instance.key`` is a cached property that ``model_copy`` carries
    over, so an instance the runtime moved to a new lease id still reports its old key (a core bug)."""
    return (instance.endpoint_id, instance.instance_id)


def unique_namespace(prefix: str = "f") -> str:
    """A namespace no other test uses, so tests can share one server."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class Watcher:
    """One consumer's view: the instance set built from a backend watch's events, as a client keeps it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.instances: dict[Key, Instance] = {}
        self.resyncs = 0
        self.events = 0
        self.changed = anyio.Event()
        #: When each key was last seen leaving (``time.monotonic()``), for detection-time figures.
        self.removed_at: dict[Key, float] = {}
        self.added_at: dict[Key, float] = {}

    def apply(self, event: Added | Removed | Resync) -> None:
        now = time.monotonic()
        self.events += 1
        if isinstance(event, Resync):
            self.resyncs += 1
            fresh = {key_of(i): i for i in event.instances}
            for key in self.instances.keys() - fresh.keys():
                self.removed_at[key] = now
            for key in fresh.keys() - self.instances.keys():
                self.added_at[key] = now
            self.instances = fresh
        elif isinstance(event, Added):
            self.added_at.setdefault(key_of(event.instance), now)
            self.instances[key_of(event.instance)] = event.instance
        else:
            if self.instances.pop(event.key, None) is not None:
                self.removed_at[event.key] = now
        self.changed.set()
        self.changed = anyio.Event()

    async def run(
        self, backend: DiscoveryBackend, query: InstanceQuery, *, task_status: TaskStatus[None]
    ) -> None:
        """Follow ``backend.watch(query)``; report started once the first ``Resync`` is applied.

        An exception here ends the enclosing task group, so a dead watch task fails the test.
        """
        async with backend.watch(query) as events:
            first = await anext(events)
            assert isinstance(first, Resync), f"{self.name}: the first event must be a Resync, got {first}"
            self.apply(first)
            task_status.started()
            async for event in events:
                self.apply(event)

    async def wait_for(self, condition: Callable[[Watcher], bool], timeout: float, what: str) -> None:
        """Wait (on change events) until ``condition(self)`` holds; fail naming ``what`` after ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                while not condition(self):
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {what}") from None


@asynccontextmanager
async def watching(
    backends: Sequence[DiscoveryBackend], query: InstanceQuery, name: str = "watcher"
) -> AsyncIterator[list[Watcher]]:
    """One :class:`Watcher` per backend, each established (first Resync applied) before this yields."""
    watchers = [Watcher(f"{name}-{n}") for n in range(len(backends))]
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(PROMPT * 3):
            for watcher, backend in zip(watchers, backends, strict=True):
                await tg.start(watcher.run, backend, query)
        yield watchers
        tg.cancel_scope.cancel()


def registrations(runtimes: Iterable[DistributedRuntime], query: InstanceQuery) -> dict[Key, Instance]:
    """What the live runtimes say they have registered and match ``query``: the expected truth."""
    return {key_of(i): i for rt in runtimes for i in rt.registrations if query.matches(i.endpoint_id)}


def _describe(keys: Iterable[Key]) -> str:
    shown = sorted(f"{e.path}/{i:x}" for e, i in keys)
    return ", ".join(shown[:8]) + (f" ... ({len(shown)} in all)" if len(shown) > 8 else "")


async def assert_converged(
    watchers: Sequence[Watcher],
    fresh: Fresh,
    query: InstanceQuery,
    *,
    bound: float,
    expected: Callable[[], dict[Key, Instance]] | None = None,
    what: str = "convergence",
) -> float:
    """THE invariant: within ``bound`` seconds, every watcher's set equals the live registrations.

    The truth is read with ``fresh()`` (a new backend, none of the ones under test) and ``list(query)``;
    when ``expected`` is given (usually :func:`registrations` of the live runtimes) the truth must equal it
    too, so an instance lost from the store is caught as well as one lost by a watcher. Fails listing every
    lost instance and every phantom; returns the seconds it took.
    """
    started = time.monotonic()
    truth: dict[Key, Instance] = {}
    want: dict[Key, Instance] | None = None
    async with fresh() as reader:
        with anyio.move_on_after(bound):
            while True:
                truth = {key_of(i): i for i in await reader.list(query)}
                want = expected() if expected is not None else None
                if (want is None or truth == want) and all(w.instances == truth for w in watchers):
                    return time.monotonic() - started
                # Store-side changes (an expiry) have no event for us: re-read the truth a few times a second.
                with anyio.move_on_after(0.2):
                    if watchers:
                        await watchers[0].changed.wait()
                    else:
                        await anyio.sleep(0.2)
    problems: list[str] = []
    if want is not None and truth != want:
        problems.append(
            f"store vs live registrations: lost [{_describe(want.keys() - truth.keys())}], "
            f"phantom [{_describe(truth.keys() - want.keys())}], "
            f"stale [{_describe(k for k in want.keys() & truth.keys() if want[k] != truth[k])}]"
        )
    for w in watchers:
        if w.instances != truth:
            seen = w.instances
            problems.append(
                f"{w.name}: lost [{_describe(truth.keys() - seen.keys())}], "
                f"phantom [{_describe(seen.keys() - truth.keys())}], "
                f"stale [{_describe(k for k in truth.keys() & seen.keys() if truth[k] != seen[k])}]"
            )
    raise AssertionError(f"no {what} within {bound}s ({len(truth)} live): " + "; ".join(problems))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def figure(label: str, values: Sequence[float]) -> str:
    """``label: n=.. p50=..s p99=..s max=..s``, printed by the scenarios for docs/reliability.md."""
    return (
        f"{label}: n={len(values)} p50={percentile(values, 50):.2f}s p99={percentile(values, 99):.2f}s "
        f"max={max(values):.2f}s"
    )
