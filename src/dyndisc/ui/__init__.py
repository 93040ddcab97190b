"""``dyndisc ui``: a live web page of the fleet (every instance, its readiness, lease and metadata).

``fleet`` keeps the view current (one watch, the leases' time left, staleness) and pushes it as events;
``server`` serves the page and the event stream (aiohttp); ``static/`` holds the page itself. Needs the
``ui`` extra (``pip install 'dyndisc[ui]'``, which brings aiohttp).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dyndisc._models import InstanceQuery
from dyndisc.backends.base import DiscoveryBackend


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): only this machine can reach it."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(
    backend: DiscoveryBackend,
    query: InstanceQuery,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str | None = None,
    on_ready: Callable[[str], object] = print,
) -> None:
    """Serve the page for ``query`` over ``backend`` until cancelled; ``on_ready`` gets its address."""
    import anyio
    from aiohttp import web

    from dyndisc.ui.fleet import Fleet
    from dyndisc.ui.server import make_app

    fleet = Fleet(backend, query)
    async with fleet.running():
        runner = web.AppRunner(make_app(fleet, token), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0]
            shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
            on_ready(f"http://{shown}:{bound[1]}/")
            await anyio.sleep_forever()
        finally:
            await runner.cleanup()
