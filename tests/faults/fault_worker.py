"""A worker process for the fault suite, on whatever backend the environment names.

``python fault_worker.py NAMESPACE COUNT`` runs ``DistributedRuntime.from_env()`` (``DYN_DISCOVERY_BACKEND``,
``DYN_LEASE_TTL`` and the backend's own variables), registers ``COUNT`` endpoints ``NAMESPACE.worker.e<n>``,
prints ``{"instance_id": ...}`` as one JSON line, then runs until SIGTERM/SIGINT (or a SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import anyio

from dyndisc import DistributedRuntime


async def main(namespace: str, count: int) -> None:
    async with DistributedRuntime.from_env() as runtime:
        for n in range(count):
            await runtime.endpoint(f"{namespace}.worker.e{n}").register(
                "tcp://127.0.0.1:9000", {"pid": os.getpid()}
            )
        print(json.dumps({"instance_id": runtime.instance_id}), flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
