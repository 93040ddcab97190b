"""Why an etcd key left: ``left`` (deleted, or its lease revoked) or ``expired`` (its lease ran out).

etcd's watch says only that a key was deleted, the same for an unregistration, a revoke and an expiry. Two
facts tell them apart:

* **A revoke leaves a marker.** :meth:`~dyndisc.backends.etcd.EtcdStore.revoke` first writes
  ``/dyndisc/leaving/<lease id, 16 hex>`` under a short lease of its own (:data:`MARKER_TTL`), then revokes:
  a watcher that finds the marker knows the lease was ended on purpose (a clean exit, or another client's
  revoke through dyndisc).
* **A lease that still exists did not run out.** A key deleted while its lease is alive was deleted by a
  client: an unregistration.

So a key deleted under lease ``L`` left if the marker of ``L`` exists or ``L`` is alive, and expired if
neither. The watch asks once per lease (keys of one lease leave together), and remembers the answers that
cannot change (a marker seen, a lease gone). What it cannot tell (a key with no lease, a lookup that failed
or was refused) has no reason, as before.

Limits, documented in ``docs/backends/etcd.md``: a watcher that resumes more than :data:`MARKER_TTL` after a
clean exit finds no marker and says ``expired``; an unregistration just before the lease ran out may read as
``expired``; a revoke by a client other than dyndisc leaves no marker.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import anyio
from aetcd import rpc

from dyndisc._concurrency import run_bounded
from dyndisc._errors import DyndiscError, LeaseNotFoundError
from dyndisc._events import RemovalReason
from dyndisc.backends.etcd.connection import EtcdConnection, Stubs

log = logging.getLogger("dyndisc.etcd")

#: Where a revoke leaves its marker (one key per lease; the prefix is outside every layout's keys).
MARKER_PREFIX = "/dyndisc/leaving/"
#: How long a marker lives: longer than a watcher is usually away before it resumes.
MARKER_TTL = 120
#: Answers kept (a lease's answer is asked once; a fleet's worth of leases fits).
REMEMBERED = 65_536
#: Lookups at once when many leases end together (a whole deployment expiring).
LOOKUPS_AT_ONCE = 16


def marker_key(lease_id: int) -> str:
    """The key a revoke of ``lease_id`` leaves behind."""
    return f"{MARKER_PREFIX}{lease_id:016x}"


async def lease_time_to_live(connection: EtcdConnection, lease_id: int) -> float | None:
    """The seconds ``lease_id`` has left, or ``None`` if etcd does not know it (expired or revoked)."""

    async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
        request = rpc.LeaseTimeToLiveRequest(ID=lease_id)
        return await stubs.lease.LeaseTimeToLive(request, timeout=timeout, metadata=metadata)

    try:
        reply = await connection.call(f"reading the TTL of lease {lease_id:x}", attempt)
    except LeaseNotFoundError:
        return None
    # Whole seconds, rounded down: 0 is a live lease with under a second left; -1 one etcd does not know.
    return float(reply.TTL) if reply.TTL >= 0 else None


class Departures:
    """The reasons of the deletes an etcd watch reports, looked up per lease and remembered."""

    def __init__(self, connection: EtcdConnection) -> None:
        self.connection = connection
        self._known: OrderedDict[int, RemovalReason] = OrderedDict()

    async def reasons(self, leases: Iterable[int], budget: float) -> dict[int, RemovalReason | None]:
        """The reason the keys of each lease in ``leases`` left, found within ``budget`` seconds (a lease
        not answered for by then, or that it cannot tell, is absent or ``None``): a watch waits for this
        before it delivers the deletes, and a whole fleet expiring at once must not hold it up for long."""
        wanted = sorted(set(leases) - {0})
        found: dict[int, RemovalReason | None] = {}

        async def one(lease_id: int) -> None:
            found[lease_id] = await self.reason(lease_id)

        with anyio.move_on_after(budget):
            await run_bounded([functools.partial(one, lease_id) for lease_id in wanted], LOOKUPS_AT_ONCE)
        return found

    async def reason(self, lease_id: int) -> RemovalReason | None:
        """Why the keys of ``lease_id`` left (``None``: it cannot tell)."""
        known = self._known.get(lease_id)
        if known is not None:
            return known
        try:
            with anyio.fail_after(self.connection.request_timeout):
                if await self._marked(lease_id):
                    return self._remember(lease_id, RemovalReason.LEFT)
                if await self._alive(lease_id):
                    return RemovalReason.LEFT  # not remembered: it may still run out
                return self._remember(lease_id, RemovalReason.EXPIRED)
        except (DyndiscError, TimeoutError) as exc:
            log.debug("could not tell why lease %x ended: %s", lease_id, exc)
            return None

    async def _marked(self, lease_id: int) -> bool:
        key = marker_key(lease_id).encode()

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.RangeRequest(key=key, count_only=True)
            return await stubs.kv.Range(request, timeout=timeout, metadata=metadata)

        reply = await self.connection.call(f"reading {marker_key(lease_id)}", attempt)
        return bool(reply.count)

    async def _alive(self, lease_id: int) -> bool:
        return await lease_time_to_live(self.connection, lease_id) is not None

    def _remember(self, lease_id: int, reason: RemovalReason) -> RemovalReason:
        self._known[lease_id] = reason
        if len(self._known) > REMEMBERED:
            self._known.popitem(last=False)
        return reason
