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


def supported_features(name: str) -> frozenset[str]:
    """The contract features the harness module ``name`` supports (its :class:`Harness` says)."""
    module = importlib.import_module(f"harnesses.{name}")
    (found,) = (
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, Harness) and c.__module__ == module.__name__
    )
    return found.supports


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test against every harness that supports what it checks (``@pytest.mark.contract``).

    A part of the contract that does not apply to a backend (Kubernetes has no TTL) is not collected for it,
    rather than skipped: its docs page says why, and its own suite tests what it does instead.
    """
    if "harness" not in metafunc.fixturenames:
        return
    needed = {marker.args[0] for marker in metafunc.definition.iter_markers("contract")}
    names = [name for name in HARNESSES if needed <= supported_features(name)]
    metafunc.parametrize("harness", names, indirect=True)


@pytest.fixture
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
