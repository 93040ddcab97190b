"""A reflector: the current set of one kind of Kubernetes object, kept by list-then-watch.

It lists, then watches from the list's ``resourceVersion`` with bookmarks, so no change between the two is
lost. A dropped connection resumes from the last ``resourceVersion`` seen. When the server no longer has
that history (``410 Gone``) or has not reached it yet (a "too large resource version" ``Timeout``, from an
API server whose watch cache lags another's), the reflector relists, as client-go's does, after a delay of
the one backoff policy: under churn that outruns the server's history, every watch may end so, and without
the delay every frontend would LIST in a loop. kubernetes_asyncio's own ``Watch`` retries 410 once and then
raises, so this does not use it.

A list is read in pages of :data:`PAGE_SIZE` (``limit`` and ``continue``), each a request with its own
deadline, so a large namespace neither has to arrive within one request's time nor weighs on the server as
one answer. The first list asks for ``resourceVersion=0`` (any version: the API server answers from its
watch cache); a relist asks for a state not older than the last one seen, or, once the server said that one
is unavailable, for the latest (a quorum read). A page's continue token that expired mid-list (the
history it points into was compacted) starts the list again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from dyndisc._errors import BackendUnavailableError, DyndiscError
from dyndisc._outage import OutageLog
from dyndisc._retry import Backoff
from dyndisc.backends.kubernetes.errors import JsonObject, KubeStatusError, status_error

if TYPE_CHECKING:
    from dyndisc.backends.kubernetes.api import KubeApi

log = logging.getLogger("dyndisc.kubernetes")

T = TypeVar("T")

#: Backoff between watch attempts after a failure, and before a relist (reset by every successful watch).
RETRY_MIN, RETRY_MAX = 0.2, 5.0
#: Objects asked for per LIST request, as client-go's pager does.
PAGE_SIZE = 500
#: Times one list starts again because a continue token expired (its history compacted) before it fails.
LIST_RESTARTS = 3


class _Unavailable(Exception):
    """The server does not serve the resourceVersion asked for: too old (410 Gone) or too new."""

    def __init__(self, error: KubeStatusError) -> None:
        super().__init__(str(error))
        self.why = "is too old (410 Gone)" if error.expired else "is newer than this API server has seen"


def _not_served(exc: KubeStatusError) -> bool:
    """Whether ``exc`` says the server does not serve the resourceVersion asked for."""
    return exc.expired or exc.version_too_large


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
        page_size: int = PAGE_SIZE,
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
        self.page_size = page_size
        self.items: dict[str, T] = {}
        self.resource_version = ""
        #: The server said it does not serve :attr:`resource_version`: the next list asks for the latest.
        self._list_latest = False
        #: How many times the state was (re)listed: a consumer seeing it grow knows to resync.
        self.relists = 0
        #: ``time.monotonic()`` since when the watch has been failing, else ``None``.
        self.stale_since: float | None = None
        #: One line when the watch starts failing, one when it resumes: not one per attempt.
        self.outage = OutageLog(log, what)

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
        self._list_latest = False
        self.stale_since = None

    def _list_version(self) -> str:
        """The resourceVersion a list asks for, as client-go's reflector picks it: ``0`` at first (the API
        server answers from its watch cache), then the last one seen (a state not older than ours), or ``""``
        (the latest, a quorum read) once the server said it does not serve that one."""
        if self._list_latest:
            return ""
        return self.resource_version or "0"

    async def relist(self) -> None:
        """Replace the state with a fresh list (raises a clear error if the list fails)."""
        try:
            objects, rv = await self._list(self._list_version())
        except _Unavailable as exc:
            log.info(
                "%s: resourceVersion %s %s; listing the latest", self.what, self.resource_version, exc.why
            )
            self._list_latest = True
            objects, rv = await self._list("")
        items: dict[str, T] = {}
        for obj in objects:
            name = _name(obj)
            if name is not None:
                value = self.transform(obj, self.items.get(name))
                if value is not None:
                    items[name] = value
        self.items = items
        self.resource_version = rv
        self._list_latest = False
        self.relists += 1
        self.on_change(None)

    async def _list(self, version: str) -> tuple[list[JsonObject], str]:
        """Every object at ``version`` (see :meth:`_list_version`), page by page, and the list's
        resourceVersion. Raises :class:`_Unavailable` if the server does not serve ``version``."""
        first = {**self._query(), "limit": str(self.page_size)}
        if version:
            first["resourceVersion"] = version
            if version != "0":  # with a limit, a bare resourceVersion would ask for that exact version
                first["resourceVersionMatch"] = "NotOlderThan"
        for _ in range(LIST_RESTARTS + 1):
            objects: list[JsonObject] = []
            listed_at: str | None = None
            query = first
            while True:
                try:
                    # One request per page, each with a deadline of its own (api.REQUEST_TIMEOUT).
                    body = await self.api.request("GET", self.path, what=f"listing {self.what}", query=query)
                except KubeStatusError as exc:
                    if query is not first and exc.expired:
                        break  # the continue token expired: the pages so far are of compacted history
                    if query is first and version not in ("", "0") and _not_served(exc):
                        raise _Unavailable(exc) from None
                    raise self.api.explain(exc) from None
                meta = body.get("metadata")
                meta = meta if isinstance(meta, dict) else {}
                if listed_at is None:  # every page is of the first page's version
                    listed_at = meta.get("resourceVersion")
                    if not isinstance(listed_at, str) or not listed_at:
                        raise BackendUnavailableError(
                            f"listing {self.what}: the answer has no resourceVersion"
                        )
                objects += [obj for obj in body.get("items") or () if isinstance(obj, dict)]
                token = meta.get("continue")
                if not token:
                    return objects, listed_at
                query = {**self._query(), "limit": str(self.page_size), "continue": str(token)}
            log.info("%s: a page's continue token expired mid-list; listing again", self.what)
        raise BackendUnavailableError(
            f"listing {self.what}: the continue token expired {LIST_RESTARTS + 1} times in a row (the API "
            "server's history is compacted faster than a list of it is read); retrying"
        )

    async def run(self) -> None:
        """Watch forever (the state must have been listed): resume after failures; relist, after a backoff
        delay, when the server does not serve the resourceVersion to resume from."""
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
            except _Unavailable as exc:
                # Not at once: if churn outran the server's history this time, it may the next time too,
                # and a LIST loop from every watcher would only add to the load (the backoff is reset only
                # by a watch that lasts).
                delay = backoff.next_delay()
                log.info(
                    "%s: resourceVersion %s %s; relisting in %.2fs",
                    self.what,
                    self.resource_version,
                    exc.why,
                    delay,
                )
                must_relist = True
                await anyio.sleep(delay)
                continue
            except (DyndiscError, OSError) as exc:
                if isinstance(exc, KubeStatusError):
                    exc = self.api.explain(exc)
                if self.stale_since is None:
                    self.stale_since = time.monotonic()
                self.outage.failed(exc)
                await backoff.sleep()
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
                self.stale_since = None
                self.outage.recovered()
                async for event in events:
                    received = True
                    self._apply(event)
            return received
        except KubeStatusError as exc:
            if _not_served(exc):
                raise _Unavailable(exc) from None
            raise

    def _apply(self, event: JsonObject) -> None:
        kind = event.get("type")
        obj = event.get("object")
        if kind == "ERROR":
            status = obj if isinstance(obj, dict) else {"message": str(obj)}
            raise status_error(status, f"watching {self.what}")
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
