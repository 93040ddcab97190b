"""One shared informer per backend, Kubernetes namespace and scope (client-go's SharedInformer pattern).

However many watches, clients and runtimes of a process use one :class:`KubernetesDiscovery`, the namespace
(or the part of it a label selector scopes, see :mod:`~dyndisc.backends.kubernetes.scope`) is listed and
watched once per kind: one reflector of the readiness source (discovery EndpointSlices, or
Pods in container mode) and one of every DynamoWorkerMetadata. Each watch joins the two for its own query
on top (:meth:`NamespaceInformer.matching`; the join of the whole namespace is computed once per change and
shared). A worker follows its own resource through a third, name-scoped reflector of the same informer (one
object, whatever the size of the fleet) instead of reading it at every keep-alive.

Structured concurrency without a backend-wide task group, as etcd's shared watches do: every subscriber's
``async with`` runs a task that waits on the source's leader lock, and whoever holds it pumps the watch.
When the pumping subscriber leaves, the next one takes over from the recorded ``resourceVersion``; when the
last one leaves, the watch is closed and the state dropped (the next subscriber lists afresh).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from dyndisc._concurrency import background_tasks
from dyndisc._errors import DyndiscError
from dyndisc._events import RemovalReason
from dyndisc._models import EndpointId, Instance, InstanceQuery
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.kubernetes.identity import DiscoveryMode
from dyndisc.backends.kubernetes.join import (
    KIND,
    LABEL_SELECTOR,
    PodState,
    WorkerRecord,
    by_endpoint,
    join,
    merge_pods,
    parse_worker,
    pod_containers,
    resources_path,
    select,
    slice_pods,
)
from dyndisc.backends.kubernetes.reflector import RETRY_MAX, RETRY_MIN, Reflector
from dyndisc.backends.kubernetes.scope import combine
from dyndisc.backends.kubernetes.siphash import instance_id_for

if TYPE_CHECKING:
    from dyndisc.backends.kubernetes.api import KubeApi

log = logging.getLogger("dyndisc.kubernetes")

T = TypeVar("T")

#: Told what changed: an object's name, or ``None`` after a (re)list.
OnChange = Callable[[str | None], None]


class SharedReflector(Generic[T]):
    """One :class:`Reflector` and everyone who follows it: listed on first use, watched while anyone
    subscribes, released when the last subscriber leaves."""

    def __init__(self, reflector: Reflector[T]) -> None:
        self.reflector = reflector
        reflector.on_change = self._changed
        self._subscribers: dict[object, OnChange] = {}
        self._leader = anyio.Lock()
        self._list_lock = anyio.Lock()
        #: Whether the state reflects a list (and the watch since): false until the first list succeeds.
        self.listed = False
        #: Bumped at every change, so that derived views know when to recompute.
        self.version = 0

    @property
    def items(self) -> Mapping[str, T]:
        """The objects by name (empty until listed)."""
        return self.reflector.items

    @property
    def subscribers(self) -> int:
        """How many subscriptions hold this source now."""
        return len(self._subscribers)

    @property
    def live(self) -> bool:
        """Listed, and the watch is not failing: :attr:`items` is what the server holds, give or take the
        watch's latency."""
        return self.listed and self.reflector.stale_since is None

    @property
    def stale_since(self) -> float | None:
        """Since when the watch has been failing (while someone subscribes), else ``None``."""
        return self.reflector.stale_since if self._subscribers else None

    def _changed(self, name: str | None) -> None:
        self.version += 1
        for on_change in list(self._subscribers.values()):
            on_change(name)

    @asynccontextmanager
    async def subscribe(self, on_change: OnChange, *, wait: bool = True) -> AsyncIterator[None]:
        """Follow the source for the duration of the block; ``on_change`` hears of every change.

        With ``wait`` the block starts once the source is listed (a list that fails raises its error, which
        names the fix); without it, the block starts at once and the list is retried in the background.
        """
        token = object()
        self._subscribers[token] = on_change
        try:
            if wait:
                await self._ensure_listed()
            async with background_tasks() as tg:
                tg.start_soon(self._lead)
                yield
        finally:
            del self._subscribers[token]
            if not self._subscribers:
                self.listed = False
                self.reflector.forget()

    async def _ensure_listed(self) -> None:
        async with self._list_lock:
            if not self.listed:
                await self.reflector.relist()
                self.listed = True

    async def _lead(self) -> None:
        """Run in every subscriber's block: whoever holds the leader lock lists (if needed) and watches."""
        async with self._leader:
            backoff = Backoff(RETRY_MIN, RETRY_MAX)
            outage = OutageLog(log, f"listing {self.reflector.what}")
            while not self.listed:
                try:
                    await self._ensure_listed()
                except (DyndiscError, OSError) as exc:
                    if self.reflector.stale_since is None:
                        self.reflector.stale_since = time.monotonic()  # the reflector's clock
                    outage.failed(exc)
                    await backoff.sleep()
            outage.recovered()
            await self.reflector.run()


class NamespaceInformer:
    """The shared reflectors of one namespace, and the join of the whole namespace computed once per change.

    ``mode`` picks the readiness source: discovery EndpointSlices (pod mode) or Pods carrying the discovery
    labels (container mode). ``label_selector`` scopes both reflectors: the API server lists and watches only
    the objects that match (a deployment's, see :mod:`~dyndisc.backends.kubernetes.scope`).
    """

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        *,
        mode: DiscoveryMode,
        watch_timeout: float,
        label_selector: str | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.mode = mode
        self.watch_timeout = watch_timeout
        self.label_selector = label_selector or None
        scope = f" ({label_selector})" if label_selector else ""
        pods: Callable[[Any], list[PodState]]
        if mode is DiscoveryMode.CONTAINER:
            path, kind, pods = f"/api/v1/namespaces/{namespace}/pods", "Pods", pod_containers
        else:
            path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            kind, pods = "EndpointSlices", slice_pods
        readiness: Reflector[list[PodState]] = Reflector(
            api,
            path,
            what=f"{kind} in {namespace}{scope}",
            label_selector=combine(LABEL_SELECTOR, self.label_selector),
            transform=lambda obj, _previous: pods(obj),
            on_change=_ignore,
            watch_timeout=watch_timeout,
        )
        self.readiness = SharedReflector(readiness)
        self.workers: SharedReflector[WorkerRecord] = SharedReflector(
            Reflector(
                api,
                resources_path(namespace),
                what=f"{KIND} in {namespace}{scope}",
                # An unreadable resource holds nothing: a list, a new watch and this one agree.
                transform=lambda obj, _previous: parse_worker(obj),
                label_selector=self.label_selector,
                on_change=_ignore,
                watch_timeout=watch_timeout,
            )
        )
        self._own: dict[str, SharedReflector[WorkerRecord]] = {}
        self._view_version: tuple[int, int] | None = None
        self._view: dict[EndpointId, dict[int, Instance]] = {}
        #: How many times the namespace's join was computed (a burst within a debounce window costs one).
        self.joins = 0

    # -- watchers ----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def watch(self, on_change: Callable[[], None]) -> AsyncIterator[None]:
        """Follow both sources (listed before the block starts); ``on_change()`` hears of every change."""
        async with AsyncExitStack() as stack:
            for source in (self.readiness, self.workers):
                await stack.enter_async_context(source.subscribe(lambda _name: on_change()))
            yield

    @property
    def relists(self) -> tuple[int, int]:
        """How many times each source was (re)listed: a watcher seeing it change emits a fresh ``Resync``."""
        return (self.readiness.reflector.relists, self.workers.reflector.relists)

    def live(self) -> dict[EndpointId, dict[int, Instance]]:
        """Every live instance of the namespace, by endpoint (recomputed only after a change)."""
        version = (self.readiness.version, self.workers.version)
        if version != self._view_version:
            pods = merge_pods(self.readiness.items.values())
            self._view = by_endpoint(join(pods, self.workers.items, InstanceQuery()).values())
            self._view_version = version
            self.joins += 1
        return self._view

    def matching(self, query: InstanceQuery) -> dict[tuple[EndpointId, int], Instance]:
        """The live instances ``query`` covers."""
        return select(self.live(), query)

    def removal_reasons(self, gone: Iterable[Instance]) -> dict[tuple[EndpointId, int], RemovalReason]:
        """Why each of ``gone`` (no longer live) left: its resource still lists it, so its pod stopped
        taking work (not ready); its resource cannot be read (unreadable); or it was taken out of its
        resource, or the resource was deleted (left)."""
        wanted = {instance.key for instance in gone}
        reasons = dict.fromkeys(wanted, RemovalReason.LEFT)
        unreadable = set()
        for record in self.workers.items.values():
            if not record.readable:
                unreadable.add(instance_id_for(record.name))  # every instance id of a worker is its hash
            for instance in record.instances:
                if instance.key in wanted:
                    reasons[instance.key] = RemovalReason.NOT_READY
        for key in wanted:
            if key[1] in unreadable:
                reasons[key] = RemovalReason.UNREADABLE
        return reasons

    # -- a worker's own resource ---------------------------------------------------------------------------
    def own(self, name: str) -> SharedReflector[WorkerRecord]:
        """The name-scoped source of one worker's resource (shared by every runtime of the backend).

        Not the namespace-wide source: a fleet of N workers each keeping all N resources, and hearing of
        every change of every other worker, would cost O(N²) on the API server for nothing a worker uses.
        """
        found = self._own.get(name)
        if found is None:
            found = self._own[name] = SharedReflector(
                Reflector(
                    self.api,
                    resources_path(self.namespace),
                    what=f"{KIND} {self.namespace}/{name}",
                    transform=lambda obj, _previous: parse_worker(obj),
                    on_change=_ignore,
                    field_selector=f"metadata.name={name}",
                    watch_timeout=self.watch_timeout,
                )
            )
        return found

    # -- state -------------------------------------------------------------------------------------------
    def sources(self) -> list[SharedReflector[object]]:
        """Every source in use now."""
        found: list[SharedReflector[object]] = [self.readiness, self.workers, *self._own.values()]  # type: ignore[list-item]
        return [s for s in found if s.subscribers]

    @property
    def stale_since(self) -> float | None:
        """Since when a source in use has been failing, else ``None``."""
        stale = [s.stale_since for s in self.sources() if s.stale_since is not None]
        return min(stale) if stale else None


def _ignore(_name: str | None) -> None:
    """Placeholder until a :class:`SharedReflector` takes the reflector's changes."""
