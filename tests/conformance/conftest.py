"""Run every conformance test once per backend harness in ``tests/harnesses/``."""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator

import pytest
from contract_helpers import Runtimes

import harnesses
from harnesses.base import Harness

HARNESSES = sorted(m.name for m in pkgutil.iter_modules(harnesses.__path__) if m.name != "base")


@pytest.fixture(params=HARNESSES)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """A backend harness (one real server per backend, shared for the session where it has one)."""
    module = importlib.import_module(f"harnesses.{request.param}")
    async with module.open_harness(request) as found:
        try:
            yield found
        finally:
            await found.close()


@pytest.fixture
def ns() -> str:
    """A namespace no other test uses, so tests sharing a server never see each other."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def runtimes(harness: Harness) -> AsyncIterator[Runtimes]:
    """Factory of runtimes on the harness's backend, all stopped at teardown."""
    found = Runtimes(harness)
    try:
        yield found
    finally:
        await found.close()
