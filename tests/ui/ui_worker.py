"""A worker for the UI tests: registers ``ENDPOINT`` at ``TRANSPORT`` (and the model card ``MODEL`` if
given), prints ``registered <id>``, turns draining on SIGUSR1 and leaves cleanly on SIGTERM (SIGKILL it for
a crash)."""

from __future__ import annotations

import signal
import sys

import anyio

from dyndisc import DistributedRuntime, Readiness, model_card


async def main(endpoint: str, transport: str, model: str | None) -> None:
    async with DistributedRuntime.from_env() as runtime:
        handle = runtime.endpoint(endpoint)
        metadata = {"worker": transport.rsplit(":", 1)[0].rsplit(".", 1)[1]}
        await handle.register(transport, metadata)
        if model is not None:
            await handle.register_model(model_card(model))
        print(f"registered {runtime.instance_id:x}", flush=True)
        with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            async for received in signals:
                if received == signal.SIGTERM:
                    break
                await handle.register(transport, metadata, readiness=Readiness.DRAINING)
                print("draining", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
