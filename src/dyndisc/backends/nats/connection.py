"""The connection of a NATS store to its JetStream KV bucket: connecting, creating the bucket, requests.

:class:`NatsBucket` owns one client connection. It connects on first use (waiting for a server that is not up
yet, ``NATS_STARTUP_CONNECT_TIMEOUT``), checks the server can expire keys and creates the bucket (both in
:mod:`.bucket`), and makes the requests of the store (publish, read, delete markers, scans), translating
failures into dyndisc errors.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from dyndisc._errors import AccessDeniedError, BackendUnavailableError
from dyndisc._retry import Backoff
from dyndisc.backends.nats.bucket import check_server_version, ensure_bucket
from dyndisc.backends.nats.denials import Denials, Violation
from dyndisc.backends.nats.failover import ServerProbe
from dyndisc.backends.nats.feed import (
    KV_OPERATION,
    LEASE_HEADER,
    LEASE_SCOPE_HEADER,
    PURGE_REASON,
    KvChange,
    KvFeed,
)
from dyndisc.backends.nats.keys import scope_token
from dyndisc.backends.nats.refusals import refusal
from dyndisc.backends.nats.settings import NatsSettings, connect_failure_message
from dyndisc.backends.nats.watch import close_feed

log = logging.getLogger("dyndisc.nats")

#: After this many seconds of waiting for NATS at startup, say so at WARNING (once).
WAITING_NOTICE = 1.5
_T = TypeVar("_T")

#: Seconds between client pings; a silent (partitioned) connection is dropped after two unanswered ones.
PING_INTERVAL = 3.0
#: Seconds a watch waits for a consumer on a cluster before asking again (within ``NATS_TIMEOUT``): just after
#: a server dies the meta leader may place it there (3 times in 4), and that request is never answered.
CLUSTER_FEED_TIMEOUT = 1.0
#: JetStream error code for a failed ``Nats-Expected-Last-Subject-Sequence`` check.
_WRONG_LAST_SEQUENCE = 10071
#: A JetStream request that got no answer, or found nobody to answer it (no stream leader, no JetStream yet,
#: or a server cut off from its cluster): retried within ``NATS_TIMEOUT``.
_UNANSWERED = (
    nats.errors.TimeoutError,
    nats.errors.OutboundBufferLimitError,  # not sent: the connection is down (nothing is buffered)
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class WrongRevision(Exception):
    """A conditional write found another revision than the one it expected."""


class NatsBucket:
    """One client connection to one JetStream KV bucket (``NATS_KV_BUCKET``), made on first use."""

    def __init__(
        self, settings: NatsSettings, startup_timeout_name: str = "NATS_STARTUP_CONNECT_TIMEOUT"
    ) -> None:
        self.settings = settings
        #: What set the startup wait (the variable, or a command's option), for messages.
        self.startup_timeout_name = startup_timeout_name
        self.name = settings.kv_bucket
        self.stream = f"KV_{self.name}"
        self.subject_prefix = f"$KV.{self.name}."
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connect_lock = anyio.Lock()
        self._stale_since: float | None = None
        self._closed = False
        #: Called after every reconnection (the server may have dropped our consumers: watches restart).
        self.on_reconnect: set[Callable[[], None]] = set()
        #: The permission violations the server reported, matched to our requests.
        self.denials = Denials()
        #: Moves the connection off a server cut off from its cluster (see :mod:`.failover`).
        self.probe = ServerProbe(len(settings.servers))

    # -- connection ------------------------------------------------------------------------------------
    @property
    def stale_since(self) -> float | None:
        return self._stale_since

    @property
    def connected_url(self) -> str | None:
        """The URL of the server the connection is on now (``None`` while it is not on one)."""
        nc = self._nc
        if nc is None or not nc.is_connected or nc.connected_url is None:
            return None
        return str(nc.connected_url.geturl())

    async def jetstream(self) -> JetStreamContext:
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
            violation = self.denials.report(exc)
            if violation is not None:
                # The request it refused fails with the explanation; only a refused subscription (where
                # every reply arrives) would go unexplained otherwise.
                log.log(logging.WARNING if violation.kind == "subscription" else logging.DEBUG, "%s", exc)
                return
            # Not a line per attempt: the connect failure quotes these, and a lost connection is said once
            # when it goes and once when it is back.
            errors.append(exc)
            log.debug("NATS connection error (%s): %s", where, exc)
            if isinstance(exc, _UNANSWERED) and self._nc is not None:
                # nats-py could not re-create a watch's consumer: is this server cut off from its cluster?
                self.probe.failed()
                await self.probe.check(self._nc)

        options: dict[str, Any] = {
            # A random first server spreads a fleet over the cluster; after it, nats-py goes round the list in
            # order, so a client leaving a server (failover.py) never lands on it again at once.
            "servers": random.sample(settings.servers, len(settings.servers)),
            "dont_randomize": True,
            "connect_timeout": settings.timeout,
            "reconnect_time_wait": 0.5,
            # A connection that silently stops carrying data (a partition, not a reset) is only noticed by
            # unanswered pings: every PING_INTERVAL, given up after two (nats-py's default is 2 x 2 min).
            "ping_interval": PING_INTERVAL,
            "max_outstanding_pings": 2,
            # Two tries per server at start: a bad password or a dead address fails fast, never hangs.
            # Once connected, the client reconnects forever (set below).
            "max_reconnect_attempts": 1,
            # Nothing kept for a reconnect, sent late after its caller gave up (chaos seed 2000): retried.
            "pending_size": 0,
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
        scope = scope_token(settings.scope)
        if scope is not None:
            # Replies and watch deliveries come to the scope's inbox, the one its credentials may read.
            options["inbox_prefix"] = f"_INBOX.{scope}"

        # A server that is not up yet is waited for (NATS_STARTUP_CONNECT_TIMEOUT), with backoff; refused
        # credentials are final, so they fail at once.
        started = time.monotonic()
        deadline = started + settings.startup_connect_timeout
        backoff = Backoff(0.1, 2.0)
        said_waiting = False
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
                if refused:
                    raise AccessDeniedError(message) from exc
                now = time.monotonic()
                # The last attempt is made at the deadline, not given up early on a long jittered delay; and
                # one is made just after the notice time, so a waiting process says so.
                limit = deadline - now
                if not said_waiting:
                    limit = min(limit, max(started + WAITING_NOTICE - now, 0.0) + 0.05)
                delay = backoff.next_delay(limit=limit)
                if now >= deadline:
                    if settings.startup_connect_timeout:
                        message += (
                            f" (waited {settings.startup_connect_timeout:g}s: {self.startup_timeout_name})"
                        )
                    raise BackendUnavailableError(message) from exc
                if not said_waiting and time.monotonic() - started >= WAITING_NOTICE:
                    said_waiting = True  # once, early: a process started before NATS must not look hung
                    if deadline - time.monotonic() >= 1:  # with less left, the failure that follows says it
                        log.warning(
                            "waiting for %s: %s; trying for up to %.0fs more (%s)",
                            where,
                            message,
                            deadline - time.monotonic(),
                            self.startup_timeout_name,
                        )
                else:
                    log.info("%s is not reachable yet (%s); retrying in %.1fs", where, message, delay)
                errors.clear()
                await anyio.sleep(delay)
        nc.options["max_reconnect_attempts"] = -1
        try:
            check_server_version(nc, where)
            js = nc.jetstream(timeout=settings.timeout)
            await ensure_bucket(js, settings, where, self)
        except BaseException:
            await _close_quietly(nc)
            raise
        self._nc = nc
        return js

    async def _on_disconnected(self) -> None:
        if self._stale_since is None and self._nc is not None and not self._closed:
            self._stale_since = time.monotonic()
            log.warning("lost the connection to nats-server at %s", self.settings.display_servers)

    async def _on_reconnected(self) -> None:
        log.info("reconnected to nats-server; resyncing %d watch(es)", len(self.on_reconnect))
        self._stale_since = None
        self.probe.reconnected()
        for callback in list(self.on_reconnect):
            callback()

    async def check_server(self) -> None:
        """The routine probe of a connection with open watches (see :mod:`.failover`)."""
        if self._nc is not None:
            await self.probe.check(self._nc, routine=True)

    async def aclose(self) -> None:
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _close_quietly(nc)

    # -- primitives ------------------------------------------------------------------------------------
    @contextmanager
    def translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise WrongRevision(str(exc)) from exc
            raise BackendUnavailableError(
                f"nats-server at {self.settings.display_servers} refused to {what}: {exc.description}"
            ) from exc
        except (nats.errors.Error, OSError) as exc:
            # TimeoutError, NoRespondersError (JetStream not ready after a restart), ConnectionClosed ...
            raise BackendUnavailableError(
                f"could not {what} on nats-server at {self.settings.display_servers}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def publish(
        self,
        nats_key: str,
        value: bytes,
        *,
        ttl: int | None,
        lease_id: int = 0,
        scope: str | None = None,
        expected: int | None = None,
        operation: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> int:
        headers: dict[str, str] = dict(extra or {})
        if ttl is not None:
            headers[api.Header.MSG_TTL] = str(ttl)
        if lease_id:
            headers[LEASE_HEADER] = f"{lease_id:x}"
            if scope is not None:
                headers[LEASE_SCOPE_HEADER] = scope
        if expected is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        if operation is not None:
            headers[KV_OPERATION] = operation
        js = await self.jetstream()
        subject = self.subject_prefix + nats_key
        ack = await self.request(
            f"write key {nats_key!r}",
            lambda timeout: js.publish(subject, value, timeout=timeout, headers=dict(headers) or None),
            subject=subject,
            key=nats_key,
        )
        return int(ack.seq)

    def refusal(self, violation: Violation, *, key: str | None = None, subject: str | None = None) -> str:
        """What the server refused, and how to fix it (``subject``: ours, as the server's is lower-cased)."""
        return refusal(self.settings, violation, key=key, subject=subject)

    def check_denied(self, started: float, subject: str, key: str | None = None) -> None:
        """Raise :class:`~dyndisc.AccessDeniedError` if the server reported a violation on ``subject`` (under
        it, for one ending with ``.``), or of a subscription, since ``started``: a request it refused never
        gets an answer."""
        violation = self.denials.since(started, subject)
        if violation is not None:
            exact = subject if violation.subject == subject.lower() else None
            raise AccessDeniedError(self.refusal(violation, key=key, subject=exact))

    async def request(
        self, what: str, call: Callable[[float], Awaitable[_T]], *, subject: str, key: str | None = None
    ) -> _T:
        """Make a JetStream request on ``subject``, ``call(timeout)``, retrying one that got no answer, within
        ``settings.timeout``; one the server refuses (a permission violation on ``subject``) raises
        :class:`~dyndisc.AccessDeniedError` at once (``key``: the KV key written, for the message).

        Each attempt is bounded by the client's own request timeout (no timeout scope of ours: this is on
        every write's path; the one cancel scope is what a violation cancels). A request written just before a
        connection broke is lost with it (NATS requests are at most once), and none is sent while it is down
        (nothing is kept to be sent late); the client reconnects within a second. Retried writes are
        conditional or idempotent, and the callers treat "it was already done" as done. A request nobody
        answers may mean the server is cut off from its cluster: :attr:`probe` moves the connection to another
        server if so.
        """
        with self.denials.watching(subject) as waiter:
            return await self._retrying(what, call, subject, key)
        # Only a violation on the subject (or of our inbox) cancels the block.
        assert waiter.denied is not None
        raise AccessDeniedError(self.refusal(waiter.denied, key=key, subject=subject))

    async def _retrying(
        self, what: str, call: Callable[[float], Awaitable[_T]], subject: str, key: str | None
    ) -> _T:
        deadline = anyio.current_time() + self.settings.timeout
        attempt_timeout = max(self.settings.timeout / 3, 0.5)
        started = time.monotonic()
        while True:
            left = deadline - anyio.current_time()
            with self.translate(what):
                try:
                    answer = await call(max(min(attempt_timeout, left), 0.05))
                except _UNANSWERED:
                    # No answer (lost in a broken connection), no JetStream yet (just restarted), no stream
                    # leader (an election), a server cut off from its cluster; or refused (a violation is
                    # reported, never answered): then retrying cannot help.
                    self.check_denied(started, subject, key)
                    self.probe.failed()
                    if anyio.current_time() >= deadline:
                        raise
                else:
                    self.probe.succeeded()
                    return answer
                if self._nc is not None:
                    with anyio.move_on_after(max(deadline - anyio.current_time(), 0.0)):
                        await self.probe.check(self._nc)
                await anyio.sleep(min(0.1, max(deadline - anyio.current_time(), 0.0)))

    async def get(self, nats_key: str) -> api.RawStreamMsg | None:
        """The last message stored for ``nats_key`` (a value or a deletion marker), or ``None``."""
        js = await self.jetstream()
        try:

            async def read(timeout: float) -> api.RawStreamMsg:
                try:  # get_msg takes no timeout of its own
                    with anyio.fail_after(timeout):
                        return await js.get_msg(self.stream, subject=self.subject_prefix + nats_key)
                except TimeoutError:
                    raise nats.errors.TimeoutError from None

            return await self.request(
                f"read key {nats_key!r}", read, subject=f"$JS.API.STREAM.MSG.GET.{self.stream}"
            )
        except BackendUnavailableError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise

    async def remove(self, nats_key: str, expected: int | None, *, expired: bool = False) -> bool:
        """Write a deletion marker (itself expiring, so deleted keys leave nothing behind for long);
        ``expired``: of a key whose lease the server ended (see :data:`~.feed.PURGE_REASON`)."""
        try:
            await self.publish(
                nats_key,
                b"",
                ttl=self.settings.kv_marker_ttl,
                expected=expected,
                operation="DEL",
                extra={PURGE_REASON: "expired"} if expired else None,
            )
        except WrongRevision:
            return False
        return True

    async def scan(self, key_filter: str) -> dict[str, KvChange]:
        """The current value of every key matching ``key_filter`` (NATS keys), with owners and revisions."""
        done = anyio.Event()
        result: dict[str, KvChange] = {}

        def on_snapshot(items: dict[str, KvChange]) -> None:
            result.update(items)
            done.set()

        feed = KvFeed(on_snapshot, lambda change: None)
        try:
            with anyio.fail_after(self.settings.timeout * 2):
                await self.open_feed(feed, key_filter)
                await done.wait()
        except TimeoutError as exc:
            raise BackendUnavailableError(
                f"nats-server at {self.settings.display_servers} did not deliver the keys under "
                f"{key_filter!r} within {self.settings.timeout * 2:.0f}s"
            ) from exc
        finally:
            await close_feed(feed)
        return result

    async def open_feed(self, feed: KvFeed, key_filter: str) -> None:
        js = await self.jetstream()
        short = self.probe.servers > 1 and self._nc is not None
        if short and self._nc is not None:
            js = self._nc.jetstream(timeout=min(self.settings.timeout, CLUSTER_FEED_TIMEOUT))
        started = time.monotonic()
        deadline = anyio.current_time() + self.settings.timeout
        try:
            with self.translate(f"watch keys {key_filter!r}"):
                while True:
                    try:
                        await feed.open(js, self.stream, self.subject_prefix, key_filter)
                        return
                    except nats.errors.TimeoutError:
                        # On a cluster: asked again, within NATS_TIMEOUT (see CLUSTER_FEED_TIMEOUT).
                        await close_feed(feed)
                        if not short or anyio.current_time() >= deadline:
                            raise
        except BackendUnavailableError:
            # The consumer's creation (or info) refused: no answer ever comes.
            self.check_denied(started, "$JS.API.CONSUMER.")
            raise


async def _close_quietly(nc: Client) -> None:
    # Closing a broken connection: nothing left to report.
    with anyio.CancelScope(shield=True), anyio.move_on_after(5.0), suppress(Exception):
        await nc.close()
