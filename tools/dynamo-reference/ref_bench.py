"""The reference (NVIDIA Dynamo 1.6.1) side of ``benchmarks/reference.py``: the same two measurements as
dyndisc's side, taken inside the reference's own process.

Run with the reference venv's python (``install.sh`` prints it), etcd at ``ETCD_ENDPOINTS``::

    # time endpoint.client() until it lists COUNT instances (wall and CPU seconds)
    $REFPY tools/dynamo-reference/ref_bench.py sync --endpoint bench.c.e --count 10000
    # serve the endpoint; then, per stdin line "register" / "unregister", time that call
    $REFPY tools/dynamo-reference/ref_bench.py toggle --endpoint bench.w.e

Stdout, one JSON object per line: ``synced`` (``wall_s``, ``cpu_s``, ``instances``); ``serving``
(``instance_id``), then ``done`` per command (``op``, ``called`` and ``returned``, unix times).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from _common import apply_loopback_env, emit, hard_exit

#: How often the instance set is read while waiting for it to be complete (the reference has no wait call
#: for a count; 5 ms is well below what is measured).
POLL = 0.005


async def sync(endpoint: Any, count: int) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    client = await endpoint.client()
    while len(client.instance_ids()) < count:  # noqa: ASYNC110 - its client has no wait for a count
        await asyncio.sleep(POLL)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    emit("synced", wall_s=wall, cpu_s=cpu, instances=len(client.instance_ids()))


async def toggle(endpoint: Any) -> None:
    async def handler(request: Any, context: Any = None) -> AsyncIterator[Any]:
        yield request

    serve = asyncio.ensure_future(endpoint.serve_endpoint(handler))
    done, _ = await asyncio.wait({serve}, timeout=0.5)  # it registers, then runs until the endpoint stops
    if serve in done:
        emit("serve_error", error=str(serve.exception()))
        hard_exit(1)
    emit("serving", instance_id=endpoint.connection_id())
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        called = time.time()
        if line == "register":
            await endpoint.register_endpoint_instance()
        elif line == "unregister":
            await endpoint.unregister_endpoint_instance()
        else:
            emit("unknown_command", line=line)
            continue
        emit("done", op=line, called=called, returned=time.time())


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("sync", "toggle"))
    p.add_argument("--endpoint", required=True, help="namespace.component.endpoint")
    p.add_argument("--count", type=int, default=0, help="sync: the number of instances to wait for")
    args = p.parse_args()
    apply_loopback_env()
    os.environ["DYN_DISCOVERY_BACKEND"] = "etcd"

    from dynamo.runtime import DistributedRuntime  # after the environment is final

    runtime = DistributedRuntime(asyncio.get_running_loop(), "etcd", "tcp")
    endpoint = runtime.endpoint(args.endpoint)
    if args.mode == "sync":
        await sync(endpoint, args.count)
    else:
        await toggle(endpoint)
    runtime.shutdown()
    await asyncio.sleep(0.3)  # let the runtime revoke its lease
    hard_exit(0)


if __name__ == "__main__":
    asyncio.run(main())
