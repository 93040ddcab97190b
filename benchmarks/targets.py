"""What the benchmarks run against: a backend of dyndisc and the raw client of the same store (the limit).

Each target is an async context manager yielding a :class:`Target`. Servers are started on loopback with
``dyndisc.testing.servers`` when the target needs one.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from dyndisc import DiscoveryBackend, KvDiscovery, MemoryStore
from dyndisc.backends.kv import KeyValueStore, StorePut


class RawClient(abc.ABC):
    """The raw client of a store: leased puts and a prefix watch, with nothing of dyndisc on top."""

    @abc.abstractmethod
    async def grant(self, ttl: float) -> int: ...

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease_id: int) -> None: ...

    @abc.abstractmethod
    def watch_puts(self, prefix: str) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """Keys put under ``prefix``, as they arrive (established when entered)."""

    async def aclose(self) -> None:  # noqa: B027 - most raw clients hold nothing
        """Release the client."""


class StoreRawClient(RawClient):
    """A :class:`KeyValueStore` used directly: for memory, the limit dyndisc's own layers can approach."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def grant(self, ttl: float) -> int:
        return (await self.store.grant(ttl)).id

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        await self.store.put(key, value, lease_id)

    @asynccontextmanager
    async def watch_puts(self, prefix: str) -> AsyncIterator[AsyncIterator[str]]:
        async with self.store.watch(prefix) as events:
            await anext(events)  # the initial snapshot: the watch is established

            async def keys() -> AsyncIterator[str]:
                async for event in events:
                    if isinstance(event, StorePut):
                        yield event.key

            yield keys()


class Target:
    """A backend under test: ``new_backend()`` is a new connection, as another process would have."""

    def __init__(self, name: str, new_backend: Callable[[], DiscoveryBackend], raw: RawClient | None) -> None:
        self.name = name
        self.new_backend = new_backend
        self.raw = raw


@asynccontextmanager
async def memory_target() -> AsyncIterator[Target]:
    store = MemoryStore()
    yield Target("memory", lambda: KvDiscovery(store, owns_store=False), StoreRawClient(store))


TARGETS: dict[str, Callable[[], AbstractAsyncContextManager[Target]]] = {"memory": memory_target}
