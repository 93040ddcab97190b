"""How :class:`~dyndisc.DistributedRuntime` keeps its lease: the keep-alive task, the replacement of a lost
lease (every wanted endpoint and entry written again under the new one), the revoke on a clean exit, and the
health and metrics of its registrations."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from dyndisc._concurrency import Wake
from dyndisc._dynamo import DynamoTcp
from dyndisc._errors import LeaseLostError
from dyndisc._health import HealthRecorder
from dyndisc._lease import (
    REVOKE_BUDGET,
    LeaseChange,
    LeaseLost,
    keep_lease_alive,
    revoke_on_exit,
    ride_out_outages,
)
from dyndisc._metrics import Metrics
from dyndisc._models import EndpointId, Instance
from dyndisc._runtime_state import RuntimeState
from dyndisc._settings import LeaseLossPolicy
from dyndisc.backends.base import DiscoveryBackend, Lease

log = logging.getLogger("dyndisc.runtime")


class LeaseKeeping(RuntimeState):
    """The lease methods of :class:`~dyndisc.DistributedRuntime` (which inherits them): what they need from
    the runtime beyond :class:`RuntimeState` is declared here, and the runtime provides it."""

    lease_ttl: float
    lease_loss_policy: LeaseLossPolicy
    on_lease_change: Callable[[LeaseChange], object] | None
    _backend: DiscoveryBackend | None
    _tg: TaskGroup | None
    _wanted: dict[EndpointId, Instance]
    _registered: dict[EndpointId, Instance]
    _templates: dict[EndpointId, DynamoTcp]
    _health: HealthRecorder
    _changed: Wake
    _metrics: Metrics
    _counted: int
    _registrations_changed: bool

    def _for_lease(self, endpoint: EndpointId, instance: Instance, lease_id: int) -> Instance:
        raise NotImplementedError

    async def _release_lease(self) -> None:
        """Revoke the lease on a clean exit, retried within its budget; say what stays behind if it fails."""
        assert self._backend is not None
        lease, self._lease = self._lease, None
        self._count_registrations(live=False)
        self._changed.set()
        revoked = False
        if lease is not None and self._failure is None:
            revoked = await revoke_on_exit(self._backend, lease, len(self._registered))
        self._health.closed(revoked)

    async def _hold_lease(self) -> None:
        """The keep-alive task: renew; replace the lease when the server says it is gone (or shut down)."""
        assert self._backend is not None
        try:
            # A backend that watches its leases wakes the loop itself when one changes (Kubernetes).
            async with self._backend.follow_leases(self._renew_now.set):
                while True:
                    lease = self.lease
                    try:
                        await keep_lease_alive(self._backend, lease, self._health, self._renew_now)
                    except LeaseLost as exc:
                        log.error("lost lease %x: %s", lease.id, exc)
                        self._metrics.lease_lost(self._backend.name)
                        if self.lease_loss_policy is LeaseLossPolicy.SHUTDOWN:
                            raise LeaseLostError(
                                f"runtime shut down: {exc} (lease_loss_policy=shutdown)"
                            ) from exc
                        await self._replace_lease(lease, str(exc))
        except Exception as exc:
            # A permanent error, or a lost lease under the shutdown policy: stop, and tell everyone waiting.
            self._fail(exc)
            raise

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._health.failed(f"{type(exc).__name__}: {exc}")
        self._changed.set()
        log.error("the runtime stops: %s", exc)

    async def _replace_lease(self, old: Lease, reason: str) -> None:
        """Grant a new lease and register every wanted endpoint under it; revoke the old one in the
        background (it is usually gone already, but a server that lost track must not keep it)."""
        backend = self.backend
        self._health.replacing(reason)
        async with self._lease_lock.exclusive():

            async def grant_and_register() -> Lease:
                lease = await backend.grant_lease(self.lease_ttl)
                # The new id is ours from now on: watchers may see it before re-registration completes.
                self._lease = lease
                self._registered = {}
                self._written_entries = {}
                try:
                    for endpoint, instance in list(self._wanted.items()):
                        moved = self._for_lease(endpoint, instance, lease.id)
                        self._registered[endpoint] = await backend.register(moved, lease)
                    for ident, render in list(self._wanted_entries.items()):
                        entry = render(lease.id)
                        await backend.put_entry(entry, lease)
                        self._written_entries[ident] = entry
                except BaseException:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(REVOKE_BUDGET):
                        await backend.revoke_lease(lease)
                    raise
                return lease

            new = await ride_out_outages("granting a new lease", grant_and_register)
        assert self._tg is not None
        if old.id != new.id:  # on Kubernetes a pod's lease keeps its id: the "old" one is the new one
            self._tg.start_soon(self._revoke_until_gone, old)
        self._health.granted(new.id, new.ttl)
        self._note_registrations()
        self._changed.set()
        log.warning(
            "replaced lost lease %x with %x and re-registered %d endpoints",
            old.id,
            new.id,
            len(self._registered),
        )
        if self.on_lease_change is not None:
            try:
                result = self.on_lease_change(LeaseChange(old.id, new.id, reason))
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the application's callback must not take the keep-alive loop down
                log.exception("on_lease_change callback failed")

    async def _revoke_until_gone(self, lease: Lease) -> None:
        await ride_out_outages(
            f"revoking the lost lease {lease.id:x}", lambda: self.backend.revoke_lease(lease)
        )

    def _note_registrations(self) -> None:
        # Counted when the health is read, not here: this runs on every registration, and counting walks
        # every endpoint (a worker registering n endpoints would pay O(n^2)).
        self._registrations_changed = True
        self._count_registrations()

    def _update_registration_health(self) -> None:
        self._registrations_changed = False
        lease_id = self._lease.id if self._lease is not None else None
        pending = sum(
            1
            for endpoint in self._wanted
            if (found := self._registered.get(endpoint)) is None or found.instance_id != lease_id
        )
        self._health.registrations(len(self._wanted), pending)

    def _count_registrations(self, *, live: bool = True) -> None:
        if self._metrics.enabled and self._backend is not None:
            now = len(self._registered) if live else 0
            if now != self._counted:
                self._metrics.registered(self._backend.name, now - self._counted)
                self._counted = now
