"""The file store's change feed: one watchfiles watcher over ``kv/`` and ``leases/``, shared by its watches.

inotify instances are scarce (``fs.inotify.max_user_instances``, often 128 for *all* processes of a user),
so a store runs one watcher however many watches it opens. Exactly one open watch pumps it at a time, from a
worker thread with a limiter of its own (a thread parked in the watcher never holds a token of anyio's
default pool), inside that watch's task group; when that watch closes, another takes over with a new
watcher and every watch that may have missed changes in between takes a fresh snapshot.

A watch must not scan before the watcher is watching, or a change between the two would be lost. watchfiles
installs its watches when it starts, out of our sight, so the feed proves it is live by touching a probe
file until the watcher reports it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Protocol

import anyio
import anyio.from_thread
import anyio.to_thread

from dyndisc._concurrency import background_tasks
from dyndisc.backends.file.layout import FileLayout, mkdirs

log = logging.getLogger("dyndisc.file")

#: watchfiles grouping: return a batch once no new change arrived for STEP_MS (bounded by DEBOUNCE_MS).
STEP_MS, DEBOUNCE_MS = 10, 200
#: Seconds a new watcher may take to report its probe file before the watch fails.
START_TIMEOUT = 10.0
#: Seconds between touches of the probe file while waiting for a new watcher.
PROBE_INTERVAL = 0.02
#: The name of probe files starts with a dot: watches ignore such names (temporary files).
PROBE_PREFIX = ".probe-"
#: watchfiles' code for a deleted path (``watchfiles.Change.deleted``).
_DELETED = 3


class Subscriber(Protocol):
    """A watch fed by the change feed (:class:`~dyndisc.backends.file.watch.Subscriber`)."""

    #: Set when the watch closes: it no longer pumps the watcher.
    closing: bool
    #: Whether the watch took a snapshot (then a watcher restart makes it take another).
    scanned: bool

    def push(self, changes: set[tuple[int, str]]) -> None:
        """Changed paths, as ``(watchfiles change code, path)``."""

    def resync(self) -> None:
        """Changes may have been missed: take a fresh snapshot."""


class ChangeFeed:
    """Changed paths under a store's root, delivered to every subscribed watch."""

    def __init__(self, layout: FileLayout) -> None:
        self.layout = layout
        self.subscribers: set[Subscriber] = set()
        #: The watch whose task runs the watcher now, if any.
        self.pumper: Subscriber | None = None
        self.watched: list[tuple[int, int]] = []  # (device, inode) of the directories being watched
        self._stop = threading.Event()
        self._restart = False
        self._live = False
        self._changed = anyio.Event()
        self._turn = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._roots = {str(layout.kv_dir), str(layout.lease_dir)}

    @asynccontextmanager
    async def subscribe(self, watch: Subscriber) -> AsyncIterator[None]:
        """Deliver changes to ``watch`` while the block runs; the watcher is live when it starts."""
        if not self.subscribers:
            # Made afresh with each first subscriber: a store may outlive one event loop and serve the next.
            self._turn, self._limiter, self._changed = anyio.Lock(), anyio.CapacityLimiter(1), anyio.Event()
        self.subscribers.add(watch)
        try:
            async with background_tasks() as tg:
                tg.start_soon(self._pump, watch)
                with anyio.fail_after(START_TIMEOUT + 1):
                    while not self._live:
                        await self._changed.wait()
                try:
                    yield
                finally:
                    watch.closing = True
                    if self.pumper is watch:
                        self._stop.set()  # wake the watcher thread so another watch can take over
        finally:
            self.subscribers.discard(watch)

    def check(self) -> None:
        """Restart if a watched directory was removed or replaced: the watcher would stay silent about it."""
        if self._live and not self._restart and self._identities() != self.watched:
            self._restart_watcher()

    def _restart_watcher(self) -> None:
        log.warning("%s was removed or replaced under the file watcher; restarting it", self.layout.root)
        self._restart = True
        self._stop.set()

    def _identities(self) -> list[tuple[int, int]]:
        found = []
        for path in (self.layout.kv_dir, self.layout.lease_dir):
            try:
                info = path.stat()
                found.append((info.st_dev, info.st_ino))
            except FileNotFoundError:
                found.append((0, 0))
        return found

    def _set_live(self, live: bool) -> None:
        self._live = live
        self._changed.set()
        self._changed = anyio.Event()

    async def _prove_live(self) -> None:
        """Touch a probe file until the new watcher reports it (its first batch makes it live)."""
        probe = self.layout.kv_dir / f"{PROBE_PREFIX}{secrets.token_hex(6)}"
        try:
            with anyio.fail_after(START_TIMEOUT):
                while not self._live:
                    with suppress(OSError):  # the root may be being made: the watcher makes it
                        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                        os.close(fd)
                        os.utime(probe)
                    with anyio.move_on_after(PROBE_INTERVAL):
                        await self._changed.wait()
        except TimeoutError:
            raise OSError(
                f"the file watcher of {self.layout.root} did not start within {START_TIMEOUT:g}s"
            ) from None
        finally:
            with suppress(OSError):
                probe.unlink()

    async def _pump(self, watch: Subscriber) -> None:
        async with self._turn:
            if watch.closing:
                return
            self.pumper = watch
            try:
                while not watch.closing:
                    self._stop = threading.Event()
                    self._restart = False
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._run_watcher_thread, self._stop)
                        await self._prove_live()
                    self._set_live(False)
                    if self._restart:
                        log.info("file watcher of %s restarted; its watches resync", self.layout.root)
            finally:
                self.pumper = None
                self._set_live(False)

    async def _run_watcher_thread(self, stop: threading.Event) -> None:
        await anyio.to_thread.run_sync(self._run_watcher, stop, limiter=self._limiter)

    def _run_watcher(self, stop: threading.Event) -> None:
        """Run one watcher in this worker thread until ``stop``, handing every batch to the event loop."""
        from watchfiles import watch  # the 'file' extra is optional

        mkdirs(self.layout.kv_dir)  # again: someone may have removed the root since
        mkdirs(self.layout.lease_dir)
        self.watched = self._identities()
        paths = (self.layout.kv_dir, self.layout.lease_dir)
        try:
            batches = watch(
                *paths,
                watch_filter=None,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=stop,
                rust_timeout=1000,  # how often the thread looks at ``stop`` when nothing changes
                raise_interrupt=False,
                ignore_permission_denied=True,
            )
            for changes in batches:
                anyio.from_thread.run_sync(self._deliver, {(int(c), p) for c, p in changes})
                if stop.is_set():
                    return
        except (OSError, RuntimeError) as exc:
            raise OSError(
                f"cannot watch {self.layout.root} for changes ({exc}); if the limit of inotify instances "
                "or watches is reached, raise fs.inotify.max_user_instances / max_user_watches (sysctl)"
            ) from exc

    def _deliver(self, changes: set[tuple[int, str]]) -> None:
        if not self._live:
            # The first batch (the probe file, if nothing else) proves the watcher is watching: every
            # watch that had a snapshot may have missed changes before it, so it takes a new one.
            self._set_live(True)
            for subscriber in self.subscribers:
                if subscriber.scanned:
                    subscriber.resync()
        if changes:
            for subscriber in self.subscribers:
                subscriber.push(changes)
            # A watched directory itself deleted: its watch is gone with it (a new one gets none).
            if not self._restart and any(c == _DELETED and p in self._roots for c, p in changes):
                self._restart_watcher()
