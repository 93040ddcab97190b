"""A frontend: watch a worker endpoint, wait for instances, route requests round-robin.

DYN_DISCOVERY_BACKEND=file python examples/frontend.py
"""

import anyio

from dyndisc import DistributedRuntime


async def route(runtime: DistributedRuntime, requests: int = 5) -> list[int]:
    client = await runtime.endpoint("dynamo.backend.generate").client()
    await client.wait_for_instances(timeout=30)
    chosen = []
    for n in range(requests):
        # Or client.random(), or client.direct(instance_id).
        instance = client.round_robin()
        print(f"request {n} -> {instance.instance_id:x} at {instance.transport}")
        chosen.append(instance.instance_id)
    return chosen


async def main() -> None:
    async with DistributedRuntime.from_env() as runtime:
        await route(runtime)


if __name__ == "__main__":
    anyio.run(main)
