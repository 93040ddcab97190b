"""A dyndisc worker process for the interop tests: the other side of a reference client or frontend.

Runs with dyndisc's python. The backend comes from the environment (``DYN_DISCOVERY_BACKEND``, with
``DYN_KV_LAYOUT=dynamo-v1`` for etcd and files; ``ETCD_ENDPOINTS``, ``DYN_FILE_KV``, ``KUBECONFIG`` +
``POD_*``). Prints JSON lines on stdout, ``"event"`` first:

- ``registered``: the stored instance (``instance_id``, ``transport``, ``device_type``, ...);
- ``model``: the card registered with ``--model NAME`` (its ``key``);
- ``draining`` / ``ready`` after SIGUSR1 / SIGUSR2 (the instance registered again with that readiness);
- ``stopped`` after SIGTERM, once the runtime has left (its lease revoked).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import anyio

from dyndisc import DistributedRuntime, DynamoTcp, Readiness, model_card


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.time(), **fields}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", default="ns.comp.ep")
    p.add_argument("--tcp", default="127.0.0.1:9", help="host:port of the DynamoTcp transport")
    p.add_argument("--device-type")
    p.add_argument("--codec")
    p.add_argument("--model", help="also register model_card(MODEL) on the endpoint")
    p.add_argument("--lease-ttl", type=float, default=3.0)
    args = p.parse_args()
    host, _, port = args.tcp.rpartition(":")

    async with DistributedRuntime.from_env(lease_ttl=args.lease_ttl) as runtime:
        endpoint = runtime.endpoint(args.endpoint)

        async def register(readiness: Readiness) -> dict[str, Any]:
            instance = await endpoint.register(
                DynamoTcp(host, int(port)),
                readiness=readiness,
                device_type=args.device_type,
                request_plane_codec=args.codec,
            )
            return instance.to_dict()

        emit("registered", **await register(Readiness.READY))
        if args.model:
            card = await endpoint.register_model(model_card(args.model))
            emit("model", key=card.key, name=card.display_name)
        with anyio.open_signal_receiver(
            signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2
        ) as sigs:
            async for sig in sigs:
                if sig == signal.SIGUSR1:
                    emit("draining", **await register(Readiness.DRAINING))
                elif sig == signal.SIGUSR2:
                    emit("ready", **await register(Readiness.READY))
                else:
                    break
    emit("stopped")


if __name__ == "__main__":
    anyio.run(main)
