"""One ordered JetStream consumer over a KV key filter: the current value of every key, then each change.

nats-py's own ``KeyValue.watch`` drops message headers (we need the lease owner and the server's expiry
markers) and blocks its delivery task on a 256-entry queue. A :class:`KvFeed` instead hands every message to
synchronous callbacks, so the subscription is always drained and the caller decides how much to buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dyndisc.backends.nats.keys import lease_key

#: Header naming the lease (hex) that owns a key; absent for keys written without a lease.
LEASE_HEADER = "Dyndisc-Lease"
#: Header naming the scope (a subject token) of that lease's key, for a writer with scoped credentials.
LEASE_SCOPE_HEADER = "Dyndisc-Lease-Scope"
#: KV operation header written by clients for deletes and purges.
KV_OPERATION = "KV-Operation"
#: Header the server (>= 2.11) puts on the marker it writes when a message's TTL or max age ends.
MARKER_REASON = "Nats-Marker-Reason"
#: Header on the deletion of a key of an ended lease, written by whoever purges it: ``expired`` when the
#: server ended the lease (its lease key's last message is the expiry marker). A watcher that hears the purge
#: before the lease key's marker (its two consumers deliver apart) still says the key expired.
PURGE_REASON = "Dyndisc-Purged"


def is_removal(headers: Mapping[str, str] | None) -> bool:
    """Whether a stored KV message is a delete/purge marker rather than a value."""
    if not headers:
        return False
    return headers.get(KV_OPERATION) in ("DEL", "PURGE") or MARKER_REASON in headers


def is_expiry(headers: Mapping[str, str] | None) -> bool:
    """Whether a stored KV message is a removal because a lease's time ran out: the server's marker, or a
    purge of a key of a lease the server ended."""
    return bool(headers) and (
        MARKER_REASON in (headers or {}) or (headers or {}).get(PURGE_REASON) == "expired"
    )


def lease_of(headers: Mapping[str, str] | None) -> int:
    """The lease id a message was written under (0 when none, or when the header is unreadable)."""
    raw = (headers or {}).get(LEASE_HEADER, "")
    try:
        return int(raw, 16)
    except ValueError:
        return 0


def lease_ref_of(headers: Mapping[str, str] | None) -> str:
    """The lease key a message is joined to (``""`` when it has none): the lease and, for a writer with
    scoped credentials, the scope its headers name. A reader joins a key to exactly that lease key, so a
    lease key of the same id in another scope (which another scope's credentials could write) is not it."""
    lease_id = lease_of(headers)
    if not lease_id:
        return ""
    return lease_key(lease_id, (headers or {}).get(LEASE_SCOPE_HEADER) or None)


@dataclass(frozen=True)
class KvChange:
    """One KV message: ``value`` is ``None`` for a deletion. ``nats_key`` is the raw (encoded) key."""

    nats_key: str
    value: bytes | None
    lease_id: int
    revision: int
    #: The lease key it is joined to (:func:`lease_ref_of`), ``""`` without a lease.
    lease: str
    #: The server removed it because its time ran out (its TTL/max-age marker), not a client.
    expired: bool = False


class KvFeed:
    """Subscribe to ``$KV.<bucket>.<filter>``: report the initial state once, then every change in order.

    ``on_snapshot`` receives the last value of every key (deleted keys left out) when the consumer has
    caught up with what the stream held when it was created; ``on_change`` receives each later message.
    ``on_reset`` is told when nats-py made the consumer anew (it lost the old one: no heartbeat, or a gap);
    nothing else is passed on from then: the caller starts over with a new feed.
    """

    def __init__(
        self,
        on_snapshot: Callable[[dict[str, KvChange]], None],
        on_change: Callable[[KvChange], None],
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self._on_snapshot = on_snapshot
        self._on_change = on_change
        self._on_reset = on_reset
        self._initial: dict[str, KvChange] = {}
        self._received = 0
        self._expected: int | None = None
        self._live = False
        self._subject_prefix = ""
        self._sub: JetStreamContext.PushSubscription | None = None

    async def open(self, js: JetStreamContext, stream: str, subject_prefix: str, key_filter: str) -> None:
        """Create the consumer (deliver last per subject) and learn how much initial state to expect (again
        after a failed attempt: nothing of an earlier consumer counts)."""
        self._initial, self._received, self._expected, self._live = {}, 0, None, False
        self._subject_prefix = subject_prefix
        self._sub = await js.subscribe(
            subject_prefix + key_filter,
            stream=stream,
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=300.0,
        )
        info = await self._sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered and info.delivered.consumer_seq else 0
        self._expected = delivered + (info.num_pending or 0)
        self._check_caught_up(last_pending=None)

    async def close(self) -> None:
        """Unsubscribe (the server drops the ephemeral consumer); errors of a dead connection are ignored."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with suppress(Exception):  # the connection is gone: so is the subscription
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        # Runs on nats-py's delivery task: must not block, so no awaits past this point.
        meta = msg.metadata
        headers = msg.headers
        change = KvChange(
            nats_key=msg.subject[len(self._subject_prefix) :],
            value=None if is_removal(headers) else msg.data,
            lease_id=lease_of(headers),
            revision=meta.sequence.stream,
            lease=lease_ref_of(headers),
            expired=is_expiry(headers),
        )
        if self._on_reset is not None:
            if meta.sequence.consumer <= self._received:
                # The numbering started over: nats-py lost the ordered consumer (no heartbeat, or a gap) and
                # made a new one from the stream sequence after the last message delivered. What went from
                # the stream meanwhile (a purge, a delete marker past its TTL) it cannot see, so it would
                # resume as if nothing had: the caller starts over from the current state instead.
                self._on_reset()
                return
            self._received = meta.sequence.consumer
        if self._live:
            self._on_change(change)
            return
        if change.value is None:
            self._initial.pop(change.nats_key, None)
        else:
            self._initial[change.nats_key] = change
        self._received = max(self._received, meta.sequence.consumer)
        self._check_caught_up(last_pending=meta.num_pending)

    def _check_caught_up(self, last_pending: int | None) -> None:
        if self._live:
            return
        if last_pending == 0 or (self._expected is not None and self._received >= self._expected):
            self._live = True
            initial, self._initial = self._initial, {}
            self._on_snapshot(initial)
