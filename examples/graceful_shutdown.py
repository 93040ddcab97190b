"""Graceful shutdown on SIGTERM: leave routing first, drain in-flight work, then exit.

# or etcd, nats, kubernetes
DYN_DISCOVERY_BACKEND=file python examples/graceful_shutdown.py

The worker serves requests over TCP (a request is a number of seconds of "work"). On
SIGTERM (what Kubernetes sends before killing a pod) it:

1. unregisters its endpoint, so every router stops picking it at once (no new requests
   arrive);
2. drains: waits for the requests already in flight, up to ``DRAIN_TIMEOUT`` seconds;
3. leaves the runtime, which revokes the lease.

Set the pod's ``terminationGracePeriodSeconds`` above ``DRAIN_TIMEOUT``.
"""

import signal

import anyio
from anyio.abc import SocketStream

from dyndisc import DistributedRuntime

DRAIN_TIMEOUT = 30.0


class InFlight:
    """Counts requests being served, and lets shutdown wait until there are none."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = anyio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle = anyio.Event()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def main() -> None:
    in_flight = InFlight()

    async def handle(stream: SocketStream) -> None:
        with in_flight:  # counted from the moment the connection is accepted
            async with stream:
                seconds = float((await stream.receive()).decode())
                print(f"working for {seconds}s", flush=True)
                await anyio.sleep(seconds)  # the work
                await stream.send(f"done after {seconds}s".encode())

    async with DistributedRuntime.from_env() as runtime:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, handle)
            endpoint = runtime.endpoint("dynamo.backend.generate")
            instance = await endpoint.register(f"tcp://127.0.0.1:{port}")
            print(f"registered {instance}", flush=True)

            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    print(f"got {signal.Signals(signum).name}", flush=True)
                    break

            await endpoint.unregister()  # 1. no router picks this worker any more
            print("unregistered", flush=True)
            waiting = in_flight.count
            with anyio.move_on_after(
                DRAIN_TIMEOUT
            ) as drain:  # 2. finish what was already accepted
                await in_flight.wait_idle()
            if drain.cancelled_caught:
                print(
                    f"drain timed out with {in_flight.count} request(s) in flight",
                    flush=True,
                )
            else:
                print(f"drained {waiting} in-flight request(s)", flush=True)
            server.cancel_scope.cancel()
    print(
        "lease revoked; exiting", flush=True
    )  # 3. leaving the runtime revoked the lease


if __name__ == "__main__":
    anyio.run(main)
