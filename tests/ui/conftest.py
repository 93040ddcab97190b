"""The browser tests' fixtures: a private etcd, ``dyndisc ui`` over it, worker processes, and Debian's
chromium driven by Playwright (the pieces are in ``ui_kit.py``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from ui_kit import TTL, UiProcess, Workers, chromium

from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer

if TYPE_CHECKING:
    from playwright.async_api import Browser


@pytest.fixture
def etcd(dyndisc_private_servers: PrivateServers) -> EtcdServer:
    return dyndisc_private_servers(EtcdServer)


@pytest.fixture
def env(etcd: EtcdServer) -> dict[str, str]:
    return {
        **os.environ,
        "DYN_DISCOVERY_BACKEND": "etcd",
        "ETCD_ENDPOINTS": etcd.client_url,
        "DYN_LEASE_TTL": str(TTL),
        "NO_COLOR": "1",
    }


@pytest.fixture
def ui(env: dict[str, str], tmp_path: Path) -> Iterator[UiProcess]:
    started = UiProcess(env, tmp_path / "ui.stderr")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def ui_url(ui: UiProcess) -> str:
    return ui.url


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Workers]:
    found = Workers(env)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async_api = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright")
    async with async_api.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium(), headless=True)
        try:
            yield launched
        finally:
            await launched.close()
