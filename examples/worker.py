"""A worker: register an endpoint under the process lease, serve until SIGTERM/SIGINT,
leave cleanly.

# or etcd (default), nats, kubernetes
DYN_DISCOVERY_BACKEND=file python examples/worker.py
"""

import signal

import anyio

from dyndisc import DistributedRuntime


async def serve(runtime: DistributedRuntime, port: int = 9000) -> None:
    endpoint = runtime.endpoint("dynamo.backend.generate")
    instance = await endpoint.register(
        f"tcp://127.0.0.1:{port}", {"model": "llama-3-8b"}
    )
    print(f"registered {instance}", flush=True)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            break
    await endpoint.unregister()  # leave routing first, then drain and exit
    print("unregistered", flush=True)


async def main() -> None:
    async with DistributedRuntime.from_env() as runtime:
        await serve(runtime)


if __name__ == "__main__":
    anyio.run(main)
