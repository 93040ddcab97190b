"""Conformance harness for the file backend: one fresh directory per test, one :class:`FileStore` per backend.

Every backend gets its own store on the shared directory, as separate processes would (the multi-process
tests in ``tests/backends/file/`` use real processes). ``break_watches`` breaks every open watch stream (a
:class:`~dyndisc.testing.FaultyStore` around each store): changes in flight are lost and each watch resumes
from a fresh scan, as after a watcher restart. The file-specific tests restart the real watcher by
replacing the directories under it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc import DiscoveryBackend, KvDiscovery
from dyndisc.backends.file import FileStore
from dyndisc.testing import FaultyStore

from .base import Harness

NAME = "file"


class FileHarness(Harness):
    name = NAME
    lease_ttl = 2.0
    expiry_bound = 1.0

    def __init__(self, root: str) -> None:
        self.root_dir = root
        self.stores: list[FaultyStore] = []
        self.raw = FileStore(root)

    def new_backend(self) -> DiscoveryBackend:
        # Rescans must not hide missed events.
        store = FaultyStore(FileStore(self.root_dir, rescan_interval=60.0))
        self.stores.append(store)
        return KvDiscovery(store, root=self.root)

    async def write_raw(self, key: str, value: bytes) -> None:
        await self.raw.put(key, value, 0)

    async def break_watches(self) -> None:
        for store in self.stores:
            store.break_watches()


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    yield FileHarness(str(tmp_path_factory.mktemp("file-kv")))
