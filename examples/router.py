"""A router: discover TCP workers and send each request to the next one, round-robin.

# in memory, workers and router in one process
python examples/router.py
# or etcd, nats: the same code on a shared backend
DYN_DISCOVERY_BACKEND=file python examples/router.py

Three workers each serve a TCP port and register it. The router keeps a live ``Client``
of the endpoint and sends each request to ``client.round_robin()``; when a worker
leaves, the next picks skip it at once.
"""

import os

import anyio
from anyio.abc import SocketStream, TaskGroup

from dyndisc import DistributedRuntime, Instance, Removed

ENDPOINT = "demo.echo.generate"


def backend() -> str:
    return os.environ.get("DYN_DISCOVERY_BACKEND", "memory")


async def run_worker(
    name: str, stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """A worker: answer each request line with ``"<name>: <line>"`` until ``stop``."""

    async def answer(stream: SocketStream) -> None:
        async with stream:
            request = (await stream.receive()).decode()
            await stream.send(f"{name}: {request}".encode())

    async with (
        DistributedRuntime(backend()) as runtime,
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(listener.serve, answer)
        endpoint = runtime.endpoint(ENDPOINT)
        await endpoint.register(f"tcp://127.0.0.1:{port}", {"name": name})
        task_status.started()
        await stop.wait()
        await endpoint.unregister()  # leave routing first ...
        tg.cancel_scope.cancel()  # ... then stop serving


async def send(instance: Instance, request: str) -> str:
    """Send one request to ``instance`` over TCP and return its answer."""
    if instance.transport is None or instance.transport.kind != "tcp":
        raise ValueError(f"{instance} has no tcp:// transport to send to")
    host, _, port = instance.transport.address.rpartition(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(request.encode())
        return (await stream.receive()).decode()


async def start_workers(tg: TaskGroup, names: list[str]) -> dict[str, anyio.Event]:
    stops = {name: anyio.Event() for name in names}
    for name in names:
        await tg.start(run_worker, name, stops[name])
    return stops


async def main() -> None:
    async with (
        DistributedRuntime(backend()) as runtime,
        anyio.create_task_group() as tg,
    ):
        stops = await start_workers(tg, ["worker-a", "worker-b", "worker-c"])
        client = await runtime.endpoint(ENDPOINT).client()
        await client.wait_for(
            3, timeout=30
        )  # all three (wait_for_instances waits for the first)

        for n in range(6):
            print(await send(client.round_robin(), f"request {n}"), flush=True)

        async with runtime.endpoint(ENDPOINT).watch() as events:
            stops["worker-b"].set()  # worker-b leaves; the router's watch sees it go
            with anyio.fail_after(30):
                async for event in events:
                    if isinstance(event, Removed):
                        break
        print(f"worker-b left; {len(client.instances())} workers remain", flush=True)
        for n in range(6, 10):
            print(await send(client.round_robin(), f"request {n}"), flush=True)

        for stop in stops.values():
            stop.set()


if __name__ == "__main__":
    anyio.run(main)
