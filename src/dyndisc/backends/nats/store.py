"""The NATS store: leases emulated over one JetStream KV bucket, liveness by one TTL'd lease key per lease.

NATS KV has no leases, so :class:`NatsStore` emulates them (see ``docs/backends/nats.md``):

* a lease is a lease key ``_dyndisc/lease.<id>`` carrying a per-message TTL (``Nats-TTL``, nats-server
  >= 2.11), plus the keys one store (one runtime) wrote under it, each with a ``Dyndisc-Lease`` header naming
  the lease and no TTL of its own;
* a keep-alive re-publishes the lease key alone, conditionally on the revision it last wrote: one message
  per TTL/2 whatever the number of keys, and a lease key deleted by someone else is never resurrected;
* a key is live while its lease key is: every reader (a watch, a list) joins keys to live lease keys. The
  bucket is created with a limit-marker TTL, so when a lease key's TTL ends the server writes a delete
  marker that every watcher sees: the lease's keys leave every watch at once, and the watchers purge them
  from the bucket (conditionally on the revision they saw: idempotent, safe when several do it).

Watches re-create their consumers and emit a fresh snapshot as soon as the connection comes back, rather
than waiting for nats-py's idle-heartbeat detection; :attr:`NatsStore.stale_since` says since when the server
has been gone.
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
from dyndisc._errors import AccessDeniedError, BackendUnavailableError, LeaseNotFoundError
from dyndisc.backends.base import Lease
from dyndisc.backends.diagnosis import BackendDoctor, ServerClockDoctor
from dyndisc.backends.kv import KeyValueStore, StoredValue, StoreEvent
from dyndisc.backends.nats.connection import NatsBucket, WrongRevision
from dyndisc.backends.nats.feed import is_expiry, is_removal, lease_of, lease_ref_of
from dyndisc.backends.nats.keys import (
    LEASES_FILTER,
    encode_key,
    is_internal,
    lease_id_of,
    lease_key,
    prefix_filter,
    scope_token,
)
from dyndisc.backends.nats.refusals import who
from dyndisc.backends.nats.settings import NatsSettings
from dyndisc.backends.nats.watch import NatsWatch, user_key

log = logging.getLogger("dyndisc.nats")

#: Orphaned keys (of ended leases) purged at once by one reader (each is one JetStream request).
PURGE_CONCURRENCY = 64
#: Renewals of a lease key sent in a row when each finds our own newer renewal there (one that landed while
#: its answer was lost) before the keep-alive says the connection is in trouble.
_REFRESH_ATTEMPTS = 3
#: A revision no key reaches: a publish expecting it is refused unwritten (the doctor's write probe).
_NO_SUCH_REVISION = 2**62


@dataclass
class _LeaseState:
    ttl: float
    #: The TTL written on the lease key: whole seconds, at least 1 (the server's resolution).
    key_ttl: int
    revision: int
    #: NATS key -> the revision we last wrote, of every key we wrote under the lease (revoke deletes them).
    keys: dict[str, int] = field(default_factory=dict)
    #: Found ended by the server's expiry marker (the keep-alive's last look at the lease key).
    expired: bool = False


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

    def __init__(
        self, settings: NatsSettings | None = None, *, startup_timeout_name: str | None = None
    ) -> None:
        """``startup_timeout_name`` says what set the startup wait, when not its variable (``--wait``)."""
        self.settings = settings if settings is not None else NatsSettings.load()
        self.connection = NatsBucket(self.settings, startup_timeout_name or "NATS_STARTUP_CONNECT_TIMEOUT")
        self.bucket = self.connection.name
        # Writes of one key take turns with each other and with the keep-alive's conditional re-publish of
        # it (which must see the revisions our own writes produced); different keys go concurrently.
        self._key_locks = KeyedLocks()
        # Revoking takes the store exclusively, so no write under the lease lands after it.
        self._revoke_lock = SharedExclusiveLock()
        self._leases: dict[int, _LeaseState] = {}
        #: The subject token of ``NATS_SCOPE``: our lease keys are under it (``None``: unscoped).
        self.scope = scope_token(self.settings.scope)

    def __repr__(self) -> str:
        return f"NatsStore({self.settings.display_servers}, bucket {self.bucket!r})"

    @property
    def stale_since(self) -> float | None:
        return self.connection.stale_since

    def doctor(self) -> BackendDoctor:
        fixes = (("Authorization Violation", "check the credentials of NATS_SERVER"),)
        reach = (
            "start nats-server (JetStream on) or point NATS_SERVER at it; to try dyndisc, "
            "'dyndisc server nats' starts one"
        )
        return ServerClockDoctor("nats", fixes, reach)

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
            try:
                revision = await self.connection.publish(
                    self._lease_key(lease_id),
                    _lease_value(ttl),
                    ttl=key_ttl,
                    lease_id=lease_id,
                    scope=self.scope,
                    expected=0,
                )
            except WrongRevision:
                continue  # a 63-bit collision: pick again
            self._leases[lease_id] = _LeaseState(ttl=ttl, key_ttl=key_ttl, revision=revision)
            return Lease(id=lease_id, ttl=ttl)

    async def keep_alive(self, lease_id: int) -> float:
        async with self._revoke_lock.shared(), self._key_locks.hold(self._lease_key(lease_id)):
            state = self._live_lease(lease_id)  # under the lease's lock: a revoke may have dropped it
            revision = await self._refresh(state, lease_id)
            if revision is not None:
                state.revision = revision
                return state.ttl
            # Lost: forgotten at once, with no await between the server's answer and this, so that every
            # write under the lease either recorded its key before (and it is deleted below) or finds the
            # lease gone when its own answer comes (and deletes its key itself: see _landed).
            orphans = self._forget(lease_id)
        await self._purge(orphans, expired=state.expired)
        raise LeaseNotFoundError(
            f"lease {lease_id:x} is gone from NATS KV bucket {self.bucket!r}: it expired (no "
            f"keep-alive within {state.ttl}s) or another client revoked it"
        )

    async def _refresh(self, state: _LeaseState, lease_id: int) -> int | None:
        """Re-publish the lease key with a fresh TTL if it is still the one we wrote; else ``None``. Raises
        :class:`~dyndisc.BackendUnavailableError` if renewals keep landing with their answers lost."""
        nats_key = self._lease_key(lease_id)
        expected = state.revision
        for _ in range(_REFRESH_ATTEMPTS):
            try:
                return await self.connection.publish(
                    nats_key,
                    _lease_value(state.ttl),
                    ttl=state.key_ttl,
                    lease_id=lease_id,
                    scope=self.scope,
                    expected=expected,
                )
            except WrongRevision:
                # A write we gave up on (cancelled mid-request) may have landed: still ours if it carries
                # our lease. An expiry marker or a delete means the server ended the lease.
                found = await self.connection.get(nats_key)
                if found is None or is_removal(found.headers) or lease_of(found.headers) != lease_id:
                    state.expired = found is not None and is_expiry(found.headers)
                    return None
                expected = int(found.seq or 0)
        # Each renewal landed (the lease key is ours, renewed) but its answer was lost: a connection that
        # drops answers is an outage to ride out on the same lease, never a reason to give the lease up.
        state.revision = expected
        raise BackendUnavailableError(
            f"renewing lease {lease_id:x} in NATS KV bucket {self.bucket!r}: "
            f"{_REFRESH_ATTEMPTS} renewals in a row landed with no answer"
        )

    def _forget(self, lease_id: int) -> list[tuple[str, int]]:
        """Forget a lease that ended; the keys we wrote under it, and their revisions, to delete."""
        state = self._leases.pop(lease_id, None)
        return [] if state is None else list(state.keys.items())

    async def _purge(self, keys: list[tuple[str, int]], *, expired: bool = False) -> None:
        """Delete each NATS key if it still holds the revision given: the keys of an ended lease, by their
        owner or by any reader that saw the lease end (a key rewritten since is left alone); ``expired``: the
        server ended the lease, which the deletions say."""
        limiter = anyio.CapacityLimiter(PURGE_CONCURRENCY)

        async def one(nats_key: str, revision: int) -> None:
            async with limiter:
                try:
                    await self.connection.remove(nats_key, expected=revision, expired=expired)
                except BackendUnavailableError as exc:
                    log.info("could not purge %r of an ended lease (the next reader will): %s", nats_key, exc)
                except AccessDeniedError:
                    # Read-only or scoped credentials: the key is another namespace's, purged by its own
                    # workers (or overwritten by the next registration there); invisible meanwhile.
                    log.debug("not allowed to purge %r of an ended lease; left to its namespace", nats_key)

        async with anyio.create_task_group() as tg:
            for nats_key, revision in keys:
                tg.start_soon(one, nats_key, revision)

    async def _purge_orphans(self, keys: list[tuple[str, int, str]]) -> None:
        """Purge keys that look orphaned, ``(NATS key, revision, its lease key)``, once a direct read of each
        lease key confirms it is gone: a lease key missing from a consumer's view is not proof enough. The
        deletions say whether the server ended the lease (the lease key's last message is its expiry
        marker)."""
        ended: dict[str, bool | None] = {}  # lease key -> ended by its expiry?; None: alive, or cannot tell
        confirmed: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
        for nats_key, revision, lease in keys:
            if lease not in ended:
                try:
                    found = await self.connection.get(lease)
                except (BackendUnavailableError, AccessDeniedError):
                    ended[lease] = None  # cannot tell now: a later reader will
                else:
                    if found is None or is_removal(found.headers):
                        ended[lease] = found is not None and is_expiry(found.headers)
                    else:
                        ended[lease] = None
            expired = ended[lease]
            if expired is not None:
                confirmed[expired].append((nats_key, revision))
        for expired, batch in confirmed.items():
            if batch:
                await self._purge(batch, expired=expired)

    def _lease_key(self, lease_id: int) -> str:
        """The key of our own lease ``lease_id`` (under our scope, if any)."""
        return lease_key(lease_id, self.scope)

    async def _lease_alive(self, lease: str) -> bool:
        """Whether the lease key ``lease`` holds a live lease."""
        found = await self.connection.get(lease)
        return found is not None and not is_removal(found.headers)

    async def revoke(self, lease_id: int) -> None:
        async with self._revoke_lock.exclusive():
            state = self._leases.get(lease_id)
            if state is not None:
                await self._purge(self._forget(lease_id))
                # The lease key last: until it goes, a reader that missed a delete still joins correctly.
                # Whatever its revision: a renewal that landed while its answer was lost moved it behind our
                # back, and a removal at the revision we remember would quietly fail (chaos seed 0, NATS).
                await self.connection.remove(self._lease_key(lease_id), expected=None)
                return
            # Not ours: end it first, whatever revision its owner renewed it to since, so that the owner's
            # next keep-alive finds it gone (deleting thousands of keys outlasts a renewal period: ended
            # last, with the revision seen before them, the lease would outlive its keys, renewed for ever).
            # Then delete its keys, found on the server by their lease header.
            found = await self.connection.scan(">")
            for nats_key, change in found.items():
                # Its lease key, in whichever scope it is (a key of every scope names the id).
                if is_internal(nats_key) and lease_id_of(nats_key) == lease_id and not change.expired:
                    await self.connection.remove(nats_key, expected=None)
            for nats_key, change in found.items():
                if change.lease_id == lease_id and not is_internal(nats_key):
                    await self.connection.remove(nats_key, expected=change.revision)

    # -- keys ------------------------------------------------------------------------------------------
    async def _landed(self, nats_key: str, lease_id: int, revision: int) -> None:
        """Record that ``nats_key`` holds ``revision``, written under ``lease_id`` (holding the key's lock).

        The lease may have been found lost while the write awaited its answer: then the key is an orphan
        that its lease's keep-alive did not know of, so it is deleted here, and the write fails with
        :class:`LeaseNotFoundError` (the runtime then waits for the replacement lease and writes again).
        """
        for other in self._leases.values():
            other.keys.pop(nats_key, None)
        if not lease_id:
            return
        state = self._leases.get(lease_id)
        if state is not None:  # checked and recorded with no await between: see keep_alive
            state.keys[nats_key] = revision
            return
        await self._purge([(nats_key, revision)])
        raise LeaseNotFoundError(
            f"lease {lease_id:x} of NATS KV bucket {self.bucket!r} ended (it expired or was revoked) while "
            f"{nats_key!r} was being written under it"
        )

    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        if lease_id:
            self._live_lease(lease_id)
        nats_key = encode_key(key)
        async with self._revoke_lock.shared(), self._key_locks.hold(nats_key):
            expected = 0
            for _ in range(5):
                try:
                    # No TTL: the key lives as long as its lease key (every reader joins the two).
                    revision = await self.connection.publish(
                        nats_key, value, ttl=None, lease_id=lease_id, scope=self.scope, expected=expected
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
                        lease = lease_ref_of(found.headers)
                        if owner and owner != lease_id and not await self._lease_alive(lease):
                            # An orphan of an ended lease nobody purged yet: absent, for every reader.
                            await self._purge([(nats_key, int(found.seq or 0))])
                            continue
                        if lease_id and owner == lease_id:
                            # Ours already (a retried registration): make sure the revoke covers it.
                            await self._landed(nats_key, lease_id, int(found.seq or 0))
                        return StoredValue(value=data, lease_id=owner)
                else:
                    await self._landed(nats_key, lease_id, revision)
                    return None
        raise BackendUnavailableError(
            f"could not create {key!r} in NATS KV bucket {self.bucket!r}: it kept changing under us"
        )

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        if lease_id:
            self._live_lease(lease_id)
        nats_key = encode_key(key)
        async with self._revoke_lock.shared(), self._key_locks.hold(nats_key):
            revision = await self.connection.publish(
                nats_key, value, ttl=None, lease_id=lease_id, scope=self.scope
            )
            await self._landed(nats_key, lease_id, revision)

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
        # Said, not returned quietly: the caller (an unregistration) must not take the key for gone.
        raise BackendUnavailableError(
            f"could not delete {key!r} from NATS KV bucket {self.bucket!r}: it kept changing under us"
        )

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        # The keys first, then the leases (as a watch does): a key's lease is older than the key, so a lease
        # missing from the second scan has ended, and its keys are orphans to purge.
        found = await self.connection.scan(prefix_filter(prefix))
        live = {k for k in await self.connection.scan(LEASES_FILTER) if lease_id_of(k)}
        items: dict[str, bytes] = {}
        orphans: list[tuple[str, int, str]] = []
        for nats_key, change in found.items():
            key = user_key(nats_key)
            if key is None or not key.startswith(prefix) or change.value is None:
                continue
            if not change.lease or change.lease in live:
                items[key] = change.value
            else:
                orphans.append((nats_key, change.revision, change.lease))
        if orphans:
            await self._purge_orphans(orphans)
        return items

    # -- access (dyndisc doctor's scope check) -----------------------------------------------------------
    @property
    def principal(self) -> str | None:
        if self.settings.user is None and self.settings.token is None and self.settings.creds is None:
            return None
        scope = f" (NATS_SCOPE={self.settings.scope!r})" if self.settings.scope else ""
        return who(self.settings) + scope

    async def may_write(self, key: str) -> bool | None:
        """Whether nats-server lets us publish ``key``, asked without writing: a publish that expects a
        revision the key cannot have, which JetStream refuses unwritten when the publish is allowed."""
        try:
            await self.connection.publish(encode_key(key), b"", ttl=None, expected=_NO_SUCH_REVISION)
        except WrongRevision:
            return True
        except AccessDeniedError:
            return False
        raise BackendUnavailableError(f"nats-server stored a probe of {key!r} at an impossible revision")

    async def may_read(self, prefix: str) -> bool | None:
        """Whether nats-server lets us read the bucket (a reader reads all of it or nothing)."""
        try:
            await self.connection.get(encode_key(prefix + "dyndisc-doctor-probe"))
        except AccessDeniedError:
            return False
        return True

    # -- watch -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        await self.connection.jetstream()  # connection problems surface here, before the watch exists
        watch = NatsWatch(
            self.connection.open_feed, prefix, purge=self._purge_orphans, probe=self.connection.check_server
        )
        restart = watch.on_reconnect
        self.connection.on_reconnect.add(restart)
        try:
            async with background_tasks() as tg:
                await tg.start(watch.run)
                tg.start_soon(watch.purge_orphans)
                yield watch.events()
        finally:
            self.connection.on_reconnect.discard(restart)


def _lease_value(ttl: float) -> bytes:
    return f'{{"ttl":{ttl}}}'.encode()
