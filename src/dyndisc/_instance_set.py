"""The live cache of one query: fed by one backend watch, read by any number of clients and subscribers."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from dyndisc._concurrency import gc_paused
from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._metrics import metrics
from dyndisc._models import EndpointId, Instance, InstanceQuery
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend

log = logging.getLogger("dyndisc.watch")

#: Events a subscriber may have undelivered before they are replaced by one ``Resync``.
MAX_SUBSCRIBER_BACKLOG = 1_000
#: Backoff between attempts to re-establish a broken watch (the first attempt is immediate-ish).
RESUME_INITIAL, RESUME_CAP = 0.1, 1.0


class Subscription:
    """One consumer's queue of events, and an async iterator over them. A consumer that falls far behind
    gets a single ``Resync`` instead of an unbounded backlog, so a slow consumer never stalls the watch or
    the other consumers."""

    def __init__(self, source: InstanceSet) -> None:
        self._source = source
        self._pending: deque[DiscoveryEvent] = deque([source.resync_event()])
        # When metrics are on, when each pending event reached the runtime (for the watch lag).
        self._stamps: deque[float] | None = deque([time.monotonic()]) if source.metrics.enabled else None
        self._wake = anyio.Event()
        self._closed: Exception | None = None
        self._clean = False

    def _push(self, event: DiscoveryEvent) -> None:
        if len(self._pending) >= MAX_SUBSCRIBER_BACKLOG or isinstance(event, Resync):
            self._pending.clear()
            event = self._source.resync_event()
            if self._stamps is not None:
                self._stamps.clear()
        self._pending.append(event)
        if self._stamps is not None:
            self._stamps.append(time.monotonic())
        self._wake.set()

    def _close(self, why: Exception, clean: bool) -> None:
        self._closed, self._clean = why, clean
        self._wake.set()

    async def next(self) -> DiscoveryEvent:
        """Wait for the next event; raise why the watch ended once its runtime stopped (what was
        delivered before that is delivered first). Iterating ends quietly instead when the runtime left
        cleanly."""
        return await self._next(iterating=False)

    async def _next(self, *, iterating: bool) -> DiscoveryEvent:
        while not self._pending:
            if self._closed is not None:
                if iterating and self._clean:
                    raise StopAsyncIteration
                raise self._closed
            await self._wake.wait()
            self._wake = anyio.Event()
        if self._stamps is not None:
            lag = time.monotonic() - self._stamps.popleft()
            self._source.metrics.watch_lag(self._source.backend.name, lag)
        return self._pending.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> DiscoveryEvent:
        return await self._next(iterating=True)


class InstanceSet:
    """The instances matching one query, kept current by one watch running in the runtime's task group."""

    def __init__(
        self,
        backend: DiscoveryBackend,
        query: InstanceQuery,
        *,
        on_unused: Callable[[InstanceSet], None] | None = None,
    ) -> None:
        self.backend = backend
        self.query = query
        #: Told when the set stops (its last user released it, or its watch could not start).
        self._on_unused = on_unused
        self._users = 0
        self._pinned = False
        self._stopped = False
        self._started = anyio.Event()
        self._failure: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._thread = threading.get_ident()
        #: Releases made from another thread (a garbage collection there): applied on the set's own thread.
        self._foreign_releases: deque[None] = deque()
        # endpoint -> instance id -> instance: no key tuple per instance, and a client of one endpoint reads
        # its own dict.
        self._instances: dict[EndpointId, dict[int, Instance]] = {}
        self._by_endpoint: dict[EndpointId, list[Instance]] = {}
        self._subscribers: dict[Subscription, None] = {}  # ordered: told in the order they came
        self._changed = anyio.Event()
        self._stale_since: float | None = None
        self._sorted: list[Instance] | None = None
        self._closed: Exception | None = None
        #: Bumped on every change, so readers can cache what they derive from the set.
        self.version = 0
        self.resyncs = 0
        self.metrics = metrics()

    # -- reading ---------------------------------------------------------------------------------------
    def instances(self) -> list[Instance]:
        """Every instance, ordered by endpoint then instance id (do not modify the list)."""
        if self._sorted is None:
            self._sorted = [i for e in sorted(self._instances, key=_names) for i in self.instances_of(e)]
        return self._sorted

    def instances_of(self, endpoint: EndpointId) -> list[Instance]:
        """The instances of ``endpoint``, ordered by instance id (do not modify the list)."""
        found = self._by_endpoint.get(endpoint)
        if found is None:
            ids = self._instances.get(endpoint, {})
            found = self._by_endpoint[endpoint] = [ids[i] for i in sorted(ids)]
        return found

    def get(self, key: tuple[EndpointId, int]) -> Instance | None:
        """The instance with ``key`` (see :attr:`Instance.key`), if live."""
        ids = self._instances.get(key[0])
        return None if ids is None else ids.get(key[1])

    def resync_event(self) -> Resync:
        """The current state as a ``Resync``."""
        return Resync(instances=tuple(self.instances()))

    @property
    def stale_since(self) -> float | None:
        """``time.monotonic()`` since when the view may be out of date, else ``None``: the watch broke (it is
        being re-established) or the backend lost its server (its watches cannot hear anything)."""
        found = [t for t in (self._stale_since, self.backend.stale_since) if t is not None]
        return min(found) if found else None

    async def wait_changed(self) -> None:
        """Wait for the next change to the set; raise why it will not change any more once its runtime
        stopped (a :class:`~dyndisc.RuntimeNotStartedError` saying why)."""
        if self._closed is not None:
            raise self._closed
        await self._changed.wait()
        if self._closed is not None:
            raise self._closed

    def close(self, why: Exception, *, clean: bool = False) -> None:
        """The runtime feeding this set stopped: readers keep the last view (stale from now), and waiters
        get ``why`` instead of waiting for ever; subscribers too, or the end of their iteration when the
        runtime left ``clean``-ly."""
        self._closed = why
        if self._stale_since is None:
            self._stale_since = time.monotonic()
        for sub in self._subscribers:
            sub._close(why, clean)
        self._changed.set()

    def subscribe(self) -> Subscription:
        """A new subscription; its first event is a ``Resync`` of the current state."""
        sub = Subscription(self)
        self._subscribers[sub] = None
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``."""
        self._subscribers.pop(sub, None)

    # -- users ----------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """One more user: the watch runs while the set has any (or was pinned). Releases from other threads
        still pending are taken at the next change, as ever: the set goes on for its new user meanwhile."""
        self._users += 1

    def pin(self) -> None:
        """Keep the set for the life of the runtime, whatever its users do."""
        self._pinned = True

    def release(self) -> None:
        """One user fewer; the last one stops the watch (unless pinned). Safe from any thread, and with no
        event loop running (a client collected after its loop ended)."""
        if threading.get_ident() != self._thread or not _in_event_loop():
            self._foreign_releases.append(None)  # deque.append is atomic: applied at the next change
            return
        self._users -= 1
        # Stops the watch if that was the last user. A set not started yet is stopped by its start's
        # failure instead (its first user gave up while it started: Watches.acquire says so).
        self._take_foreign_releases()

    def _take_foreign_releases(self) -> None:
        while self._foreign_releases:
            self._foreign_releases.popleft()
            self._users -= 1
        if self._users <= 0 and not self._pinned and self._started.is_set():
            self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()
        if self._on_unused is not None:
            self._on_unused(self)

    def detach(self) -> None:
        """The runtime has left: its task group stopped the watch already; later releases do nothing."""
        self._stopped = True
        self._scope = None

    def failed(self, exc: BaseException) -> None:
        """The watch could not start: the users waiting for it get ``exc``."""
        self._failure = exc
        self._started.set()
        self._stop()

    def abandoned(self) -> None:
        """Its first user gave up while the watch started: the set stops, and the users waiting for it (who
        were not cancelled) find it gone and start another."""
        self._started.set()
        self._stop()

    async def wait_started(self) -> None:
        """Wait until the first ``Resync`` is applied; raise what stopped the watch before that."""
        await self._started.wait()
        if self._failure is not None:
            raise self._failure

    async def run_until_unused(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """:meth:`run` until the last user releases the set."""
        with anyio.CancelScope() as self._scope:
            if not self._stopped:
                await self.run(task_status=task_status)

    # -- feeding ---------------------------------------------------------------------------------------
    def _apply(self, event: DiscoveryEvent) -> None:
        if isinstance(event, Resync):
            self.resyncs += 1
            with gc_paused():  # many objects, none of them garbage: the collector would only rescan them
                fresh = _by_endpoint(event.instances)
            if fresh == self._instances and self.resyncs > 1:
                return
            self._instances = fresh
            self._by_endpoint = {}
        elif isinstance(event, Added):
            instance = event.instance
            ids = self._instances.get(endpoint := instance.endpoint_id)
            if ids is None:
                ids = self._instances[endpoint] = {}
            elif ids.get(instance.instance_id) == instance:
                return
            ids[instance.instance_id] = instance
            self._by_endpoint.pop(endpoint, None)
        elif isinstance(event, Removed):
            ids = self._instances.get(event.endpoint)
            if ids is None or ids.pop(event.instance_id, None) is None:
                return
            if not ids:
                del self._instances[event.endpoint]
            self._by_endpoint.pop(event.endpoint, None)
        self._sorted = None
        self.version += 1
        for sub in self._subscribers:
            sub._push(event)
        self._changed.set()
        self._changed = anyio.Event()

    def _record(self, event: DiscoveryEvent) -> None:
        self.metrics.watch_event(self.backend.name, event.type)
        if isinstance(event, Resync) and self.resyncs > 0:
            self.metrics.resync(self.backend.name)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the set current until cancelled. Reports started after the first ``Resync``.

        A failure before that propagates to whoever started the watch; later failures are logged and the
        watch is re-established with backoff (its first event, a ``Resync``, repairs any gap).
        """
        started = False
        backoff = Backoff(RESUME_INITIAL, RESUME_CAP)
        outage = OutageLog(log, f"watch of {self.query}")
        while True:
            try:
                async with self.backend.watch(self.query) as events:
                    async for event in events:
                        if self.metrics.enabled:
                            self._record(event)
                        self._apply(event)
                        if self._stale_since is not None and isinstance(event, Resync):
                            self._stale_since = None
                            outage.recovered()
                        if not started:
                            started = True
                            self._started.set()
                            task_status.started()
                        if self._foreign_releases:
                            self._take_foreign_releases()
                        backoff.reset()
                raise ConnectionError("the watch stream ended")
            except Exception as exc:
                if not started:
                    raise
                if self._stale_since is None:
                    self._stale_since = time.monotonic()
                outage.failed(exc)
                await backoff.sleep()


def _by_endpoint(instances: tuple[Instance, ...]) -> dict[EndpointId, dict[int, Instance]]:
    found: dict[EndpointId, dict[int, Instance]] = {}
    ids: dict[int, Instance] = {}
    names: tuple[str, str, str] | None = None
    for instance in instances:
        # A snapshot holds long runs of one endpoint: look its dict up only when the endpoint changes.
        if names != (instance.namespace, instance.component, instance.endpoint):
            names = (instance.namespace, instance.component, instance.endpoint)
            ids = found.setdefault(instance.endpoint_id, {})
        ids[instance.instance_id] = instance
    return found


def _names(endpoint: EndpointId) -> tuple[str, str, str]:
    return (endpoint.namespace, endpoint.component, endpoint.endpoint)


def _in_event_loop() -> bool:
    try:
        anyio.get_current_task()
    except RuntimeError:  # anyio's "no event loop" errors are RuntimeErrors, whatever its version
        return False
    return True
