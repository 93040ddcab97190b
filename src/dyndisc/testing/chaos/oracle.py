"""The oracle: what the store must hold, worked out from the operation log alone (never from what dyndisc
reads back or says of itself), to hold the raw truth against.

The rules:

* an endpoint a runtime **registered and did not unregister** is in the store while the runtime is alive (not
  exited, killed or failed) and the **server holds its lease** (the raw lease list), under its current lease
  id (its last grant), with the record it last asked for: transport (a ``DynamoTcp`` rendered for that id),
  metadata and readiness;
* a **lease-bound entry** (``bucket.put``, a model card, an event channel) follows the same rule, its key and
  value rendered for the current lease where they carry the id (a model card); an **unbound** entry stays
  until deleted, whatever becomes of its writer;
* an operation whose outcome is **unknown** (cancelled, failed, or never answered) may have been applied or
  not: what it wrote may be there, and what it would have removed may still be there, under a lease the
  runtime held during the call (or anywhere, for an unbound entry), until a later call on the same thing
  completes or that lease ends;
* everything else of the workload's namespace is absent (but foreign writes, which the checker reads apart).

One application call at a time touches one thing (an endpoint, an entry): the workload never overlaps two
calls on the same thing, so their order is the order they started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dyndisc.testing.chaos.history import History, Operation, Record, canonical_json, canonical_record
from dyndisc.testing.chaos.raw import CHANNEL_BUCKET, MODEL_BUCKET
from dyndisc.testing.chaos.runtimes import Life

#: What may be at a key: each value it may hold, ``None`` for "absent".
Allowed = dict[str, set[str | None]]
Ident = tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """What the application asked for one thing: ``kind`` (``instance``, ``entry``, ``model``, ``channel``)
    and the call's arguments; rendered as a record for a lease by :meth:`render`."""

    kind: str
    args: dict[str, Any] = field(hash=False)
    bound: bool = True

    def render(self, lease: int) -> Record:
        """The key and value this thing has under ``lease`` (history keys: see :mod:`.history`)."""
        if self.kind == "instance":
            return render_instance(self.args, lease)
        if self.kind == "model":
            return render_model(self.args, lease)
        if self.kind == "channel":
            return render_channel(self.args)
        return f"{self.args['bucket']}/{self.args['key']}", canonical_json(self.args["value"])


@dataclass(frozen=True)
class Maybe:
    """What an operation of unknown outcome may have left: ``spec`` under one of ``leases`` (``None``: an
    unbound entry, under none)."""

    spec: Spec
    leases: frozenset[int] | None


@dataclass
class Slot:
    """What one runtime wants of one thing: ``definite`` (``None``: absent) and what may be there besides."""

    definite: Spec | None = None
    maybes: list[Maybe] = field(default_factory=list)


def render_instance(args: dict[str, Any], lease: int) -> Record:
    """An endpoint's record under ``lease``, as the application asked for it."""
    endpoint = args["endpoint"]
    namespace, component, name = endpoint.split(".")
    body: dict[str, Any] = {
        "namespace": namespace,
        "component": component,
        "endpoint": name,
        "instance_id": lease,
        "transport": transport_of(args.get("transport"), endpoint, lease),
        "metadata": args.get("metadata") or {},
        "readiness": args.get("readiness", "ready"),
    }
    return f"{endpoint}/{lease:x}", canonical_record(body)


def transport_of(given: Any, endpoint: str, lease: int) -> dict[str, str] | None:
    """A transport as the workload gives it (``"kind://address"``, ``{"dynamo_tcp": [host, port]}``, or
    nothing) as the record holds it; a ``DynamoTcp`` is the reference's
    ``host:port/<id>/<ns>/<comp>/<ep>``."""
    if given is None:
        return None
    if isinstance(given, dict):
        host, port = given["dynamo_tcp"]
        return {"tcp": f"{host}:{port}/{lease:x}/{endpoint.replace('.', '/')}"}
    kind, _, address = str(given).partition("://")
    return {kind: address}


def render_model(args: dict[str, Any], lease: int) -> Record:
    """A model card (the reference's shape and key) under ``lease``."""
    namespace, component, name = args["endpoint"].split(".")
    lora = args.get("lora")
    body: dict[str, Any] = {
        "type": "Model",
        "namespace": namespace,
        "component": component,
        "endpoint": name,
        "instance_id": lease,
        "card_json": args["card"],
    }
    if lora is not None:
        body["model_suffix"] = lora
    key = f"{namespace}/{component}/{name}/{lease:x}" + (f"/{lora}" if lora is not None else "")
    return f"{MODEL_BUCKET}/{key}", canonical_json(body)


def channel_key(args: dict[str, Any]) -> str:
    """An event channel's key in its bucket (the reference's): scope, topic, publisher id."""
    namespace, component, name = args["endpoint"].split(".")
    return (
        f"namespace/{namespace}/component/{component}/endpoint/{name}/topic/{args['topic']}/"
        f"{args['publisher_id']:x}"
    )


def render_channel(args: dict[str, Any]) -> Record:
    """An event channel of one endpoint (the reference's shape)."""
    namespace, component, name = args["endpoint"].split(".")
    body = {
        "type": "EventChannel",
        "scope": {
            "kind": "endpoint",
            "endpoint": {"namespace": namespace, "component": component, "name": name},
        },
        "topic": args["topic"],
        "instance_id": args["publisher_id"],
        "transport": args["transport"],
    }
    return f"{CHANNEL_BUCKET}/{channel_key(args)}", canonical_json(body)


def calls(op: Operation) -> list[tuple[Ident, Spec | None]]:
    """What ``op`` asked, thing by thing: a spec to have, or ``None`` to remove (empty: not the
    application's call)."""
    args, action = op.args, op.action
    if action == "register":
        return [(("i", args["endpoint"]), Spec("instance", args))]
    if action == "bulk":
        return [
            (("i", endpoint), Spec("instance", {**args, "endpoint": endpoint}))
            for endpoint in bulk_endpoints(args)
        ]
    if action == "unregister":
        return [(("i", args["endpoint"]), None)]
    if action == "put_entry":
        return [(("e", args["bucket"], args["key"]), Spec("entry", args, bound=bool(args["bound"])))]
    if action == "delete_entry":
        return [(("e", args["bucket"], args["key"]), None)]
    if action == "register_model":
        return [(("m", args["endpoint"], str(args.get("lora"))), Spec("model", args))]
    if action == "unregister_model":
        return [(("m", args["endpoint"], str(args.get("lora"))), None)]
    if action == "register_channel":
        return [(("e", CHANNEL_BUCKET, channel_key(args)), Spec("channel", args))]
    if action == "unregister_channel":
        return [(("e", CHANNEL_BUCKET, channel_key(args)), None)]
    return []


def bulk_endpoints(args: dict[str, Any]) -> list[str]:
    """The endpoints one bulk registration registers: ``<prefix>.e<n>``."""
    return [f"{args['prefix']}.e{n}" for n in range(args["count"])]


def slots(history: History, life: Life, until: float | None = None) -> dict[Ident, Slot]:
    """What ``life``'s application wanted of each thing, from its calls that started before ``until``."""
    found: dict[Ident, Slot] = {}
    for op in history.operations:
        if op.actor != life.name or (until is not None and op.start >= until):
            continue
        failed = set(op.result["failed"]) if op.action == "bulk" and op.ok else set()
        for number, (ident, spec) in enumerate(calls(op)):
            slot = found.setdefault(ident, Slot())
            if op.ok and number not in failed:  # a bulk call says which of its registrations failed
                slot.definite, slot.maybes = spec, []
                continue
            during = frozenset(life.leases_during(op.start, op.end))
            old = slot.definite
            removes = spec is None or not spec.bound
            if spec is not None:
                slot.maybes.append(Maybe(spec, None if not spec.bound else during))
            if removes:
                # Dyndisc no longer wants it from the call on (a replacement will not write it again), but
                # what was written may still be there.
                if old is not None:
                    slot.maybes.append(Maybe(old, None if not old.bound else during))
                slot.definite = None
    return found


def expected(history: History, lives: dict[str, Life], held: set[int] | None) -> tuple[Allowed, Allowed]:
    """What the store may hold at the quiet point: ``(instances, entries)``, each key with the values it may
    hold. ``held`` is the server's lease list (``None``: every live runtime's lease counts as held)."""
    instances: Allowed = {}
    entries: Allowed = {}
    for life in lives.values():
        lease = life.lease
        live = life.alive and lease is not None and (held is None or lease in held)
        for ident, slot in slots(history, life).items():
            target = instances if ident[0] == "i" else entries
            options: list[Record | None] = [_place(slot.definite, lease if live else None)]
            options += [
                _place(m.spec, lease if live and (m.leases is None or lease in m.leases) else None)
                for m in slot.maybes
            ]
            placed = [o for o in options if o is not None]
            for key in {k for k, _ in placed}:
                allowed = target.setdefault(key, set())
                allowed.update(v for k, v in placed if k == key)
                if any(o is None or o[0] != key for o in options):
                    allowed.add(None)
    return instances, entries


def _place(spec: Spec | None, lease: int | None) -> Record | None:
    """Where ``spec`` is, under ``lease`` (``None``: no lease is held, so only an unbound entry is)."""
    if spec is None:
        return None
    if not spec.bound:
        return spec.render(0)
    return spec.render(lease) if lease is not None else None


def may_stay(history: History, life: Life, at: float) -> set[str]:
    """The entries of ``life`` a clean exit at ``at`` may leave behind: those written (or maybe written)
    unbound."""
    kept: set[str] = set()
    for slot in slots(history, life, until=at).values():
        specs = ([slot.definite] if slot.definite is not None else []) + [m.spec for m in slot.maybes]
        kept.update(spec.render(0)[0] for spec in specs if not spec.bound)
    return kept
