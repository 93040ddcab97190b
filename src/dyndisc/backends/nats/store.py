"""The NATS store: leases emulated over one JetStream KV bucket, liveness by per-key TTLs.

NATS KV has no leases, so :class:`NatsStore` emulates them (see ``docs/backends/nats.md``):

* a lease is the set of keys one store (one runtime) wrote under it, plus a lease key
  ``_dyndisc/lease.<id>`` that records it on the server, so another client can revoke it;
* every key of a lease carries a per-message TTL (``Nats-TTL``, nats-server >= 2.11) and a ``Dyndisc-Lease``
  header; a keep-alive re-publishes each of them, conditionally on the revision it last wrote, so a key
  deleted by someone else is never resurrected;
* the bucket is created with a limit-marker TTL, so when a key's TTL ends the server writes a delete marker
  that every watcher sees: a crashed worker disappears within its TTL.

Watches re-create their consumer and emit a fresh snapshot as soon as the connection comes back, rather than
waiting for nats-py's idle-heartbeat detection; :attr:`NatsStore.stale_since` says since when the server has
been gone.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from dyndisc._concurrency import KeyedLocks, SharedExclusiveLock, background_tasks
from dyndisc._diagnosis import BackendDoctor, ServerClockDoctor
from dyndisc._errors import BackendUnavailableError, LeaseNotFoundError
from dyndisc.backends.base import Lease
from dyndisc.backends.kv import KeyValueStore, StoredValue, StoreEvent
from dyndisc.backends.nats.connection import NatsBucket, WrongRevision
from dyndisc.backends.nats.feed import MARKER_REASON, is_removal, lease_of
from dyndisc.backends.nats.keys import encode_key, is_internal, lease_key, prefix_filter
from dyndisc.backends.nats.settings import NatsSettings
from dyndisc.backends.nats.watch import NatsWatch, user_key

log = logging.getLogger("dyndisc.nats")

#: Keys of a lease re-published at once by a keep-alive (each is one JetStream request).
REFRESH_CONCURRENCY = 64


@dataclass
class _LeaseState:
    ttl: float
    #: The TTL written on every key of the lease: whole seconds, at least 1 (the server's resolution).
    key_ttl: int
    revision: int
    #: NATS key -> (revision we last wrote, value): what the keep-alive re-publishes.
    keys: dict[str, tuple[int, bytes]] = field(default_factory=dict)


class NatsStore(KeyValueStore):
    """A :class:`~dyndisc.backends.kv.KeyValueStore` over one NATS JetStream KV bucket.

    It connects on first use. One store is one client connection; leases are emulated per store (see the
    module docstring), so a lease must be kept alive by the store that granted it.
    """

    name = "nats"
    #: The reference runtime (Dynamo 1.6.1) has no NATS store: nothing of Dynamo would read dynamo-v1 keys
    #: here, so the layout is refused instead of promising interop that cannot happen.
    layouts = frozenset({"dyndisc"})
    layout_hint = (
        "; the reference runtime (Dynamo 1.6.1) keeps discovery in etcd, files, memory or Kubernetes, never "
        "in NATS, so dynamo-v1 keys here would reach no Dynamo process"
    )

    def __init__(self, settings: NatsSettings | None = None) -> None:
        self.settings = settings if settings is not None else NatsSettings.load()
        self.connection = NatsBucket(self.settings)
        self.bucket = self.connection.name
        # Writes of one key take turns with each other and with the keep-alive's conditional re-publish of
        # it (which must see the revisions our own writes produced); different keys go concurrently.
        self._key_locks = KeyedLocks()
        # Revoking takes the store exclusively, so no write under the lease lands after it.
        self._revoke_lock = SharedExclusiveLock()
        self._leases: dict[int, _LeaseState] = {}

    def __repr__(self) -> str:
        return f"NatsStore({self.settings.display_servers}, bucket {self.bucket!r})"

    @property
    def stale_since(self) -> float | None:
        return self.connection.stale_since

    def doctor(self) -> BackendDoctor:
        fixes = (("Authorization Violation", "check the credentials of NATS_SERVER"),)
        return ServerClockDoctor("nats", fixes)

    async def aclose(self) -> None:
        await self.connection.aclose()

    # -- leases ----------------------------------------------------------------------------------------
    def _live_lease(self, lease_id: int) -> _LeaseState:
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseNotFoundError(
                f"lease {lease_id:x} is not held by this NATS store (it expired, was revoked, or was granted "
                "by another process)"
            )
        return state

    async def grant(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"lease TTL must be positive, got {ttl}")
        key_ttl = max(1, math.ceil(ttl))
        while True:
            lease_id = secrets.randbits(63)
            if lease_id == 0:
                continue
            value = f'{{"ttl":{ttl}}}'.encode()
            try:
                revision = await self.connection.publish(
                    lease_key(lease_id), value, ttl=key_ttl, lease_id=lease_id, expected=0
                )
            except WrongRevision:
                continue  # a 63-bit collision: pick again
            self._leases[lease_id] = _LeaseState(ttl=ttl, key_ttl=key_ttl, revision=revision)
            return Lease(id=lease_id, ttl=ttl)

    async def keep_alive(self, lease_id: int) -> float:
        state = self._live_lease(lease_id)
        async with self._revoke_lock.shared():
            async with self._key_locks.hold(lease_key(lease_id)):
                revision = await self._refresh(lease_key(lease_id), None, state, lease_id, state.revision)
            if revision is None:
                await self._drop_lease(lease_id)
                raise LeaseNotFoundError(
                    f"lease {lease_id:x} is gone from NATS KV bucket {self.bucket!r}: it expired (no "
                    f"keep-alive within {state.ttl}s) or another client revoked it"
                )
            state.revision = revision
            await self._refresh_keys(state, lease_id)
        return state.ttl

    async def _refresh_keys(self, state: _LeaseState, lease_id: int) -> None:
        """Re-publish every key of the lease, up to :data:`REFRESH_CONCURRENCY` at a time."""
        limiter = anyio.CapacityLimiter(REFRESH_CONCURRENCY)
        failures: list[Exception] = []

        async def refresh(nats_key: str) -> None:
            async with limiter, self._key_locks.hold(nats_key):
                entry = state.keys.get(nats_key)
                if entry is None or failures:
                    return  # deleted meanwhile (or the connection is failing: the retry redoes all)
                key_revision, value = entry
                try:
                    new = await self._refresh(nats_key, value, state, lease_id, key_revision)
                except Exception as exc:
                    failures.append(exc)
                    return
                if new is None:
                    # Deleted or taken over by someone else: not ours to bring back.
                    log.info(
                        "key %r of lease %x was changed by another client; no longer kept alive",
                        nats_key,
                        lease_id,
                    )
                    state.keys.pop(nats_key, None)
                else:
                    state.keys[nats_key] = (new, value)

        async with anyio.create_task_group() as tg:
            for nats_key in list(state.keys):
                tg.start_soon(refresh, nats_key)
        if failures:
            raise failures[0]

    async def _refresh(
        self, nats_key: str, value: bytes | None, state: _LeaseState, lease_id: int, expected: int
    ) -> int | None:
        """Re-publish a key of the lease with a fresh TTL if it is still the one we wrote; else ``None``."""
        for _ in range(3):
            current_value = value
            if current_value is None:
                current_value = f'{{"ttl":{state.ttl}}}'.encode()
            try:
                return await self.connection.publish(
                    nats_key, current_value, ttl=state.key_ttl, lease_id=lease_id, expected=expected
                )
            except WrongRevision:
                # A write we gave up on (cancelled mid-request) may have landed: still ours if it carries
                # our lease.
                found = await self.connection.get(nats_key)
                if value is not None and (found is None or MARKER_REASON in (found.headers or {})):
                    # An endpoint key the server expired (an outage outlasted its TTL) while the lease key
                    # survived: the lease is alive, so its key is written again. A delete by a client
                    # (a DEL or PURGE marker) is respected.
                    expected = int(found.seq or 0) if found is not None else 0
                    log.info("key %r of lease %x expired on the server; writing it again", nats_key, lease_id)
                    continue
                if found is None or is_removal(found.headers) or lease_of(found.headers) != lease_id:
                    return None  # deleted or rewritten by someone else: no longer ours
                expected = int(found.seq or 0)
        return None

    async def _drop_lease(self, lease_id: int) -> None:
        """Forget a lost lease and delete the keys we wrote under it (only revisions we wrote)."""
        state = self._leases.pop(lease_id, None)
        if state is None:
            return
        for nats_key, (revision, _) in state.keys.items():
            try:
                await self.connection.remove(nats_key, expected=revision)
            except BackendUnavailableError as exc:
                log.warning(
                    "could not delete %r of lost lease %x (it will expire): %s", nats_key, lease_id, exc
                )

    async def revoke(self, lease_id: int) -> None:
        async with self._revoke_lock.exclusive():
            state = self._leases.get(lease_id)
            if state is not None:
                await self._drop_lease(lease_id)
                await self.connection.remove(lease_key(lease_id), expected=state.revision)
                return
            # Not ours: find its keys on the server by their lease header.
            found = await self.connection.scan(">")
            for nats_key, change in found.items():
                if change.lease_id == lease_id and not is_internal(nats_key):
                    await self.connection.remove(nats_key, expected=change.revision)
            own = found.get(lease_key(lease_id))
            if own is not None:
                await self.connection.remove(lease_key(lease_id), expected=own.revision)

    # -- keys ------------------------------------------------------------------------------------------
    def _track(self, nats_key: str, lease_id: int, revision: int, value: bytes) -> None:
        for other_id, other in self._leases.items():
            if other_id != lease_id:
                other.keys.pop(nats_key, None)
        if lease_id:
            self._leases[lease_id].keys[nats_key] = (revision, value)

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        state = self._live_lease(lease_id) if lease_id else None
        nats_key = encode_key(key)
        ttl = state.key_ttl if state is not None else None
        async with self._revoke_lock.shared(), self._key_locks.hold(nats_key):
            expected = 0
            for _ in range(5):
                try:
                    revision = await self.connection.publish(
                        nats_key, value, ttl=ttl, lease_id=lease_id, expected=expected
                    )
                except WrongRevision:
                    found = await self.connection.get(nats_key)
                    if found is None:
                        expected = 0  # the deletion marker itself expired meanwhile
                    elif is_removal(found.headers):
                        expected = int(found.seq or 0)
                    else:
                        owner = lease_of(found.headers)
                        data = found.data or b""
                        if lease_id and owner == lease_id:
                            # Ours already (a retried registration): make sure the keep-alive covers it.
                            self._track(nats_key, lease_id, int(found.seq or 0), data)
                        return StoredValue(value=data, lease_id=owner)
                else:
                    self._track(nats_key, lease_id, revision, value)
                    return None
        raise BackendUnavailableError(
            f"could not create {key!r} in NATS KV bucket {self.bucket!r}: it kept changing under us"
        )

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        state = self._live_lease(lease_id) if lease_id else None
        nats_key = encode_key(key)
        async with self._revoke_lock.shared(), self._key_locks.hold(nats_key):
            revision = await self.connection.publish(
                nats_key, value, ttl=state.key_ttl if state is not None else None, lease_id=lease_id
            )
            self._track(nats_key, lease_id, revision, value)

    async def delete(self, key: str) -> None:
        nats_key = encode_key(key)
        async with self._revoke_lock.shared(), self._key_locks.hold(nats_key):
            for state in self._leases.values():
                state.keys.pop(nats_key, None)
            for _ in range(5):
                found = await self.connection.get(nats_key)
                if found is None or is_removal(found.headers):
                    return
                if await self.connection.remove(nats_key, expected=int(found.seq or 0)):
                    return

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        items: dict[str, bytes] = {}
        for nats_key, change in (await self.connection.scan(prefix_filter(prefix))).items():
            key = user_key(nats_key)
            if key is not None and key.startswith(prefix) and change.value is not None:
                items[key] = change.value
        return items

    # -- watch -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        await self.connection.jetstream()  # connection problems surface here, before the watch exists
        watch = NatsWatch(self.connection.open_feed, prefix)
        restart = watch.on_reconnect
        self.connection.on_reconnect.add(restart)
        try:
            async with background_tasks() as tg:
                await tg.start(watch.run)
                yield watch.events()
        finally:
            self.connection.on_reconnect.discard(restart)
