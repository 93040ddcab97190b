"""A prefix watch of the reference's files (:class:`~dyndisc.backends.file.dynamo_store.DynamoFileStore`'s):
the bucket directories under the prefix, watched for changed files, and swept for expired ones.

As the reference's watchers do: a created, changed or renamed-in file is read again (a touch that leaves the
value alone is no event), a deleted one is gone, and every ``expiry / 3`` seconds the directories are listed
again, which deletes the files older than the expiry (a crashed writer's) and catches anything the file
watcher missed. The watch owns one file watcher (an inotify instance) in a worker thread of its own.

The changes of one batch are reported puts first: a batch holds no order (the files are read as they are
now), and a record that moved between two keys (a draining instance) is thus never reported gone before
its new copy is there.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread

from dyndisc._concurrency import background_tasks
from dyndisc.backends.file.dynamo_files import TEMP_PREFIX, DynamoFiles, FileRecord, decode_name
from dyndisc.backends.kv import StoreDelete, StoreEvent, StorePut, StoreSnapshot

#: Seconds the file watcher may take to report its probe file before the watch fails.
START_TIMEOUT = 10.0
#: watchfiles grouping: a batch once no new change came for STEP_MS (at most DEBOUNCE_MS).
STEP_MS, DEBOUNCE_MS = 10, 200
#: How often (ms) the watcher thread looks at its stop flag when nothing changes (bounds closing time).
STOP_CHECK_MS = 250


class DynamoFileWatch:
    """The watch of every key starting with ``prefix``, which names at least the first segment of its
    buckets (``v1/`` or ``v1/instances/...``)."""

    def __init__(self, files: DynamoFiles, prefix: str) -> None:
        segments = prefix.split("/")
        if len(segments) < 2 or not segments[0]:
            raise ValueError(
                f"a watch of the reference's file store names a bucket's first segment: {prefix!r}"
            )
        self.files = files
        self.prefix = prefix
        # One bucket's directory, or (for a prefix such as 'v1/') the directory of every bucket under it.
        self.directory = (
            files.root.joinpath(*segments[:2]) if len(segments) >= 3 else files.root / segments[0]
        )
        self.one_bucket = len(segments) >= 3
        self.known: dict[str, FileRecord] = {}
        self.pending: set[str] = set()
        self.out: deque[StoreEvent] = deque()
        self.live = anyio.Event()
        self.wake = anyio.Event()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AsyncIterator[StoreEvent]]:
        """The watch, live when the block starts (its first event, the snapshot, misses nothing)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        async with background_tasks() as tg:
            tg.start_soon(self._run_watcher, stop)
            try:
                await self._prove_live()
                yield self.events()
            finally:
                stop.set()

    async def _run_watcher(self, stop: threading.Event) -> None:
        # A limiter of its own: a thread parked in the watcher never holds a token of anyio's default pool.
        await anyio.to_thread.run_sync(self._watch_files, stop, limiter=anyio.CapacityLimiter(1))

    def _watch_files(self, stop: threading.Event) -> None:
        from watchfiles import watch

        try:
            for changes in watch(
                self.directory,
                watch_filter=None,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=stop,
                rust_timeout=STOP_CHECK_MS,
                raise_interrupt=False,
                recursive=not self.one_bucket,
                ignore_permission_denied=True,
            ):
                anyio.from_thread.run_sync(self._deliver, {path for _change, path in changes})
                if stop.is_set():
                    return
        except (OSError, RuntimeError) as exc:
            raise OSError(
                f"cannot watch {self.directory} for changes ({exc}); if the limit of inotify instances or "
                "watches is reached, raise fs.inotify.max_user_instances / max_user_watches (sysctl)"
            ) from exc

    def _deliver(self, paths: set[str]) -> None:
        self.live.set()
        self.pending |= paths
        self.wake.set()

    async def _prove_live(self) -> None:
        """Touch a temporary probe file until the watcher reports a change: from then on it sees them all."""
        probe = self.directory / f"{TEMP_PREFIX}probe{secrets.token_hex(6)}"
        try:
            with anyio.fail_after(START_TIMEOUT):
                while not self.live.is_set():
                    with suppress(OSError):
                        probe.touch()
                    with anyio.move_on_after(0.02):
                        await self.live.wait()
        except TimeoutError:
            raise OSError(
                f"the file watcher of {self.directory} did not start within {START_TIMEOUT:g}s"
            ) from None
        finally:
            with suppress(OSError):
                probe.unlink()
        self.pending.clear()  # the probe, and anything the snapshot will read anyway

    async def events(self) -> AsyncIterator[StoreEvent]:
        sweep_every = self.files.expiry / 3
        self.known = self.files.scan(self.prefix)
        yield StoreSnapshot(items={k: r.value for k, r in self.known.items()})
        next_sweep = time.monotonic() + sweep_every
        while True:
            if self.out:
                yield self.out.popleft()
            elif self.pending:
                paths, self.pending = self.pending, set()
                changed = [(key, self.files.read(path)) for key, path in self._keys(paths)]
                for key, record in sorted(changed, key=lambda kr: (kr[1] is None, kr[0])):  # puts first
                    self._set(key, record)
            elif time.monotonic() >= next_sweep:
                # Deletes the expired files (a crashed writer's), and catches what the watcher missed.
                found = self.files.scan(self.prefix)
                for key, record in found.items():  # puts first, as above
                    self._set(key, record)
                for key in [k for k in self.known if k not in found]:
                    self._set(key, None)
                next_sweep = time.monotonic() + sweep_every
            else:
                with anyio.move_on_after(max(next_sweep - time.monotonic(), 0.0)):
                    await self.wake.wait()
                self.wake = anyio.Event()

    def _keys(self, paths: set[str]) -> list[tuple[str, Path]]:
        """``(key, path)`` of the changed files that hold keys of this watch."""
        found = []
        for raw in paths:
            path = Path(raw)
            try:
                parts = path.relative_to(self.files.root).parts
            except ValueError:
                continue
            if len(parts) == 2 and path.is_dir():
                # A new bucket directory: files made in it before the watcher watched it fired nothing.
                bucket = f"{parts[0]}/{parts[1]}"
                found += [(k, p) for k, p in self.files.files_of(bucket, path) if k.startswith(self.prefix)]
                continue
            rest = decode_name(path.name)
            if len(parts) == 3 and rest is not None:  # <bucket segment>/<bucket segment>/<file>
                key = f"{parts[0]}/{parts[1]}/{rest}"
                if key.startswith(self.prefix):
                    found.append((key, path))
        return found

    def _set(self, key: str, record: FileRecord | None) -> None:
        old = self.known.get(key)
        if record is None:
            if old is not None:
                del self.known[key]
                self.out.append(StoreDelete(key=key))
        else:
            self.known[key] = record
            if old is None or old.value != record.value:  # a touch is no change
                self.out.append(StorePut(key=key, value=record.value))
