"""The metadata store on the command line: ``dyndisc models``, ``dyndisc channels`` and ``dyndisc entries``.

Model deployment cards (``v1/mdc``) and event channels (``v1/event_channels``) are read as the reference
runtime reads them; ``entries`` shows any bucket as it is stored. Each lists (a table, or ``--json``: one
object per line), follows (``--watch``), and ``entries`` also gets one entry (``--get``). Ids are hex, as
everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from dyndisc._cards import EventChannel, ModelCard
from dyndisc._dynamo import EVENT_CHANNELS_BUCKET, MODEL_CARDS_BUCKET
from dyndisc._entries import EntryAdded, EntryEvent, EntryResync, MetadataEntry, validate_bucket
from dyndisc._errors import DyndiscError
from dyndisc._models import InstanceQuery
from dyndisc.cli.app import Settings, backend_options, main, run, settings
from dyndisc.cli.inputs import parse_query
from dyndisc.cli.output import (
    card_json,
    channel_address,
    channel_json,
    channel_scope,
    dumps,
    entry_event_json,
    entry_json,
    local_stamp,
    table,
)

#: How much of a value the entries table shows (``--json`` or ``--get`` show it all).
VALUE_SHOWN = 60

Row = list[str]


def _no_entries(backend: str, exc: NotImplementedError) -> click.ClickException:
    return click.ClickException(str(exc) or f"the {backend} backend does not store metadata entries")


def _card(entry: MetadataEntry) -> ModelCard | None:
    try:
        return ModelCard.from_entry(entry)
    except DyndiscError:
        return None  # not a card the reference would read: skipped, as it skips it


def _channel(entry: MetadataEntry) -> EventChannel | None:
    try:
        return EventChannel.from_entry(entry)
    except DyndiscError:
        return None


def _in(query: InstanceQuery, namespace: str, component: str | None, endpoint: str | None) -> bool:
    wanted = (query.namespace, query.component, query.endpoint)
    return all(w is None or w == got for w, got in zip(wanted, (namespace, component, endpoint), strict=True))


class Kind:
    """How one command reads a bucket: its rows, its JSON, and which entries it shows."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        headers: tuple[str, ...],
        row: Callable[[MetadataEntry], Row | None],
        as_json: Callable[[MetadataEntry], dict[str, Any] | None],
        noun: tuple[str, str],
    ) -> None:
        self.bucket, self.prefix, self.headers, self.row, self.as_json, self.noun = (
            bucket,
            prefix,
            headers,
            row,
            as_json,
            noun,
        )


def _models(query: InstanceQuery) -> Kind:
    def row(entry: MetadataEntry) -> Row | None:
        card = _card(entry)
        if card is None or not _in(query, card.namespace, card.component, card.endpoint):
            return None
        body = card.card
        shown = [card.display_name or card.slug, card.lora, body.get("model_type"), body.get("model_input")]
        return [str(card.endpoint_id), f"{card.instance_id:x}", *(str(v) if v else "-" for v in shown)]

    def as_json(entry: MetadataEntry) -> dict[str, Any] | None:
        card = _card(entry)
        return card_json(card) if card is not None and row(entry) is not None else None

    prefix = "".join(f"{part}/" for part in query.parts)
    headers = ("ENDPOINT", "ID", "MODEL", "LORA", "TYPE", "INPUT")
    return Kind(MODEL_CARDS_BUCKET, prefix, headers, row, as_json, ("model card", "model cards"))


def _channels(query: InstanceQuery) -> Kind:
    def row(entry: MetadataEntry) -> Row | None:
        channel = _channel(entry)
        if channel is None or not _in(query, channel.namespace, channel.component, channel.endpoint):
            return None
        return [channel.topic, channel_scope(channel), f"{channel.publisher_id:x}", channel_address(channel)]

    def as_json(entry: MetadataEntry) -> dict[str, Any] | None:
        channel = _channel(entry)
        return channel_json(channel) if channel is not None and row(entry) is not None else None

    prefix = f"namespace/{query.namespace}/" if query.namespace else ""
    headers = ("TOPIC", "SCOPE", "PUBLISHER", "ADDRESS")
    return Kind(EVENT_CHANNELS_BUCKET, prefix, headers, row, as_json, ("event channel", "event channels"))


def _entries(bucket: str, prefix: str) -> Kind:
    def row(entry: MetadataEntry) -> Row:
        value = dumps(entry.value)
        shown = value if len(value) <= VALUE_SHOWN else value[: VALUE_SHOWN - 3] + "..."
        return [entry.key, f"{len(entry.to_json())}", shown]

    return Kind(bucket, prefix, ("KEY", "BYTES", "VALUE"), row, entry_json, ("entry", "entries"))


def _count(n: int, noun: tuple[str, str]) -> str:
    return noun[0] if n == 1 else noun[1]


def _list(kind: Kind, as_json: bool, config: Settings) -> None:
    async def fetch() -> list[MetadataEntry]:
        async with config.backend_open() as opened:
            try:
                return await opened.list_entries(kind.bucket, kind.prefix)
            except NotImplementedError as exc:
                raise _no_entries(opened.name, exc) from None

    found = run(fetch)
    if as_json:
        for entry in found:
            shaped = kind.as_json(entry)
            if shaped is not None:
                click.echo(dumps(shaped))
        return
    rows = [r for r in map(kind.row, found) if r is not None]
    if rows:
        click.echo(table(kind.headers, rows, config.style))
    where = f"{kind.bucket}/{kind.prefix}" if kind.prefix else kind.bucket
    skipped = len(found) - len(rows)
    unread = f" ({skipped} other {_count(skipped, ('entry', 'entries'))} there not shown)" if skipped else ""
    click.echo(config.style.dim(f"{len(rows)} {_count(len(rows), kind.noun)} in {where}{unread}"), err=True)


def _watch(kind: Kind, as_json: bool, config: Settings) -> None:
    style = config.style

    def line(event: EntryEvent) -> str | None:
        stamp = style.dim(local_stamp())
        if as_json:
            return dumps(entry_event_json(event))
        if isinstance(event, EntryResync):
            rows = [r for r in map(kind.row, event.entries) if r is not None]
            lines = [f"{stamp} = {len(rows)} {_count(len(rows), kind.noun)} in {kind.bucket}"]
            if rows:
                lines += [f"{stamp}   {t}" for t in table(kind.headers, rows, style).splitlines()[1:]]
            return "\n".join(lines)
        if isinstance(event, EntryAdded):
            row = kind.row(event.entry)
            return None if row is None else f"{stamp} {style.paint('+', fg='green')} {'  '.join(row)}"
        return f"{stamp} {style.paint('-', fg='red')} {event.key}"

    async def follow() -> None:
        async with config.backend_open() as opened:
            try:
                watching = opened.watch_entries(kind.bucket, kind.prefix)
            except NotImplementedError as exc:
                raise _no_entries(opened.name, exc) from None
            async with watching as events:
                async for event in events:
                    said = line(event)
                    if said is not None:
                        click.echo(said)

    run(follow)


@main.command()
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per card, one per line.")
@click.option("--watch", "follow", is_flag=True, help="Follow the cards as they change (Ctrl-C to stop).")
@backend_options
def models(
    path: str | None,
    as_json: bool,
    follow: bool,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """The model deployment cards of PATH's endpoints (ns, ns.comp or ns.comp.ep; all by default)."""
    query = parse_query(path)
    config = settings()
    config.override(backend, endpoints, wait)
    (_watch if follow else _list)(_models(query), as_json, config)


@main.command()
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per channel, one per line.")
@click.option("--watch", "follow", is_flag=True, help="Follow the channels as they change (Ctrl-C to stop).")
@backend_options
def channels(
    path: str | None,
    as_json: bool,
    follow: bool,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """The event channels published under PATH (ns, ns.comp or ns.comp.ep; all by default)."""
    query = parse_query(path)
    config = settings()
    config.override(backend, endpoints, wait)
    (_watch if follow else _list)(_channels(query), as_json, config)


@main.command()
@click.argument("bucket")
@click.argument("prefix", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry, one per line.")
@click.option("--get", "get_one", is_flag=True, help="PREFIX is one entry's key: print it whole, as JSON.")
@click.option("--watch", "follow", is_flag=True, help="Follow the entries as they change (Ctrl-C to stop).")
@backend_options
def entries(
    bucket: str,
    prefix: str,
    as_json: bool,
    get_one: bool,
    follow: bool,
    backend: str | None,
    endpoints: str | None,
    wait: float | None,
) -> None:
    """The entries of BUCKET (such as v1/mdc) whose keys start with PREFIX, as they are stored."""
    try:
        validate_bucket(bucket)
    except DyndiscError as exc:
        raise click.BadParameter(str(exc), param_hint="BUCKET") from None
    if get_one and follow:
        raise click.UsageError("--get and --watch do not go together")
    if get_one and not prefix:
        raise click.UsageError("--get needs the entry's key: dyndisc entries BUCKET KEY --get")
    config = settings()
    config.override(backend, endpoints, wait)
    if get_one:
        _get(bucket, prefix, config)
    else:
        (_watch if follow else _list)(_entries(bucket, prefix), as_json, config)


def _get(bucket: str, key: str, config: Settings) -> None:
    async def fetch() -> list[MetadataEntry]:
        async with config.backend_open() as opened:
            try:
                return await opened.list_entries(bucket, key)
            except NotImplementedError as exc:
                raise _no_entries(opened.name, exc) from None

    found = {e.key: e for e in run(fetch)}
    if key not in found:
        near = ", ".join(sorted(found)[:5]) or "none"
        raise click.ClickException(f"no entry {key!r} in {bucket} (keys starting so: {near})")
    click.echo(dumps(entry_json(found[key]), pretty=True))


__all__ = ["channels", "entries", "models"]
