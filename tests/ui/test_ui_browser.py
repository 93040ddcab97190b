"""``dyndisc ui`` in a real browser (Debian's chromium, headless, driven by Playwright) over a real etcd, with
workers in other processes: they show up, a SIGKILLed one leaves after its TTL (flashing first), one that
turns draining says so, and a stopped etcd marks the page stale. ``DYNDISC_UI_SCREENSHOT=path`` saves a
screenshot of the page (the one in docs/ui.md)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import EtcdServer

playwright = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright")
from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402

HERE = Path(__file__).resolve().parent
TTL = 2.0
#: How long the page may take to show a change the backend already delivered (push, not polling).
SHOWN_WITHIN = 3_000  # ms


def chromium() -> str:
    found = os.environ.get("DYNDISC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no chromium to drive (apt-get install chromium, or set DYNDISC_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


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
def ui_url(env: dict[str, str]) -> Iterator[str]:
    """``dyndisc ui`` in a process of its own, on a free port; yields its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dyndisc", "ui", "--port", "0", "--wait", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("dyndisc ui: http://"), line + (
            process.stderr.read() if process.stderr else ""
        )
        yield line.split()[2]
    finally:
        process.terminate()
        process.wait(timeout=30)


class Workers:
    """Worker processes (``ui_worker.py``), each registering one instance."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self, port: int, model: str | None = None) -> str:
        """A worker at ``tcp://10.0.0.<port>:9000`` (serving the model card ``model`` if given)."""
        argv = [
            sys.executable,
            str(HERE / "ui_worker.py"),
            "fleet.backend.generate",
            f"tcp://10.0.0.{port}:9000",
        ]
        process = subprocess.Popen(
            [*argv, *([model] if model else [])],
            stdout=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("registered "), line
        instance_id = line.split()[1]
        self.processes[instance_id] = process
        return instance_id

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def workers(env: dict[str, str]) -> Iterator[Workers]:
    found = Workers(env)
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium(), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


def row(page: Page, instance_id: str) -> object:
    return page.locator(f'tr[data-id="{instance_id}"]')


async def test_the_page_follows_the_fleet(
    browser: Browser, ui_url: str, workers: Workers, etcd: EtcdServer
) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 640})
    await page.goto(ui_url)
    await expect(page.locator("#where")).to_contain_text("etcd")

    # Registrations in other processes show up, pushed.
    ids = [workers.start(5, model="llama-test"), workers.start(6), workers.start(7)]
    for instance_id in ids:
        await expect(row(page, instance_id)).to_be_visible(timeout=SHOWN_WITHIN)
    await expect(page.locator('details[data-endpoint="fleet.backend.generate"] > summary')).to_contain_text(
        "3 instances"
    )
    endpoint = page.locator('details[data-endpoint="fleet.backend.generate"]')
    await expect(endpoint.locator(".model")).to_have_text(["llama-test (1)"], timeout=SHOWN_WITHIN)
    lease = row(page, ids[0]).locator("td.lease")  # the time etcd says is left (whole seconds there)
    await expect(lease).to_have_text(re.compile(r"^\d+\.\ds$"), timeout=SHOWN_WITHIN)

    # One turns draining: the page says so.
    workers.processes[ids[1]].send_signal(signal.SIGUSR1)
    await expect(row(page, ids[1]).locator(".badge")).to_have_text("draining", timeout=SHOWN_WITHIN)

    if os.environ.get("DYNDISC_UI_SCREENSHOT"):
        await page.screenshot(path=os.environ["DYNDISC_UI_SCREENSHOT"])

    # One is SIGKILLed: it flashes, then goes, once its lease expires on etcd (TTL + etcd's expiry check).
    killed_at = time.monotonic()
    workers.processes[ids[0]].kill()
    await expect(page.locator(f'tr.leaving[data-id="{ids[0]}"]')).to_be_visible(timeout=(TTL + 3) * 1000)
    flashed_after = time.monotonic() - killed_at
    await expect(row(page, ids[0])).to_have_count(0, timeout=SHOWN_WITHIN)
    await expect(endpoint.locator(".model")).to_have_count(0, timeout=SHOWN_WITHIN)  # its card went with it
    assert flashed_after >= TTL / 2, "it left before its lease could have expired"
    await expect(row(page, ids[2])).to_be_visible()

    # etcd stops: the page keeps the last view and says it is stale.
    await expect(page.locator("#stale")).to_be_hidden()
    etcd.kill()
    await expect(page.locator("#stale")).to_be_visible(timeout=10_000)
    await expect(page.locator("#stale")).to_contain_text("STALE")
    await expect(row(page, ids[2])).to_be_visible()
