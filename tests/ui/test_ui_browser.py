"""``dyndisc ui`` in a real browser (Debian's chromium, headless, driven by Playwright) over a real etcd, with
workers in other processes: they show up, a SIGKILLed one leaves after its TTL (flashing first), one that
turns draining says so, and a stopped etcd marks the page stale. ``DYNDISC_UI_SCREENSHOT=path`` saves a
screenshot of the page (the one in docs/ui.md)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from ui_kit import TTL, Workers

from dyndisc.testing.servers import EtcdServer

playwright = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright")
from playwright.async_api import Browser, Locator, Page, expect  # noqa: E402

#: How long the page may take to show a change the backend already delivered (push, not polling).
SHOWN_WITHIN = 3_000  # ms


def row(page: Page, instance_id: str) -> Locator:
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
