"""Writes what :class:`~dyndisc.runtime.registrations.Registrations` wants under the
:class:`~dyndisc.runtime.lease_keeper.LeaseKeeper`'s lease: endpoint registrations and lease-bound metadata
entries, and everything again under a replacement lease.

Writes of one endpoint (or one entry) take turns under a lock of their own, so a registration, an update, an
unregistration and a replacement's write of the same endpoint are applied in the order they hold it, and
each looks at what is wanted when it holds it: a replacement never writes back what was unregistered, nor
an older record over a newer one. Writes of different endpoints run concurrently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from functools import partial
from typing import Any

from dyndisc._concurrency import KeyedLocks, run_bounded
from dyndisc._dynamo import DynamoTcp
from dyndisc._entries import MetadataEntry
from dyndisc._errors import (
    AccessDeniedError,
    ConfigurationError,
    InvalidNameError,
    InvalidRecordError,
    LeaseNotFoundError,
    RegistrationConflictError,
)
from dyndisc._metrics import metrics
from dyndisc._models import EndpointId, Instance, Readiness, Transport
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend, Lease
from dyndisc.runtime.lease_keeper import OUTAGE_RETRY_MAX, OUTAGE_RETRY_MIN, LeaseKeeper, is_outage
from dyndisc.runtime.registrations import Registrations, RenderEntry, Wanted, Written, WrittenEntry

log = logging.getLogger("dyndisc.runtime")

#: A transport as ``register`` takes it: a :class:`Transport`, ``"kind://address"``, ``{"kind": "address"}``,
#: a :class:`DynamoTcp` (rendered for every lease), or ``None``.
TransportArg = Transport | DynamoTcp | str | Mapping[str, str] | None
#: Writes a replacement lease makes at once: enough to keep a server busy, few enough that the keep-alive
#: and the application's own calls are not queued behind thousands of them.
CARRY_CONCURRENCY = 32
#: Errors that say the server wrote nothing (the write was refused): anything else may have landed.
_REFUSED = (
    AccessDeniedError,
    ConfigurationError,
    InvalidNameError,
    InvalidRecordError,
    RegistrationConflictError,
    NotImplementedError,
)


class Registrar:
    """Registers and unregisters endpoints and lease-bound entries under the current lease."""

    def __init__(self, backend: DiscoveryBackend, keeper: LeaseKeeper, registrations: Registrations) -> None:
        self.backend = backend
        self.keeper = keeper
        self.registrations = registrations
        self._endpoint_locks = KeyedLocks()
        self._entry_locks = KeyedLocks()
        self._metrics = metrics()
        #: Registrations reported to the metrics (so leaving the runtime subtracts exactly those); ``None``
        #: once it has left (a call still in flight then must not count again what the revoke removed).
        self._counted: int | None = 0

    # -- endpoints -------------------------------------------------------------------------------------
    async def register(
        self,
        endpoint: EndpointId,
        transport: TransportArg = None,
        metadata: Mapping[str, Any] | None = None,
        readiness: Readiness = Readiness.READY,
        *,
        device_type: str | None = None,
        request_plane_codec: str | None = None,
    ) -> Instance:
        """Want ``endpoint`` registered with this record and write it under the current lease (waiting for a
        new lease if the current one is found gone). If this raises, the previous registration is wanted
        again; a write that may have landed stays known, so :meth:`unregister` removes it."""
        self.keeper.check()
        lease = self.keeper.lease
        template: DynamoTcp | None = None
        given: Transport | str | Mapping[str, str] | None
        if isinstance(transport, DynamoTcp):
            template, given = transport, transport.render(endpoint, lease.id)
        else:
            given = transport
        previous = self.registrations.wanted(endpoint)
        # Checked before anything is recorded or written: a bad record is the caller's error, at once.
        instance = Instance.for_endpoint(
            endpoint,
            lease.id,
            given,
            metadata,
            readiness,
            device_type=device_type,
            request_plane_codec=request_plane_codec,
            # When the endpoint was first registered: an update keeps it, so the age a reader shows is honest.
            registered_at=previous.instance.registered_at if previous is not None else time.time(),
        )
        undo = self.registrations.want(endpoint, Wanted(instance, template))
        try:
            while True:
                async with self._endpoint_locks.hold(endpoint):
                    self.keeper.check()
                    lease = self.keeper.lease
                    wanted = self.registrations.render(endpoint, lease)
                    if wanted is None:  # unregistered while this waited for its turn: nothing to write
                        return instance
                    stored = await self._write_endpoint(endpoint, wanted, lease)
                    if stored is not None:
                        return stored
                # Not holding the endpoint's lock: the replacement may write this endpoint meanwhile.
                await self.keeper.wait_for_another(lease)
        except BaseException:
            undo()
            raise

    async def _write_endpoint(
        self, endpoint: EndpointId, instance: Instance, lease: Lease
    ) -> Instance | None:
        """Write ``instance`` under ``lease`` (holding the endpoint's lock); ``None`` if the lease is gone."""
        refused = self.registrations.attempt(endpoint, instance, lease)  # may be in the store from now on
        try:
            stored = await self.backend.register(instance, lease)
        except LeaseNotFoundError:
            refused()
            self.keeper.renew_now.set()  # ask the server now; it decides whether the lease is gone
            return None
        except _REFUSED:
            refused()
            raise
        finally:
            self._count()
        self.registrations.wrote(endpoint, Written(stored, lease))
        return stored

    async def unregister(self, endpoint: EndpointId) -> None:
        """Remove the registration of ``endpoint`` (a no-op if nothing of it is written)."""
        # Not wanted from now on: a replacement under way must not write it again (chaos seed 1004).
        self.registrations.unwant(endpoint)
        async with self._endpoint_locks.hold(endpoint):
            written = self.registrations.take_written(endpoint)
            if written is None:
                return
            try:
                await self.backend.unregister(written.instance)
            except BaseException:
                # Maybe still written: keep it known, so that unregistering again (or the revoke) removes it.
                self.registrations.wrote(endpoint, Written(written.instance, written.lease, confirmed=False))
                raise
            finally:
                self._count()

    # -- lease-bound entries ---------------------------------------------------------------------------
    async def put_bound(self, ident: Hashable, render: RenderEntry) -> MetadataEntry:
        """Want the entry ``render`` makes for each lease, and write it under the current one."""
        self.keeper.check()
        checked = render(self.keeper.lease.id)
        checked.to_json()  # too large or not JSON: the caller's error, before anything is recorded
        undo = self.registrations.want_entry(ident, render)
        try:
            while True:
                async with self._entry_locks.hold(ident):
                    self.keeper.check()
                    lease = self.keeper.lease
                    entry = self.registrations.render_entry(ident, lease)
                    if entry is None:  # withdrawn while this waited for its turn
                        return checked
                    if await self._write_entry(ident, entry, lease):
                        return entry
                await self.keeper.wait_for_another(lease)
        except BaseException:
            undo()
            raise

    async def _write_entry(self, ident: Hashable, entry: MetadataEntry, lease: Lease) -> bool:
        """Write ``entry`` under ``lease`` (holding its lock); false if the lease is gone."""
        before = self.registrations.written_entry(ident)
        self.registrations.wrote_entry(ident, WrittenEntry(entry, lease))
        try:
            await self.backend.put_entry(entry, lease)
        except LeaseNotFoundError:
            self.registrations.wrote_entry(ident, before)
            self.keeper.renew_now.set()
            return False
        except _REFUSED:
            self.registrations.wrote_entry(ident, before)
            raise
        return True

    async def put_unbound(self, ident: Hashable, entry: MetadataEntry) -> None:
        """Write ``entry`` with no lease: it stays until deleted (and is no longer the lease's to carry)."""
        entry.to_json()  # too large or not JSON: refused before anything changes
        self.registrations.unwant_entry(ident)
        async with self._entry_locks.hold(ident):
            self.registrations.forget_written_entry(ident)
            await self.backend.put_entry(entry, None)

    async def forget_entry(self, ident: Hashable, bucket: str, key: str) -> None:
        """Delete the entry ``ident`` at ``bucket``/``key``, where it is written under the current lease (a
        copy written under an earlier lease went with that lease)."""
        self.registrations.unwant_entry(ident)
        async with self._entry_locks.hold(ident):
            # Forgotten even if the delete fails: nobody wants it any more, and its lease's end removes it.
            self.registrations.forget_written_entry(ident)
            await self.backend.delete_entry(bucket, key)

    # -- a replacement lease ---------------------------------------------------------------------------
    async def carry(self, lease: Lease) -> None:
        """Write everything the application wants under ``lease`` (a replacement), at most
        :data:`CARRY_CONCURRENCY` writes at once, riding out outages; returns early if ``lease`` is found
        gone (the keep-alive loop then replaces it, and the next lease carries what is left)."""
        regs = self.registrations
        regs.forget_unwanted(lease)
        jobs: list[Callable[[], Awaitable[None]]] = [
            partial(self._carry_endpoint, endpoint, lease) for endpoint in regs.endpoints_to_carry(lease)
        ]
        jobs += [partial(self._carry_entry, ident, lease) for ident in regs.entries_to_carry(lease)]
        await run_bounded(jobs, min(CARRY_CONCURRENCY, len(jobs)))

    async def _carry_endpoint(self, endpoint: EndpointId, lease: Lease) -> None:
        async with self._endpoint_locks.hold(endpoint):
            if self.registrations.is_written(endpoint, lease):
                return  # registered (or updated) under this lease while the replacement was under way

            wanted = self.registrations.wanted(endpoint)

            async def write() -> None:
                instance = self.registrations.render(endpoint, lease)
                if instance is not None and self.keeper.held is lease:
                    await self._write_endpoint(endpoint, instance, lease)

            try:
                await _until_answered(write)
            except AccessDeniedError as exc:
                # The server refuses this one write (the credentials' scope no longer covers it, or it is a
                # registration being refused right now): the others are carried, and the runtime goes on.
                # A newer wish of the application is its own call's to settle.
                if self.registrations.wanted(endpoint) is wanted:
                    self.registrations.unwant(endpoint)
                log.error("dropped the registration of %s: the new lease cannot carry it (%s)", endpoint, exc)

    async def _carry_entry(self, ident: Hashable, lease: Lease) -> None:
        async with self._entry_locks.hold(ident):
            written = self.registrations.written_entry(ident)
            if written is not None and written.lease is lease:
                return

            wanted = self.registrations.wanted_entry(ident)

            async def write() -> None:
                entry = self.registrations.render_entry(ident, lease)
                if entry is not None and self.keeper.held is lease:
                    await self._write_entry(ident, entry, lease)

            try:
                await _until_answered(write)
            except AccessDeniedError as exc:
                # As for an endpoint: one refused entry does not stop the runtime.
                if self.registrations.wanted_entry(ident) is wanted:
                    self.registrations.unwant_entry(ident)
                log.error("dropped the entry %s: the new lease cannot carry it (%s)", ident, exc)

    # -- counting --------------------------------------------------------------------------------------
    def _count(self) -> None:
        if self._metrics.enabled and self._counted is not None:
            now = len(self.registrations)
            if now != self._counted:
                self._metrics.registered(self.backend.name, now - self._counted)
                self._counted = now

    def uncount(self) -> None:
        """Leaving: the registrations are gone from the metrics."""
        if self._metrics.enabled and self._counted:
            self._metrics.registered(self.backend.name, -self._counted)
        self._counted = None


async def _until_answered(attempt: Callable[[], Awaitable[None]]) -> None:
    """Call ``attempt`` until the server answers it, retrying outages with backoff."""
    backoff = Backoff(OUTAGE_RETRY_MIN, OUTAGE_RETRY_MAX)
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning(
                "writing under a replacement lease failed (%s: %s); retrying", type(exc).__name__, exc
            )
            await backoff.sleep()
