"""What the page shows, kept current: the instances of one query (one backend watch), their leases' time
left, whether the view is stale, what happened lately (the history), and the model cards and event
channels beside them, pushed to every open page as events.

A page gets a ``snapshot`` and the ``history`` kept so far first, then ``added`` / ``removed`` as the watch
delivers them, ``history`` with each new record of the timeline, ``models`` and ``channels`` when they
change, ``leases`` (the time left of each lease, where the backend can tell) every second, and ``status``
(stale or not) when it changes. Everything is read-only: the UI holds no lease and writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import EndpointId, Instance, InstanceQuery
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.base import DiscoveryBackend
from dyndisc.cli.history import History, Record, Timeline
from dyndisc.cli.liveness import Liveness
from dyndisc.cli.output import instance_json
from dyndisc.ui.entries import follow_buckets

log = logging.getLogger("dyndisc.ui")

#: How often the leases' time left is read and pushed, and the staleness checked.
LEASE_POLL = 1.0
#: Events a slow page may have undelivered before it is sent a fresh snapshot instead.
PAGE_BACKLOG = 1_000
#: A watch that stayed up this long had recovered: the next failure starts the backoff over.
STABLE_AFTER = 10.0
#: What a lease's time left is when the backend says the lease is gone (its records not deleted yet).
GONE = "gone"
#: How long a page's first snapshot waits for the model cards and event channels after the instances.
METADATA_WAIT = 3.0

Event = dict[str, Any]


def instance_view(instance: Instance) -> Event:
    """An instance as the page gets it: the command line's JSON, its key, and every other field."""
    return {
        **instance_json(instance),
        "key": f"{instance.endpoint_id}/{instance.instance_id:x}",
        "device_type": instance.device_type,
        "request_plane_codec": instance.request_plane_codec,
    }


class Fleet:
    """The live view behind the page: ``async with Fleet(backend, query).running()`` runs its watches."""

    def __init__(self, backend: DiscoveryBackend, query: InstanceQuery, *, history_size: int = 5_000) -> None:
        self.backend = backend
        self.query = query
        self.instances: dict[tuple[EndpointId, int], Instance] = {}
        #: Seconds left per lease (hex id); :data:`GONE` for a lease the server no longer knows; ``None``
        #: when the server did not answer.
        self.leases: dict[str, float | str | None] = {}
        self.liveness = Liveness(backend)
        self.timeline = Timeline(query)
        self.history = History(history_size)
        self.models, self.channels = follow_buckets(backend, query, self._publish)
        #: The delays between attempts to open the watch: they grow until it stays up.
        self.watch_backoff = Backoff(0.5, 30.0)
        self._pages: dict[MemoryObjectSendStream[Event], None] = {}
        self._ready = anyio.Event()

    # -- what a page is told ----------------------------------------------------------------------------
    def snapshot(self) -> Event:
        """Everything a page shows, but the history."""
        ordered = sorted(self.instances.values(), key=lambda i: (str(i.endpoint_id), i.instance_id))
        return {
            "event": "snapshot",
            "backend": self.backend.name,
            "query": str(self.query),
            "instances": [instance_view(i) for i in ordered],
            "leases": self.leases,
            "lease_times": self.backend.tells_lease_time,
            "models": self.models.shown(),
            "channels": self.channels.shown(),
            "status": self.status(),
        }

    def status(self) -> Event:
        """``stale_for``: seconds the view may have been out of date (the watch or the server lost)."""
        stale = self.liveness.stale_since
        return {
            "event": "status",
            "stale_for": None if stale is None else round(time.monotonic() - stale, 1),
            "live": len(self.instances),
        }

    def _publish(self, event: Event) -> None:
        for page in list(self._pages):
            try:
                page.send_nowait(event)
            except anyio.WouldBlock:  # a page that does not read: it gets a fresh snapshot when it does
                self._pages.pop(page, None)
                page.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._pages.pop(page, None)

    def _remember(self, records: list[Record]) -> None:
        if records:
            self._publish({"event": "history", "records": [self.history.add(r) for r in records]})

    @asynccontextmanager
    async def page(self) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        """A page's stream of events: a snapshot and the history first, then every change."""
        await self._ready.wait()
        # The cards and channels come from watches of their own: a first view without them would only be
        # corrected a moment later (and a script reading the first snapshot would miss them).
        with anyio.move_on_after(METADATA_WAIT):
            await self.models.ready.wait()
            await self.channels.ready.wait()
        send, receive = anyio.create_memory_object_stream[Event](PAGE_BACKLOG)
        send.send_nowait(self.snapshot())
        send.send_nowait({"event": "history", "records": list(self.history.records), "reset": True})
        self._pages[send] = None
        try:
            yield receive
        finally:
            self._pages.pop(send, None)
            send.close()
            receive.close()

    # -- keeping it current --------------------------------------------------------------------------------
    def apply(self, event: DiscoveryEvent) -> None:
        """Apply one watch event: the view, the history, every page."""
        self._remember(self.timeline.apply(event))
        if isinstance(event, Resync):
            self.instances = {i.key: i for i in event.instances}
            self._publish(self.snapshot())
        elif isinstance(event, Added):
            self.instances[event.instance.key] = event.instance
            self._publish({"event": "added", "instance": instance_view(event.instance)})
        elif isinstance(event, Removed) and self.instances.pop(event.key, None) is not None:
            reason = event.reason.value if event.reason is not None else None
            key = f"{event.endpoint}/{event.instance_id:x}"
            self._publish({"event": "removed", "key": key, "reason": reason})

    async def _watch(self) -> None:
        backoff = self.watch_backoff
        outage = OutageLog(log, f"watch of {self.query}")
        while True:
            opened = time.monotonic()
            try:
                async with self.backend.watch(self.query) as events:
                    async for event in events:
                        if isinstance(event, Resync):
                            self.liveness.broken_since = None
                            outage.recovered()
                        self.apply(event)
                        self._ready.set()
                raise ConnectionError("the watch ended")
            except Exception as exc:
                if self.liveness.broken_since is None:
                    self.liveness.broken_since = time.monotonic()
                self._ready.set()  # a page opened now shows the last view, marked stale
                self._check_status()
                if time.monotonic() - opened >= STABLE_AFTER:
                    backoff.reset()  # it had been working: this is a new outage, not the same one
                outage.failed(exc)
                await backoff.sleep()

    def _check_status(self) -> None:
        change = self.liveness.change()
        if change is None:
            return
        if change.stale:
            self._remember([self.timeline.stale(change.since_wall)])
        else:
            self._remember([self.timeline.resumed(change.lasted)])
        self._publish(self.status())

    async def _poll(self) -> None:
        """Every second: the leases' time left (where the backend can tell) and whether the view is stale."""
        while True:
            await anyio.sleep(LEASE_POLL)
            if self.backend.tells_lease_time:
                self.leases = await self._lease_times()
                self._publish({"event": "leases", "leases": self.leases})
            self._check_status()
            self._publish(self.status())

    async def _lease_times(self) -> dict[str, float | str | None]:
        leases: dict[str, float | str | None] = {}
        for instance_id in sorted({i.instance_id for i in self.instances.values()}):
            left: float | str | None
            try:
                with anyio.fail_after(LEASE_POLL):
                    seconds = await self.backend.lease_time_left(instance_id)
            except Exception:  # the server is away: the status says so; the times are unknown
                left = None
            else:
                left = GONE if seconds is None else round(seconds, 1)
            leases[f"{instance_id:x}"] = left
        return leases

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Fleet]:
        """Run the watches, the probe and the poll until the block ends."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            tg.start_soon(self.models.follow)
            tg.start_soon(self.channels.follow)
            tg.start_soon(self.liveness.probe)
            tg.start_soon(self._poll)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
                # End every page's stream: the server waits for open handlers when it stops, and an event
                # stream never ends by itself (Ctrl-C with a tab open would hang).
                for page in list(self._pages):
                    page.close()
                self._pages.clear()
