"""A write the server refuses (a namespace outside the credentials' scope) fails that call only: the runtime
keeps its lease and its other registrations, and a replacement lease carries everything it may still write.
A refused keep-alive still stops the runtime (the server refuses the process itself). The servers' own
refusals are tested on etcd and nats-server (``tests/backends/*/test_*_scopes.py``); here a memory store
refuses the keys of namespaces it is told to, so the runtime's side is tested alone."""

from __future__ import annotations

import logging

import anyio
import pytest

from dyndisc import AccessDeniedError, DistributedRuntime, EndpointId, InstanceQuery, KvDiscovery, MemoryStore
from dyndisc.backends.kv import StoredValue
from dyndisc.backends.kv.scopes import namespace_of


class ScopedStore(MemoryStore):
    """A memory store that refuses writes of the namespaces in :attr:`refused`, as a scoped server does."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str] = set()
        self.keep_alive_refused = False

    def _check(self, key: str) -> None:
        namespace = namespace_of(key)
        if namespace in self.refused:
            raise AccessDeniedError(f"refused writing {key}: namespace {namespace!r} is not ours")

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        self._check(key)
        return await super().create(key, value, lease_id)

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        self._check(key)
        await super().put(key, value, lease_id)

    async def delete(self, key: str) -> None:
        self._check(key)
        await super().delete(key)

    async def keep_alive(self, lease_id: int) -> float:
        if self.keep_alive_refused:
            raise AccessDeniedError("refused renewing the lease: its keys are no longer ours to write")
        return await super().keep_alive(lease_id)


async def test_a_refused_registration_fails_that_call_only() -> None:
    store = ScopedStore()
    store.refused.add("b")
    async with DistributedRuntime(KvDiscovery(store), lease_ttl=0.6) as runtime:
        mine = await runtime.endpoint("a.c.e").register("tcp://h:1")
        await runtime.register_model(mine.endpoint_id, {"display_name": "m"})
        with pytest.raises(AccessDeniedError, match="namespace 'b'"):
            await runtime.endpoint("b.c.e").register("tcp://h:1")
        with pytest.raises(AccessDeniedError, match="namespace 'b'"):
            await runtime.register_model(EndpointId("b", "c", "e"), {"display_name": "m"})
        await anyio.sleep(1.5)  # more than two TTLs: the keep-alive goes on
        assert runtime.health().state.value == "held"
        assert runtime.registrations == [mine]
        assert await runtime.list(InstanceQuery()) == [mine]
        assert [c.namespace for c in await runtime.models()] == ["a"]


async def test_a_replacement_lease_carries_what_it_may_and_drops_what_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ScopedStore()
    changed = anyio.Event()
    async with DistributedRuntime(
        KvDiscovery(store), lease_ttl=0.6, on_lease_change=lambda change: changed.set()
    ) as runtime:
        await runtime.endpoint("a.c.e").register("tcp://h:1")
        await runtime.endpoint("b.c.e").register("tcp://h:1")
        await runtime.register_model(EndpointId("b", "c", "e"), {"display_name": "m"})
        store.refused.add("b")  # the credentials no longer cover b
        with caplog.at_level(logging.ERROR, logger="dyndisc.runtime"):
            await store.revoke(runtime.instance_id)  # the lease is lost: the replacement carries everything
            with anyio.fail_after(5):
                await changed.wait()
        assert runtime.health().state.value == "held", "one refused namespace does not stop the runtime"
        assert [i.namespace for i in runtime.registrations] == ["a"]
        assert [i.namespace for i in await runtime.list(InstanceQuery())] == ["a"]
        dropped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped")]
        assert len(dropped) == 2, dropped
        assert any("registration of b.c.e" in d and "namespace 'b'" in d for d in dropped)


async def test_a_refused_keep_alive_still_stops_the_runtime() -> None:
    store = ScopedStore()
    runtime = DistributedRuntime(KvDiscovery(store), lease_ttl=0.6)

    async def run() -> None:
        async with runtime:
            await runtime.endpoint("a.c.e").register("tcp://h:1")
            store.keep_alive_refused = True
            with anyio.fail_after(5):
                await anyio.sleep_forever()

    with pytest.raises(AccessDeniedError, match="refused renewing the lease"):
        await run()
