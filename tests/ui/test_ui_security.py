"""The UI's security defaults: loopback unless asked, a token when given is required everywhere (and leaves
the address bar), read-only, nothing loaded from elsewhere; and its event stream starts with a snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import aiohttp
import anyio
import pytest

from dyndisc import DistributedRuntime, InstanceQuery, KvDiscovery, MemoryStore
from dyndisc.ui import is_loopback, serve

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
    ],
)
def test_only_loopback_addresses_count_as_local(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dyndisc", "--backend", "memory", "ui", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_token_guards_every_route_and_the_page_is_read_only() -> None:
    store = MemoryStore()
    address: list[str] = []
    async with (
        DistributedRuntime(store) as worker,
        KvDiscovery(store, owns_store=False) as backend,
        anyio.create_task_group() as tg,
    ):
        await worker.endpoint("ns.c.e").register("tcp://10.0.0.5:9000", {"model": "m"})
        tg.start_soon(lambda: serve(backend, InstanceQuery(), port=0, token=TOKEN, on_ready=address.append))
        with anyio.fail_after(10):
            while not address:  # noqa: ASYNC110 - the server reports its address through a callback
                await anyio.sleep(0.01)
        url = address[0]
        async with aiohttp.ClientSession() as anonymous:
            for path in ("", "static/app.js", "api/snapshot", "events"):
                async with anonymous.get(url + path) as response:
                    assert response.status == 401, path
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as client:
            async with client.get(url) as page:
                assert page.status == 200
                assert "default-src 'self'" in page.headers["Content-Security-Policy"]
                assert "http" not in (await page.text()).replace("http-equiv", "")  # nothing from elsewhere
            async with client.post(url + "api/snapshot") as write:
                assert write.status == 405
            async with client.get(url + "events") as stream:
                line = await stream.content.readline()
                first = json.loads(line.decode().removeprefix("data: "))
            assert first["event"] == "snapshot"
            assert [i["transport"] for i in first["instances"]] == ["tcp://10.0.0.5:9000"]
        # A jar that keeps cookies of IP-address hosts, as a browser does.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(url + f"?token={TOKEN}", allow_redirects=False) as opened:
                assert opened.status == 303
                assert opened.headers["Location"] == "/"  # the token leaves the address bar
                assert "HttpOnly" in opened.headers["Set-Cookie"]
            async with browser.get(url + "api/snapshot") as by_cookie:
                assert by_cookie.status == 200
        tg.cancel_scope.cancel()
