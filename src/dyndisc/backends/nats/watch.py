"""A prefix watch over NATS KV, joined with the lease keys; it makes new consumers, and resyncs, whenever it
may have missed events."""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus

from dyndisc._events import RemovalReason
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot
from dyndisc.backends.kv.event_queue import MAX_PENDING_EVENTS as MAX_PENDING_EVENTS  # the same bound
from dyndisc.backends.nats.feed import KvChange, KvFeed
from dyndisc.backends.nats.keys import LEASES_FILTER, decode_key, is_internal, lease_id_of, prefix_filter

log = logging.getLogger("dyndisc.nats")

#: Seconds a watch waits for its initial state before it gives up on the consumer and makes a new one.
SNAPSHOT_TIMEOUT = 10.0
#: Backoff bounds between attempts to re-create a consumer while the server is away.
RETRY_MIN, RETRY_MAX = 0.1, 2.0
#: Seconds between two calls of a running watch's probe (the connection asks at most once per its own
#: interval, however many watches call).
PROBE_EVERY = 1.0


def user_key(nats_key: str) -> str | None:
    """The dyndisc key stored at ``nats_key``; ``None`` (with a warning for foreign keys) if there is none."""
    if is_internal(nats_key):
        return None
    key = decode_key(nats_key)
    if key is None:
        log.warning(
            "skipping NATS KV key %r: not written by dyndisc (its encoding is not reversible)", nats_key
        )
    return key


#: Seconds over which the watchers that see a lease end spread their purges of its keys: the first one
#: purges, the others then see the deletes and have nothing left to do.
PURGE_SPREAD = 1.0

#: Purges keys of leases that look ended: ``(NATS key, revision seen, its lease key)`` each.
Purge = Callable[[list[tuple[str, int, str]]], Awaitable[None]]


class NatsWatch:
    """One prefix watch: keeps two consumers alive (the prefix's keys, and the lease keys), joins them, and
    queues events.

    An instance key carries no TTL of its own: it is live while the lease key its ``Dyndisc-Lease`` (and
    ``Dyndisc-Lease-Scope``) headers name is (keys written without a lease always are). When a lease key
    ends (its expiry marker, or a delete), every key of that lease leaves the watch at once, and the watch
    purges those keys from the bucket after a random delay, once a direct read confirms the lease key is
    gone (conditionally on the revision it saw: idempotent, and harmless when several watchers do it). A
    consumer's initial state is never proof enough for a purge: one made while the server recovers its
    stream can come up short.

    The prefix's consumer is created before the leases' one, so a key in the first one's initial state
    whose lease is missing from the second one's is an orphan (or, see above, a lease not delivered yet).
    """

    def __init__(
        self,
        open_feed: Callable[[KvFeed, str], Awaitable[None]],
        prefix: str,
        purge: Purge | None = None,
        probe: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._open_feed = open_feed
        self._purge = purge
        #: Asks, now and then, whether the server is still in its cluster (moves the connection if not).
        self._probe = probe
        self.prefix = prefix
        self.key_filter = prefix_filter(prefix)
        self.pending: deque[StoreEvent] = deque()
        self.wake = anyio.Event()
        self._restart = anyio.Event()
        self._generation = 0
        # Set by the initial state or by a restart request: what the run loop waits for after subscribing.
        self._progress = anyio.Event()
        self._has_snapshot = False
        # The join, rebuilt from every new pair of consumers.
        self._initial_keys: dict[str, KvChange] | None = None
        self._initial_leases: set[str] | None = None
        self._late: set[str] = set()
        #: The live lease keys.
        self._leases: set[str] = set()
        #: NATS key -> (its dyndisc key, its lease key, revision) of every key shown to the consumer.
        self._shown: dict[str, tuple[str, str, int]] = {}
        self._by_lease: dict[str, set[str]] = {}
        #: Keys whose lease is not live (not seen yet, or gone): shown if the lease appears.
        self._held: dict[str, KvChange] = {}
        #: Keys of ended leases to purge: NATS key -> (the revision seen, its lease key).
        self._to_purge: dict[str, tuple[int, str]] = {}
        self._purge_due = anyio.Event()

    def restart(self, why: str) -> None:
        """Drop the current consumers and resync from new ones (events of the old ones are ignored)."""
        log.debug("restarting watch of %r: %s", self.prefix, why)
        self._generation += 1
        self._restart.set()
        self._progress.set()

    def on_reconnect(self) -> None:
        """The connection came back: the server may have dropped our consumers, so make new ones."""
        self.restart("reconnected")

    def _on_reset(self, generation: int) -> None:
        # nats-py made a consumer of ours anew and resumed it from the next stream sequence, which misses
        # whatever left the stream meanwhile (a purge, a delete marker past its TTL): resync instead.
        if generation == self._generation:
            self.restart("a consumer was lost on the server")

    # -- the initial state ----------------------------------------------------------------------------
    def _on_keys_snapshot(self, generation: int, items: dict[str, KvChange]) -> None:
        if generation == self._generation:
            self._initial_keys = items
            self._compose()

    def _on_leases_snapshot(self, generation: int, items: dict[str, KvChange]) -> None:
        if generation == self._generation:
            self._initial_leases = {k for k in items if lease_id_of(k)}
            self._compose()

    def _compose(self) -> None:
        if self._initial_keys is None or self._initial_leases is None:
            return
        keys, self._initial_keys = self._initial_keys, None
        late, self._late = self._late, set()
        self._leases, self._initial_leases = self._initial_leases, None
        self._shown, self._by_lease, self._held = {}, {}, {}
        snapshot: dict[str, bytes] = {}
        for nats_key, change in keys.items():
            key = user_key(nats_key)
            if key is None or not key.startswith(self.prefix) or change.value is None:
                continue
            if not change.lease or change.lease in self._leases:
                snapshot[key] = change.value
                self._show(nats_key, key, change)
            else:
                # Held back: shown if its lease appears after all. One in the initial state names a lease
                # that most likely ended before the watch began: purged once a read confirms it.
                self._held[nats_key] = change
                if nats_key not in late:
                    self._ended(nats_key, change.revision, change.lease)
        self.pending.clear()  # a snapshot supersedes everything before it
        self.pending.append(StoreSnapshot(items=snapshot))
        self._has_snapshot = True
        self._progress.set()
        self.wake.set()

    # -- changes --------------------------------------------------------------------------------------
    def _on_key_change(self, generation: int, change: KvChange) -> None:
        if generation != self._generation:
            return
        if self._initial_keys is not None:  # the leases' initial state is not in yet: fold the change in
            # Written after the prefix's consumer began: its lease may be newer than the leases' consumer
            # too, so a missing lease means "not seen yet", never "ended".
            self._late.add(change.nats_key)
            if change.value is None:
                self._initial_keys.pop(change.nats_key, None)
            else:
                self._initial_keys[change.nats_key] = change
            return
        key = user_key(change.nats_key)
        if key is None or not key.startswith(self.prefix):
            return
        self._to_purge.pop(change.nats_key, None)  # deleted or rewritten: not ours to purge any more
        self._held.pop(change.nats_key, None)
        if change.value is not None and (not change.lease or change.lease in self._leases):
            self._show(change.nats_key, key, change)
            self._emit(StorePut(key=key, value=change.value))
            return
        if self._hide(change.nats_key):
            reason = RemovalReason.EXPIRED if change.expired else RemovalReason.LEFT
            self._emit(StoreDelete(key=key, reason=reason if change.value is None else None))
        if change.value is not None:
            self._held[change.nats_key] = change  # its lease is not live (yet)

    def _on_lease_change(self, generation: int, change: KvChange) -> None:
        lease = change.nats_key
        if generation != self._generation or not lease_id_of(lease):
            return
        if self._initial_leases is not None:
            if change.value is None:
                self._initial_leases.discard(lease)
            else:
                self._initial_leases.add(lease)
            return
        if change.value is not None:
            if lease not in self._leases:
                self._leases.add(lease)
                for nats_key, held in [(k, c) for k, c in self._held.items() if c.lease == lease]:
                    del self._held[nats_key]
                    self._to_purge.pop(nats_key, None)
                    key = user_key(nats_key)
                    if key is not None and held.value is not None:
                        self._show(nats_key, key, held)
                        self._emit(StorePut(key=key, value=held.value))
            return
        # The lease key expired (the server's marker) or was deleted: every key of the lease leaves.
        self._leases.discard(lease)
        reason = RemovalReason.EXPIRED if change.expired else RemovalReason.LEFT
        for nats_key in sorted(self._by_lease.pop(lease, ())):
            key, _lease, revision = self._shown.pop(nats_key)
            self._emit(StoreDelete(key=key, reason=reason))
            self._ended(nats_key, revision, lease)
        for nats_key, held in [(k, c) for k, c in self._held.items() if c.lease == lease]:
            del self._held[nats_key]
            self._ended(nats_key, held.revision, lease)

    def _show(self, nats_key: str, key: str, change: KvChange) -> None:
        self._hide(nats_key)
        self._shown[nats_key] = (key, change.lease, change.revision)
        if change.lease:
            self._by_lease.setdefault(change.lease, set()).add(nats_key)

    def _hide(self, nats_key: str) -> bool:
        found = self._shown.pop(nats_key, None)
        if found is None:
            return False
        keys = self._by_lease.get(found[1])
        if keys is not None:
            keys.discard(nats_key)
            if not keys:
                del self._by_lease[found[1]]
        return True

    def _ended(self, nats_key: str, revision: int, lease: str) -> None:
        if self._purge is not None:
            self._to_purge[nats_key] = (revision, lease)
            self._purge_due.set()

    def _emit(self, event: StorePut | StoreDelete) -> None:
        if len(self.pending) >= MAX_PENDING_EVENTS:
            # A slow consumer: stop queueing, resync once it catches up (memory stays bounded).
            self.pending.clear()
            self.restart("the consumer fell behind")
            return
        self.pending.append(event)
        self.wake.set()

    # -- orphans ----------------------------------------------------------------------------------------
    async def purge_orphans(self) -> None:
        """Purge the keys of ended leases until cancelled, each after a random delay (see the class)."""
        if self._purge is None:
            return
        while True:
            await self._purge_due.wait()
            self._purge_due = anyio.Event()
            await anyio.sleep(random.uniform(0, PURGE_SPREAD))
            batch, self._to_purge = [(k, r, i) for k, (r, i) in self._to_purge.items()], {}
            if batch:
                await self._purge(batch)

    # -- consumers ----------------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep a pair of consumers open until cancelled; ``started`` once the first pair exists (its
        errors raise)."""
        started = False
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        outage = OutageLog(log, f"NATS watch of {self.prefix!r}")
        while True:
            self._restart = anyio.Event()
            self._progress = anyio.Event()
            self._has_snapshot = False
            self._initial_keys = self._initial_leases = None
            self._late = set()
            generation = self._generation
            reset = partial(self._on_reset, generation)
            keys = KvFeed(
                partial(self._on_keys_snapshot, generation), partial(self._on_key_change, generation), reset
            )
            leases = KvFeed(
                partial(self._on_leases_snapshot, generation),
                partial(self._on_lease_change, generation),
                reset,
            )
            try:
                # The prefix's consumer first: see the class docstring.
                await self._open_feed(keys, self.key_filter)
                await self._open_feed(leases, LEASES_FILTER)
            except Exception as exc:
                await close_feed(keys)
                await close_feed(leases)
                if not started:
                    raise
                delay = backoff.next_delay()
                outage.failed(f"cannot re-create it ({exc})")
                with anyio.move_on_after(delay):
                    await self._restart.wait()
                continue
            if not started:
                started = True
                task_status.started()
            try:
                with anyio.move_on_after(SNAPSHOT_TIMEOUT):
                    await self._progress.wait()
                if not self._has_snapshot and not self._restart.is_set():
                    log.warning(
                        "the watch of %r got no initial state in %.0fs; re-creating it",
                        self.prefix,
                        SNAPSHOT_TIMEOUT,
                    )
                    self.restart("no initial state")
                    continue
                backoff.reset()
                outage.recovered()
                while not self._restart.is_set():
                    with anyio.move_on_after(PROBE_EVERY):
                        await self._restart.wait()
                    if self._probe is not None and not self._restart.is_set():
                        await self._probe()
            finally:
                await close_feed(keys)
                await close_feed(leases)

    async def events(self) -> AsyncIterator[StoreEvent]:
        """The queued events: a snapshot first (and after every restart), then puts and deletes."""
        while True:
            if self.pending:
                yield self.pending.popleft()
            else:
                await self.wake.wait()
                self.wake = anyio.Event()


async def close_feed(feed: KvFeed) -> None:
    """Close ``feed`` even when cancelled, giving up after 2 s on a dead connection."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
        await feed.close()
