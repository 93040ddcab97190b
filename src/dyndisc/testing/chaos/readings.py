"""The store read raw where the checker judges it, for the simulation and the real runs alike (each gives
its own raw reader): at the quiet point (the truth, and beside it what dyndisc's own ``list()`` and a
dyndisc watch started then say), and when a runtime's clean exit or unregistration returns (a probe)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from dyndisc._models import InstanceQuery
from dyndisc.backends.base import DiscoveryBackend
from dyndisc.testing.chaos.history import History, Probe, endpoint_of_key, first_view, lease_of_key, record_of
from dyndisc.testing.chaos.raw import RawLayout, RawTruth, owned_entries

#: Reads the live keys under some prefixes, raw, as records (:mod:`~.raw`).
ReadRaw = Callable[[list[str]], Awaitable[RawTruth]]


async def read_quiet_point(
    history: History,
    read: ReadRaw,
    layout: RawLayout,
    namespace: str,
    dyndisc: DiscoveryBackend,
    at: float,
    wait: float,
) -> None:
    """Fill ``history``'s truth (read raw at ``at``), and what ``dyndisc`` lists and first shows a watch
    started then (waiting ``wait`` seconds at most for its first event)."""
    history.truth_at = at
    raw = await read(layout.prefixes(namespace))
    history.truth, history.truth_unreadable = raw.records(), raw.unreadable
    history.truth_entries, history.truth_leases = sorted(raw.entries.items()), sorted(raw.leases)
    history.truth_doubled = sorted(raw.doubled.items())
    query = InstanceQuery(namespace)
    history.listed = sorted(record_of(i) for i in await dyndisc.list(query))
    history.late_watch = [("(the watch sent nothing)", "")]
    async with dyndisc.watch(query) as events:
        with anyio.move_on_after(wait):
            history.late_watch = first_view(await anext(events))


async def probe(
    history: History,
    read: ReadRaw,
    layout: RawLayout,
    namespace: str,
    returned: tuple[str, str, dict[str, Any]],
    at: float,
) -> None:
    """Record what the store holds of a runtime whose call ``returned`` (``(actor, action, args)``: a clean
    exit, or an unregistration of ``args["endpoint"]``): its instances under any of its leases (of that
    endpoint), and the entries it wrote (for an exit)."""
    actor, action, args = returned
    leases = {
        op.result[0] for op in history.operations if op.actor == actor and op.action == "grant" and op.ok
    }
    endpoint = args.get("endpoint", "")
    raw = await read(layout.endpoint_prefixes(endpoint) if endpoint else layout.prefixes(namespace))
    instances = [
        k
        for k in raw.instances
        if lease_of_key(k) in leases and (not endpoint or endpoint_of_key(k) == endpoint)
    ]
    entries = owned_entries(raw.entries, namespace, actor, leases) if action == "exit" else []
    history.probes.append(Probe(at, actor, action, instances, entries, endpoint))
