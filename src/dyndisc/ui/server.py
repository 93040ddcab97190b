"""The web server of ``dyndisc ui`` (aiohttp): one page, its script and style, a Server-Sent Events stream.

Why aiohttp: dyndisc already runs on asyncio, the Kubernetes client already brings aiohttp, and one library
serves static files, a JSON endpoint and an event stream without a separate ASGI server (Starlette would
need uvicorn beside it). The page is plain HTML, CSS and JavaScript shipped in the package: no build step,
nothing fetched from a CDN.

Read-only: only GET is served. With a token every request must carry it, as ``Authorization: Bearer <token>``
or the cookie the page sets when opened once as ``/?token=<token>`` (an ``EventSource`` cannot send
headers); the token then leaves the address bar.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources

import anyio
from aiohttp import web

from dyndisc.ui.fleet import Fleet

COOKIE = "dyndisc_ui_token"
#: A comment line on the event stream this often keeps proxies and browsers from closing an idle stream.
HEARTBEAT = 15.0
_STATIC = {"app.js": "text/javascript", "app.css": "text/css"}
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

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=_STATIC[name])

    async def snapshot(request: web.Request) -> web.StreamResponse:
        return web.json_response(fleet.snapshot())

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **_HEADERS})
        await response.prepare(request)
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
        return response

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get("/events", events)
    return app
