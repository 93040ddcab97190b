"""The reflector's lists and relists against a real kube-apiserver (issue 24 bug 3, issue 25 item 1).

These tests run a private API server with its watch cache off, so that lists and watches are answered from
its etcd, whose history the tests compact: a watch from a compacted resourceVersion, or a list's continue
token from before a compaction, is then answered ``410 Gone`` by the server itself, when the test decides.
Every request the reflector sends is recorded at the client's boundary (:class:`Recorded`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

from dyndisc._retry import seed_jitter
from dyndisc.backends.kubernetes.api import KubeApi, connect
from dyndisc.backends.kubernetes.errors import JsonObject
from dyndisc.backends.kubernetes.reflector import Reflector
from dyndisc.testing.server_fixtures import PrivateServers
from dyndisc.testing.servers import KubeApiServer
from harnesses.kubernetes import kubeconfig

PROMPT = 5.0
#: client-go's page size, which the reflector uses too: a namespace of more objects than this takes pages.
PAGE = 500


@pytest.fixture(scope="module")
def server() -> Iterator[KubeApiServer]:
    """A kube-apiserver of this module's own, answering from etcd (watch cache off)."""
    servers = PrivateServers()
    try:
        yield servers(KubeApiServer, extra_args=["--watch-cache=false"])
    finally:
        servers.close()


@pytest.fixture
async def admin(server: KubeApiServer) -> AsyncIterator[KubeApi]:
    api = await connect(kubeconfig(server, server.admin_token))
    try:
        yield api
    finally:
        await api.aclose()


@pytest.fixture
async def api(server: KubeApiServer) -> AsyncIterator[KubeApi]:
    """The reflector's client (its own connection)."""
    api = await connect(kubeconfig(server, server.admin_token))
    try:
        yield api
    finally:
        await api.aclose()


async def configmaps(admin: KubeApi, count: int) -> str:
    """A new namespace of ``count`` ConfigMaps ``cm-<n>`` (data ``{"n": "<n>"}``); its ConfigMaps' path."""
    namespace = f"rf-{uuid.uuid4().hex[:10]}"
    await admin.request(
        "POST", "/api/v1/namespaces", what="namespace", body={"metadata": {"name": namespace}}
    )
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    limiter = anyio.CapacityLimiter(16)

    async def create(n: int) -> None:
        async with limiter:
            await put(admin, path, f"cm-{n}", str(n))

    async with anyio.create_task_group() as tg:
        for n in range(count):
            tg.start_soon(create, n)
    return path


async def put(admin: KubeApi, path: str, name: str, value: str) -> None:
    body = {"metadata": {"name": name}, "data": {"n": value}}
    await admin.request("POST", path, what=f"creating {name}", body=body)


class Recorded:
    """The queries of every LIST (page) and watch a client sends; ``before_watch`` runs before each watch
    opens and ``after_page`` after each LIST page is answered (the test's chance to act between them)."""

    def __init__(self, api: KubeApi, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pages: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self.before_watch: Callable[[], Awaitable[None]] | None = None
        self.after_page: Callable[[], Awaitable[None]] | None = None
        request, stream = api.request, api.stream

        async def recorded_request(method: str, path: str, **kwargs: Any) -> JsonObject:
            if method == "GET":
                self.pages.append(dict(kwargs.get("query") or {}))
            answer = await request(method, path, **kwargs)
            if method == "GET" and self.after_page is not None:
                await self.after_page()
            return answer

        def recorded_stream(path: str, **kwargs: Any) -> Any:
            self.watches.append(dict(kwargs["query"]))
            return _Opening(self, stream(path, **kwargs))

        monkeypatch.setattr(api, "request", recorded_request)
        monkeypatch.setattr(api, "stream", recorded_stream)

    @property
    def lists(self) -> int:
        """LISTs started (a list's later pages carry a continue token and are not counted)."""
        return sum("continue" not in q for q in self.pages)


class _Opening:
    """KubeApi.stream's context manager, running the recorder's ``before_watch`` first."""

    def __init__(self, recorded: Recorded, inner: Any) -> None:
        self.recorded, self.inner = recorded, inner

    async def __aenter__(self) -> Any:
        if self.recorded.before_watch is not None:
            await self.recorded.before_watch()
        return await self.inner.__aenter__()

    async def __aexit__(self, *exc: object) -> Any:
        return await self.inner.__aexit__(*exc)


class Changes:
    """What a reflector told its consumer: the name of each object that changed, ``None`` for a relist."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self._heard = anyio.Event()

    def __call__(self, name: str | None) -> None:
        self.seen.append(name)
        heard, self._heard = self._heard, anyio.Event()
        heard.set()

    async def until(self, name: str | None, after: int = 0) -> None:
        """Wait until ``name`` was heard (at index ``after`` or later)."""
        with anyio.fail_after(PROMPT):
            while name not in self.seen[after:]:
                await self._heard.wait()


def reflector_of(api: KubeApi, path: str, changes: Changes) -> Reflector[str]:
    return Reflector(
        api,
        path,
        what="ConfigMaps",
        transform=lambda obj, _previous: str((obj.get("data") or {}).get("n")),
        on_change=changes,
        watch_timeout=30,
    )


async def compact_history(server: KubeApiServer, admin: KubeApi) -> int:
    """Write (elsewhere) and compact the API server's etcd up to now: every resourceVersion handed out so
    far is history the server no longer has. (Twice: a watch from version v starts at v + 1, which a
    compaction at v + 1 still keeps.)"""
    for _ in range(2):
        await put(admin, "/api/v1/namespaces/default/configmaps", f"churn-{uuid.uuid4().hex[:8]}", "x")
    return await anyio.to_thread.run_sync(server.etcd.compact)


async def test_a_namespace_longer_than_a_page_is_listed_in_pages_and_watched_from_the_lists_version(
    admin: KubeApi, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await configmaps(admin, PAGE + 1)
    recorded = Recorded(api, monkeypatch)
    changes = Changes()
    reflector = reflector_of(api, path, changes)

    await reflector.relist()

    assert reflector.items == {f"cm-{n}": str(n) for n in range(PAGE + 1)}
    assert len(recorded.pages) == 2, f"{PAGE + 1} objects in {len(recorded.pages)} LIST request(s)"
    first, second = recorded.pages
    assert first.get("limit") == str(PAGE)
    assert first.get("resourceVersion") == "0", "the first list may be served from the watch cache"
    assert second.get("continue")
    assert "resourceVersion" not in second, "a continuation page carries its token alone"
    listed_at = reflector.resource_version
    async with anyio.create_task_group() as tg:
        tg.start_soon(reflector.run)
        await put(admin, path, "late", "late")
        await changes.until("late")
        tg.cancel_scope.cancel()
    assert recorded.watches[0]["resourceVersion"] == listed_at, "the watch resumes exactly where the list was"
    assert reflector.items["late"] == "late"
    assert len(reflector.items) == PAGE + 2


async def test_a_continue_token_that_expires_mid_list_starts_the_list_again(
    server: KubeApiServer, admin: KubeApi, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await configmaps(admin, PAGE + 1)
    recorded = Recorded(api, monkeypatch)
    reflector = reflector_of(api, path, Changes())
    compacted: list[int] = []

    async def compact_once() -> None:
        if not compacted:  # after the first page: its continue token now names compacted history
            compacted.append(await compact_history(server, admin))

    recorded.after_page = compact_once
    await reflector.relist()

    assert compacted, "the history was compacted mid-list"
    assert recorded.lists == 2, "the list started again once its continue token expired"
    assert reflector.items == {f"cm-{n}": str(n) for n in range(PAGE + 1)}
    assert int(reflector.resource_version) >= compacted[0]


async def test_a_watch_whose_history_is_compacted_relists_once_after_a_backoff(
    server: KubeApiServer, admin: KubeApi, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = await configmaps(admin, 3)
    recorded = Recorded(api, monkeypatch)
    changes = Changes()
    reflector = reflector_of(api, path, changes)
    await reflector.relist()
    # While nobody watches, one object goes, one comes, one changes; then the history is compacted.
    await admin.request("DELETE", f"{path}/cm-0", what="deleting cm-0")
    await put(admin, path, "cm-new", "new")
    await admin.request(
        "PATCH",
        f"{path}/cm-1",
        what="changing cm-1",
        body={"data": {"n": "changed"}},
        content_type="application/merge-patch+json",
    )
    await compact_history(server, admin)
    lists, heard = recorded.lists, len(changes.seen)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reflector.run)
        await changes.until(None, after=heard)  # the relist
        await put(admin, path, "after", "after")
        await changes.until("after", after=heard)
        tg.cancel_scope.cancel()

    assert recorded.lists == lists + 1, "one relist for one 410"
    assert changes.seen[heard] is None, "the consumer hears of the relist first"
    assert reflector.items == {"cm-1": "changed", "cm-2": "2", "cm-new": "new", "after": "after"}, (
        "no phantom (cm-0) and no loss (cm-new, the change of cm-1) across the relist"
    )


async def test_a_watch_that_keeps_finding_its_history_compacted_relists_with_backoff_not_in_a_loop(
    server: KubeApiServer, admin: KubeApi, api: KubeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Churn outruns the history the server keeps: every watch the reflector opens asks for a compacted
    # resourceVersion and is answered 410 Gone. Each 410 asks for a relist; how many LISTs in a window?
    path = await configmaps(admin, 3)
    recorded = Recorded(api, monkeypatch)
    reflector = reflector_of(api, path, Changes())
    await reflector.relist()
    recorded.before_watch = lambda: compact_history(server, admin)
    window = 3.0
    seed_jitter(24)  # the backoff's draws are fixed: the count below is the same run after run
    try:
        with anyio.move_on_after(window):
            await reflector.run()
    finally:
        seed_jitter(None)
    relists = recorded.lists - 1
    print(f"{relists} relists in {window:g}s of 410 after every watch (LIST requests: {len(recorded.pages)})")
    assert len(recorded.watches) >= 2, "every watch was answered 410 and relisted"
    assert relists <= 8, f"{relists} relists in {window:g}s: a LIST loop, not a backoff"


async def test_a_relist_from_a_version_the_server_has_not_seen_yet_lists_the_latest(
    dyndisc_kube_apiserver: KubeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behind one address, an API server whose watch cache lags the one that answered before has not seen
    # the resourceVersion last seen yet: after a few seconds it says so (a Timeout whose cause is
    # ResourceVersionTooLarge), and the relist asks for the latest instead (this server's cache is on).
    admin = await connect(kubeconfig(dyndisc_kube_apiserver, dyndisc_kube_apiserver.admin_token))
    api = await connect(kubeconfig(dyndisc_kube_apiserver, dyndisc_kube_apiserver.admin_token))
    try:
        path = await configmaps(admin, 3)
        recorded = Recorded(api, monkeypatch)
        reflector = reflector_of(api, path, Changes())
        await reflector.relist()
        ahead = str(int(reflector.resource_version) + 1_000_000)
        reflector.resource_version = ahead

        await reflector.relist()

        too_new, latest = recorded.pages[-2:]
        assert (too_new["resourceVersion"], too_new["resourceVersionMatch"]) == (ahead, "NotOlderThan")
        assert "resourceVersion" not in latest, "then the latest, a quorum read"
        assert reflector.items == {f"cm-{n}": str(n) for n in range(3)}
        assert int(reflector.resource_version) < int(ahead)
    finally:
        await api.aclose()
        await admin.aclose()
