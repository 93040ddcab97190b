"""``dyndisc watch --live``: the instances as a table redrawn in place (rich), like ``watch kubectl get``.

A removed instance stays one second, struck through, so a removal is seen rather than missed; a header
line says when the view is stale (the backend lost its server: ``stale_since``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import anyio
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import EndpointId, Instance, InstanceQuery, Readiness
from dyndisc.backends import DiscoveryBackend
from dyndisc.cli.output import INSTANCE_COLUMNS, Style, age, dumps, local_stamp

#: How long a removed instance stays on screen (struck through) before it goes.
LINGER = 1.0


class _View:
    def __init__(
        self, query: InstanceQuery, backend: DiscoveryBackend, stale: Callable[[], float | None] | None = None
    ) -> None:
        self.query = query
        self.backend = backend
        #: Since when (``time.monotonic()``) the view is stale, else ``None``: the backend's word by default.
        self.stale = stale if stale is not None else (lambda: backend.stale_since)
        self.instances: dict[tuple[EndpointId, int], Instance] = {}
        self.leaving: dict[tuple[EndpointId, int], tuple[Instance, float]] = {}

    def apply(self, event: DiscoveryEvent) -> None:
        now = time.monotonic()
        if isinstance(event, Resync):
            fresh = {i.key: i for i in event.instances}
            for key, instance in self.instances.items():
                if key not in fresh:
                    self.leaving[key] = (instance, now)
            self.instances = fresh
        elif isinstance(event, Added):
            self.instances[event.instance.key] = event.instance
            self.leaving.pop(event.instance.key, None)
        elif isinstance(event, Removed):
            gone = self.instances.pop(event.key, None)
            if gone is not None:
                self.leaving[event.key] = (gone, now)

    def render(self, style: Style) -> Group:
        now = time.monotonic()
        self.leaving = {k: v for k, v in self.leaving.items() if now - v[1] < LINGER}
        table = Table(*INSTANCE_COLUMNS, box=None, header_style="bold", pad_edge=False)
        rows = [(i, False) for i in self.instances.values()] + [(i, True) for i, _ in self.leaving.values()]
        for instance, leaving in sorted(rows, key=lambda r: (str(r[0].endpoint_id), r[0].instance_id)):
            state = instance.readiness.value
            cells = [
                Text(str(instance.endpoint_id)),
                Text(f"{instance.instance_id:x}"),
                Text(state, style="green" if instance.readiness is Readiness.READY else "yellow"),
                Text(str(instance.transport) if instance.transport is not None else "-"),
                Text(age(instance.registered_at)),
                Text(dumps(instance.metadata) if instance.metadata else ""),
            ]
            if leaving:
                for cell in cells:
                    cell.stylize("strike red")
            table.add_row(*cells)
        stale = self.stale()
        head = Text(f"{local_stamp()}  {len(self.instances)} live under {self.query}")
        if stale is not None:
            head.append(
                f"  STALE for {time.monotonic() - stale:.0f}s: the backend lost its server", "bold red"
            )
        return Group(head, table)


async def follow_live(
    events: AsyncIterator[DiscoveryEvent],
    backend: DiscoveryBackend,
    query: InstanceQuery,
    style: Style,
    stale: Callable[[], float | None] | None = None,
) -> None:
    """Redraw the table on every event and every half second (ages, lingering removals, staleness:
    ``stale()``, the backend's ``stale_since`` by default)."""
    view = _View(query, backend, stale)
    with Live(view.render(style), auto_refresh=False, transient=False) as live:

        async def redraw() -> None:
            while True:
                await anyio.sleep(0.5)
                live.update(view.render(style), refresh=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(redraw)
            async for event in events:
                view.apply(event)
                live.update(view.render(style), refresh=True)
            tg.cancel_scope.cancel()
