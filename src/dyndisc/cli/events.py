"""``dyndisc events``: what happened to the fleet, as the UI's timeline shows it.

A running ``dyndisc ui`` keeps the history (``/api/events``): ``events --since 10m`` prints it, ``-f`` goes
on with what happens next, and ``--token`` (or ``DYNDISC_UI_TOKEN``) is its bearer token. Without a UI
answering (at ``--ui``, ``DYNDISC_UI_URL``, or ``dyndisc ui``'s default address) there is no history: it
says so and follows a fresh watch of the backend instead, printing the same records from now on.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click
from click.core import ParameterSource

from dyndisc._events import DiscoveryEvent
from dyndisc._models import EndpointId, InstanceQuery
from dyndisc.cli.app import Settings, backend_options, main, run, settings
from dyndisc.cli.history import Record, Timeline, record_line
from dyndisc.cli.inputs import parse_duration, parse_query
from dyndisc.cli.output import Style, dumps, local_stamp
from dyndisc.cli.watching import Status, follow_query

#: Where ``dyndisc ui`` listens unless told otherwise.
DEFAULT_UI = "http://127.0.0.1:8080/"
#: How long the UI may take to answer.
UI_ANSWERS_WITHIN = 3.0
#: How often ``-f`` asks the UI for what is new.
FOLLOW_EVERY = 1.0


class NoUi(Exception):
    """Nothing that is a dyndisc UI answers there."""


def _ask(url: str, token: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """``/api/events`` of the UI at ``url``."""
    address = urllib.parse.urljoin(url if url.endswith("/") else url + "/", "api/events")
    request = urllib.request.Request(f"{address}?{urllib.parse.urlencode(params)}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=UI_ANSWERS_WITHIN) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise click.ClickException(
                f"the dyndisc ui at {url} needs its token: pass --token or set DYNDISC_UI_TOKEN"
            ) from None
        raise NoUi(f"it answers HTTP {exc.code} to /api/events: not a dyndisc ui") from None
    except (urllib.error.URLError, OSError) as exc:
        raise NoUi(str(getattr(exc, "reason", exc))) from None
    except ValueError:
        raise NoUi("it answers, but not with a dyndisc ui's JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("records"), list):
        raise NoUi("it answers, but not with a dyndisc ui's JSON")
    return body


def _shown(record: Record, query: InstanceQuery) -> bool:
    endpoint = record.get("endpoint")
    return endpoint is None or query.matches(EndpointId.parse(endpoint))


def _print(record: Record, as_json: bool, style: Style) -> None:
    if as_json:
        click.echo(dumps(record))
    else:
        click.echo(record_line(record, style.dim(local_stamp(record["ts"]))))


def _from_ui(
    url: str, token: str | None, page: dict[str, Any], query: InstanceQuery, follow: bool, as_json: bool
) -> None:
    style = settings().style
    records = [r for r in page["records"] if _shown(r, query)]
    for record in records:
        _print(record, as_json, style)
    if page["records"] and page["records"][0]["seq"] == page["first_seq"] > 1:
        kept = page.get("capacity")
        click.echo(f"(earlier events are gone: the ui keeps its last {kept})", err=True)
    said = f"{len(records)} event(s) from the dyndisc ui at {url} (watching {page['query']})"
    click.echo(style.dim(said), err=True)
    after = page["next_seq"] - 1
    while follow:
        time.sleep(FOLLOW_EVERY)
        try:
            page = _ask(url, token, {"after": after})
        except NoUi as exc:
            raise click.ClickException(f"the dyndisc ui at {url} stopped answering ({exc})") from None
        for record in page["records"]:
            if _shown(record, query):
                _print(record, as_json, style)
        after = page["next_seq"] - 1


def _from_watch(query: InstanceQuery, config: Settings, as_json: bool) -> None:
    async def follow() -> None:
        async with config.backend_open() as opened:
            timeline = Timeline(query)

            def on_event(event: DiscoveryEvent) -> None:
                for record in timeline.apply(event):
                    _print(record, as_json, config.style)

            def on_status(status: Status) -> None:
                record = (
                    timeline.stale(status.since, status.cause)
                    if status.stale
                    else timeline.resumed(status.lasted or 0.0)
                )
                _print(record, as_json, config.style)

            await follow_query(opened, query, on_event, on_status)

    run(follow)


@main.command()
@click.argument("path", required=False)
@click.option("--since", default="1h", show_default=True, help="How far back: 90s, 10m, 2h, 1d.")
@click.option("-f", "--follow", is_flag=True, help="Go on printing what happens next (Ctrl-C to stop).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.option(
    "--ui",
    "ui_url",
    envvar="DYNDISC_UI_URL",
    default=None,
    help=f"The dyndisc ui to ask (env DYNDISC_UI_URL; default {DEFAULT_UI}).",
)
@click.option("--token", envvar="DYNDISC_UI_TOKEN", default=None, help="Its token (env DYNDISC_UI_TOKEN).")
@backend_options
def events(
    path: str | None,
    since: str,
    follow: bool,
    as_json: bool,
    ui_url: str | None,
    token: str | None,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """What happened under PATH: joins, leaves and why, readiness changes, replaced leases, stale periods.

    From a running dyndisc ui's history; without one, from a fresh watch of the backend (from now on, until
    Ctrl-C). The backend options matter only then.
    """
    query = parse_query(path)
    window = parse_duration(since)
    config = settings()
    config.override(backend, endpoints, wait)
    url = ui_url or DEFAULT_UI
    # Named on the command line, a UI must answer; the default (or DYNDISC_UI_URL) is a place to look.
    required = click.get_current_context().get_parameter_source("ui_url") is ParameterSource.COMMANDLINE
    try:
        page = _ask(url, token, {"since": window})
    except NoUi as exc:
        if required:
            raise click.ClickException(
                f"no dyndisc ui answers at {url} ({exc}): start one with 'dyndisc ui', or leave out --ui to "
                "follow a fresh watch instead"
            ) from None
        click.echo(
            f"no dyndisc ui at {url} ({exc}), so no history: following a fresh watch from now on "
            "(Ctrl-C to stop; 'dyndisc ui' keeps the history)",
            err=True,
        )
        _from_watch(query, config, as_json)
        return
    _from_ui(url, token, page, query, follow, as_json)


__all__ = ["events"]
