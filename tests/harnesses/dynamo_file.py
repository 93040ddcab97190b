"""Conformance harness for the reference runtime's file layout (``DYN_KV_LAYOUT=dynamo-v1`` on the file
backend): one fresh directory per test, one :class:`DynamoFileStore` per backend, files expiring after 2 s.

Files carry no lease here (liveness is a file's mtime), so ``kill_lease`` makes the owning store drop the
lease and its files, and ``conflict`` does not apply: a store cannot tell whose file it found. The interop
suite (``tests/interop``) runs the real reference worker on the same layout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc import DiscoveryBackend, KvDiscovery, Lease
from dyndisc.backends.file import DynamoFileStore
from dyndisc.testing import FaultyStore

from .base import Harness

NAME = "dynamo_file"


class DynamoFileHarness(Harness):
    name = NAME
    lease_ttl = 2.0
    # Files are swept every expiry / 3 once older than the expiry.
    expiry_bound = 1.5
    root = "v1/instances"
    supports = frozenset({"raw_write", "break_watches", "lease_ttl", "new_id_on_lease_loss"})

    def __init__(self, root: str) -> None:
        self.root_dir = root
        self.stores: list[FaultyStore] = []
        self.raw = DynamoFileStore(root, expiry=self.lease_ttl)

    def new_backend(self) -> DiscoveryBackend:
        store = FaultyStore(DynamoFileStore(self.root_dir, expiry=self.lease_ttl))
        self.stores.append(store)
        return KvDiscovery(store, layout="dynamo-v1")

    async def write_raw(self, key: str, value: bytes) -> None:
        await self.raw.put(key, value, 0)

    async def break_watches(self) -> None:
        for store in self.stores:
            store.break_watches()

    async def kill_lease(self, lease: Lease) -> None:
        # A lease is its store's only: its files go (as an impatient sweeper would delete them) and the
        # store no longer holds it, so its next keep-alive finds it lost.
        for store in self.stores:
            assert isinstance(store.inner, DynamoFileStore)
            await store.inner.revoke(lease.id)


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    yield DynamoFileHarness(str(tmp_path_factory.mktemp("dynamo-file-kv")))
