"""The etcd backend (the default): one lease per process, create-if-absent registrations, resumable watches.

Settings (environment, see ``docs/backends/etcd.md``): ``ETCD_ENDPOINTS``, ``ETCD_LEASE_TTL``,
``ETCD_AUTH_USERNAME`` / ``ETCD_AUTH_PASSWORD``, ``ETCD_AUTH_CA`` / ``ETCD_AUTH_CLIENT_CERT`` /
``ETCD_AUTH_CLIENT_KEY`` (a file path or PEM text), ``ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS`` and
``ETCD_REQUEST_TIMEOUT_SECONDS``.

The client is ``aetcd``'s generated gRPC stubs over channels this module owns (asyncio only, as grpc.aio is).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from aetcd import rpc
from aetcd.utils import prefix_range_end
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dyndisc._concurrency import background_tasks
from dyndisc._errors import BackendUnavailableError, ConfigurationError, LeaseNotFoundError
from dyndisc.backends._etcd_connection import EtcdConnection, Stubs, TlsMaterial, parse_endpoints
from dyndisc.backends._etcd_watch import SharedWatch, Subscriber
from dyndisc.backends.base import Lease
from dyndisc.backends.kv import KeyValueStore, KvDiscovery, StoredValue, StoreEvent

__all__ = ["EtcdSettings", "EtcdStore", "from_env"]

_EQUAL, _CREATE = rpc.Compare.CompareResult.EQUAL, rpc.Compare.CompareTarget.CREATE


class EtcdSettings(BaseSettings):
    """The ``ETCD_*`` environment variables of the etcd backend."""

    model_config = SettingsConfigDict(env_prefix="ETCD_", extra="ignore", case_sensitive=False)

    #: Comma-separated client URLs (``http://`` or ``https://``); calls fail over between them.
    endpoints: str = "http://localhost:2379"
    #: Lease TTL in seconds (read by the runtime; ``DYN_LEASE_TTL`` wins when both are set).
    lease_ttl: Annotated[float, Field(gt=0, le=3600)] = 10.0
    #: User and password for etcd auth (both or neither).
    auth_username: str | None = None
    auth_password: SecretStr | None = None
    #: CA bundle that signs the etcd server certificate: a file path or PEM text.
    auth_ca: str | None = None
    #: Client certificate and key for mutual TLS: file paths or PEM text (both or neither).
    auth_client_cert: str | None = None
    auth_client_key: SecretStr | None = None
    #: How long a process started before etcd waits for it (with backoff) before giving up.
    startup_connect_timeout_seconds: Annotated[float, Field(ge=0)] = 120.0
    #: How long one call may retry (failing over between endpoints) once connected.
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0

    @classmethod
    def load(cls, **overrides: Any) -> EtcdSettings:
        """Read the settings; a bad value becomes one :class:`ConfigurationError` naming the variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            problems = "; ".join(
                f"ETCD_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ConfigurationError(f"invalid etcd settings: {problems}") from None

    def tls_material(self) -> TlsMaterial | None:
        """The PEM bytes of the CA and client identity, or ``None`` when none is configured."""
        key = self.auth_client_key.get_secret_value() if self.auth_client_key else None
        if (self.auth_client_cert is None) != (key is None):
            raise ConfigurationError(
                "ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY go together: set both (or neither)"
            )
        if self.auth_ca is None and self.auth_client_cert is None:
            return None
        return TlsMaterial(
            ca=_pem(self.auth_ca, "ETCD_AUTH_CA"),
            cert=_pem(self.auth_client_cert, "ETCD_AUTH_CLIENT_CERT"),
            key=_pem(key, "ETCD_AUTH_CLIENT_KEY"),
        )


def _pem(value: str | None, setting: str) -> bytes | None:
    """Accept PEM text or a path to a PEM file."""
    if value is None or not value.strip():
        return None
    if "-----BEGIN" in value:
        return value.strip().encode() + b"\n"
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{setting} must be PEM text or the path of a PEM file; cannot read {str(path)!r}: {exc.strerror}"
        ) from None
    if b"-----BEGIN" not in data:
        raise ConfigurationError(f"{setting}={str(path)!r} is not a PEM file (no '-----BEGIN' line)")
    return data


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

    def __init__(self, settings: EtcdSettings | None = None) -> None:
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
        )
        self._watches: dict[str, SharedWatch] = {}

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

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.LeaseGrantRequest(TTL=seconds, ID=0)
            return await stubs.lease.LeaseGrant(request, timeout=timeout, metadata=metadata)

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

    async def revoke(self, lease_id: int) -> None:
        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.LeaseRevokeRequest(ID=lease_id)
            return await stubs.lease.LeaseRevoke(request, timeout=timeout, metadata=metadata)

        with contextlib.suppress(LeaseNotFoundError):  # already gone: revoking is idempotent
            await self.connection.call(f"revoking lease {lease_id:x}", attempt)

    # -- keys ------------------------------------------------------------------------------------------
    async def create(self, key: str, value: bytes, lease_id: int) -> StoredValue | None:
        raw = key.encode()

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.TxnRequest(
                compare=[rpc.Compare(result=_EQUAL, target=_CREATE, key=raw, create_revision=0)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=raw, value=value, lease=lease_id))],
                failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=raw))],
            )
            return await stubs.kv.Txn(request, timeout=timeout, metadata=metadata)

        reply = await self.connection.call(f"registering {key}", attempt)
        if reply.succeeded:
            return None
        kvs = reply.responses[0].response_range.kvs
        if not kvs:  # cannot happen in one transaction; report rather than guess
            raise BackendUnavailableError(f"etcd at {self.connection.url}: {key} neither absent nor present")
        return StoredValue(value=bytes(kvs[0].value), lease_id=int(kvs[0].lease))

    async def put(self, key: str, value: bytes, lease_id: int) -> None:
        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.PutRequest(key=key.encode(), value=value, lease=lease_id)
            return await stubs.kv.Put(request, timeout=timeout, metadata=metadata)

        await self.connection.call(f"writing {key}", attempt)

    async def delete(self, key: str) -> None:
        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.DeleteRangeRequest(key=key.encode())
            return await stubs.kv.DeleteRange(request, timeout=timeout, metadata=metadata)

        await self.connection.call(f"deleting {key}", attempt)

    async def get_prefix(self, prefix: str) -> dict[str, bytes]:
        raw = prefix.encode()

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> Any:
            request = rpc.RangeRequest(key=raw, range_end=prefix_range_end(raw))
            return await stubs.kv.Range(request, timeout=timeout, metadata=metadata)

        reply = await self.connection.call(f"listing {prefix!r}", attempt)
        return {kv.key.decode(errors="replace"): bytes(kv.value) for kv in reply.kvs}

    # -- watches ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        shared = self._watches.get(prefix)
        if shared is None:
            shared = self._watches[prefix] = SharedWatch(self.connection, prefix)
        subscriber = Subscriber(shared)
        shared.subscribers.add(subscriber)
        try:
            async with background_tasks() as tg:
                tg.start_soon(shared.lead)
                await self._wait_established(shared)
                yield subscriber.events()
        finally:
            shared.subscribers.discard(subscriber)
            if not shared.subscribers and self._watches.get(prefix) is shared:
                del self._watches[prefix]

    async def _wait_established(self, shared: SharedWatch) -> None:
        """Return once etcd confirmed the watch, so the caller misses nothing written after this."""
        # Listing and creating the watch may each take a request timeout; before the first contact with
        # etcd, the startup wait comes first.
        budget = 2 * self.connection.request_timeout
        if not self.connection.connected_once:
            budget += self.connection.startup_timeout
        with anyio.move_on_after(budget):
            await shared.settled.wait()
            if shared.established.is_set():
                return
            raise shared.refusal or BackendUnavailableError(f"etcd refused the watch of {shared.prefix!r}")
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


def from_env() -> KvDiscovery:
    """The ``etcd`` backend configured from the ``ETCD_*`` environment variables."""
    return KvDiscovery(EtcdStore.from_env())
