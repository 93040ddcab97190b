"""A worker process for the failure-detection case: ``python -m benchmarks.worker NS.COMP.EP TTL``.

It configures its runtime from the environment (``DYN_DISCOVERY_BACKEND`` and the backend's variables),
registers one endpoint, prints ``ready <instance id in hex>`` and then waits to be killed.
"""

from __future__ import annotations

import sys

import anyio

from dyndisc import DistributedRuntime


async def main(path: str, ttl: float) -> None:
    async with DistributedRuntime.from_env(lease_ttl=ttl) as runtime:
        instance = await runtime.endpoint(path).register("tcp://127.0.0.1:1")
        print(f"ready {instance.instance_id:x}", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], float(sys.argv[2]))
