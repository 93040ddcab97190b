"""The runtime's shared watches (:class:`~dyndisc.runtime.watches.Watches`) seen by the users of one query:
a user arriving while another starts the watch waits for it, gets its failure, or may give up without
keeping it; a watch block that ended leaves nothing behind in a set that lives on."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from dyndisc import (
    AccessDeniedError,
    Client,
    DiscoveryEvent,
    DistributedRuntime,
    InstanceQuery,
    KeyValueStore,
    KvDiscovery,
    Resync,
)
from dyndisc.testing import FaultyStore

MakeRuntime = Callable[..., Awaitable[DistributedRuntime]]

#: The query of the endpoint "ns.c.e" that the clients and watches below use.
E = InstanceQuery("ns", "c", "e")


class HeldBackend(KvDiscovery):
    """Counts the watches open now; a watch of ``held`` is asked for (``asked``), then waits for ``gate``
    before it is established, or refused if ``refuse``."""

    def __init__(
        self, store: KeyValueStore, held: InstanceQuery | None = None, *, refuse: bool = False
    ) -> None:
        super().__init__(store, owns_store=False)
        self.held = held
        self.refuse = refuse
        self.open = 0
        self.asked = anyio.Event()
        self.gate = anyio.Event()
        self.none_open = anyio.Event()

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        if query == self.held:
            self.asked.set()
            await self.gate.wait()
            if self.refuse:
                raise AccessDeniedError(f"not allowed to watch {query}")
        async with super().watch(query) as events:
            self.open += 1
            try:
                yield events
            finally:
                self.open -= 1
                if not self.open:
                    self.none_open.set()
                    self.none_open = anyio.Event()


async def test_a_client_arriving_while_the_watch_starts_gets_it_established(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = HeldBackend(dyndisc_store, held=E)
    worker, runtime = await dyndisc_make_runtime(), await dyndisc_make_runtime(backend)
    mine = await worker.endpoint("ns.c.e").register("tcp://h:1")
    second: list[Client] = []

    async def second_client() -> None:
        second.append(await runtime.endpoint("ns.c.e").client())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.endpoint("ns.c.e").client)
            await backend.asked.wait()
            tg.start_soon(second_client)
            await anyio.wait_all_tasks_blocked()
            assert second == [], "the second client waits for the watch the first one starts"
            backend.gate.set()
    assert second[0].instances() == [mine], "what the second client sees is the established view"
    assert backend.open == 1


async def test_a_watch_that_cannot_start_is_reported_to_every_client_waiting_for_it(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = HeldBackend(dyndisc_store, held=E, refuse=True)
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
            await backend.asked.wait()
            tg.start_soon(client)  # a second first client: it waits for the first one's start
            await anyio.wait_all_tasks_blocked()
            backend.gate.set()
    assert len(outcomes) == 2
    assert all(isinstance(o, AccessDeniedError) for o in outcomes), outcomes
    assert len(runtime.parts().watches) == 0


async def test_a_client_that_gives_up_while_another_starts_the_watch_does_not_keep_it_open(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    backend = HeldBackend(dyndisc_store, held=E)
    runtime = await dyndisc_make_runtime(backend)
    first: list[Client] = []

    async def first_client() -> None:
        first.append(await runtime.endpoint("ns.c.e").client())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first_client)
            await backend.asked.wait()
            async with anyio.create_task_group() as impatient:  # ends once the second client gave up
                impatient.start_soon(runtime.endpoint("ns.c.e").client)
                await anyio.wait_all_tasks_blocked()  # it waits for the watch the first one starts
                impatient.cancel_scope.cancel()
            backend.gate.set()
    assert backend.open == 1
    stopped = backend.none_open
    first[0].close()  # the last user: the one that gave up is no user any more
    with anyio.fail_after(2):
        await stopped.wait()
    assert len(runtime.parts().watches) == 0


async def test_a_watch_block_that_ended_is_let_go_of_by_a_set_that_lives_on(
    dyndisc_make_runtime: MakeRuntime,
) -> None:
    runtime = await dyndisc_make_runtime()
    client = await runtime.endpoint("ns.c.e").client()  # keeps the shared set (and its watch) going
    async with runtime.endpoint("ns.c.e").watch() as events:
        assert isinstance(await anext(events), Resync)
    # Kept by the set, it would take every later change (up to MAX_SUBSCRIBER_BACKLOG events) for ever:
    # a long-lived set outlives any number of short watch blocks.
    ended = weakref.ref(events)
    del events
    gc.collect()
    assert runtime.parts().watches.get(E) is client._source, "the set lives on"
    assert ended() is None, "the set still holds the events of a watch block that ended"


async def test_a_client_waiting_for_a_watch_whose_first_client_gave_up_starts_it_itself(
    dyndisc_make_runtime: MakeRuntime, dyndisc_store: FaultyStore
) -> None:
    # Found by the helper that killed this module's mutants: the second client was given the first one's
    # cancellation (neither a client nor an error it could act on), though nobody had cancelled it.
    backend = HeldBackend(dyndisc_store, held=E)
    runtime = await dyndisc_make_runtime(backend)
    outcome: list[object] = []
    answered = anyio.Event()

    async def second_client() -> None:
        try:
            outcome.append(await runtime.endpoint("ns.c.e").client())
        except BaseException as exc:  # whatever it is told: it was not cancelled itself
            outcome.append(exc)
        answered.set()

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as impatient:
            impatient.start_soon(runtime.endpoint("ns.c.e").client)
            with anyio.fail_after(2):
                await backend.asked.wait()
            tg.start_soon(second_client)
            await anyio.wait_all_tasks_blocked()
            impatient.cancel_scope.cancel()  # the first client gives up
        backend.gate.set()
        with anyio.fail_after(5):
            await answered.wait()
    assert isinstance(outcome[0], Client), outcome
    assert runtime.parts().watches.get(E) is not None, "the second client's watch runs"
