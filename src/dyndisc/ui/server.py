"""The web server of ``dyndisc ui`` (aiohttp): one page, its script and style, a Server-Sent Events stream.

Why aiohttp: dyndisc already runs on asyncio, the Kubernetes client already brings aiohttp, and one library
serves static files, a JSON endpoint and an event stream without a separate ASGI server (Starlette would
need uvicorn beside it). The page is plain HTML, CSS and JavaScript shipped in the package: no build step,
nothing fetched from a CDN.

Read-only: only GET is served. With a token every request must carry it, as ``Authorization: Bearer <token>``
or the cookie the page sets when opened once as ``/?token=<token>`` (an ``EventSource`` cannot send
headers); the token then leaves the address bar.

JSON for scripts (and ``dyndisc events``): ``/api/snapshot`` (the view), ``/api/events`` (the history:
``?since=SECONDS``, ``&after=SEQ``, ``&key=ns.comp.ep/<id>``) and ``/api/entries?bucket=B&prefix=P`` (a
bucket's entries, listed when asked).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources

import anyio
from aiohttp import web

from dyndisc._entries import validate_bucket
from dyndisc._errors import ConfigurationError, InvalidNameError
from dyndisc.ui.entries import list_bucket
from dyndisc.ui.fleet import Fleet

COOKIE = "dyndisc_ui_token"
#: A comment line on the event stream this often keeps proxies and browsers from closing an idle stream.
HEARTBEAT = 15.0
#: Seconds a listing of a bucket (the page's entries view) may take.
ENTRIES_WITHIN = 10.0
_STATIC = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "fleet.js": "text/javascript",
    "timeline.js": "text/javascript",
    "detail.js": "text/javascript",
    "views.js": "text/javascript",
}
_HEADERS = {
    # Everything comes from this server: no CDN, no inline script, no framing by another site.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _asset(name: str) -> bytes:
    return resources.files("dyndisc.ui").joinpath("static", name).read_bytes()


def _number(request: web.Request, name: str) -> float | None:
    """A query parameter that is a number, if given."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def make_app(fleet: Fleet, token: str | None) -> web.Application:
    """The application serving ``fleet`` (protected by ``token`` when one is given)."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], text="read-only\n")
        if token is not None:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            given = given or request.cookies.get(COOKIE, "")
            offered = request.query.get("token")
            if offered is not None and request.path == "/" and hmac.compare_digest(offered, token):
                found = web.HTTPSeeOther("/")  # keep the token out of the address bar and history
                found.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
                raise found
            if not hmac.compare_digest(given, token):
                raise web.HTTPUnauthorized(text="a token is needed: open /?token=<token>\n")
        response = await handler(request)
        response.headers.update(_HEADERS)
        return response

    async def index(request: web.Request) -> web.StreamResponse:
        return web.Response(body=_asset("index.html"), content_type="text/html")

    async def favicon(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)  # none: a browser asks anyway, and a 404 would be a console error

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=_STATIC[name])

    async def snapshot(request: web.Request) -> web.StreamResponse:
        return web.json_response(fleet.snapshot())

    async def history(request: web.Request) -> web.StreamResponse:
        try:
            since = _number(request, "since")
            after = _number(request, "after")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        records = fleet.history.select(
            since=None if since is None else time.time() - since,
            after=None if after is None else int(after),
            key=request.query.get("key"),
        )
        return web.json_response(
            {
                "backend": fleet.backend.name,
                "query": str(fleet.query),
                "records": records,
                "first_seq": fleet.history.first_seq,
                "next_seq": fleet.history.next_seq,
                "capacity": fleet.history.records.maxlen,
            }
        )

    async def entries(request: web.Request) -> web.StreamResponse:
        bucket, prefix = request.query.get("bucket", ""), request.query.get("prefix", "")
        try:
            found = await list_bucket(fleet.backend, validate_bucket(bucket), prefix, ENTRIES_WITHIN)
        except InvalidNameError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        except (NotImplementedError, ConfigurationError) as exc:
            raise web.HTTPNotImplemented(text=f"{exc}\n") from None
        except Exception as exc:  # the server is away (or slow): say so, the page shows it
            raise web.HTTPServiceUnavailable(text=f"{exc or type(exc).__name__}\n") from None
        return web.json_response({"bucket": bucket, "prefix": prefix, "entries": found})

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_HEADERS})
        await response.prepare(request)
        try:
            async with fleet.page() as stream:
                while True:
                    try:
                        with anyio.fail_after(HEARTBEAT):
                            event = await stream.receive()
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                    except Exception:  # the page fell behind and was dropped: let it reconnect
                        break
                    await response.write(f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode())
        except ConnectionResetError:
            pass  # the tab was closed or reloaded: nothing went wrong
        return response

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/api/events", history)
    app.router.add_get("/api/entries", entries)
    app.router.add_get("/events", events)
    return app
