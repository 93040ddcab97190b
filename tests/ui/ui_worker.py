"""A worker for the UI tests: registers ``ENDPOINT`` at ``TRANSPORT`` (and the model card ``MODEL`` and the
event channel ``TOPIC`` if given; ``-`` for none), prints ``registered <id>`` (and ``replaced <id>`` each time
its lease is replaced), turns draining on SIGUSR1 and leaves cleanly on SIGTERM (SIGKILL it for a crash)."""

from __future__ import annotations

import signal
import sys

import anyio

from dyndisc import DistributedRuntime, LeaseChange, Readiness, model_card


def replaced(change: LeaseChange) -> None:
    print(f"replaced {change.new_instance_id:x}", flush=True)


async def main(endpoint: str, transport: str, model: str | None, topic: str | None) -> None:
    async with DistributedRuntime.from_env(on_lease_change=replaced) as runtime:
        handle = runtime.endpoint(endpoint)
        metadata = {"worker": transport.rsplit(":", 1)[0].rsplit(".", 1)[1]}
        await handle.register(transport, metadata)
        if model is not None:
            await handle.register_model(model_card(model))
        if topic is not None:
            where = {"kind": "Zmq", "config": {"endpoint": transport.replace(":9000", ":5557")}}
            await handle.register_event_channel(topic, where)
        print(f"registered {runtime.instance_id:x}", flush=True)
        with anyio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            async for received in signals:
                if received == signal.SIGTERM:
                    break
                await handle.register(transport, metadata, readiness=Readiness.DRAINING)
                print("draining", flush=True)


def given(n: int) -> str | None:
    return sys.argv[n] if len(sys.argv) > n and sys.argv[n] != "-" else None


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], given(3), given(4))
