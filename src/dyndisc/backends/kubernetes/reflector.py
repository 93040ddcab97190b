"""A reflector: the current set of one kind of Kubernetes object, kept by list-then-watch.

It lists, then watches from the list's ``resourceVersion`` with bookmarks, so no change between the two is
lost. A dropped connection resumes from the last ``resourceVersion`` seen; ``410 Gone`` (the server no longer
has that history) relists. kubernetes_asyncio's own ``Watch`` retries 410 once and then raises, so this does
not use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from dyndisc._errors import BackendUnavailableError, DyndiscError
from dyndisc._retry import Backoff
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError

if TYPE_CHECKING:
    from dyndisc.backends.kubernetes.api import KubeApi

log = logging.getLogger("dyndisc.kubernetes")

T = TypeVar("T")

#: Backoff between watch attempts after a failure (reset by every successful watch).
RETRY_MIN, RETRY_MAX = 0.2, 5.0


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


def _name(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None


def _resource_version(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) and rv else None


class Reflector(Generic[T]):
    """Objects at ``path`` (optionally filtered by labels or fields) by name, each turned into a ``T`` by
    ``transform``.

    ``transform(obj, previous)`` returns the value to keep, or ``None`` to drop the object (it may return
    ``previous`` to keep the last good value). ``on_change(name)`` is called after every change, with the
    name of the object that changed, or ``None`` after a (re)list.
    """

    def __init__(
        self,
        api: KubeApi,
        path: str,
        *,
        what: str,
        transform: Callable[[JsonObject, T | None], T | None],
        on_change: Callable[[str | None], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: float = 60.0,
    ) -> None:
        self.api = api
        self.path = path
        self.what = what
        self.transform = transform
        self.on_change = on_change
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        #: Silence (seconds) after which a watch connection is presumed dead: the server ends every watch
        #: after ``watch_timeout``, so a stream quiet for longer than this is partitioned or stuck.
        self.read_timeout = watch_timeout + max(5.0, watch_timeout / 2)
        self.items: dict[str, T] = {}
        self.resource_version = ""
        #: How many times the state was (re)listed: a consumer seeing it grow knows to resync.
        self.relists = 0
        #: ``time.monotonic()`` since when the watch has been failing, else ``None``.
        self.stale_since: float | None = None

    def _query(self) -> dict[str, str]:
        query = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    def forget(self) -> None:
        """Drop the state (nobody uses it any more): the next user lists afresh."""
        self.items = {}
        self.resource_version = ""
        self.stale_since = None

    async def relist(self) -> None:
        """Replace the state with a fresh list (raises a clear error if the list fails)."""
        try:
            body = await self.api.request("GET", self.path, what=f"listing {self.what}", query=self._query())
        except KubeStatusError as exc:
            raise self.api.explain(exc) from None
        items: dict[str, T] = {}
        for obj in body.get("items") or ():
            name = _name(obj)
            if name is not None:
                value = self.transform(obj, self.items.get(name))
                if value is not None:
                    items[name] = value
        meta = body.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(rv, str) or not rv:
            raise BackendUnavailableError(f"listing {self.what}: the answer has no resourceVersion")
        self.items = items
        self.resource_version = rv
        self.relists += 1
        self.on_change(None)

    async def run(self) -> None:
        """Watch forever (the state must have been listed): resume after failures, relist after 410."""
        backoff = Backoff(RETRY_MIN, RETRY_MAX)
        must_relist = False
        while True:
            try:
                if must_relist:
                    await self.relist()
                    must_relist = False
                started = time.monotonic()
                if not await self._watch_once() and time.monotonic() - started < 1.0:
                    # Closed at once with nothing said (a server shutting down): don't spin reconnecting.
                    await backoff.sleep()
                    continue
            except _Expired:
                log.info(
                    "%s: resourceVersion %s is too old (410 Gone); relisting",
                    self.what,
                    self.resource_version,
                )
                must_relist = True
                continue
            except (DyndiscError, OSError) as exc:
                if isinstance(exc, KubeStatusError):
                    exc = self.api.explain(exc)
                if self.stale_since is None:
                    self.stale_since = time.monotonic()
                delay = backoff.next_delay()
                log.warning("%s failed (%s); retrying in %.2fs", self.what, exc, delay)
                await anyio.sleep(delay)
                continue
            backoff.reset()

    async def _watch_once(self) -> bool:
        """Watch until the server ends the stream; return whether any event arrived."""
        query = {
            **self._query(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(max(int(self.watch_timeout), 1)),
        }
        try:
            received = False
            async with self.api.stream(
                self.path, what=f"watching {self.what}", query=query, read_timeout=self.read_timeout
            ) as events:
                if self.stale_since is not None:
                    log.info("%s resumed from resourceVersion %s", self.what, self.resource_version)
                    self.stale_since = None
                async for event in events:
                    received = True
                    self._apply(event)
            return received
        except KubeStatusError as exc:
            if exc.status == 410:
                raise _Expired() from None
            raise

    def _apply(self, event: JsonObject) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise _Expired()
            message = obj.get("message") if isinstance(obj, dict) else obj
            raise KubeStatusError(int(code or 500), "watch error", str(message), f"watching {self.what}")
        rv = _resource_version(obj)
        if rv is not None:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return
        name = _name(obj)
        if name is None or not isinstance(obj, dict):
            return
        if kind in ("ADDED", "MODIFIED"):
            value = self.transform(obj, self.items.get(name))
            if value is None:
                self.items.pop(name, None)
            else:
                self.items[name] = value
        elif kind == "DELETED":
            self.items.pop(name, None)
        else:
            return
        self.on_change(name)
