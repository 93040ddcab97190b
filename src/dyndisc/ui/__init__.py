"""``dyndisc ui``: a live web page of the fleet (every instance, its readiness, lease and metadata).

``fleet`` keeps the view current (one watch, the leases' time left, staleness, the history of what
happened) and pushes it as events; ``entries`` follows the model cards and event channels and lists any
bucket; ``server`` serves the page, its JSON and the event stream (aiohttp); ``static/`` holds the page
itself. Needs the ``ui`` extra (``pip install 'dyndisc[ui]'``, which brings aiohttp).
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
    """Serve the page for ``query`` over ``backend`` until cancelled; ``on_ready`` gets its address.

    Raises :class:`OSError` if it cannot listen on ``host:port`` (in use, or not allowed).
    """
    import anyio
    from aiohttp import web

    from dyndisc.ui.fleet import Fleet
    from dyndisc.ui.server import make_app

    fleet = Fleet(backend, query)
    runner = web.AppRunner(make_app(fleet, token), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # Listen before following the backend: a port in use is said at once, not after a connection.
        site = web.TCPSite(runner, host, port)
        await site.start()
        async with fleet.running():
            bound = runner.addresses[0]
            shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
            on_ready(f"http://{shown}:{bound[1]}/")
            await anyio.sleep_forever()
    finally:
        await runner.cleanup()
