"""The calls a worker's application makes, one per action of the plan, through dyndisc's public API:
``endpoint.register`` (with a plain transport or a ``DynamoTcp``, ready or draining), ``unregister``, a bulk
registration of thousands of endpoints, ``runtime.bucket(...).put`` / ``delete`` (bound to the lease or
not), ``register_model`` / ``unregister_model``, ``register_event_channel`` / ``unregister_event_channel``.

:func:`recorded_args` is what the history keeps of each call: the plan's arguments with the names the
oracle needs made whole (the run's namespace, the entry's full key, the channel's publisher id).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from dyndisc._cards import EventChannel, model_card
from dyndisc._dynamo import DynamoTcp
from dyndisc._models import Readiness
from dyndisc.runtime import DistributedRuntime
from dyndisc.testing.chaos.history import record_of
from dyndisc.testing.chaos.oracle import bulk_endpoints
from dyndisc.testing.chaos.raw import CHAOS_BUCKET, publisher_id

#: Registrations of one bulk call under way at once (as an application would bound them).
BULK_CONCURRENCY = 32
#: Where a worker's event channels say they publish.
CHANNEL_HOST = "10.2.0.1"

Call = Callable[[DistributedRuntime, dict[str, Any]], Awaitable[Any]]


def recorded_args(action: str, args: dict[str, Any], namespace: str, worker: str) -> dict[str, Any]:
    """The arguments of ``action`` as the history keeps them."""
    args = dict(args)
    if "endpoint" in args:
        args["endpoint"] = f"{namespace}.{args['endpoint']}"
    if action == "bulk":
        args["prefix"] = f"{namespace}.{args.pop('component')}"
    elif action in ("put_entry", "delete_entry"):
        args["bucket"], args["key"] = CHAOS_BUCKET, f"{namespace}/{worker}/{args['key']}"
    elif action == "register_model":
        args["card"] = model_card(args.pop("model"))
    elif action in ("register_channel", "unregister_channel"):
        topic = args["topic"]
        args["topic"], args["publisher_id"] = f"t{topic}", publisher_id(worker, topic)
        if "port" in args:
            args["transport"] = {
                "kind": "Zmq",
                "config": {"endpoint": f"tcp://{CHANNEL_HOST}:{args.pop('port')}"},
            }
    return args


def transport(given: Any) -> Any:
    """A plan's transport as ``register`` takes it: ``{"dynamo_tcp": [host, port]}`` is a ``DynamoTcp``."""
    if isinstance(given, dict):
        host, port = given["dynamo_tcp"]
        return DynamoTcp(host, port)
    return given


async def register(runtime: DistributedRuntime, args: dict[str, Any]) -> Any:
    found = await runtime.endpoint(args["endpoint"]).register(
        transport(args["transport"]), args["metadata"], readiness=Readiness(args.get("readiness", "ready"))
    )
    return list(record_of(found))


async def unregister(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    await runtime.endpoint(args["endpoint"]).unregister()


async def bulk(runtime: DistributedRuntime, args: dict[str, Any]) -> dict[str, Any]:
    """Register every endpoint of a bulk call, :data:`BULK_CONCURRENCY` at a time; one that fails does not
    stop the others (as an application's would not). Returns the numbers (``<prefix>.e<n>``) of those that
    failed, whose outcome is unknown: the others are registered."""
    pending = iter(enumerate(bulk_endpoints(args)))
    failed: list[int] = []

    async def one_by_one() -> None:
        for number, endpoint in pending:
            try:
                await runtime.endpoint(endpoint).register(transport(args["transport"]), args["metadata"])
            except Exception:
                failed.append(number)

    async with anyio.create_task_group() as tg:
        for _ in range(BULK_CONCURRENCY):
            tg.start_soon(one_by_one)
    return {"failed": sorted(failed)}


async def put_entry(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    await runtime.bucket(args["bucket"]).put(args["key"], args["value"], lease=bool(args["bound"]))


async def delete_entry(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    await runtime.bucket(args["bucket"]).delete(args["key"])


async def register_model(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    await runtime.endpoint(args["endpoint"]).register_model(args["card"], lora=args.get("lora"))


async def unregister_model(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    await runtime.endpoint(args["endpoint"]).unregister_model(lora=args.get("lora"))


async def register_channel(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    endpoint = runtime.endpoint(args["endpoint"])
    await endpoint.register_event_channel(args["topic"], args["transport"], publisher_id=args["publisher_id"])


async def unregister_channel(runtime: DistributedRuntime, args: dict[str, Any]) -> None:
    namespace, component, name = args["endpoint"].split(".")
    channel = EventChannel(namespace, component, name, args["topic"], args["publisher_id"], {})
    await runtime.endpoint(args["endpoint"]).unregister_event_channel(channel)


CALLS: dict[str, Call] = {
    "register": register,
    "unregister": unregister,
    "bulk": bulk,
    "put_entry": put_entry,
    "delete_entry": delete_entry,
    "register_model": register_model,
    "unregister_model": unregister_model,
    "register_channel": register_channel,
    "unregister_channel": unregister_channel,
}
