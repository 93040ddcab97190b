"""The runtime's watches: one shared :class:`~dyndisc.InstanceSet` per query, started on its first user and
stopped with its last (or kept for the runtime's life once pinned)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from dyndisc._errors import RuntimeNotStartedError
from dyndisc._events import DiscoveryEvent
from dyndisc._instance_set import InstanceSet
from dyndisc._models import InstanceQuery
from dyndisc.backends.base import DiscoveryBackend


class Watches:
    """The live sets of a running runtime, by query; their watches run in the runtime's task group."""

    def __init__(self, backend: DiscoveryBackend, tasks: TaskGroup) -> None:
        self.backend = backend
        self._tasks: TaskGroup | None = tasks
        self._sets: dict[InstanceQuery, InstanceSet] = {}

    def __len__(self) -> int:
        """How many queries are watched now."""
        return len(self._sets)

    def get(self, query: InstanceQuery) -> InstanceSet | None:
        """The live set of ``query``, if it is watched now."""
        return self._sets.get(query)

    async def pinned(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, kept for the runtime's life; established before it returns."""
        found = await self.acquire(query)
        found.pin()
        return found

    async def acquire(self, query: InstanceQuery) -> InstanceSet:
        """The shared live set for ``query``, with one more user: :meth:`InstanceSet.release` it when done.

        Waiting for a watch to be established holds no lock: a slow watch delays only the users of its
        own query.
        """
        while True:
            found = self._sets.get(query)
            if found is None:
                if self._tasks is None:
                    raise RuntimeNotStartedError(
                        "watches need a running runtime: 'async with DistributedRuntime()'"
                    )
                # Recorded before the watch starts: a second first user of the query waits for this one.
                found = self._sets[query] = InstanceSet(self.backend, query, on_unused=self._forget)
                found.acquire()
                try:
                    await self._tasks.start(found.run_until_unused)
                except anyio.get_cancelled_exc_class():
                    # This user gave up, not the watch: the users waiting for it start one themselves.
                    found.abandoned()
                    raise
                except BaseException as exc:
                    found.failed(exc)
                    raise
                return found
            found.acquire()
            try:
                await found.wait_started()
            except BaseException:
                found.release()
                raise
            if self._sets.get(query) is found:
                return found
            found.release()  # it was stopped while we waited: start another

    @asynccontextmanager
    async def watch(self, query: InstanceQuery) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        """Events of ``query``: a ``Resync`` first, then ``Added`` / ``Removed``; live when the block
        starts, stopped when it ends, however it ends."""
        source = await self.acquire(query)
        subscription = source.subscribe()
        try:
            yield subscription
        finally:
            source.unsubscribe(subscription)
            source.release()

    def _forget(self, found: InstanceSet) -> None:
        if self._sets.get(found.query) is found:
            del self._sets[found.query]

    def close(self, why: Exception, *, clean: bool) -> None:
        """The runtime stopped: every set stops changing, and its users are told ``why``."""
        self._tasks = None
        for found in self._sets.values():
            found.detach()
            found.close(why, clean=clean)
        self._sets.clear()
