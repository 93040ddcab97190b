"""What happened, in a real browser (Debian's chromium driven by Playwright) over a real etcd, with workers
in other processes: the timeline beside the fleet (joins, a readiness change, a lease replaced by the
server, a crash expiring, etcd lost and back), its filters, the detail view of one instance (every field,
its metadata, its lease counting down, its history), the model cards, event channels and entries views, and
the lease column's three meanings. A closed or reloaded tab is no error, Ctrl-C with a tab open stops the
server at once, and an outage is a few lines of log, not a flood.

``DYNDISC_UI_SCREENSHOT_DIR=docs/img`` saves the screenshots of docs/ui.md (``ui-timeline.png``,
``ui-detail.png``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import anyio
import pytest
from ui_kit import TTL, UiProcess, Workers

from dyndisc import DistributedRuntime, InstanceQuery, KvDiscovery, MemoryStore
from dyndisc.backends.etcd import EtcdSettings, EtcdStore
from dyndisc.testing.servers import EtcdServer, NatsServer
from dyndisc.ui import serve

playwright = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright")
from playwright.async_api import Browser, Locator, Page, expect  # noqa: E402

#: How long the page may take to show a change the backend already delivered (push, not polling).
SHOWN_WITHIN = 3_000  # ms
#: A crashed worker's instance leaves within its TTL plus etcd's expiry check.
EXPIRED_WITHIN = (TTL + 3) * 1000


def record(page: Page, kind: str, instance_id: str | None = None) -> Locator:
    """The timeline's records of ``kind`` (about ``instance_id``)."""
    found = page.locator(f'#events li[data-kind="{kind}"]')
    return found.filter(has_text=instance_id) if instance_id else found


def screenshot(name: str) -> str | None:
    where = os.environ.get("DYNDISC_UI_SCREENSHOT_DIR")
    return str(Path(where) / name) if where else None


async def revoke(etcd: EtcdServer, instance_id: str) -> None:
    """Revoke a worker's lease behind its back, as an operator's ``etcdctl lease revoke`` would."""
    store = EtcdStore(EtcdSettings.load(endpoints=etcd.client_url))
    try:
        await store.revoke(int(instance_id, 16))
    finally:
        await store.aclose()


async def test_the_timeline_and_the_detail_view(
    browser: Browser, ui: UiProcess, workers: Workers, etcd: EtcdServer
) -> None:
    page = await browser.new_page(viewport={"width": 1440, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(ui.url)
    await expect(page.locator("#where")).to_contain_text("etcd")

    crashing = workers.start(5, model="llama-test", topic="kv-events")
    draining = workers.start(6)
    replaced = workers.start(7)
    for instance_id in (crashing, draining, replaced):
        await expect(record(page, "joined", instance_id)).to_have_count(1, timeout=SHOWN_WITHIN)

    # A readiness change, a lease the server replaced, a crash: each a record of its own, newest first.
    workers.processes[draining].send_signal(signal.SIGUSR1)
    await expect(record(page, "draining", draining)).to_have_count(1, timeout=SHOWN_WITHIN)
    await revoke(etcd, replaced)
    worker = workers.processes[replaced]
    assert worker.stdout is not None
    new_id = (await anyio.to_thread.run_sync(worker.stdout.readline)).split()[1]  # "replaced <id>"
    await expect(record(page, "replaced", new_id)).to_contain_text(f"was {replaced}", timeout=SHOWN_WITHIN)
    await expect(page.locator(f'tr[data-id="{new_id}"]')).to_be_visible()
    workers.processes[crashing].kill()
    # etcd does not say why a key went (removal reasons there are another issue's): "removed".
    await expect(record(page, "left", crashing)).to_contain_text("removed", timeout=EXPIRED_WITHIN)
    await expect(page.locator("#events li").first).to_contain_text("left")  # newest first
    if path := screenshot("ui-timeline.png"):
        await page.screenshot(path=path)

    # The detail view: every field, the metadata pretty-printed, the lease counting down, its history.
    await page.locator(f'tr[data-id="{draining}"]').click()
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    await expect(detail.locator("h2")).to_have_text(f"fleet.backend.generate / {draining}")
    await expect(detail.locator("dl")).to_contain_text("tcp://10.0.0.6:9000")
    await expect(detail.locator("pre.metadata")).to_have_text('{\n  "worker": "6"\n}')
    lease = detail.locator("#detail-lease")
    await expect(lease).to_have_text(re.compile(r"^\d+\.\ds$"))
    first = float((await lease.text_content() or "0s")[:-1])
    await expect(lease).not_to_have_text(f"{first:.1f}s")  # it counts down between the server's answers
    await expect(detail.locator("#detail-history li")).to_have_count(2)  # joined, draining
    await expect(detail.locator('#detail-history li[data-kind="draining"]')).to_have_count(1)
    if path := screenshot("ui-detail.png"):
        await page.screenshot(path=path)
    await page.keyboard.press("Escape")
    await expect(detail).to_be_hidden()

    # A replaced lease's history holds both ids; a crashed one's detail says it is gone, and why.
    await record(page, "replaced", new_id).locator("a.open").click()
    await expect(detail.locator("#detail-history")).to_contain_text(f"was {replaced}")
    await page.keyboard.press("Escape")
    await record(page, "left", crashing).locator("a.open").click()
    await expect(detail.locator("p.gone")).to_contain_text("gone at")
    await page.keyboard.press("Escape")

    # The filters: by text (an id) and by kind.
    await page.fill("#timeline-filter", draining)
    await expect(page.locator("#events li")).to_have_count(2)
    await page.fill("#timeline-filter", "")
    await page.locator('#timeline-kinds input[data-kind="joined"]').uncheck()
    await expect(record(page, "joined")).to_have_count(0)
    await expect(record(page, "left")).to_have_count(2)  # the crash, and the lease the server revoked
    await page.locator('#timeline-kinds input[data-kind="joined"]').check()

    # etcd lost for a while, then back: a stale period and its end, and a few lines of log, not a flood.
    logged_before = len(ui.stderr().splitlines())
    etcd.kill()
    await expect(record(page, "stale")).to_have_count(1, timeout=10_000)
    await expect(page.locator("#stale")).to_be_visible()
    await asyncio.sleep(6)  # the outage itself: six seconds of retries, every watch failing
    etcd.start()
    await expect(record(page, "resumed")).to_have_count(1, timeout=15_000)
    await expect(page.locator("#stale")).to_be_hidden()
    outage_log = ui.stderr().splitlines()[logged_before:]
    assert len(outage_log) <= 12, "\n".join(outage_log)  # a line when each watch broke and one when back
    assert any("back after" in line for line in outage_log), "\n".join(outage_log)

    # Tabs closed and reloaded are normal: no traceback; Ctrl-C with a tab open stops at once.
    other = await browser.new_page()
    await other.goto(ui.url)
    await expect(other.locator("#where")).to_contain_text("etcd")
    await other.close()
    await page.reload()
    await expect(page.locator("#where")).to_contain_text("etcd")
    assert errors == []
    asked = time.monotonic()
    log = ui.stop()
    assert time.monotonic() - asked < 10
    assert "Traceback" not in log, log
    assert "Error handling request" not in log, log


async def test_model_cards_event_channels_and_entries_views(
    browser: Browser, ui_url: str, workers: Workers
) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 640})
    await page.goto(ui_url)
    serving = workers.start(5, model="llama-test", topic="kv-events")
    await expect(page.locator(f'tr[data-id="{serving}"]')).to_be_visible(timeout=SHOWN_WITHIN)

    await page.click('#tabs button[data-view="models"]')
    models = page.locator("#models-table tr")
    await expect(models).to_have_count(2, timeout=SHOWN_WITHIN)  # the header and the card
    await expect(models.nth(1)).to_contain_text("llama-test")
    await expect(models.nth(1)).to_contain_text(serving)
    assert page.url.endswith("#models")

    await page.click('#tabs button[data-view="channels"]')
    channels = page.locator("#channels-table tr")
    await expect(channels).to_have_count(2, timeout=SHOWN_WITHIN)
    await expect(channels.nth(1)).to_contain_text("kv-events")
    await expect(channels.nth(1)).to_contain_text("Zmq tcp://10.0.0.5:5557")

    await page.click('#tabs button[data-view="entries"]')
    await page.click("#entries-form button")
    entries = page.locator("#entries-table")
    await expect(entries).to_contain_text("1 entry in v1/mdc")
    await expect(entries.locator("tr").nth(1)).to_contain_text(f"fleet/backend/generate/{serving}")
    await page.fill("#entries-bucket", "not a bucket!")
    await page.click("#entries-form button")
    await expect(entries).to_contain_text("400: invalid bucket name")
    assert await page.locator("#view-fleet").is_hidden()


async def test_the_lease_column_says_what_it_knows(
    browser: Browser, dyndisc_nats_server: NatsServer, tmp_path: Path
) -> None:
    # NATS cannot tell a lease's time left: "n/a", with the reason in its title.
    env = {**os.environ, "DYN_DISCOVERY_BACKEND": "nats", "NATS_SERVER": dyndisc_nats_server.url}
    ui = UiProcess(env, tmp_path / "ui.stderr")
    on_nats_workers = Workers(env)
    try:
        on_nats = on_nats_workers.start(8)
        page = await browser.new_page()
        await page.goto(ui.url)
        cell = page.locator(f'tr[data-id="{on_nats}"] td.lease')
        await expect(cell).to_have_text("n/a", timeout=SHOWN_WITHIN)
        await expect(cell).to_have_attribute("title", "the nats backend has no lease TTL")
    finally:
        on_nats_workers.close()
        ui.stop()


class LeaseForgottenFirst(KvDiscovery):
    """A backend whose server no longer knows one lease while that lease's record is still listed: etcd
    deletes both at once, but a store whose readers clean up after it (files) can show this for a while.
    Only the answer about the lease is planted; the page's reading of it is what is tested."""

    forgotten: set[int] = set()

    async def lease_time_left(self, instance_id: int) -> float | None:
        if instance_id in self.forgotten:
            return None
        return await super().lease_time_left(instance_id)


async def test_an_expired_lease_is_not_an_unknown_one(browser: Browser) -> None:
    store = MemoryStore()
    address: list[str] = []
    async with (
        DistributedRuntime(store) as kept,
        DistributedRuntime(store) as forgotten,
        LeaseForgottenFirst(store, owns_store=False) as backend,
        anyio.create_task_group() as tg,
    ):
        await kept.endpoint("ns.c.e").register("tcp://10.0.0.1:9000")
        await forgotten.endpoint("ns.c.e").register("tcp://10.0.0.2:9000")
        backend.forgotten = {forgotten.instance_id}
        tg.start_soon(lambda: serve(backend, InstanceQuery(), port=0, on_ready=address.append))
        with anyio.fail_after(10):
            while not address:  # noqa: ASYNC110 - the server reports its address through a callback
                await anyio.sleep(0.01)
        page = await browser.new_page()
        await page.goto(address[0])
        gone = page.locator(f'tr[data-id="{forgotten.instance_id:x}"] td.lease')
        await expect(gone).to_have_text("expired", timeout=SHOWN_WITHIN)
        await expect(gone).to_have_class(re.compile("lease-gone"))
        live = page.locator(f'tr[data-id="{kept.instance_id:x}"] td.lease')
        await expect(live).to_have_text(re.compile(r"^\d+\.\ds$"))
        tg.cancel_scope.cancel()
