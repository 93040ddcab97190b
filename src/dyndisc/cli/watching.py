"""``dyndisc watch``: the instances under a path as they change, and whether what it shows is current.

A watch that lost its server shows nothing new, which looks the same as nothing happening. So ``watch``
says so: a timestamped ``!`` line when its view goes stale (the stream broke, the server stopped answering
the probe of :mod:`dyndisc.cli.liveness`) and a ``~`` line when it is current again (``--json``: a
``status`` record). A server that is not there at the start is waited for ``--wait`` seconds, then said to
be missing, and waited for still: ``--wait`` governs when it says so, not whether it gives up.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import click

from dyndisc._errors import BackendUnavailableError
from dyndisc._events import Added, DiscoveryEvent, Removed, Resync
from dyndisc._models import InstanceQuery
from dyndisc._retry import Backoff
from dyndisc.backends import DiscoveryBackend
from dyndisc.cli.app import Settings, backend_options, main, run, settings
from dyndisc.cli.inputs import parse_query
from dyndisc.cli.layouts import layout_hint
from dyndisc.cli.liveness import Liveness
from dyndisc.cli.output import (
    INSTANCE_COLUMNS,
    Style,
    dumps,
    event_json,
    instance_row,
    iso,
    local_stamp,
    table,
)

#: How often the staleness of a view is looked at.
STATUS_CHECK = 0.25


@dataclass(frozen=True)
class Status:
    """The view went stale (since ``since``, wall time; ``cause`` if known), or is current again after
    ``lasted`` seconds."""

    stale: bool
    since: float
    lasted: float | None = None
    cause: str | None = None

    def as_json(self) -> dict[str, object]:
        """The ``status`` record of ``watch --json`` and ``events --json``."""
        found: dict[str, object] = {"event": "status", "at": iso(time.time()), "stale": self.stale}
        found["since"] = iso(self.since)
        if self.lasted is not None:
            found["lasted"] = round(self.lasted, 1)
        if self.cause is not None:
            found["cause"] = self.cause
        return found

    def line(self, style: Style) -> str:
        """The ``!`` or ``~`` line of ``watch``."""
        stamp = style.dim(local_stamp())
        if self.stale:
            began = time.strftime("%H:%M:%S", time.localtime(self.since))
            why = f": {self.cause}" if self.cause else ": the watch lost its server"
            said = (
                f"stale since {began}{why}; still trying, nothing new shows until it is back (Ctrl-C to stop)"
            )
            return f"{stamp} {style.paint('!', fg='yellow', bold=True)} {style.paint(said, fg='yellow')}"
        back = f"resumed after {self.lasted or 0:.0f}s: the view is current"
        return f"{stamp} {style.paint('~', fg='green')} {back}"


async def follow_query(
    backend: DiscoveryBackend,
    query: InstanceQuery,
    on_event: Callable[[DiscoveryEvent], object],
    on_status: Callable[[Status], object],
) -> None:
    """Watch ``query`` until cancelled, telling ``on_event`` every event and ``on_status`` every change of
    staleness; a server missing at the start is waited for (each attempt as long as the backend's startup
    wait) and said stale after the first attempt."""
    missing_since: float | None = None
    backoff = Backoff(0.5, 10.0)
    while True:
        tried = time.time()
        try:
            async with backend.watch(query) as events:
                if missing_since is not None:
                    on_status(Status(stale=False, since=missing_since, lasted=time.time() - missing_since))
                    missing_since = None
                await _follow(backend, events, on_event, on_status)
        except BackendUnavailableError as exc:
            if missing_since is None:
                missing_since = tried
                on_status(Status(stale=True, since=tried, cause=str(exc)))
            await backoff.sleep()


async def _follow(
    backend: DiscoveryBackend,
    events: AsyncIterator[DiscoveryEvent],
    on_event: Callable[[DiscoveryEvent], object],
    on_status: Callable[[Status], object],
) -> None:
    liveness = Liveness(backend)

    async def report() -> None:
        while True:
            await anyio.sleep(STATUS_CHECK)
            change = liveness.change()
            if change is not None:
                lasted = None if change.stale else change.lasted
                on_status(Status(stale=change.stale, since=change.since_wall, lasted=lasted))

    async with anyio.create_task_group() as tg:
        tg.start_soon(liveness.probe)
        tg.start_soon(report)
        async for event in events:
            on_event(event)
        tg.cancel_scope.cancel()


def event_line(event: DiscoveryEvent, query: InstanceQuery, style: Style) -> str:
    """One watch event as ``watch`` prints it."""
    stamp = style.dim(local_stamp())
    if isinstance(event, Resync):
        lines = [f"{stamp} = {len(event.instances)} live under {query}"]
        rows = [instance_row(i, style) for i in event.instances]
        if rows:
            lines += [f"{stamp}   {line}" for line in table(INSTANCE_COLUMNS, rows, style).splitlines()[1:]]
        return "\n".join(lines)
    if isinstance(event, Added):
        cells = instance_row(event.instance, style)
        return f"{stamp} {style.paint('+', fg='green')} {'  '.join(c for c in cells if c)}"
    assert isinstance(event, Removed)
    reason = f" ({event.reason.value})" if event.reason is not None else ""
    return f"{stamp} {style.paint('-', fg='red')} {event.endpoint} {event.instance_id:x}{reason}"


async def _hint_once(backend: DiscoveryBackend, query: InstanceQuery, style: Style) -> None:
    hint = await layout_hint(backend, query)
    if hint is not None:
        click.echo(style.paint(hint, fg="yellow"), err=True)


def _watch(query: InstanceQuery, as_json: bool, live: bool, config: Settings) -> None:
    style = config.style

    async def follow() -> None:
        async with config.backend_open() as opened, anyio.create_task_group() as tg:
            first = True

            def on_event(event: DiscoveryEvent) -> None:
                nonlocal first
                if first and isinstance(event, Resync) and not event.instances:
                    tg.start_soon(_hint_once, opened, query, style)  # nothing here: the other layout?
                first = False
                if live:
                    send.send_nowait(event)
                else:
                    click.echo(dumps(event_json(event)) if as_json else event_line(event, query, style))

            stale_since: float | None = None  # time.monotonic(), for the live table's header

            def on_status(status: Status) -> None:
                nonlocal stale_since
                stale_since = time.monotonic() - (time.time() - status.since) if status.stale else None
                if not live:
                    click.echo(dumps(status.as_json()) if as_json else status.line(style))

            send, receive = anyio.create_memory_object_stream[DiscoveryEvent](math.inf)
            if live:
                from dyndisc.cli.live import follow_live

                tg.start_soon(follow_query, opened, query, on_event, on_status)
                await follow_live(receive, opened, query, style, lambda: stale_since)
            else:
                await follow_query(opened, query, on_event, on_status)

    run(follow)


@main.command()
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event, one per line (NDJSON).")
@click.option("--live", is_flag=True, help="A live table of the instances instead of a line per change.")
@backend_options
def watch(
    path: str | None,
    as_json: bool,
    live: bool,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """Follow the instances under PATH as they change (Ctrl-C to stop).

    Each line starts with the local time: '=' the whole set (at the start and after a reconnect), '+' an
    instance added or changed, '-' one removed, with the reason where the backend knows it; '!' when the
    view goes stale (the server is lost or missing: --wait is how long it waits before saying so) and '~'
    when it is current again.
    """
    query = parse_query(path)
    config = settings()
    config.override(backend, endpoints, wait)
    if live and as_json:
        raise click.UsageError("--live and --json do not go together")
    _watch(query, as_json, live, config)
