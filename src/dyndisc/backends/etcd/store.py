"""The etcd store: leases, create-if-absent transactions, prefix reads and shared resumable watches."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aetcd import rpc
from aetcd.utils import prefix_range_end

from dyndisc._errors import BackendUnavailableError, ConfigurationError, DyndiscError, LeaseNotFoundError
from dyndisc._outage import OutageLog
from dyndisc.backends.base import Lease
from dyndisc.backends.diagnosis import BackendDoctor
from dyndisc.backends.etcd.connection import EtcdConnection, PermissionDenied, Stubs
from dyndisc.backends.etcd.departures import MARKER_TTL, lease_time_to_live, marker_key
from dyndisc.backends.etcd.doctor import EtcdDoctor
from dyndisc.backends.etcd.listing import list_prefix
from dyndisc.backends.etcd.roles import OwnRoles
from dyndisc.backends.etcd.settings import EtcdSettings, parse_endpoints
from dyndisc.backends.etcd.watch import EtcdSource
from dyndisc.backends.kv import KeyValueStore, StoredValue, StoreEvent
from dyndisc.backends.kv.revisioned import SharedWatch, subscribe

log = logging.getLogger("dyndisc.etcd")

_EQUAL, _CREATE = rpc.Compare.CompareResult.EQUAL, rpc.Compare.CompareTarget.CREATE
_LESS, _VERSION = rpc.Compare.CompareResult.LESS, rpc.Compare.CompareTarget.VERSION


class EtcdStore(KeyValueStore):
    """A :class:`~dyndisc.backends.kv.KeyValueStore` on etcd v3.

    * Leases are etcd leases (TTL rounded up to whole seconds); renewals use one ``LeaseKeepAlive`` stream.
    * :meth:`create` is a transaction ``create_revision(key) == 0 -> put(key, lease) else get(key)``.
    * Watches of one prefix share one etcd watch, resumed from the last seen revision after a break and
      re-listed (a fresh snapshot) when etcd compacted that history.

    Create it from settings (``EtcdStore(EtcdSettings(endpoints=...))``) or the environment
    (:meth:`from_env`). Nothing connects until the first call.
    """

    name = "etcd"

    def __init__(
        self, settings: EtcdSettings | None = None, *, startup_timeout_name: str | None = None
    ) -> None:
        """``startup_timeout_name`` says what set the startup wait, when not its variable (``--wait``)."""
        self.settings = settings if settings is not None else EtcdSettings.load()
        targets = parse_endpoints(self.settings.endpoints)
        tls = self.settings.tls_material()
        if tls is not None and not targets[0].secure:
            raise ConfigurationError(
                f"TLS material is set (ETCD_AUTH_CA / ETCD_AUTH_CLIENT_CERT) but ETCD_ENDPOINTS="
                f"{self.settings.endpoints!r} uses http://; use https:// URLs"
            )
        user, password = self.settings.auth_username, self.settings.auth_password
        if (user is None) != (password is None):
            raise ConfigurationError(
                "ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD go together: set both (or neither)"
            )
        self.connection = EtcdConnection(
            targets,
            username=user,
            password=password.get_secret_value() if password is not None else None,
            tls=tls,
            request_timeout=self.settings.request_timeout_seconds,
            startup_timeout=self.settings.startup_connect_timeout_seconds,
            startup_timeout_name=startup_timeout_name or "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS",
        )
        self.source = EtcdSource(self.connection)
        self._watches: dict[str, SharedWatch] = {}
        #: The outage log of each prefix's watch, kept across the watches opened for it.
        self._outages: dict[str, OutageLog] = {}
        #: Our own roles, read to explain a refused write.
        self.own_roles = OwnRoles(self.connection)

    @classmethod
    def from_env(cls, **overrides: Any) -> EtcdStore:
        """A store configured from the ``ETCD_*`` environment variables (``overrides`` win)."""
        return cls(EtcdSettings.load(**overrides))

    def __repr__(self) -> str:
        return f"EtcdStore({self.connection.all_urls})"

    # -- leases ----------------------------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"lease TTL must be positive, got {ttl}")
        seconds = max(1, math.ceil(ttl))

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.LeaseGrantRequest(TTL=seconds, ID=0)
            return stubs.lease.LeaseGrant(request, timeout=timeout, metadata=metadata)

        reply = await self.connection.call(f"granting a {seconds}s lease", attempt)
        if reply.error:
            raise BackendUnavailableError(f"etcd at {self.connection.url} refused a lease: {reply.error}")
        return Lease(id=int(reply.ID), ttl=float(reply.TTL))

    async def keep_alive(self, lease_id: int) -> float:
        ttl = await self.connection.renew(lease_id)
        if ttl <= 0:
            raise LeaseNotFoundError(
                f"etcd at {self.connection.url} no longer knows lease {lease_id:x} "
                "(it expired or was revoked)"
            )
        return float(ttl)

    @property
    def tells_lease_time(self) -> bool:
        return True

    async def time_to_live(self, lease_id: int) -> float | None:
        return await lease_time_to_live(self.connection, lease_id)

    async def revoke(self, lease_id: int) -> None:
        """Revoke ``lease_id`` (its keys go at once), first leaving the departure marker that tells watchers
        its keys left rather than expired."""
        # Within half the call's budget, so that a slow marker never costs the revoke itself.
        with anyio.move_on_after(self.connection.request_timeout / 2):
            await self._mark_leaving(lease_id)
        await self.revoke_quietly(lease_id)

    async def _mark_leaving(self, lease_id: int) -> None:
        """Leave the marker that tells watchers the keys of ``lease_id`` left rather than expired (see
        :mod:`~dyndisc.backends.etcd.departures`); a marker refused or lost costs only the reason."""
        key = marker_key(lease_id).encode()
        try:
            marker = await self.grant(MARKER_TTL)
        except DyndiscError as exc:
            log.debug("no departure marker for lease %x: %s", lease_id, exc)
            return

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.PutRequest(key=key, value=b"", lease=marker.id)
            return stubs.kv.Put(request, timeout=timeout, metadata=metadata)

        try:
            await self.connection.call(f"writing {marker_key(lease_id)}", attempt)
        except DyndiscError as exc:  # refused (a role without the markers' prefix): no lease left behind
            log.debug("no departure marker for lease %x: %s", lease_id, exc)
            with contextlib.suppress(DyndiscError):
                await self.revoke_quietly(marker.id)

    async def revoke_quietly(self, lease_id: int) -> None:
        """Revoke ``lease_id`` leaving no departure marker (a marker's own lease)."""

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.LeaseRevokeRequest(ID=lease_id)
            return stubs.lease.LeaseRevoke(request, timeout=timeout, metadata=metadata)

        with contextlib.suppress(LeaseNotFoundError):  # already gone: revoking is idempotent
            await self.connection.call(f"revoking lease {lease_id:x}", attempt)

    async def server_version(self) -> str:
        """The etcd version of the member that answers (``Maintenance.Status``), e.g. ``3.6.16``."""

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            return stubs.maintenance.Status(rpc.StatusRequest(), timeout=timeout, metadata=metadata)

        reply = await self.connection.call("reading the server version", attempt)
        return str(reply.version)

    # -- keys ------------------------------------------------------------------------------------------
    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        raw = key.encode()

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.TxnRequest(
                compare=[rpc.Compare(result=_EQUAL, target=_CREATE, key=raw, create_revision=0)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value, lease=lease_id))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))],
            )
            return stubs.kv.Txn(request, timeout=timeout, metadata=metadata)

        reply = await self._write(f"registering {key}", key, attempt)
        if reply.succeeded:
            return None
        kvs = reply.responses[0].response_range.kvs
        if not kvs:  # cannot happen in one transaction; report rather than guess
            raise BackendUnavailableError(f"etcd at {self.connection.url}: {key} neither absent nor present")
        return StoredValue(value=bytes(kvs[0].value), lease_id=int(kvs[0].lease))

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.PutRequest(key=key.encode(), value=value, lease=lease_id)
            return stubs.kv.Put(request, timeout=timeout, metadata=metadata)

        await self._write(f"writing {key}", key, attempt)

    async def delete(self, key: str) -> None:
        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.DeleteRangeRequest(key=key.encode())
            return stubs.kv.DeleteRange(request, timeout=timeout, metadata=metadata)

        await self._write(f"deleting {key}", key, attempt)

    async def _write(self, what: str, key: str, attempt: Any) -> Any:
        """A write of ``key``; a refusal says which namespace the key is of and what our roles may write."""
        try:
            return await self.connection.call(what, attempt)
        except PermissionDenied as exc:
            action = "deleting" if what.startswith("deleting") else "writing"
            raise await self.own_roles.refusal(action, key, exc) from None

    # -- access (dyndisc doctor's scope check) -----------------------------------------------------------
    @property
    def principal(self) -> str | None:
        user = self.connection.username
        return None if user is None else f"user {user!r}"

    async def writable_prefixes(self) -> list[str] | None:
        roles = await self.own_roles.roles()
        if isinstance(roles, str):
            return None
        return [p.prefix for perms in roles.values() for p in perms if p.writes and p.prefix is not None]

    async def may_write(self, key: str) -> bool:
        """Whether etcd lets us write ``key``, asked without writing anything: a transaction whose compare
        cannot hold (a version below 0) and whose only operation is a put of ``key``; etcd checks the
        permissions of both branches before it evaluates the compare."""
        raw = key.encode()

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.TxnRequest(
                compare=[rpc.Compare(result=_LESS, target=_VERSION, key=raw, version=0)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=b""))],
            )
            return stubs.kv.Txn(request, timeout=timeout, metadata=metadata)

        try:
            reply = await self.connection.call(f"checking whether we may write {key}", attempt)
        except PermissionDenied:
            return False
        assert not reply.succeeded, "a version below 0 cannot be"
        return True

    async def may_read(self, prefix: str) -> bool:
        """Whether etcd lets us read the keys under ``prefix`` (a count, which returns no key)."""
        raw = prefix.encode()

        def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.RangeRequest(key=raw, range_end=prefix_range_end(raw), count_only=True)
            return stubs.kv.Range(request, timeout=timeout, metadata=metadata)

        try:
            await self.connection.call(f"checking whether we may read {prefix!r}", attempt)
        except PermissionDenied:
            return False
        return True

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        return (await list_prefix(self.connection, prefix, self.source.page_size)).items

    # -- watches ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        async with subscribe(
            self._watches, self.source, prefix, self._wait_established, self._outages
        ) as events:
            yield events

    async def _wait_established(self, shared: SharedWatch) -> None:
        """Return once etcd confirmed the watch, so the caller misses nothing written after this."""
        # Listing and creating the watch may each take a request timeout; before the first contact with
        # etcd, the startup wait comes first. A large prefix is listed in pages, each with its own deadline:
        # while pages keep arriving, the wait goes on.
        budget = 2 * self.connection.request_timeout
        if not self.connection.connected_once:
            budget += self.connection.startup_timeout
        deadline, pages = anyio.current_time() + budget, self.source.pages_read
        while True:
            with anyio.move_on_after(deadline - anyio.current_time()):
                await shared.settled.wait()
                if shared.established.is_set():
                    return
                raise shared.refusal or BackendUnavailableError(
                    f"etcd refused the watch of {shared.prefix!r}"
                )
            if self.source.pages_read == pages:
                break
            deadline, pages = anyio.current_time() + self.connection.request_timeout, self.source.pages_read
        raise BackendUnavailableError(
            f"watching {shared.prefix!r}: etcd at {self.connection.all_urls} (ETCD_ENDPOINTS) did not "
            f"confirm the watch within {budget:g}s; last error: {shared.last_error or 'none'}"
        )

    # -- lifecycle -------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self.connection.aclose()

    @property
    def stale_since(self) -> float | None:
        return self.connection.stale_since

    @property
    def default_lease_ttl(self) -> float | None:
        return self.settings.lease_ttl

    def doctor(self) -> BackendDoctor:
        return EtcdDoctor(self)
