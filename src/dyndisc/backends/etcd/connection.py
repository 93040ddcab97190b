"""The gRPC connection to an etcd cluster: endpoint failover, auth tokens, TLS, retries and clear errors.

aetcd's ``Client`` dials one plaintext ``host:port`` with a token fixed at connect time, so it cannot do TLS,
fail over, or re-authenticate after an etcd restart (simple tokens do not survive one). We therefore drive
aetcd's generated gRPC stubs and messages (``aetcd.rpc``) over channels we own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import grpc
from aetcd import rpc

from dyndisc._errors import BackendUnavailableError, LeaseNotFoundError
from dyndisc._retry import Backoff
from dyndisc.backends.etcd.settings import Target, TlsMaterial

log = logging.getLogger("dyndisc.etcd")

T = TypeVar("T")

#: Backoff between attempts of one call (failing over to the next endpoint each time).
RETRY_MIN, RETRY_MAX = 0.1, 2.0
#: Backoff while waiting for etcd at startup (a worker started before etcd waits, then works).
STARTUP_RETRY_MAX = 5.0

_CHANNEL_OPTIONS = (
    # Reconnect quickly after an etcd restart instead of gRPC's default 1 s .. 120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Detect a silent partition on idle watch streams; etcd refuses pings more often than every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A snapshot of a large prefix is one Range response; gRPC's default cap is 4 MiB.
    ("grpc.max_receive_message_length", 2**31 - 1),
)

# How gRPC words a TLS failure that retrying cannot fix (a missing or untrusted certificate, a wrong scheme).
_TLS_CONFIG_HINTS = ("certificate", "wrong_version_number", "alert", "tsi_data_corrupted", "ssl_error_ssl")


async def grpc_await(awaitable: Awaitable[T]) -> T:
    """Await a grpc.aio call (or a coroutine making calls) from a task of its own.

    grpc.aio turns a cancellation into a fresh ``CancelledError`` without the marker anyio's cancel scopes
    look for, so a timeout (``anyio.fail_after``) around a bare gRPC await escapes as a stray cancellation
    and tears down the caller's task group. Waiting on the call from outside keeps anyio's cancellation
    intact; the call is cancelled with us and never outlives this function's caller.
    """
    inner = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({inner})
    except BaseException:
        inner.cancel()
        inner.add_done_callback(_consume)
        raise
    return inner.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


class Transient(Exception):
    """Internal: a failure worth retrying (server unreachable, timed out, stream closed)."""


class Stubs:
    """The gRPC stubs of one channel, and the generation of that channel (bumped at every failover)."""

    def __init__(self, channel: Any, generation: int) -> None:
        self.channel = channel
        self.generation = generation
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.auth = rpc.AuthStub(channel)


class EtcdConnection:
    """Channels to one etcd cluster, used by the store for every call and stream.

    Calls go to the current endpoint; a connection-class failure moves to the next one and retries with
    backoff until the call's deadline. Before the first success that deadline is the startup timeout, so a
    process started before etcd waits for it.
    """

    def __init__(
        self,
        targets: list[Target],
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsMaterial | None = None,
        request_timeout: float = 5.0,
        startup_timeout: float = 120.0,
    ) -> None:
        self.targets = targets
        self.username = username
        self.password = password
        self.tls = tls if tls is not None else (TlsMaterial() if targets[0].secure else None)
        self.request_timeout = request_timeout
        self.startup_timeout = startup_timeout
        self._index = 0
        self._generation = 0
        self._stubs: Stubs | None = None
        self._token: str | None = None
        self._token_generation = -1
        self._auth_lock = anyio.Lock()
        self._connected_once = False
        self._closed = False
        self._keepalive_call: Any = None
        self._keepalive_generation = -1
        self._keepalive_lock = anyio.Lock()
        #: ``time.monotonic()`` of the first failure since the last success, else ``None``.
        self.stale_since: float | None = None

    # -- state -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint in use, for messages."""
        return self.targets[self._index].url

    @property
    def all_urls(self) -> str:
        """Every configured endpoint, for messages."""
        return ",".join(t.url for t in self.targets)

    @property
    def connected_once(self) -> bool:
        """Whether any call has succeeded yet (before that, calls wait out the startup timeout)."""
        return self._connected_once

    def mark_ok(self) -> None:
        """Record a successful exchange with the server."""
        self._connected_once = True
        self.stale_since = None

    async def mark_failed(self, generation: int) -> None:
        """Record a connection failure on channel ``generation``; fail over once per failed channel.

        The failed channel is closed, which ends every call and stream still on it: they retry on the
        next endpoint instead of waiting for a dead one to time out.
        """
        if self.stale_since is None:
            self.stale_since = time.monotonic()
        if generation == self._generation and self._stubs is not None:
            old = self._stubs.channel
            self._stubs = None
            self._index = (self._index + 1) % len(self.targets)
            self._generation += 1
            with anyio.CancelScope(shield=True):
                await old.close()

    def invalidate_token(self) -> None:
        """Forget the auth token (etcd restarted or it expired); the next call authenticates again."""
        self._token = None

    # -- channels --------------------------------------------------------------------------------------
    def _open(self) -> Stubs:
        if self._closed:
            raise BackendUnavailableError(f"the connection to etcd at {self.all_urls} is closed")
        if self._stubs is None:
            target = self.targets[self._index]
            if self.tls is not None:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.tls.ca, private_key=self.tls.key, certificate_chain=self.tls.cert
                )
                channel = rpc.secure_channel(target.address, credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = rpc.insecure_channel(target.address, options=_CHANNEL_OPTIONS)
            self._stubs = Stubs(channel, self._generation)
        return self._stubs

    def closed_under(self, generation: int) -> bool:
        """Whether a ``CancelledError`` just caught came from our closing channel ``generation`` (after a
        failover), rather than from the caller being cancelled: grpc.aio reports both the same way."""
        task = asyncio.current_task()
        return generation != self._generation and (task is None or task.cancelling() == 0)

    async def stubs(self) -> tuple[Stubs, tuple[tuple[str, str], ...] | None]:
        """The current stubs and the call metadata (the auth token), authenticating first if needed."""
        stubs = self._open()
        if self.username is None:
            return stubs, None
        async with self._auth_lock:
            stubs = self._open()
            if self._token is None or self._token_generation != stubs.generation:
                self._token = await self._authenticate(stubs)
                self._token_generation = stubs.generation
        return stubs, (("token", self._token),) if self._token else None

    async def _authenticate(self, stubs: Stubs) -> str | None:
        request = rpc.AuthenticateRequest(name=self.username, password=self.password or "")
        try:
            reply = await grpc_await(stubs.auth.Authenticate(request, timeout=self.request_timeout))
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if "authentication is not enabled" in details:
                log.warning(
                    "etcd at %s has authentication disabled; ignoring ETCD_AUTH_USERNAME=%r",
                    self.url,
                    self.username,
                )
                return None
            if "invalid user ID or password" in details or "authentication failed" in details:
                raise BackendUnavailableError(
                    f"etcd at {self.url} refused the password for user {self.username!r} "
                    "(ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD): fix the credentials"
                ) from None
            raise
        return str(reply.token)

    # -- calls -----------------------------------------------------------------------------------------
    async def call(self, what: str, attempt: Callable[[Stubs, Any, float], Awaitable[T]]) -> T:
        """Run ``attempt(stubs, metadata, timeout)`` until it succeeds, failing over and retrying transient
        failures until the deadline; translate the final failure into a dyndisc error naming ``what``."""
        budget = self.request_timeout if self._connected_once else self.startup_timeout
        deadline = time.monotonic() + budget
        backoff = Backoff(RETRY_MIN, RETRY_MAX if self._connected_once else STARTUP_RETRY_MAX)
        auth_retried = False
        while True:
            generation = self._generation
            try:
                stubs, metadata = await self.stubs()
                generation = stubs.generation
                left = deadline - time.monotonic()
                timeout = max(min(self.request_timeout, left), 0.05)
                result = await grpc_await(attempt(stubs, metadata, timeout))
            except grpc.aio.AioRpcError as exc:
                failure = self.translate(exc, what)
                if isinstance(failure, _TokenRejected) and not auth_retried:
                    auth_retried = True
                    self.invalidate_token()
                    continue
                if not isinstance(failure, Transient):
                    raise failure from None
                error: Exception = failure
            except Transient as exc:
                error = exc
            except asyncio.CancelledError:
                if not self.closed_under(generation):
                    raise
                error = Transient("the channel was closed by a failover")
            else:
                self.mark_ok()
                return result
            await self.mark_failed(generation)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendUnavailableError(self._unreachable(what, budget, error)) from None
            delay = backoff.next_delay(limit=left)
            log.debug("%s failed on etcd at %s (%s); retrying in %.2fs", what, self.url, error, delay)
            await anyio.sleep(delay)

    def _unreachable(self, what: str, budget: float, error: Exception) -> str:
        setting = (
            "ETCD_REQUEST_TIMEOUT_SECONDS" if self._connected_once else "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS"
        )
        hint = "Check that etcd is running and reachable"
        if "Socket closed" in str(error) or "andshake" in str(error):
            hint += "; a TLS/plaintext mismatch looks like this: check http:// vs https:// in ETCD_ENDPOINTS"
        return (
            f"{what}: etcd at {self.all_urls} (ETCD_ENDPOINTS) did not answer within {budget:g}s "
            f"({setting}); last error: {error}. {hint}"
        )

    def translate(self, exc: Any, what: str) -> Exception:
        """Map a gRPC error to a dyndisc error (or :class:`Transient` / token-rejected for the retry loop)."""
        code, details = exc.code(), exc.details() or ""
        where = f"etcd at {self.url}"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if (
                self.tls is not None
                and any(h in details.lower() for h in _TLS_CONFIG_HINTS)
                and "syscall" not in details.lower()
            ):
                return BackendUnavailableError(
                    f"{what}: the TLS handshake with {where} failed ({details}); check ETCD_AUTH_CA, "
                    "ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY, and that ETCD_ENDPOINTS uses https://"
                )
            return Transient(f"{code.name}: {details}")
        if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED) or "leader changed" in details:
            return Transient(f"{code.name}: {details}")
        if "invalid auth token" in details or "auth: revision in header is old" in details:
            return _TokenRejected(details)
        if "user name is empty" in details or (
            code == grpc.StatusCode.UNAUTHENTICATED and self.username is None
        ):
            return BackendUnavailableError(
                f"{what}: {where} requires authentication ({details}); "
                "set ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
            return BackendUnavailableError(
                f"{what}: {where} denied user {self.username!r} access ({details}); grant the user's role "
                "readwrite on the key prefix "
                "(e.g. etcdctl role grant-permission <role> readwrite --prefix /services/)"
            )
        if "requested lease not found" in details:
            return LeaseNotFoundError(f"{what}: {where} does not know the lease (it expired or was revoked)")
        if "too many requests" in details or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Transient(f"{code.name}: {details}")
        return BackendUnavailableError(f"{what}: {where} answered {code.name}: {details}")

    # -- lease keep-alive stream -------------------------------------------------------------------------
    async def renew(self, lease_id: int) -> int:
        """One keep-alive round trip on this process's single ``LeaseKeepAlive`` stream; the TTL answered."""

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> int:
            async with self._keepalive_lock:
                if self._keepalive_call is None or self._keepalive_generation != stubs.generation:
                    self._drop_keepalive()
                    self._keepalive_call = stubs.lease.LeaseKeepAlive(metadata=metadata)
                    self._keepalive_generation = stubs.generation
                call = self._keepalive_call
                try:
                    with anyio.fail_after(timeout):
                        await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                        reply = await call.read()
                except TimeoutError:
                    self._drop_keepalive()
                    raise Transient(f"no keep-alive answer within {timeout:.2f}s") from None
                except BaseException:
                    # Cancelled or failed half-way: the stream may hold an unread answer; never reuse it.
                    self._drop_keepalive()
                    raise
                if reply is grpc.aio.EOF:
                    self._drop_keepalive()
                    raise Transient("etcd closed the keep-alive stream")
                return int(reply.TTL)

        return await self.call(f"renewing lease {lease_id:x}", attempt)

    def _drop_keepalive(self) -> None:
        if self._keepalive_call is not None:
            self._keepalive_call.cancel()
            self._keepalive_call = None

    async def aclose(self) -> None:
        """Close the channel (cancelling every call and stream on it)."""
        self._closed = True
        self._drop_keepalive()
        stubs, self._stubs = self._stubs, None
        if stubs is not None:
            with anyio.CancelScope(shield=True):
                await stubs.channel.close()


class _TokenRejected(Exception):
    """Internal: etcd rejected our auth token (expired, or etcd restarted): authenticate again."""
