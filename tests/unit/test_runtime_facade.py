"""The runtime's own calls, beside its handles: metadata by bucket and key, model cards, the shared sets,
its aliases; a runtime made by name (again and again) and one whose earlier run failed. Each is public API
that the handles do not go through, so only these tests hold them to their word."""

from __future__ import annotations

import anyio
import pytest

from dyndisc import (
    AccessDeniedError,
    DistributedRuntime,
    EndpointId,
    EntryAdded,
    EntryRemoved,
    EntryResync,
    InstanceQuery,
    KvDiscovery,
    MemoryStore,
    MetadataEntry,
    RuntimeNotStartedError,
)
from dyndisc.backends.base import Lease

BUCKET = "v1/custom"


async def test_entries_put_through_the_runtime_are_read_listed_watched_and_deleted_through_it() -> None:
    store = MemoryStore()
    async with DistributedRuntime(store) as runtime, runtime.watch_entries(BUCKET, "a/") as events:
        with anyio.fail_after(5):
            assert isinstance(await anext(events), EntryResync)  # what there is: nothing yet
        written = await runtime.put_entry(MetadataEntry(BUCKET, "a/1", {"v": 1}))
        assert written == MetadataEntry(BUCKET, "a/1", {"v": 1})
        with anyio.fail_after(5):
            added = await anext(events)
        assert isinstance(added, EntryAdded)
        assert added.entry == written
        await runtime.put_entry(MetadataEntry(BUCKET, "b/1", {"v": 2}))
        assert await runtime.get_entry(BUCKET, "a/1") == written
        assert [e.key for e in await runtime.list_entries(BUCKET, "a/")] == ["a/1"]
        assert sorted(e.key for e in await runtime.list_entries(BUCKET)) == ["a/1", "b/1"]
        await runtime.delete_entry(BUCKET, "a/1")
        with anyio.fail_after(5):
            removed = await anext(events)
        assert isinstance(removed, EntryRemoved)
        assert (removed.bucket, removed.key) == (BUCKET, "a/1")
        assert await runtime.get_entry(BUCKET, "a/1") is None


async def test_an_entry_put_through_the_runtime_is_bound_to_its_lease_unless_it_says_otherwise() -> None:
    store = MemoryStore()
    async with DistributedRuntime(store) as runtime:
        await runtime.put_entry(MetadataEntry(BUCKET, "bound", {"v": 1}))
        await runtime.put_entry(MetadataEntry(BUCKET, "unbound", {"v": 1}), bound=False)
    async with DistributedRuntime(store) as reader:
        assert [e.key for e in await reader.list_entries(BUCKET)] == ["unbound"], "the bound one left with it"


async def test_a_model_card_unregistered_through_the_runtime_is_gone() -> None:
    endpoint = EndpointId("ns", "comp", "ep")
    async with DistributedRuntime(MemoryStore()) as runtime:
        card = await runtime.register_model(endpoint, {"display_name": "m"})
        assert [c.display_name for c in await runtime.models()] == ["m"]
        assert card.instance_id == runtime.instance_id == runtime.connection_id()
        await runtime.unregister_model(endpoint)
        assert await runtime.models() == []


async def test_a_set_acquired_from_the_runtime_sees_instances_and_is_shared_until_released() -> None:
    async with DistributedRuntime(MemoryStore()) as runtime:
        query = InstanceQuery("ns", "comp", "ep")
        first = await runtime.acquire_instance_set(query)
        second = await runtime.acquire_instance_set(query)
        assert first is second, "one watch per query"
        await runtime.endpoint("ns.comp.ep").register("tcp://h:1")
        with anyio.fail_after(5):
            while not first.instances():
                await first.wait_changed()
        assert [i.instance_id for i in first.instances()] == [runtime.instance_id]
        first.release()
        second.release()


async def test_a_runtime_made_by_name_uses_that_backend_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens where the environment's etcd would be: reaching for it would fail the start.
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "etcd")
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://127.0.0.1:9")
    runtime = DistributedRuntime("memory", lease_ttl=5)
    for _ in range(2):  # and again: a backend made by name is made anew for each start
        with anyio.fail_after(5):
            async with runtime:
                assert runtime.backend.name == "memory"
                await runtime.endpoint("ns.c.e").register("tcp://h:1")
                assert [i.endpoint for i in await runtime.list()] == ["e"]


async def test_a_runtime_from_the_environment_takes_its_backend_from_it_and_its_arguments_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "memory")
    monkeypatch.setenv("DYN_LEASE_TTL", "7")
    runtime = DistributedRuntime.from_env(lease_ttl=3)
    assert isinstance(runtime, DistributedRuntime)
    assert runtime.lease_ttl == 3
    async with runtime:
        assert runtime.backend.name == "memory"


class _RefusingGrants(KvDiscovery):
    """A backend whose keep-alives fail for good once armed, and whose grants are refused after that."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store, owns_store=False)
        self.failing = False

    async def keep_alive(self, lease: Lease) -> float:
        if self.failing:
            raise TypeError("a bug in a backend")
        return await super().keep_alive(lease)

    async def grant_lease(self, ttl: float) -> Lease:
        if self.failing:
            raise AccessDeniedError("the server refuses new leases")
        return await super().grant_lease(ttl)


async def test_a_runtime_that_cannot_start_again_says_so_rather_than_its_earlier_failure() -> None:
    backend = _RefusingGrants(MemoryStore())
    runtime = DistributedRuntime(backend, lease_ttl=0.4)

    async def run_until_it_fails() -> None:
        with anyio.fail_after(5):
            async with runtime:
                backend.failing = True
                await anyio.sleep_forever()  # until the keep-alive loop stops the runtime

    with pytest.raises(TypeError, match="a bug in a backend"):
        await run_until_it_fails()
    with pytest.raises(TypeError):  # what stopped it, to every later call
        await runtime.endpoint("ns.c.e").register("tcp://h:1")
    with pytest.raises(AccessDeniedError):
        async with runtime:
            pass
    with pytest.raises(RuntimeNotStartedError):  # not the earlier run's failure
        await runtime.endpoint("ns.c.e").register("tcp://h:1")
