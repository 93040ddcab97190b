"""The gRPC connection to an etcd cluster: one channel per member, retries, auth tokens, TLS, clear errors.

aetcd's ``Client`` dials one plaintext ``host:port`` with a token fixed at connect time, so it cannot do TLS,
fail over, or re-authenticate after an etcd restart (simple tokens do not survive one). We therefore drive
aetcd's generated gRPC stubs and messages (``aetcd.rpc``) over channels we own.

How a call rides out elections and partitions: each attempt has a deadline well under the call's budget, and
an attempt that fails is retried on the next member. Only a *connection-level* failure (the member cannot be
reached) closes that member's channel, ending the streams on it so they resume elsewhere; a slow request, a
"leader changed" or "no leader" answer leaves the channel (and every watch and the keep-alive on it) alone.
The member that answered last is where the next call starts.
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

from dyndisc._errors import AccessDeniedError, BackendUnavailableError, LeaseNotFoundError
from dyndisc._retry import Backoff
from dyndisc.backends.etcd.grpc_calls import grpc_await, stray_cancellation
from dyndisc.backends.etcd.settings import Target, TlsMaterial

log = logging.getLogger("dyndisc.etcd")

T = TypeVar("T")

#: Backoff between attempts of one call.
RETRY_MIN, RETRY_MAX = 0.05, 0.5
#: Backoff while waiting for etcd at startup (a worker started before etcd waits, then works).
STARTUP_RETRY_MAX = 5.0
#: After this many seconds of waiting for etcd at startup, say so at WARNING (once).
WAITING_NOTICE = 1.5
#: An attempt may take this share of the call's budget (at least MIN_ATTEMPT seconds): a request stuck on a
#: member without a leader is given up in time to try another member within the budget.
ATTEMPT_SHARE, MIN_ATTEMPT = 0.25, 1.0
#: Call metadata that makes etcd refuse a watch on a member without a leader (a partitioned member would
#: otherwise keep the watch open and silent).
REQUIRE_LEADER = ("hasleader", "true")

_CHANNEL_OPTIONS = (
    # Reconnect quickly after an etcd restart instead of gRPC's default 1 s .. 120 s backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
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


class Transient(Exception):
    """Internal: a failure worth retrying on another member (no answer in time, no leader, stream ended)."""


class Unreachable(Transient):
    """Internal: the member cannot be reached at all (a connection-level failure): close its channel."""


class Stubs:
    """The gRPC stubs of one channel to one member; ``generation`` tells channels apart across reopenings."""

    def __init__(self, channel: Any, member: int, generation: int) -> None:
        self.channel = channel
        self.member = member
        self.generation = generation
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)


class EtcdConnection:
    """Channels to the members of one etcd cluster, used by the store for every call and stream.

    Before the first success a call's budget is the startup timeout, so a process started before etcd waits
    for it; after, it is the request timeout.
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
        startup_timeout_name: str = "ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS",
    ) -> None:
        self.targets = targets
        self.username = username
        self.password = password
        self.tls = tls if tls is not None else (TlsMaterial() if targets[0].secure else None)
        self.request_timeout = request_timeout
        self.startup_timeout = startup_timeout
        #: What set :attr:`startup_timeout` (the variable, or a command's option), for messages.
        self.startup_timeout_name = startup_timeout_name
        #: The member the next call starts with (the last one that answered).
        self.preferred = 0
        self._channels: list[Stubs | None] = [None] * len(targets)
        self._generation = 0
        self._tokens: dict[int, str | None] = {}  # per channel generation: simple tokens are per member
        self._auth_lock = anyio.Lock()
        self._connected_once = False
        self._closed = False
        self._said_waiting = False
        self._keepalive_call: Any = None
        self._keepalive_generation = -1
        self._keepalive_lock = anyio.Lock()
        #: ``time.monotonic()`` of the first failed attempt since the last success, else ``None``.
        self.stale_since: float | None = None

    # -- state -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The member in use, for messages."""
        return self.targets[self.preferred].url

    @property
    def all_urls(self) -> str:
        """Every configured endpoint, for messages."""
        return ",".join(t.url for t in self.targets)

    @property
    def connected_once(self) -> bool:
        """Whether any call has succeeded yet (before that, calls wait out the startup timeout)."""
        return self._connected_once

    def mark_ok(self, member: int) -> None:
        """Record a successful exchange with ``member``: it is where the next call starts."""
        self._connected_once = True
        self.stale_since = None
        self.preferred = member

    def next_member(self, member: int) -> int:
        """The member after ``member``, where a failed attempt is retried."""
        return (member + 1) % len(self.targets)

    def avoid(self, member: int) -> None:
        """``member`` answered but cannot serve (no leader, too slow): start the next calls elsewhere."""
        self.failed()
        if self.preferred == member:
            self.preferred = self.next_member(member)

    def failed(self) -> None:
        """An attempt failed: the connection is stale until the next success."""
        if self.stale_since is None:
            self.stale_since = time.monotonic()

    async def unreachable(self, stubs: Stubs) -> None:
        """``stubs``' member cannot be reached: close its channel (ending the streams on it, which then
        resume on another member) and start the next calls elsewhere."""
        self.failed()
        if self.preferred == stubs.member:
            self.preferred = self.next_member(stubs.member)
        if self._channels[stubs.member] is stubs:
            self._channels[stubs.member] = None
            with anyio.CancelScope(shield=True):
                await stubs.channel.close()

    def invalidate_token(self) -> None:
        """Forget the auth tokens (etcd restarted or they expired); the next call authenticates again."""
        self._tokens.clear()

    # -- channels --------------------------------------------------------------------------------------
    def _open(self, member: int) -> Stubs:
        if self._closed:
            raise BackendUnavailableError(f"the connection to etcd at {self.all_urls} is closed")
        stubs = self._channels[member]
        if stubs is None:
            target = self.targets[member]
            if self.tls is not None:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self.tls.ca, private_key=self.tls.key, certificate_chain=self.tls.cert
                )
                channel = rpc.secure_channel(target.address, credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = rpc.insecure_channel(target.address, options=_CHANNEL_OPTIONS)
            self._generation += 1
            stubs = self._channels[member] = Stubs(channel, member, self._generation)
        return stubs

    async def stubs(self, member: int | None = None) -> tuple[Stubs, tuple[tuple[str, str], ...] | None]:
        """The stubs of ``member`` (default: the preferred one) and the call metadata (the auth token),
        authenticating first if needed."""
        stubs = self._open(self.preferred if member is None else member)
        if self.username is None:
            return stubs, None
        async with self._auth_lock:
            if stubs.generation not in self._tokens:
                self._tokens[stubs.generation] = await self._authenticate(stubs)
        token = self._tokens[stubs.generation]
        return stubs, (("token", token),) if token else None

    async def _authenticate(self, stubs: Stubs) -> str | None:
        request = rpc.AuthenticateRequest(name=self.username, password=self.password or "")
        url = self.targets[stubs.member].url
        try:
            reply = await grpc_await(stubs.auth.Authenticate(request, timeout=self.request_timeout))
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if "authentication is not enabled" in details:
                log.warning(
                    "etcd at %s has authentication disabled; ignoring ETCD_AUTH_USERNAME=%r",
                    url,
                    self.username,
                )
                return None
            if "invalid user ID or password" in details or "authentication failed" in details:
                raise AccessDeniedError(
                    f"etcd at {url} refused the password for user {self.username!r} "
                    "(ETCD_AUTH_USERNAME / ETCD_AUTH_PASSWORD): fix the credentials"
                ) from None
            raise
        return str(reply.token)

    # -- calls -----------------------------------------------------------------------------------------
    async def call(
        self,
        what: str,
        attempt: Callable[[Stubs, Any, float], Awaitable[T]],
        *,
        attempt_timeout: float | None = None,
    ) -> T:
        """Run ``attempt(stubs, metadata, timeout)`` until it succeeds: a failed attempt is retried on the
        next member until the call's budget is spent; the last failure becomes a dyndisc error naming
        ``what``.

        Each attempt gets ``attempt_timeout`` seconds (default: a quarter of the budget, at least a second).
        """
        budget = self.request_timeout if self._connected_once else self.startup_timeout
        deadline = time.monotonic() + budget
        per_attempt = attempt_timeout or max(self.request_timeout * ATTEMPT_SHARE, MIN_ATTEMPT)
        backoff = Backoff(RETRY_MIN, RETRY_MAX if self._connected_once else STARTUP_RETRY_MAX)
        member = self.preferred
        auth_retried = False
        while True:
            stubs: Stubs | None = None
            try:
                stubs, metadata = await self.stubs(member)
                timeout = max(min(per_attempt, deadline - time.monotonic()), 0.05)
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
            except grpc.aio.UsageError as exc:
                # Another call found the member gone and closed the channel these stubs belong to: try again
                # on a channel opened afresh (found by chaos seed 1024 on etcd: the runtime stopped on it).
                error = Unreachable(f"its channel was closed under the call ({exc})")
            except asyncio.CancelledError:
                if not stray_cancellation():
                    raise
                # Not ours: grpc cancelled the call (its channel was closed because its member is gone).
                error = Unreachable("the call was cancelled under us: its channel was closed")
            else:
                self.mark_ok(member)
                return result
            self.failed()
            if isinstance(error, Unreachable) and stubs is not None:
                await self.unreachable(stubs)
            member = self.next_member(member)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendUnavailableError(self._unreachable(what, budget, error)) from None
            if not self._connected_once and not self._said_waiting and budget - left >= WAITING_NOTICE:
                # Say so once, early: otherwise a process started before etcd looks hung for the whole budget.
                # Not with under a second left: the failure, which says it all, comes next.
                self._said_waiting = True
                if left >= 1:
                    log.warning(
                        "waiting for etcd at %s (ETCD_ENDPOINTS): %s; trying for up to %.0fs more (%s)",
                        self.all_urls,
                        error,
                        left,
                        self.startup_timeout_name,
                    )
            limit = left
            if not self._connected_once and not self._said_waiting:
                # Wake by the notice time: a long jittered delay must not skip the notice and fail silently.
                limit = min(left, max(WAITING_NOTICE - (budget - left), 0.0) + RETRY_MIN)
            delay = backoff.next_delay(limit=limit)
            log.debug("%s failed on etcd (%s); retrying on %s in %.2fs", what, error, self.url, delay)
            await anyio.sleep(delay)

    def _unreachable(self, what: str, budget: float, error: Exception) -> str:
        setting = "ETCD_REQUEST_TIMEOUT_SECONDS" if self._connected_once else self.startup_timeout_name
        hint = "Check that etcd is running and reachable"
        if "Socket closed" in str(error) or "andshake" in str(error):
            hint += "; a TLS/plaintext mismatch looks like this: check http:// vs https:// in ETCD_ENDPOINTS"
        return (
            f"{what}: etcd at {self.all_urls} (ETCD_ENDPOINTS) did not answer within {budget:g}s "
            f"({setting}); last error: {error}. {hint}"
        )

    def translate(self, exc: Any, what: str) -> Exception:
        """Map a gRPC error to a dyndisc error, or to :class:`Transient` (retry on another member) /
        :class:`Unreachable` (and close the channel) / token-rejected for the retry loop."""
        code, details = exc.code(), exc.details() or ""
        where = f"etcd at {self.url}"
        # etcd's own answers ("etcdserver: leader changed", "no leader", "request timed out") come from a
        # member that was reached; anything else on UNAVAILABLE is the connection itself.
        from_etcd = details.startswith("etcdserver:")
        if code == grpc.StatusCode.UNAVAILABLE and not from_etcd:
            if (
                self.tls is not None
                and any(h in details.lower() for h in _TLS_CONFIG_HINTS)
                and "syscall" not in details.lower()
            ):
                return AccessDeniedError(
                    f"{what}: the TLS handshake with {where} failed ({details}); check ETCD_AUTH_CA, "
                    "ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY, and that ETCD_ENDPOINTS uses https://"
                )
            return Unreachable(f"{code.name}: {details}")
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ) or ("leader changed" in details or "too many requests" in details):
            return Transient(f"{code.name}: {details}")
        if "invalid auth token" in details or "auth: revision in header is old" in details:
            return _TokenRejected(details)
        if "user name is empty" in details or (
            code == grpc.StatusCode.UNAUTHENTICATED and self.username is None
        ):
            return AccessDeniedError(
                f"{what}: {where} requires authentication ({details}); "
                "set ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
            return PermissionDenied(
                details,
                f"{what}: {where} denied user {self.username!r} access ({details}); grant the user's role "
                "readwrite on the key prefix "
                "(e.g. etcdctl role grant-permission <role> readwrite --prefix /services/), or give the "
                "user the role its process needs: dyndisc access etcd --user <user> --role "
                "worker|frontend|operator",
            )
        if "requested lease not found" in details:
            return LeaseNotFoundError(f"{what}: {where} does not know the lease (it expired or was revoked)")
        return BackendUnavailableError(f"{what}: {where} answered {code.name}: {details}")

    # -- lease keep-alive stream -------------------------------------------------------------------------
    async def renew(self, lease_id: int) -> int:
        """One keep-alive round trip on this process's single ``LeaseKeepAlive`` stream; the TTL answered.

        The stream is opened again whenever the last one ended, failed, or was left half-way: an ended
        stream is never written to again.
        """

        async def attempt(stubs: Stubs, metadata: Any, timeout: float) -> int:
            async with self._keepalive_lock:
                call = self._keepalive_call
                if call is None or call.done() or self._keepalive_generation != stubs.generation:
                    self._drop_keepalive()
                    call = self._keepalive_call = stubs.lease.LeaseKeepAlive(metadata=metadata)
                    self._keepalive_generation = stubs.generation
                try:
                    # asyncio's timeout, not anyio's: this runs in grpc_await's plain task, where grpc
                    # re-raises a cancellation without the marker anyio's scopes look for.
                    async with asyncio.timeout(timeout):
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
        """Close every channel (cancelling every call and stream on them)."""
        self._closed = True
        self._drop_keepalive()
        channels, self._channels = self._channels, [None] * len(self.targets)
        with anyio.CancelScope(shield=True):
            for stubs in channels:
                if stubs is not None:
                    await stubs.channel.close()


class PermissionDenied(AccessDeniedError):
    """etcd answered "permission denied": the roles of the user do not cover a key of the request. The store
    explains a refused write in terms of namespaces (``roles.OwnRoles``); ``details`` is etcd's answer."""

    def __init__(self, details: str, message: str) -> None:
        super().__init__(message)
        self.details = details


class _TokenRejected(Exception):
    """Internal: etcd rejected our auth token (expired, or etcd restarted): authenticate again."""
