"""Known bugs to plant in the code under test, to show that the checker catches each one.

Every plant changes the behaviour of dyndisc itself (the runtime's parts, the instance set, the key-value
layer) or of the store, for the duration of one simulated run: one method swapped for a wrong one, and put
back when the run ends. None of them edits the recorded history. One line each:
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import anyio

from dyndisc._events import Added, DiscoveryEvent, RemovalReason, Removed, Resync
from dyndisc._instance_set import InstanceSet
from dyndisc._models import Readiness
from dyndisc.backends.kv import KvDiscovery, StoreSnapshot
from dyndisc.backends.kv.discovery import _Merged
from dyndisc.runtime import lease_keeper
from dyndisc.runtime.lease_keeper import LeaseKeeper
from dyndisc.runtime.registrar import Registrar
from dyndisc.runtime.registrations import Registrations

#: Every plant and the invariant that must catch it. ``lost-delete`` and ``lost-write`` are the store's
#: (:class:`~dyndisc.testing.FaultyStore` flags the simulation sets), the others are swapped in here.
PLANTS = {
    # the store: watchers' stores drop every delete
    "lost-delete": "no phantom",
    # the store: odd workers' writes are acknowledged and never applied
    "lost-write": "no loss",
    # the runtime (LeaseKeeper.release): a clean exit skips its revoke, and says it revoked
    "never-revokes": "clean exit",
    # the runtime (lease_keeper.keep_lease_alive): every third renewal, the lease is taken for lost
    "replaces-lease": "lease replaced only with a cause",
    # the runtime (Registrar.unregister): unregister() forgets the endpoint and returns without deleting it
    "unregister-keeps": "unregistered stays gone",
    # the runtime (Registrations.endpoints_to_carry): a replacement lease carries all but the first endpoint
    "carry-forgets": "truth",
    # the runtime (Registrar._write_endpoint): a write cancelled mid-flight is forgotten, so unregister()
    # cannot remove it if it landed
    "cancel-forgets": "unregistered stays gone",
    # the instance set (InstanceSet._apply): Removed is ignored (runtime watchers and clients)
    "dropped-removed": "convergence",
    # the key-value layer (KvDiscovery watch): a watch begins with its instances as Added, not a Resync
    "no-resync": "well-formed",
    # the key-value layer (KvDiscovery watch): after the watch resumed once, no Removed is delivered
    "no-removals-after-resume": "unregistered stays gone",
    # the key-value layer (KvDiscovery watch): every Added is delivered twice
    "duplicates": "no event delivered twice",
    # the key-value layer (KvDiscovery watch): an instance that left is said to have expired
    "wrong-reason": "removal reasons",
    # the key-value layer (KvDiscovery.register): a draining instance is written as ready
    "drops-draining": "readiness as last set",
    # the key-value layer (KvDiscovery.put_entry): a lease-bound entry is written without the lease
    "unbound-entries": "entries follow their lease",
    # the key-value layer (KvDiscovery.list): the dynamo-v1 layout's side copies (draining) are not read
    "list-skips-side": "agreement",
    # the key-value layer (KvDiscovery watch): a watch that has to resume ends quietly instead
    "watch-ends": "watchers keep running",
    # the key-value layer (KvDiscovery watch): each part of a snapshot that comes in parts is taken whole
    "parts-as-whole": "agreement",
}
PLANTABLE = tuple(PLANTS)

Translate = Callable[[KvDiscovery, AsyncIterator[Any]], AsyncIterator[DiscoveryEvent]]
Rewrite = Callable[[AsyncIterator[DiscoveryEvent]], AsyncIterator[DiscoveryEvent]]


@contextmanager
def planted(names: frozenset[str]) -> Iterator[None]:
    """The plants ``names`` in place while the block runs (the store's are set by the simulation)."""
    with ExitStack() as stack:
        for name in sorted(names):
            for owner, attribute, wrong in _SWAPS.get(name, lambda: [])():
                stack.enter_context(_swapped(owner, attribute, wrong))
        yield


@contextmanager
def _swapped(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    original = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


def _never_revokes() -> list[tuple[Any, str, Any]]:
    async def release(self: LeaseKeeper, registrations: int) -> None:
        self._set(None)
        self.health.closed(True)

    return [(LeaseKeeper, "release", release)]


class _Forgetful:
    """A backend whose every third renewal answers that the lease is gone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.renewals = 0

    async def keep_alive(self, lease: Any) -> float:
        left: float = await self.inner.keep_alive(lease)
        self.renewals += 1
        return 0.0 if self.renewals % 3 == 0 else left


def _replaces_lease() -> list[tuple[Any, str, Any]]:
    original = lease_keeper.keep_lease_alive

    async def keep_lease_alive(
        backend: Any, lease: Any, health: Any, renew_now: Any, clock: Any = anyio.current_time
    ) -> Any:
        return await original(_Forgetful(backend), lease, health, renew_now, clock)  # type: ignore[arg-type]

    return [(lease_keeper, "keep_lease_alive", keep_lease_alive)]


def _unregister_keeps() -> list[tuple[Any, str, Any]]:
    async def unregister(self: Registrar, endpoint: Any) -> None:
        self.registrations.unwant(endpoint)
        self.registrations.take_written(endpoint)

    return [(Registrar, "unregister", unregister)]


def _carry_forgets() -> list[tuple[Any, str, Any]]:
    original = Registrations.endpoints_to_carry
    return [(Registrations, "endpoints_to_carry", lambda self, lease: original(self, lease)[1:])]


def _cancel_forgets() -> list[tuple[Any, str, Any]]:
    original = Registrar._write_endpoint

    async def write(self: Registrar, endpoint: Any, instance: Any, lease: Any) -> Any:
        try:
            return await original(self, endpoint, instance, lease)
        except anyio.get_cancelled_exc_class():
            self.registrations.wrote(endpoint, None)
            raise

    return [(Registrar, "_write_endpoint", write)]


def _dropped_removed() -> list[tuple[Any, str, Any]]:
    original = InstanceSet._apply

    def apply(self: InstanceSet, event: DiscoveryEvent) -> None:
        if not isinstance(event, Removed):
            original(self, event)

    return [(InstanceSet, "_apply", apply)]


def _watch_rewrite(rewrite: Callable[[], Rewrite]) -> Callable[[], list[tuple[Any, str, Any]]]:
    """A plant that rewrites what a key-value watch yields (both of its translations: one prefix, and the
    merged prefixes of the dynamo-v1 layout)."""

    def swaps() -> list[tuple[Any, str, Any]]:
        found = []
        for attribute in ("_translate", "_translate_merged"):
            original = getattr(KvDiscovery, attribute)

            def translate(
                self: KvDiscovery, *args: Any, _original: Any = original
            ) -> AsyncIterator[DiscoveryEvent]:
                return rewrite()(_original(self, *args))

            found.append((KvDiscovery, attribute, translate))
        return found

    return swaps


def _no_resync() -> Rewrite:
    async def rewrite(events: AsyncIterator[DiscoveryEvent]) -> AsyncIterator[DiscoveryEvent]:
        first = True
        async for event in events:
            if first and isinstance(event, Resync):
                for instance in event.instances:
                    yield Added(instance)
            else:
                yield event
            first = False

    return rewrite


def _no_removals_after_resume() -> Rewrite:
    async def rewrite(events: AsyncIterator[DiscoveryEvent]) -> AsyncIterator[DiscoveryEvent]:
        resyncs = 0
        async for event in events:
            resyncs += isinstance(event, Resync)
            if not (resyncs > 1 and isinstance(event, Removed)):
                yield event

    return rewrite


def _duplicates() -> Rewrite:
    async def rewrite(events: AsyncIterator[DiscoveryEvent]) -> AsyncIterator[DiscoveryEvent]:
        async for event in events:
            yield event
            if isinstance(event, Added):
                yield event

    return rewrite


def _wrong_reason() -> Rewrite:
    async def rewrite(events: AsyncIterator[DiscoveryEvent]) -> AsyncIterator[DiscoveryEvent]:
        async for event in events:
            if isinstance(event, Removed) and event.reason is RemovalReason.LEFT:
                event = dataclasses.replace(event, reason=RemovalReason.EXPIRED)
            yield event

    return rewrite


def _drops_draining() -> list[tuple[Any, str, Any]]:
    original = KvDiscovery.register

    async def register(self: KvDiscovery, instance: Any, lease: Any) -> Any:
        if instance.readiness is Readiness.DRAINING:
            instance = instance.replace(readiness=Readiness.READY)
        return await original(self, instance, lease)

    return [(KvDiscovery, "register", register)]


def _unbound_entries() -> list[tuple[Any, str, Any]]:
    original = KvDiscovery.put_entry

    async def put_entry(self: KvDiscovery, entry: Any, lease: Any) -> None:
        await original(self, entry, None)

    return [(KvDiscovery, "put_entry", put_entry)]


def _list_skips_side() -> list[tuple[Any, str, Any]]:
    async def list_(self: KvDiscovery, query: Any) -> Any:
        merged = _Merged(self.parse)
        merged.snapshot(0, await self.store.get_prefix(self.prefix_for(query)))
        return merged.current()

    return [(KvDiscovery, "list", list_)]


def _watch_ends() -> Rewrite:
    async def rewrite(events: AsyncIterator[DiscoveryEvent]) -> AsyncIterator[DiscoveryEvent]:
        resyncs = 0
        async for event in events:
            resyncs += isinstance(event, Resync)
            if resyncs > 1:
                return
            yield event

    return rewrite


def _parts_as_whole() -> list[tuple[Any, str, Any]]:
    async def whole(raw: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for event in raw:
            yield StoreSnapshot(event.items) if isinstance(event, StoreSnapshot) else event

    found = []
    for attribute in ("_translate", "_translate_merged"):
        original = getattr(KvDiscovery, attribute)

        def translate(
            self: KvDiscovery, raw: AsyncIterator[Any], *args: Any, _original: Any = original
        ) -> AsyncIterator[DiscoveryEvent]:
            return _original(self, whole(raw), *args)  # type: ignore[no-any-return]

        found.append((KvDiscovery, attribute, translate))
    return found


_SWAPS: dict[str, Callable[[], list[tuple[Any, str, Any]]]] = {
    "never-revokes": _never_revokes,
    "replaces-lease": _replaces_lease,
    "unregister-keeps": _unregister_keeps,
    "carry-forgets": _carry_forgets,
    "cancel-forgets": _cancel_forgets,
    "dropped-removed": _dropped_removed,
    "no-resync": _watch_rewrite(_no_resync),
    "no-removals-after-resume": _watch_rewrite(_no_removals_after_resume),
    "duplicates": _watch_rewrite(_duplicates),
    "wrong-reason": _watch_rewrite(_wrong_reason),
    "drops-draining": _drops_draining,
    "unbound-entries": _unbound_entries,
    "list-skips-side": _list_skips_side,
    "watch-ends": _watch_rewrite(_watch_ends),
    "parts-as-whole": _parts_as_whole,
}
