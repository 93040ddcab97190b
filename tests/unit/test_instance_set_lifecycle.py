"""The life of one shared :class:`~dyndisc.InstanceSet` seen from outside: a release made on another thread
counts once (the set goes on for the users it has left); a watch that cannot start costs the backend one
request, whoever waits for it; a watch that breaks makes the view stale until it resumes, is asked for again
after a backoff that starts over with each recovery, and a resumed snapshot that changed nothing tells the
subscribers nothing; a set closed without saying it was clean tells its subscribers why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

from dyndisc import (
    AccessDeniedError,
    Added,
    Client,
    DiscoveryEvent,
    DistributedRuntime,
    Instance,
    InstanceQuery,
    InstanceSet,
    KeyValueStore,
    KvDiscovery,
    MemoryStore,
    Resync,
    RuntimeNotStartedError,
    _instance_set,
)
from dyndisc.testing import FaultyStore

MakeRuntime = Callable[..., Awaitable[DistributedRuntime]]

#: The query of the endpoint "ns.c.e" that the clients and watches below use.
E = InstanceQuery("ns", "c", "e")


class CountingBackend(KvDiscovery):
    """Counts the watches of ``E`` asked for (``asked``) and open now (``open``); with ``refuse``, a watch of
    ``E`` waits for ``gate`` and is then refused."""

    def __init__(self, store: KeyValueStore, *, refuse: bool = False) -> None:
        super().__init__(store, owns_store=False)
        self.refuse = refuse
        self.asked = 0
        self.open = 0
        self.first_asked = anyio.Event()
        self.gate = anyio.Event()

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        if query == E:
            self.asked += 1
            self.first_asked.set()
            if self.refuse:
                await self.gate.wait()
                raise AccessDeniedError(f"not allowed to watch {query}")
        async with super().watch(query) as events:
            self.open += 1
            try:
                yield events
            finally:
                self.open -= 1


class _Relay:
    """The events of one watch, and a hook told before each next one is asked for (by then the set has
    applied every event before it)."""

    def __init__(
        self, events: AsyncIterator[DiscoveryEvent], before_next: Callable[[int], Awaitable[bool]]
    ) -> None:
        self._events = events
        self._before_next = before_next
        self._taken = 0

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> DiscoveryEvent:
        if not await self._before_next(self._taken):
            raise StopAsyncIteration  # the stream ends: the set re-establishes its watch
        self._taken += 1
        return await anext(self._events)


class BreakingBackend(KvDiscovery):
    """Its first ``breaks`` watches of ``E`` end right after their snapshot once ``cut`` is set (a dropped
    connection: the set watches again). Its second watch of ``E`` is established once ``reopen`` is set
    (``reasked`` says it was asked for); ``resumed`` is set once the last one's snapshot was applied."""

    def __init__(self, store: KeyValueStore, *, breaks: int = 1) -> None:
        super().__init__(store, owns_store=False)
        self.breaks = breaks
        self.watches = 0
        self.cut = anyio.Event()
        self.reasked = anyio.Event()
        self.reopen = anyio.Event()
        self.resumed = anyio.Event()

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        if query != E:
            async with super().watch(query) as events:
                yield events
            return
        self.watches += 1
        nth = self.watches
        if nth == 2:
            self.reasked.set()
            await self.reopen.wait()

        async def before_next(taken: int) -> bool:
            if taken == 1 and nth <= self.breaks:
                await self.cut.wait()
                return False
            if taken == 1 and nth == self.breaks + 1:
                self.resumed.set()
            return True

        async with super().watch(query) as events:
            yield _Relay(events, before_next)


async def until_seen(client: Client, expected: list[Instance]) -> None:
    with anyio.fail_after(5):
        while client.instances() != expected:
            await client.wait_changed()


async def test_a_client_closed_on_another_thread_counts_as_one_user_gone(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = CountingBackend(dyndisc_store)
    worker, other = await dyndisc_make_runtime(), await dyndisc_make_runtime()
    runtime = await dyndisc_make_runtime(backend)
    gone = await runtime.endpoint("ns.c.e").client()
    staying = await runtime.endpoint("ns.c.e").client()
    await anyio.to_thread.run_sync(gone.close)  # as a garbage collection in another thread would
    first = await worker.endpoint("ns.c.e").register("tcp://h:1")  # the set takes the release here
    await until_seen(staying, [first])
    assert runtime.parts().watches.get(E) is not None, "the client left still uses the watch"
    second = await other.endpoint("ns.c.e").register("tcp://h:2")
    # Its view is still kept current.
    await until_seen(staying, sorted([first, second], key=lambda i: i.instance_id))
    assert backend.asked == 1
    assert backend.open == 1
    staying.close()  # the last user: now the watch stops
    assert runtime.parts().watches.get(E) is None


async def test_a_watch_that_cannot_start_is_asked_of_the_backend_once_for_all_its_waiting_clients(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = CountingBackend(dyndisc_store, refuse=True)
    runtime = await dyndisc_make_runtime(backend)
    outcomes: list[Client | AccessDeniedError] = []

    async def client() -> None:
        try:
            outcomes.append(await runtime.endpoint("ns.c.e").client())
        except AccessDeniedError as exc:
            outcomes.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client)
            await backend.first_asked.wait()
            tg.start_soon(client)  # it waits for the first one's watch, and is told its refusal
            await anyio.wait_all_tasks_blocked()
            backend.gate.set()
    assert len(outcomes) == 2
    assert all(isinstance(o, AccessDeniedError) for o in outcomes), outcomes
    assert backend.asked == 1, "the waiting client was told the refusal, not left to be refused again"


async def test_a_resumed_watch_whose_snapshot_changed_nothing_tells_its_subscribers_nothing(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = BreakingBackend(dyndisc_store)
    backend.reopen.set()
    worker, other = await dyndisc_make_runtime(), await dyndisc_make_runtime()
    runtime = await dyndisc_make_runtime(backend)
    mine = await worker.endpoint("ns.c.e").register("tcp://h:1")
    async with runtime.endpoint("ns.c.e").watch() as events:
        assert await anext(events) == Resync(instances=(mine,))
        found = runtime.parts().watches.get(E)
        assert found is not None
        backend.cut.set()  # the watch breaks; the set watches again, and gets the same snapshot
        with anyio.fail_after(5):
            await backend.resumed.wait()
        assert backend.watches == 2
        assert found.resyncs == 2, "the set counts the snapshots it took: one per watch"
        theirs = await other.endpoint("ns.c.e").register("tcp://h:2")
        with anyio.fail_after(5):
            after = await anext(events)
        assert after == Added(theirs), "the subscriber is told the change, and no repeat of what it knew"


async def test_a_client_s_view_is_stale_while_its_watch_is_broken_and_current_again_once_it_resumed(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = BreakingBackend(dyndisc_store)
    runtime = await dyndisc_make_runtime(backend)
    client = await runtime.endpoint("ns.c.e").client()
    assert client.stale_since is None
    backend.cut.set()
    with anyio.fail_after(5):
        await backend.reasked.wait()  # the set watches again: the watch is not established yet
    assert client.stale_since is not None, "the view may miss changes while the watch is down"
    backend.reopen.set()
    with anyio.fail_after(5):
        await backend.resumed.wait()
    assert client.stale_since is None, "the resumed watch's snapshot made the view current again"


async def test_a_watch_that_broke_is_not_asked_for_again_at_once(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long first delay (its jitter draws it from [0, 1 h]): the set is surely still waiting below.
    monkeypatch.setattr(_instance_set, "RESUME_INITIAL", 3600.0)
    monkeypatch.setattr(_instance_set, "RESUME_CAP", 3600.0)
    backend = BreakingBackend(dyndisc_store)
    backend.reopen.set()
    runtime = await dyndisc_make_runtime(backend)
    client = await runtime.endpoint("ns.c.e").client()
    backend.cut.set()
    with anyio.fail_after(5):
        await anyio.wait_all_tasks_blocked()
    assert backend.watches == 1, "a broken watch is asked for again after a backoff, not in a tight loop"
    assert client.stale_since is not None


async def test_a_watch_that_breaks_again_after_each_recovery_comes_back_at_its_first_delay_each_time(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each recovery starts the backoff over: twenty breaks cost twenty first delays (at most 1 ms each),
    # where a backoff that went on doubling would wait seconds, then minutes, by the last ones.
    monkeypatch.setattr(_instance_set, "RESUME_INITIAL", 0.001)
    monkeypatch.setattr(_instance_set, "RESUME_CAP", 100.0)
    backend = BreakingBackend(dyndisc_store, breaks=20)
    backend.cut.set()
    backend.reopen.set()
    runtime = await dyndisc_make_runtime(backend)
    client = await runtime.endpoint("ns.c.e").client()
    with anyio.fail_after(5):
        await backend.resumed.wait()
    assert backend.watches == 21
    assert client.stale_since is None


async def test_a_set_closed_without_saying_it_was_clean_tells_its_subscribers_why() -> None:
    found = InstanceSet(KvDiscovery(MemoryStore()), E)
    told = found.subscribe()
    why = RuntimeNotStartedError("the runtime stopped: this view no longer changes")
    found.close(why)
    assert isinstance(await anext(told), Resync), "what was delivered before comes first"
    with pytest.raises(RuntimeNotStartedError) as raised:
        await anext(told)
    assert raised.value is why
    # Only a close that says it was clean ends an iteration quietly.
    other = InstanceSet(KvDiscovery(MemoryStore()), E)
    quiet = other.subscribe()
    other.close(why, clean=True)
    assert [type(event) async for event in quiet] == [Resync]
