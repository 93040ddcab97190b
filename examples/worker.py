"""A worker: register an endpoint under the process lease, serve until SIGTERM/SIGINT,
leave cleanly.

DYN_DISCOVERY_BACKEND=file python examples/worker.py  # or etcd (default), nats...
"""

import signal
import sys

import anyio

from dyndisc import DistributedRuntime


async def serve(runtime: DistributedRuntime, port: int = 9000) -> None:
    endpoint = runtime.endpoint("dynamo.backend.generate")
    transport, metadata = f"tcp://127.0.0.1:{port}", {"model": "llama-3-8b"}
    instance = await endpoint.register(transport, metadata)
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
    try:
        anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C before it registered (waiting for etcd, say)
        print("interrupted before registering: nothing to leave", file=sys.stderr)
        sys.exit(130)
