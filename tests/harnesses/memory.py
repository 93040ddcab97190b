"""Conformance harness for the memory backend: one fresh :class:`MemoryStore` per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dyndisc import DiscoveryBackend, KvDiscovery, MemoryStore
from dyndisc.testing import FaultyStore

from .base import Harness

NAME = "memory"


class MemoryHarness(Harness):
    name = NAME
    lease_ttl = 1.0
    expiry_bound = 0.5

    def __init__(self) -> None:
        self.store = FaultyStore(MemoryStore())

    def new_backend(self) -> DiscoveryBackend:
        return KvDiscovery(self.store, root=self.root, owns_store=False)

    async def write_raw(self, key: str, value: bytes) -> None:
        await self.store.put(key, value, 0)

    async def break_watches(self) -> None:
        self.store.break_watches()


@asynccontextmanager
async def open_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    yield MemoryHarness()
